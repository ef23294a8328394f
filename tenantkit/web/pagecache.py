"""Page-cache middleware: serve hits from the site's :class:`~tenantkit.cache.pagecache.PageCache`,
store cacheable misses, and carry read-your-writes between requests in a signed cookie.

Mount it between the dispatcher and the backends (``create_app`` does this)::

    caches = SiteCaches()
    app = HostDispatcher(registry, PageCacheMiddleware(SiteBackendApp(), caches=caches,
                                                       secret_key="..."))

Every response of a cache-enabled site says what happened in ``X-Tenantkit-Cache``:

- ``HIT``: served from the cache; ``STALE``: an expired or purged page served while one
  other request regenerates it; ``MISS``: the backend answered (and the page was stored if
  it could be); ``BYPASS``: the request could not be answered from the cache -- not GET or
  HEAD, an ``Authorization`` header, a bypass cookie (``site.cache.bypass_cookies``
  prefixes), or a fresh read-your-writes cookie.

Only 200 responses to GET without ``Set-Cookie``, without ``Cache-Control: private``,
``no-store`` or ``no-cache`` and without ``Vary: Cookie`` (or ``Authorization``, ``*``) are
stored. Tags come from the ``X-Tenantkit-Tags`` response header (comma- or
space-separated), which never reaches the client. Stored pages get an ``ETag`` and a
``Last-Modified``; conditional GETs on hits answer 304.

Read-your-writes: after a request whose backend wrote (the router's consistency token is
found in ``environ["tenantkit.write_token"]`` or the ``X-Tenantkit-Token`` response header),
the token goes into a signed (itsdangerous), HttpOnly, SameSite=Lax cookie. For as long as it
is fresh, that browser's requests skip the page cache and carry the token in
``environ["tenantkit.consistency_token"]`` for the app's router
(``router.with_token(...)``). A forged, garbled or old cookie is ignored.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import ClosingIterator

from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.pagecache import FillTicket, PageCache
from tenantkit.errors import CacheError
from tenantkit.sites import Site
from tenantkit.web.cookies import has_bypass_cookie
from tenantkit.web.hits import CACHE_HEADER, send_page
from tenantkit.web.hostlinks import HostLinks
from tenantkit.web.hotpages import LANE_KEY, HotPages, plain_request_key
from tenantkit.web.rwcookie import TOKEN_HEADER, TOKEN_IN, TOKEN_OUT, TokenCookie

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["LANE_KEY", "PageCacheMiddleware", "SiteCaches", "TokenCookie",
           "plain_request_key"]

logger = logging.getLogger(__name__)

TAGS_HEADER = "x-tenantkit-tags"
_PRIVATE_LENGTHS = frozenset({len(TAGS_HEADER), len(TOKEN_HEADER)})
#: Pages larger than this are passed through, never buffered for the cache.
MAX_STORE_BYTES = 8 * 1024 * 1024
#: Headers a stored page keeps (the rest are per-response or hop-by-hop).
_KEEP = frozenset({"content-type", "content-language", "etag", "last-modified", "link",
                   "vary", "x-robots-tag", "content-security-policy"})


def _parse_tags(value: str) -> tuple[str, ...]:
    return tuple(t for t in value.replace(",", " ").split() if t)


class _Capture:
    """Holds what the app passed to start_response until we decide what to send."""

    __slots__ = ("exc_info", "headers", "status")

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Callable[[bytes], object]:
        self.status, self.headers, self.exc_info = status, list(headers), exc_info
        return _no_write


def _no_write(data: bytes) -> object:
    raise RuntimeError("the page-cache middleware does not support the write() callable; "
                       "return the body from the app instead")


class PageCacheMiddleware:
    """Serve and fill the page cache of ``environ["tenantkit.site"]``."""

    def __init__(self, app: WSGIApplication, *, caches: SiteCaches | None = None,
                 secret_key: str | bytes = "", token_max_age: float = 5.0,
                 host_links: HostLinks | None = None,
                 on_cache: Callable[[str, str], None] | None = None) -> None:
        self.app = app
        self.caches = caches or SiteCaches()
        self.cookie = TokenCookie(secret_key, max_age=token_max_age) if secret_key else None
        self.host_links = host_links
        self.on_cache = on_cache
        self._hot = HotPages()

    # -- the request ---------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        site: Site = environ["tenantkit.site"]
        cookies = environ.get("HTTP_COOKIE", "")
        if cookies and self.cookie is not None:
            token = self.cookie.read(cookies)
            if token is not None:
                environ[TOKEN_IN] = token
                return self._bypass(site, environ, start_response)
        if not site.cache.enabled:
            return self._pass(environ, start_response, None)
        method = environ.get("REQUEST_METHOD")
        if (method not in ("GET", "HEAD") or "HTTP_AUTHORIZATION" in environ
                or (cookies and has_bypass_cookie(cookies, site.cache.bypass_cookies))):
            return self._bypass(site, environ, start_response)
        host: str = environ.get("tenantkit.host") or ""
        path = environ.get("PATH_INFO") or "/"
        query = environ.get("QUERY_STRING", "")
        cache = self.caches.get(site)
        now = time.time()
        try:
            stored, hot = self._hot.read(cache, host, path, query, now)
        except (CacheError, OSError, ValueError) as exc:
            logger.debug("site %s: not caching %r: %s", site.name, path, exc)
            return self._bypass(site, environ, start_response)
        if stored is not None and not stored.stale:
            self._count(site, "HIT")
            lane = environ.get(LANE_KEY)
            if hot is not None and lane is not None:
                self._hot.remember(lane, site.name, hot)
            return send_page(stored, environ, start_response, "HIT", now)
        try:
            # With no page at all there is nothing stale to serve: every caller renders, so
            # the fill lock would only cost two file operations.
            ticket = cache.begin_fill(host, path, query, lock=stored is not None)
        except (CacheError, OSError) as exc:
            logger.warning("site %s: page cache unusable: %s", site.name, exc)
            return self._bypass(site, environ, start_response)
        if stored is not None and not ticket.leader:
            ticket.release()  # someone else regenerates it: serve the stale page meanwhile
            self._count(site, "STALE")
            return send_page(stored, environ, start_response, "STALE", time.time())
        try:
            return self._fill(site, cache, ticket, environ, start_response)
        finally:
            ticket.release()

    def replay(self, key: tuple[str, str, str, str], sites: object,
               environ: WSGIEnvironment, start_response: StartResponse,
               on_response: Callable[[str, int], None] | None = None
               ) -> Iterable[bytes] | None:
        """Answer a plain GET or HEAD (see :func:`plain_request_key`) that was last answered
        from a page still hot, without resolving its site again: *sites* must be the same
        registry snapshot as then. None: nothing to replay, take the long way (with
        ``environ[LANE_KEY] = (key, sites)`` so that a hit is remembered)."""
        now = time.time()
        route = self._hot.route(key, sites, now)
        if route is None:
            return None
        name, stored = route
        if on_response is not None:
            on_response(name, 200)
        if self.on_cache is not None:
            self.on_cache(name, "HIT")
        return send_page(stored, environ, start_response, "HIT", now)

    def _count(self, site: Site, result: str) -> None:
        if self.on_cache is not None:
            self.on_cache(site.name, result)

    # -- through to the app ---------------------------------------------------------------

    def _bypass(self, site: Site, environ: WSGIEnvironment,
                start_response: StartResponse) -> Iterable[bytes]:
        if site.cache.enabled:
            self._count(site, "BYPASS")
        return self._pass(environ, start_response, "BYPASS" if site.cache.enabled else None)

    def _outgoing(self, environ: WSGIEnvironment, headers: list[tuple[str, str]],
                  result: str | None) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
        """Strip our private headers, add the cache header and the token cookie."""
        out: list[tuple[str, str]] = []
        tags: tuple[str, ...] = ()
        token = environ.get(TOKEN_OUT)
        for key, value in headers:
            # Only names as long as ours can be ours: most headers skip the lower().
            lower = key.lower() if len(key) in _PRIVATE_LENGTHS else ""
            if lower == TAGS_HEADER:
                tags += _parse_tags(value)
            elif lower == TOKEN_HEADER:
                token = token or value
            else:
                out.append((key, value))
        if result is not None:
            out.append((CACHE_HEADER, result))
        if token and self.cookie is not None:
            secure = environ.get("wsgi.url_scheme") == "https"
            out.append(("Set-Cookie", self.cookie.header(str(token), secure=secure)))
        return out, tags

    def _pass(self, environ: WSGIEnvironment, start_response: StartResponse,
              result: str | None) -> Iterable[bytes]:
        def respond(status: str, headers: list[tuple[str, str]],
                    exc_info: Any = None) -> Callable[[bytes], object]:
            out, _ = self._outgoing(environ, headers, result)
            return start_response(status, out, exc_info)

        return self.app(environ, respond)

    def _fill(self, site: Site, cache: PageCache, ticket: FillTicket,
              environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self._count(site, "MISS")
        host, path = ticket.host, ticket.path
        query = environ.get("QUERY_STRING", "")
        capture = _Capture()
        body = self.app(environ, capture)
        try:
            chunks: list[bytes] = []
            size = 0
            iterator = iter(body)
            storable = self._storable(environ, capture)
            if storable:
                for chunk in iterator:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_STORE_BYTES:
                        storable = False
                        break
            out, tags = self._outgoing(environ, capture.headers, "MISS")
            if storable:
                data = b"".join(chunks)
                keep = self._stored_headers(out, data)
                try:
                    stored = cache.put(host, path, data, query=query, status=200, headers=keep,
                                       tags=tags, ticket=ticket)
                except (CacheError, OSError, ValueError) as exc:
                    logger.warning("site %s: cannot store %r: %s", site.name, path, exc)
                    stored = False
                if stored and self.host_links is not None and not query:
                    self.host_links.ensure(site.name, host)
                names = {k.lower() for k, _ in keep}
                out = [(k, v) for k, v in out if k.lower() not in names] + keep
                start_response(capture.status, out, capture.exc_info)
                _close(body)
                return [data]
            start_response(capture.status, out, capture.exc_info)
        except BaseException:
            _close(body)
            raise
        # What is left of the body, then the app's own close().
        return ClosingIterator(itertools.chain(chunks, iterator), getattr(body, "close", None))

    def _storable(self, environ: WSGIEnvironment, capture: _Capture) -> bool:
        if environ.get("REQUEST_METHOD") != "GET" or not capture.status.startswith("200"):
            return False
        if TOKEN_OUT in environ:
            return False
        for key, value in capture.headers:
            lower = key.lower()
            if lower in ("set-cookie", TOKEN_HEADER):
                return False
            if lower == "cache-control":
                directives = {d.strip().split("=")[0].lower() for d in value.split(",")}
                if directives & {"private", "no-store", "no-cache"}:
                    return False
            if lower == "vary":
                # The cache keys on host, path and query only: a page that differs by
                # anything personal must not be shared.
                varies = {v.strip().lower() for v in value.split(",")}
                if varies & {"*", "cookie", "authorization"}:
                    return False
        return True

    def _stored_headers(self, out: list[tuple[str, str]], data: bytes) -> list[tuple[str, str]]:
        keep = [(k, v) for k, v in out if k.lower() in _KEEP]
        names = {k.lower() for k, _ in keep}
        if "etag" not in names:
            keep.append(("ETag", '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'))
        if "last-modified" not in names:
            keep.append(("Last-Modified", formatdate(time.time(), usegmt=True)))
        return keep


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()
