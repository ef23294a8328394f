"""The wp-config.php block for contrib/wp-db-router.php (``tenantkit provision --print-wp-config``).

::

    from tenantkit.export.wordpress import render_wp_config
    print(render_wp_config(site, settings))                # define('TENANTKIT_SITE', ...); ...
    print(render_wp_config(site, settings, debian=True))   # /etc/wordpress/config-<host>.php

The servers are the site's own (``[database]`` in its site file) or, when it names no
primary, the settings' ``[database]``; timeouts and the read-your-writes mode come from the
settings. The bus is the Redis stream when ``[bus] transport = "redis"``, else the site's
``.purge/`` trigger-file directory, which is also the fallback when Redis is down.

The output holds the database passwords: it is meant to be written to a file readable by the
web server only.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tenantkit.config import Settings, mask_url
from tenantkit.db.servers import site_servers
from tenantkit.errors import WpConfigError
from tenantkit.export.php import php_bus_url, php_string
from tenantkit.sites import Site

__all__ = ["php_string", "render_wp_config", "wp_server_url"]


def wp_server_url(url: str) -> str:
    """``mysql+pymysql://u:p@h:3306/db`` -> ``mysql://u:p@h:3306/db`` for the drop-in.

    Raises :class:`WpConfigError` for anything that is not a MySQL/MariaDB URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise WpConfigError(f"cannot read database URL {mask_url(url)!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("mysql", "mariadb"):
        raise WpConfigError(
            f"database URL {mask_url(url)!r} is {backend}: WordPress needs MySQL or MariaDB "
            "(set [database] primary in the site file to mysql://user:password@host/db)"
        )
    if not parsed.database:
        raise WpConfigError(f"database URL {mask_url(url)!r} names no database "
                            "(write mysql://user:password@host:3306/DATABASE)")
    auth = ""
    if parsed.username:
        auth = quote(parsed.username, safe="")
        if parsed.password is not None:
            auth += ":" + quote(str(parsed.password), safe="")
        auth += "@"
    host = parsed.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port else ""
    query = ""
    socket = parsed.query.get("unix_socket")
    if isinstance(socket, str):
        query = "?" + urlencode({"unix_socket": socket})
    return f"mysql://{auth}{host}{port}/{quote(parsed.database, safe='')}{query}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def contrib_dir() -> str:
    """The absolute path of tenantkit's ``contrib/`` (the PHP files the printed config names):
    next to the package in a checkout, else where the operator put it."""
    here = Path(__file__).resolve().parents[2] / "contrib"
    return str(here) if (here / "wp-db-router.php").is_file() else "/path/to/tenantkit/contrib"


def render_wp_config(site: Site, settings: Settings, *, debian: bool = False) -> str:
    """The PHP ``define()`` block for the drop-in; with *debian*, a whole
    ``/etc/wordpress/config-<host>.php`` file (DB_* constants and ``$table_prefix`` too)."""
    servers = site_servers(site, settings)
    primary = servers.primary
    primary_url = wp_server_url(primary)
    replica_urls = [wp_server_url(url) for url in servers.replicas]
    db = settings.database
    constants: list[tuple[str, str]] = [
        ("TENANTKIT_SITE", php_string(site.name)),
        ("TENANTKIT_DB_PRIMARY", php_string(primary_url)) if len(servers.primaries) == 1 else
        ("TENANTKIT_DB_PRIMARIES",
         "[" + ", ".join(php_string(wp_server_url(p)) for p in servers.primaries) + "]"),
        ("TENANTKIT_DB_REPLICAS", "[" + ", ".join(php_string(u) for u in replica_urls) + "]"),
        ("TENANTKIT_COMPRESS", "true"),
        ("TENANTKIT_BUS", php_string(php_bus_url(settings) or os.path.abspath(site.purge_dir))),
        ("TENANTKIT_PURGE_DIR", php_string(os.path.abspath(site.purge_dir))),
        ("TENANTKIT_READ_YOUR_WRITES", php_string(db.read_your_writes)),
        ("TENANTKIT_PIN_SECONDS", _number(db.pin_seconds)),
        ("TENANTKIT_GTID_WAIT_TIMEOUT", _number(db.gtid_wait_timeout)),
        ("TENANTKIT_CONNECT_TIMEOUT", _number(db.connect_timeout)),
        ("TENANTKIT_LAG_THRESHOLD", _number(db.lag_threshold)),
        ("TENANTKIT_DEAD_HOST_COOLDOWN", _number(db.dead_host_cooldown)),
    ]
    lines: list[str] = []
    contrib = contrib_dir()
    if debian:
        exact = [h for h in site.hosts if not h.startswith(("*", ".", "~")) and "*" not in h]
        first = exact[0] if exact else site.name
        parsed = make_url(primary)
        lines += [
            "<?php",
            f"// /etc/wordpress/config-{first}.php: site {site.name!s}, written by tenantkit.",
            "// Debian's /usr/share/wordpress/wp-config.php reads config-<host>.php for the",
            "// request's host"
            + (f"; link it for the other hosts: {', '.join(exact[1:])}." if exact[1:] else "."),
            f"// Install the drop-in: ln -s {contrib}/wp-db-router.php "
            "/var/lib/wordpress/wp-content/db.php",
            f"// and the cache tags: ln -s {contrib}/tenantkit-tags.php "
            "/var/lib/wordpress/wp-content/mu-plugins/",
            "// (with contrib/tenantkit-events.php next to their targets).",
            f"define('DB_NAME', {php_string(parsed.database or '')});",
            f"define('DB_USER', {php_string(parsed.username or '')});",
            f"define('DB_PASSWORD', {php_string(str(parsed.password or ''))});",
            f"define('DB_HOST', {php_string(_db_host(parsed.host, parsed.port))});",
            f"$table_prefix = {php_string(site.database.table_prefix or 'wp_')};",
        ]
    else:
        lines += [f"// tenantkit: site {site.name}, for contrib/wp-db-router.php "
                  "(wp-content/db.php). Paste above \"That's all, stop editing!\".",
                  f"// Cache tags (policy = \"targeted\"): ln -s {contrib}/tenantkit-tags.php "
                  "wp-content/mu-plugins/",
                  "// (contrib/tenantkit-events.php next to the targets of both links)."]
    lines += [f"define('{name}', {value});" for name, value in constants]
    return "\n".join(lines) + "\n"


def _db_host(host: str | None, port: int | None) -> str:
    host = host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host
