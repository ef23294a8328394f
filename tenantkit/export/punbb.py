"""PunBB forum maps: one patched PunBB copy (``contrib/punbb.diff``) serving several forums.

A site is a PunBB forum when its file says so in ``[meta]``::

    hosts = ["forum.example.org", "*.forum.example.org"]
    [backend]
    type = "proxy"
    url = "http://127.0.0.1:8080"          # the web server running the one PunBB copy
    [database]
    primary = "mysql+pymysql://punbb:secret@db1.internal/forums"
    table_prefix = "forum_"                # default: the site name with "_" for "-", plus "_"
    [meta]
    app = "punbb"
    base_url = "https://forum.example.org" # default: from the request (see below)

:func:`build_forum_map` turns the sites into the map the patched PunBB reads (host ->
database, table prefix, ``FORUM_CACHE_DIR = cache_dir/<site>/app/``, base URL, event bus), and
:func:`render_forum_map` writes it as a PHP file returning an array::

    registry = Registry.load(settings)
    forum_map = build_forum_map(registry.sites.values(), settings)
    write_forum_map(Path("/srv/punbb/tenantkit_forums.php"), render_forum_map(forum_map))

The map holds every site's host patterns, not only the forums': a host that tenantkit sends to
another site must not reach a forum through a wildcard. Host lookup in PHP follows
:class:`~tenantkit.hosts.HostIndex` (exact name, longest leading wildcard, longest trailing
wildcard); regex patterns cannot be carried over and are left out with a warning.

Base URL: with ``[meta] base_url`` (``tenantkit provision --base-url``) PunBB builds its links
and checks its forms with that URL (``base_url_fixed``). Without it the map carries a guess
(``http://<first exact host>``) and PunBB takes the scheme, host and port of each request from
the ``X-Forwarded-*`` headers of a trusted proxy (``trusted_proxies``: the shim on this node,
loopback by default), else from its Host header -- never from the port PHP listens on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tenantkit.config import Settings, mask_url
from tenantkit.db.servers import site_servers
from tenantkit.errors import ForumMapError
from tenantkit.export.php import php_bus_url, php_literal
from tenantkit.files import write_atomic
from tenantkit.hosts import claim_owner, host_claims, pattern_key
from tenantkit.sites import Site
from tenantkit.validate import is_http_url

__all__ = [
    "FORUM_MAP_FILE",
    "ForumMap",
    "PunbbForum",
    "build_forum_map",
    "forum_for_site",
    "is_punbb_site",
    "render_forum_map",
    "write_forum_map",
]

logger = logging.getLogger(__name__)

#: Where the patched PunBB looks for the map when TENANTKIT_PUNBB_MAP is not set.
FORUM_MAP_FILE = "tenantkit_forums.php"
#: Peers whose X-Forwarded-Proto/-Host/-Port PunBB believes: ``tenantkit serve`` on this node.
TRUSTED_PROXIES = ("127.0.0.1", "::1")
MAP_VERSION = 1
# PunBB's installer accepts these table prefixes (admin/install.php).
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
_MYSQL_BACKENDS = ("mysql", "mariadb")


@dataclass(frozen=True, kw_only=True)
class PunbbForum:
    """What the patched PunBB needs for one forum (the settings config.php used to hold)."""

    site: str
    db_type: str
    db_host: str
    db_name: str
    db_username: str
    db_password: str = field(repr=False)
    db_prefix: str
    base_url: str
    base_url_fixed: bool = True
    cookie_name: str
    cache_dir: str
    avatars_dir: str
    bus: str = field(repr=False)
    purge_dir: str

    def as_php(self) -> dict[str, str | bool]:
        return {
            "db_type": self.db_type, "db_host": self.db_host, "db_name": self.db_name,
            "db_username": self.db_username, "db_password": self.db_password,
            "db_prefix": self.db_prefix, "base_url": self.base_url,
            "base_url_fixed": self.base_url_fixed,
            "cookie_name": self.cookie_name, "cache_dir": self.cache_dir,
            "avatars_dir": self.avatars_dir, "bus": self.bus, "purge_dir": self.purge_dir,
        }


@dataclass(frozen=True, kw_only=True)
class ForumMap:
    """Forums by site name and the host tables of every site ("" = not a forum here).

    ``leading`` maps ``example.org`` to ``(site, bare)``: ``*.example.org`` when ``bare`` is
    false, ``.example.org`` (also ``example.org`` itself) when true.
    """

    forums: Mapping[str, PunbbForum]
    exact: Mapping[str, str]
    leading: Mapping[str, tuple[str, bool]]
    trailing: Mapping[str, str]
    events_helper: str | None = None
    skipped: tuple[str, ...] = ()

    def lookup(self, host: str) -> str | None:
        """The forum for a normalised host, as the patched PunBB picks it (None: 421)."""
        site = self.exact.get(host)
        if site is None:
            hit = self.leading.get(host)
            if hit is not None and hit[1]:
                site = hit[0]
        dot = host.find(".")
        while site is None and dot >= 0:
            hit = self.leading.get(host[dot + 1:])
            site = None if hit is None else hit[0]
            dot = host.find(".", dot + 1)
        dot = host.rfind(".")
        while site is None and dot > 0:
            site = self.trailing.get(host[:dot])
            dot = host.rfind(".", 0, dot)
        return site or None


def is_punbb_site(site: Site) -> bool:
    """True when the site file's ``[meta]`` says ``app = "punbb"``."""
    return site.meta.get("app") == "punbb"


def _fail(site: Site, what: str) -> ForumMapError:
    where = f"site {site.name}" + (f" ({site.path})" if site.path else "")
    return ForumMapError(f"{where}: {what}")


def _database(site: Site, settings: Settings) -> tuple[str, str, str, str]:
    servers = site_servers(site, settings)
    url_text, source = servers.primary, servers.source
    try:
        url = make_url(url_text)
    except ArgumentError:
        raise _fail(site, f"{source} is not a database URL: {mask_url(url_text)!r}") from None
    if url.get_backend_name() not in _MYSQL_BACKENDS:
        raise _fail(site, f"PunBB needs MySQL or MariaDB, but {source} is "
                          f"{mask_url(url_text)!r} (set primary = \"mysql+pymysql://user:"
                          "password@host/database\" in the site file's [database] table)")
    if not url.host or not url.database:
        raise _fail(site, f"{source} {mask_url(url_text)!r} names no host or no database "
                          "(write mysql+pymysql://user:password@host:3306/database)")
    if ":" in url.host or "unix_socket" in url.query:
        raise _fail(site, f"{source} {mask_url(url_text)!r}: PunBB's database layer takes a "
                          "host name or IPv4 address and a port only (no IPv6 literal, no "
                          "unix_socket)")
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    return host, url.database, url.username or "", url.password or ""


def _table_prefix(site: Site) -> str:
    prefix = site.database.table_prefix or site.name.replace("-", "_") + "_"
    if not _PREFIX.match(prefix):
        raise _fail(site, f"table prefix {prefix!r} is not one PunBB accepts (a letter or '_' "
                          "first, then letters, digits or '_', at most 40 characters): set "
                          'table_prefix = "forum_" in the site file\'s [database] table')
    return prefix


def _base_url(site: Site) -> str:
    given = site.meta.get("base_url")
    if given is None:
        exact = [h for h in site.hosts if pattern_key(h)[0] == "exact"]
        if not exact:
            raise _fail(site, "it has no exact host name to build PunBB's base URL from: add "
                              'base_url = "https://forum.example.org" to its [meta] table')
        return f"http://{exact[0]}"
    if not is_http_url(given) or any(ch in given for ch in "?#'\"\\<>"):
        raise _fail(site, f"[meta] base_url must be an http:// or https:// URL without query, "
                          f"quotes or spaces, got {given!r} "
                          '(write base_url = "https://forum.example.org")')
    return given.rstrip("/")


def forum_for_site(site: Site, settings: Settings) -> PunbbForum:
    """The PunBB settings of one forum site; raises :class:`ForumMapError` saying what to fix."""
    db_host, db_name, db_user, db_password = _database(site, settings)
    return PunbbForum(
        site=site.name,
        db_type="mysqli_innodb",
        db_host=db_host,
        db_name=db_name,
        db_username=db_user,
        db_password=db_password,
        db_prefix=_table_prefix(site),
        base_url=_base_url(site),
        base_url_fixed="base_url" in site.meta,
        cookie_name="forum_cookie_" + site.name.replace("-", "_"),
        cache_dir=os.path.abspath(site.app_cache_dir) + "/",
        avatars_dir=f"img/avatars/{site.name}",
        bus=php_bus_url(settings),  # "": PunBB drops trigger files in .purge/
        purge_dir=os.path.abspath(site.purge_dir) + "/",
    )


def build_forum_map(
    sites: Iterable[Site],
    settings: Settings,
    *,
    names: Sequence[str] | None = None,
    events_helper: str | None = None,
) -> ForumMap:
    """The forum map for every PunBB site in *sites* (or only *names*).

    Raises :class:`ForumMapError` for a named site that is missing or not a forum, for two
    forums sharing one database and table prefix, and for any forum whose settings PunBB
    cannot use.
    """
    by_name = {site.name: site for site in sites}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ForumMapError(f"no site named {', '.join(missing)} in {settings.sites_dir} "
                                "(check the name: tenantkit reads sites/<name>.toml)")
        not_forums = [n for n in names if not is_punbb_site(by_name[n])]
        if not_forums:
            raise ForumMapError(f"site {', '.join(not_forums)} is not a PunBB forum (add "
                                '[meta] app = "punbb" to its site file)')
        chosen = set(names)
    else:
        chosen = {name for name, site in by_name.items() if is_punbb_site(site)}
    forums = {name: forum_for_site(by_name[name], settings) for name in sorted(chosen)}
    _check_shared_tables(forums)

    claims = host_claims({name: site.hosts for name, site in by_name.items()})
    skipped = [f"{name}: {pattern}" for name in sorted(forums)
               for pattern in by_name[name].hosts if pattern_key(pattern)[0] == "regex"]
    for item in skipped:
        logger.warning("forum map: regex host pattern left out (list the host names "
                       "instead): %s", item)

    exact: dict[str, str] = {}
    leading: dict[str, tuple[str, bool]] = {}
    trailing: dict[str, str] = {}
    for (claim, key), owners in sorted(claims.items()):
        kept = claim_owner(owners)  # as HostIndex
        target = kept if kept in forums else ""
        if claim == "regex":
            continue
        if claim == "exact":
            exact[key] = target
        elif claim == "leading":
            leading[key] = (target, owners[kept])
        else:
            trailing[key] = target
    return ForumMap(forums=forums, exact=exact, leading=leading, trailing=trailing,
                    events_helper=events_helper, skipped=tuple(skipped))


def _check_shared_tables(forums: Mapping[str, PunbbForum]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for name, forum in forums.items():
        key = (forum.db_host, forum.db_name, forum.db_prefix.lower())
        if key in seen:
            raise ForumMapError(
                f"sites {seen[key]} and {name} would share the tables {forum.db_prefix}* in "
                f"database {forum.db_name} on {forum.db_host}: give each forum its own "
                'table_prefix in its site file\'s [database] table')
        seen[key] = name


# --- PHP --------------------------------------------------------------------------------------

def render_forum_map(forum_map: ForumMap) -> str:
    """The map as the PHP file the patched PunBB includes (it holds database passwords)."""
    data: dict[str, Any] = {"version": MAP_VERSION}
    if forum_map.events_helper:
        data["events_helper"] = forum_map.events_helper
    data["hosts"] = dict(forum_map.exact)
    data["leading"] = {k: [site, bare] for k, (site, bare) in forum_map.leading.items()}
    data["trailing"] = dict(forum_map.trailing)
    data["trusted_proxies"] = list(TRUSTED_PROXIES)
    data["forums"] = {name: forum.as_php() for name, forum in forum_map.forums.items()}
    header = (
        "<?php\n"
        "// tenantkit forum map for the patched PunBB (contrib/punbb.diff), written by\n"
        "// `tenantkit punbb-config`. Do not edit: change the site files and run it again.\n"
        '// "hosts": exact names, "leading": *.name / .name, "trailing": name.*;\n'
        '// a site that is not a forum here maps to "" (PunBB answers 421).\n'
    )
    return header + "return " + php_literal(data) + ";\n"


def write_forum_map(path: Path, text: str, mode: int = 0o640) -> None:
    """Write the map atomically (temp file in the same directory, then rename)."""
    write_atomic(path, text.encode("utf-8"), mode=mode)
