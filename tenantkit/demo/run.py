"""``tenantkit demo``: provision two demo blogs in a directory and serve them.

::

    run_demo(Path("tenantkit-demo"), port=8000)     # blocks until Ctrl-C

Everything lives in that directory: ``tenantkit.toml`` (the embedded defaults, plus an admin
token), ``sites/``, ``cache/`` and one SQLite database per blog. Running it again reuses
what is there but the page caches, which start empty. A port already in use is refused
before anything starts, with a free one to use instead (:class:`PortInUse`).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import click
import tomli_w

from tenantkit.config import Settings
from tenantkit.files import write_atomic
from tenantkit.provision import provision
from tenantkit.sites import Backend, SiteCache, SiteDatabase

__all__ = ["DEMO_SITES", "PortInUse", "run_demo"]

DEMO_SITES = {"one": "Blog One", "two": "Blog Two"}


class PortInUse(OSError):
    """The demo's port is taken; the message names a free one."""


def _free_port_after(port: int) -> int | None:
    for candidate in range(port + 1, min(port + 100, 65536)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    return None


def check_port(port: int) -> None:
    """Raise :class:`PortInUse` when 127.0.0.1:*port* cannot be listened on."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            free = _free_port_after(port)
            hint = f"tenantkit demo --port {free}" if free else "tenantkit demo --port PORT"
            raise PortInUse(errno.EADDRINUSE, f"port {port} on 127.0.0.1 is already in use "
                            f"(another demo or server?): run {hint}") from None


def _settings(root: Path) -> Settings:
    config = root / "tenantkit.toml"
    if not config.exists():
        root.mkdir(parents=True, exist_ok=True)
        data = {
            "sites_dir": "sites", "cache_dir": "cache",
            "database": {"primary": f"sqlite:///{(root / 'tenantkit.db').resolve()}"},
            "web": {"admin_hosts": ["127.0.0.1", "localhost"],
                    "admin_token": secrets.token_urlsafe(16)},
        }
        write_atomic(config, tomli_w.dumps(data).encode(), mode=0o600)
    return Settings.load(config)


def run_demo(root: Path, *, port: int = 8000,
             echo: Callable[[str], None] = click.echo) -> None:
    """Provision the demo blogs under *root* and serve them on 127.0.0.1:*port*."""
    from tenantkit.web.server import serve

    root = root.resolve()
    check_port(port)
    settings = _settings(root)
    # A re-run starts from empty page caches: pages of an earlier run (or another version of
    # the demo blog) would be served as hits.
    shutil.rmtree(settings.cache_dir, ignore_errors=True)
    os.environ["TENANTKIT_CONFIG"] = str(root / "tenantkit.toml")  # the blogs load it too
    for name, title in DEMO_SITES.items():
        provision(
            settings, name, [f"blog-{name}.localhost"],
            backend=Backend(type="wsgi", app="tenantkit.demo.blog:create_blog"),
            database=SiteDatabase(primary=f"sqlite:///{root / (name + '.db')}"),
            cache=SiteCache(policy="targeted", ttl=300, stale_seconds=30,
                            bypass_cookies=settings.cache.bypass_cookies),
            meta={"title": title},
        )
    base = f"http://127.0.0.1:{port}"
    token = settings.web.admin_token
    echo(f"tenantkit demo: two blogs in {root}, served on {base}\n")
    echo("Read a post twice on blog one (MISS, then HIT from the page cache):")
    one, two = "Host: blog-one.localhost", "Host: blog-two.localhost"
    echo(f"  curl -si -H '{one}' {base}/post/2/ | grep -i x-tenantkit-cache")
    echo(f"  curl -si -H '{one}' {base}/post/2/ | grep -i x-tenantkit-cache")
    echo("Cache the same page on blog two:")
    echo(f"  curl -si -H '{two}' {base}/post/2/ | grep -i x-tenantkit-cache")
    echo("Post a comment on blog one:")
    echo(f"  curl -s -o /dev/null -w '%{{http_code}}\\n' -H '{one}' "
         f"-d 'author=you&body=hello' {base}/post/2/comment")
    echo("Blog one's page was purged: the next request is served the old page (STALE) while")
    echo("it is rendered again in the background, then a HIT shows the comment; blog two's")
    echo("page was not purged (HIT):")
    echo(f"  curl -si -H '{one}' {base}/post/2/ | grep -iE 'x-tenantkit-cache|hello'")
    echo(f"  curl -si -H '{one}' {base}/post/2/ | grep -iE 'x-tenantkit-cache|hello'")
    echo(f"  curl -si -H '{two}' {base}/post/2/ | grep -i x-tenantkit-cache")
    echo(f"\nStatus page: http://admin:{token}@127.0.0.1:{port}/_tenantkit/")
    echo(f"In a browser: http://blog-one.localhost:{port}/ and "
         f"http://blog-two.localhost:{port}/")
    echo("Press Ctrl-C to stop.\n")
    serve(settings, bind=f"127.0.0.1:{port}", use_gunicorn=False)
    echo("tenantkit demo: stopped")
