"""Pages kept in memory, and the hit lane that answers repeats of plain GETs from them.

::

    hot = HotPages()
    stored, kept = hot.read(cache, host, path, query, time.time())   # the one way to read
    if stored is not None and not stored.stale:
        if kept is not None and LANE_KEY in environ:
            hot.remember(environ[LANE_KEY], site.name, kept)          # for replay()
        return send_page(stored, environ, start_response, "HIT", now)

A kept page is trusted while its cache's change stamp
(:meth:`~tenantkit.cache.pagecache.PageCache.change_stamp`) is the one seen before it was
read -- every put, purge, flush or eviction, in any process, changes the stamp -- and it has
not expired: a hit then needs no system call. A page in use is also checked against its file
(inode, size, mtime) once every ``RECHECK`` seconds, so that pages deleted by hand stop being
served within that time. Anything doubtful is read again through ``PageCache.get``.

A stale copy (a purged or expired page served while it is rendered again) is kept the same
way, until the cache changes -- the render stored the page, or anything else happened -- or
its stale window ends: serving it again reads no file either (its file is not checked: it
is served for no longer than its window). It is never a route of the hit lane.

The front door (``create_app``) keys a plain request with :func:`plain_request_key` and asks
the middleware's ``replay`` before resolving the site; the long way sets
``environ[LANE_KEY]`` so that a hit is remembered for the next time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tenantkit.cache.pagecache import PageCache
from tenantkit.web.hits import StoredResponse
from tenantkit.web.target import request_target

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
else:
    WSGIEnvironment = Any

__all__ = ["LANE_KEY", "HotPage", "HotPages", "plain_request_key"]

#: Set by the front door for a plain request: ``(plain_request_key(environ), sites)``.
LANE_KEY = "tenantkit.lane"

RequestKey = tuple[str, str, str, str]


class HotPage:
    """A fresh page in memory, with the file and stamp it is checked against."""

    __slots__ = ("cache", "checked", "expires", "file", "ident", "response", "stamp")

    def __init__(self, cache: PageCache, file: str | None, stamp: bytes,
                 ident: tuple[int, int, int],
                 response: StoredResponse, expires: float, now: float) -> None:
        self.cache = cache
        self.file = file
        self.stamp = stamp
        self.ident = ident
        self.response = response
        self.expires = expires
        self.checked = now


class HotPages:
    """Recently served fresh pages, and the hit lane's routes to them (see the module
    docstring)."""

    MAX_PAGES = 4096
    MAX_BODY = 256 * 1024
    RECHECK = 1.0

    def __init__(self) -> None:
        self._pages: dict[tuple[int, str, str, str], HotPage] = {}
        self._lane: dict[RequestKey, tuple[object, str, HotPage]] = {}

    def valid(self, hot: HotPage, now: float) -> bool:
        """True while *hot* is still the fresh page on disk."""
        if now >= hot.expires or hot.stamp != hot.cache.change_stamp():
            return False
        if hot.file is not None and now - hot.checked >= self.RECHECK:
            try:
                st = os.stat(hot.file)
            except OSError:
                return False
            if (st.st_ino, st.st_size, st.st_mtime_ns) != hot.ident:
                return False
            hot.checked = now
        return True

    def read(self, cache: PageCache, host: str, path: str, query: str, now: float
             ) -> tuple[StoredResponse | None, HotPage | None]:
        """The page of this key (fresh, or stale within its window) and, when it is a fresh
        page kept in memory, the kept page. Raises what :meth:`PageCache.get` raises."""
        key = (id(cache), host, path, query)
        hot = self._pages.get(key)
        if hot is not None and self.valid(hot, now):
            return hot.response, None if hot.file is None else hot
        stamp = cache.change_stamp()
        page = cache.get(host, path, query)
        if page is None:
            return None, None
        stored = StoredResponse(page)
        if stamp is None or page.ident is None or len(page.body) > self.MAX_BODY:
            return stored, None
        if len(self._pages) >= self.MAX_PAGES:
            self._pages.clear()
        if page.stale:
            self._pages[key] = HotPage(cache, None, stamp, page.ident, stored, page.until, now)
            return stored, None
        hot = self._pages[key] = HotPage(
            cache, cache.body_file(host, path, query, page.body_name), stamp, page.ident, stored,
            page.created + page.ttl, now)
        return stored, hot

    # -- the hit lane ----------------------------------------------------------------------

    def remember(self, lane: tuple[RequestKey, object], name: str, hot: HotPage) -> None:
        """Route the plain request *lane* names to *hot*, for site *name*."""
        key, sites = lane
        if len(self._lane) >= self.MAX_PAGES:
            self._lane.clear()
        self._lane[key] = (sites, name, hot)

    def route(self, key: RequestKey, sites: object, now: float
              ) -> tuple[str, StoredResponse] | None:
        """The site name and page last served for *key*, while the page is still valid and
        *sites* is the same registry snapshot as then."""
        route = self._lane.get(key)
        if route is None:
            return None
        snapshot, name, hot = route
        if snapshot is not sites or not self.valid(hot, now):
            self._lane.pop(key, None)
            return None
        return name, hot.response


def plain_request_key(environ: WSGIEnvironment) -> RequestKey | None:
    """For a GET or HEAD that nothing but its URL can make personal (no cookie, no
    ``Authorization``, no conditional header; ``Accept-Encoding`` only picks the page's form
    when it is sent), what the hit lane keys it by: the raw ``Host`` and
    ``X-Forwarded-Host`` headers and the raw request target. None for any other request."""
    method = environ.get("REQUEST_METHOD")
    host = environ.get("HTTP_HOST")
    if ((method != "GET" and method != "HEAD") or not host or environ.get("HTTP_COOKIE")
            or "HTTP_AUTHORIZATION" in environ or "HTTP_IF_NONE_MATCH" in environ
            or "HTTP_IF_MODIFIED_SINCE" in environ or "HTTP_SCRIPT_NAME" in environ):
        return None
    path, query = request_target(environ)
    return (host, environ.get("HTTP_X_FORWARDED_HOST", ""), path, query)
