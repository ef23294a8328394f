"""One :class:`~tenantkit.cache.pagecache.PageCache` per site per process.

The shim's page-cache middleware, its admin purge and an Invalidator running in the same
process share one :class:`SiteCaches`, so a site's pages are read, stored and purged through
the same object::

    caches = SiteCaches()
    cache = caches.get(site)              # built on first use, rebuilt when the policy changes
    caches.discard(registry.sites)        # forget sites that are gone

:func:`site_page_cache` is the one way a site's settings become a PageCache; its renders and
stale pages served are counted in the node's counters
(:class:`~tenantkit.cache.nodecounters.NodeCounters` of the site's ``cache_dir``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from tenantkit.cache.nodecounters import NodeCounters
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.tags import SITE
from tenantkit.sites import Site

__all__ = ["SiteCaches", "SiteTally", "site_page_cache"]


class SiteTally:
    """Counts one site's page-cache events in its node's counters::

        tally = SiteTally(settings.cache_dir, "blog")
        tally(RENDERS)            # NodeCounters.for_dir(cache_dir).add(RENDERS, "blog")
    """

    __slots__ = ("cache_dir", "site")

    def __init__(self, cache_dir: str | os.PathLike[str], site: str) -> None:
        self.cache_dir = os.fspath(cache_dir)
        self.site = site

    def __call__(self, kind: str) -> None:
        NodeCounters.for_dir(self.cache_dir).add(kind, self.site)


def site_page_cache(site: Site) -> PageCache:
    """A PageCache on the site's pages directory, with the site's cache settings. Under
    ``policy = "targeted"`` a page stored without tags is stored under the site-wide tag
    (:data:`~tenantkit.cache.tags.SITE`), which every purge of the site purges
    (:func:`tenantkit.cache.purge.purge`); under ``"site"`` every event flushes anyway."""
    targeted = site.cache.policy == "targeted"
    return PageCache(site.pages_dir, ttl=site.cache.ttl, stale_seconds=site.cache.stale_seconds,
                     stale_if_error=site.cache.stale_if_error,
                     max_bytes=site.cache.max_bytes, untagged=SITE if targeted else None,
                     tally=_site_tally(site))


def _site_tally(site: Site) -> SiteTally | None:
    """The site's node counters, when its cache_root is ``cache_dir/<site>`` (as
    :func:`tenantkit.layout.site_root` makes it); None for a Site built by hand elsewhere."""
    root = site.cache_root
    return SiteTally(root.parent, site.name) if root.name == site.name else None


class SiteCaches:
    """One :class:`PageCache` per site definition, rebuilt when the site's cache policy changes."""

    def __init__(self, factory: Callable[[Site], PageCache] | None = None) -> None:
        self.factory = factory or site_page_cache
        self._caches: dict[str, tuple[Site, PageCache]] = {}
        self._lock = threading.Lock()

    def get(self, site: Site) -> PageCache:
        entry = self._caches.get(site.name)
        if entry is not None and entry[0] is site:
            return entry[1]
        with self._lock:
            entry = self._caches.get(site.name)
            if entry is not None and (entry[0] is site or (
                    entry[0].cache == site.cache and entry[0].cache_root == site.cache_root)):
                self._caches[site.name] = (site, entry[1])
                return entry[1]
            cache = self.factory(site)
            self._caches[site.name] = (site, cache)
            return cache

    def items(self) -> list[tuple[Site, PageCache]]:
        return list(self._caches.values())

    def discard(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        with self._lock:
            for name in [n for n in self._caches if n not in keep]:
                del self._caches[name]
