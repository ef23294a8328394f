"""Sites: one TOML file per site in ``sites_dir``, parsed into a frozen :class:`Site`.

This module holds the data model every other part of tenantkit shares; parsing and
validation of site files live here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tenantkit.config import mask_url

__all__ = ["Backend", "Site", "SiteCache", "SiteDatabase"]


@dataclass(frozen=True, kw_only=True)
class Backend:
    """What serves a site: an in-process WSGI app or an HTTP upstream.

    ``Backend(type="wsgi", app="myapp.wsgi:application")`` (the attribute is a WSGI app, or a
    factory called with the :class:`Site`), or ``Backend(type="proxy", url="http://127.0.0.1:8080")``.
    """

    type: Literal["wsgi", "proxy"]
    app: str | None = None
    url: str | None = None


@dataclass(frozen=True, kw_only=True)
class SiteDatabase:
    """A site's database; ``primary=None`` means the global ``[database]`` settings."""

    primary: str | None = None
    replicas: tuple[str, ...] = ()
    table_prefix: str = ""

    def __repr__(self) -> str:
        primary = mask_url(self.primary) if self.primary else None
        replicas = tuple(mask_url(r) for r in self.replicas)
        return (f"SiteDatabase(primary={primary!r}, replicas={replicas!r}, "
                f"table_prefix={self.table_prefix!r})")


@dataclass(frozen=True, kw_only=True)
class SiteCache:
    """A site's page cache policy; defaults come from the global ``[cache]`` settings."""

    enabled: bool = True
    ttl: int = 300
    stale_seconds: int = 30
    max_bytes: int | None = None
    policy: Literal["site", "targeted"] = "site"
    bypass_cookies: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Site:
    """One site. ``hosts`` holds normalised patterns; ``cache_root`` is ``cache_dir/<name>``.

    The cache tree: ``cache_root/pages`` (page cache), ``cache_root/app`` (the application's own
    cache files), ``cache_root/tmp`` and ``cache_root/.purge`` (trigger files).
    """

    name: str
    hosts: tuple[str, ...]
    backend: Backend
    database: SiteDatabase = field(default_factory=SiteDatabase)
    cache: SiteCache = field(default_factory=SiteCache)
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)
    cache_root: Path = Path("cache")
    path: Path | None = field(default=None, compare=False)

    @property
    def pages_dir(self) -> Path:
        return self.cache_root / "pages"

    @property
    def app_cache_dir(self) -> Path:
        return self.cache_root / "app"

    @property
    def tmp_dir(self) -> Path:
        return self.cache_root / "tmp"

    @property
    def purge_dir(self) -> Path:
        return self.cache_root / ".purge"
