"""Which database servers a site uses: the one rule every consumer follows.

::

    servers = site_servers(site, settings)
    servers.primary            # where the site's writes go (its first candidate)
    servers.primaries          # every primary candidate (one: today's single primary)
    servers.on_primary_down    # "error" | "read_only" (serve stale pages while down)
    servers.replicas           # where its reads go (may be empty: reads from the primary)
    servers.options            # timeouts and modes: always the global [database] table
    servers.connect_args(url)  # {"connect_timeout": 2, "read_timeout": 30, "write_timeout": 30}
                               # for a MySQL URL (a replica's: replica_read_timeout), {} otherwise
    connect_args(url, 2.5, read_timeout=10)   # the same rule for any timeouts (a Router's own)

The rule: the primary is the site's own ``[database] primary`` (or ``primaries``), else the
global one; with several candidates the writable one is found at run time
(:mod:`tenantkit.db.primaries`). ``on_primary_down`` is the site's own, else the global one.
The replicas are the site's own ``replicas`` when it names a primary or lists replicas (a site with
its own primary and no replicas has none: the global replicas replicate another primary), else
the global ones. The Router, the
Invalidator's replica wait, the WordPress and the PunBB exports all ask :func:`site_servers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL, make_url

from tenantkit.config import DatabaseSettings, Settings, mask_url
from tenantkit.sites import Site

__all__ = ["Servers", "connect_args", "connect_seconds", "site_servers"]

_MYSQL = ("mysql", "mariadb")


def connect_seconds(seconds: float) -> int:
    """A timeout as MySQL clients take it: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def connect_args(url: str | URL, connect_timeout: float, *, read_timeout: float | None = None,
                 write_timeout: float | None = None) -> dict[str, Any]:
    """The driver arguments that bound a connect to *url* by *connect_timeout* seconds, and
    each read or write on the connection (a server that stops answering without closing)
    by *read_timeout* / *write_timeout*: ``{"connect_timeout": 2, "read_timeout": 30}`` for
    a MySQL/MariaDB URL, ``{}`` for others."""
    if make_url(url).get_backend_name() not in _MYSQL:
        return {}
    args: dict[str, Any] = {"connect_timeout": connect_seconds(connect_timeout)}
    if read_timeout is not None:
        args["read_timeout"] = connect_seconds(read_timeout)
    if write_timeout is not None:
        args["write_timeout"] = connect_seconds(write_timeout)
    return args


@dataclass(frozen=True, kw_only=True, repr=False)
class Servers:
    """A site's database servers. ``own`` is true when the site file names its primary."""

    primary: str
    replicas: tuple[str, ...]
    options: DatabaseSettings
    own: bool
    primaries: tuple[str, ...] = ()
    on_primary_down: str = "error"

    def __post_init__(self) -> None:
        if not self.primaries:
            object.__setattr__(self, "primaries", (self.primary,))

    @property
    def source(self) -> str:
        """Where the primary was configured, for messages."""
        return "its [database] primary" if self.own else "the global [database] primary"

    def connect_args(self, url: str | URL) -> dict[str, Any]:
        """The driver arguments that bound a connect to *url* by ``connect_timeout`` and its
        reads and writes by ``read_timeout`` (``replica_read_timeout`` for a replica) and
        ``write_timeout``."""
        options = self.options
        replica = str(url) != self.primary and str(url) in self.replicas
        return connect_args(
            url, options.connect_timeout,
            read_timeout=options.replica_read_timeout if replica else options.read_timeout,
            write_timeout=options.write_timeout,
        )

    def __repr__(self) -> str:
        replicas = ", ".join(mask_url(r) for r in self.replicas)
        primaries = ", ".join(mask_url(p) for p in self.primaries)
        return (f"Servers(primaries=[{primaries}], replicas=[{replicas}], own={self.own})")


def site_servers(site: Site | None, settings: Settings | None = None) -> Servers:
    """The servers *site* uses under *settings* (default: the embedded defaults); with no
    site, the global ``[database]`` servers."""
    options = (settings or Settings()).database
    if site is None:
        return Servers(primary=options.primary, replicas=tuple(options.replicas),
                       options=options, own=False, primaries=options.candidates,
                       on_primary_down=options.on_primary_down)
    db = site.database
    own = db.primary is not None
    replicas = db.replicas if own or db.replicas else options.replicas
    primaries = (db.primaries or (db.primary,)) if db.primary is not None else options.candidates
    return Servers(primary=db.primary or options.primary, replicas=tuple(replicas),
                   options=options, own=own, primaries=tuple(primaries),
                   on_primary_down=db.on_primary_down or options.on_primary_down)
