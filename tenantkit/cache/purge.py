"""The one purge path: what purging a site's pages by path, by tag or whole means.

The admin endpoint (``POST /_tenantkit/purge``), ``tenantkit purge`` and the Invalidator
all end here::

    action = action_for(site, Purge("blog", tags=("post:42",)))   # event -> PurgeAction
    result = purge(caches.get(site), site, action)                 # carried out, once
    result.pages                                                   # pages that went stale

Every purge that is not a flush also purges the site-wide tag ``site``, under which a
targeted site's pages without tags are stored (:func:`tenantkit.cache.caches.site_page_cache`).

The host and the paths are checked before anything is purged: a host that does not
normalise raises :class:`~tenantkit.errors.InvalidHost`, a path without a leading ``/``
:class:`~tenantkit.errors.CacheError` (from the page cache), and the cache is left as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tenantkit.cache.events import Event, PurgeAction, purge_action
from tenantkit.cache.pagecache import PageCache, PageRef, PurgedPages
from tenantkit.cache.tags import SITE
from tenantkit.hosts import normalize_host
from tenantkit.sites import Site

__all__ = ["MAX_REPORTED", "PurgeResult", "action_for", "purge"]

logger = logging.getLogger(__name__)

#: Pages one purge reports for re-warming, at most (``keys=True``): a purge of a tag on
#: 20,000 pages must not read 20,000 sidecars for a re-warmer that queues 1,000
#: (:data:`tenantkit.web.rewarm.MAX_QUEUED`) and fetches 10 a second.
MAX_REPORTED = 1000


@dataclass(frozen=True)
class PurgeResult:
    """What :func:`purge` did: the site's new generation after a flush, else how many pages
    went stale (by tag plus by path) and the host the paths were purged for (None: every
    host)."""

    site: str
    flushed: bool = False
    generation: str | None = None
    pages: int = 0
    host: str | None = None
    #: (host, path, query) of each page that went stale, when asked for (``keys=True``):
    #: each once, at most :data:`MAX_REPORTED`.
    keys: tuple[PageRef, ...] = ()


def action_for(site: Site, event: Event) -> PurgeAction:
    """What ``event`` purges on ``site``, under the site's policy, home-page setting and app
    (``[meta] app``)."""
    app = site.meta.get("app")
    return purge_action(event, site.cache.policy,
                        home_shows_comments=bool(site.meta.get("home_shows_comments", True)),
                        app=app if isinstance(app, str) else None)


def purge(cache: PageCache, site: Site, action: PurgeAction, *,
          keys: bool | None = None) -> PurgeResult:
    """Carry out ``action`` on ``site``'s page cache ``cache``: a flush of the whole site, or
    the action's paths (of ``action.host``, or of every host) and then its tags, always
    with the site-wide tag (:data:`~tenantkit.cache.tags.SITE`): pages stored without tags
    go stale on every purge of their site. With ``keys`` (default: the site's ``[cache]
    rewarm``), a targeted purge reports the pages it made stale in ``result.keys`` (the
    first :data:`MAX_REPORTED`; one log line says how many more were left out)."""
    if action.flush:
        return PurgeResult(site.name, flushed=True, generation=cache.flush())
    purged = PurgedPages(limit=MAX_REPORTED)
    # Only a purge that reports its pages asks for them (they cost a read each).
    report = {"purged": purged} if (site.cache.rewarm if keys is None else keys) else {}
    host = normalize_host(action.host) if action.paths and action.host is not None else None
    pages = cache.purge_paths(host, action.paths, **report) if action.paths else 0
    if action.tags or action.paths:
        pages += cache.purge_tags(tuple(dict.fromkeys((*action.tags, SITE))), **report)
    if purged.left_out:
        logger.warning("site %s: purge made %d pages stale; %d are reported for re-warming, "
                       "%d left out (MAX_REPORTED)", site.name, pages, len(purged.refs),
                       purged.left_out)
    return PurgeResult(site.name, pages=pages, host=host, keys=tuple(purged.refs))
