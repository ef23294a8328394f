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
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from email.utils import formatdate, parsedate_to_datetime
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any

from itsdangerous import BadData, URLSafeTimedSerializer

from tenantkit import layout
from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.pagecache import FillTicket, PageCache, page_key
from tenantkit.config import RYW_COOKIE
from tenantkit.db.router import ConsistencyToken
from tenantkit.errors import CacheError, TenantkitError
from tenantkit.sites import Site
from tenantkit.web.cookies import has_bypass_cookie
from tenantkit.web.hostlinks import HostLinks

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["PageCacheMiddleware", "SiteCaches", "TokenCookie", "plain_request_key"]

logger = logging.getLogger(__name__)

CACHE_HEADER = "X-Tenantkit-Cache"
_HIT = (CACHE_HEADER, "HIT")
TAGS_HEADER = "x-tenantkit-tags"
TOKEN_HEADER = "x-tenantkit-token"
_PRIVATE_LENGTHS = frozenset({len(TAGS_HEADER), len(TOKEN_HEADER)})
TOKEN_IN = "tenantkit.consistency_token"
TOKEN_OUT = "tenantkit.write_token"
#: Set by the front door for a plain request (see ``PageCacheMiddleware.replay``).
LANE_KEY = "tenantkit.lane"
#: Pages larger than this are passed through, never buffered for the cache.
MAX_STORE_BYTES = 8 * 1024 * 1024
#: Headers a stored page keeps (the rest are per-response or hop-by-hop).
_KEEP = frozenset({"content-type", "content-language", "etag", "last-modified", "link",
                   "vary", "x-robots-tag", "content-security-policy"})


class _HotPages:
    """Recently served fresh pages kept in memory.

    A page is trusted while its cache's change stamp (:meth:`PageCache.change_stamp`) is the
    one seen before it was read -- every put, purge, flush or eviction, in any process,
    changes the stamp -- and it has not expired: a hit then needs no system call. A page in
    use is also checked against its file (inode, size, mtime) once every ``RECHECK``
    seconds, so that pages deleted by hand stop being served within that time. Anything
    doubtful falls through to :meth:`PageCache.get`.
    """

    MAX_PAGES = 4096
    MAX_BODY = 256 * 1024
    RECHECK = 1.0

    def __init__(self) -> None:
        self._pages: dict[tuple[int, str, str, str], _Hot] = {}

    def get(self, cache: PageCache, host: str, path: str, query: str, now: float
            ) -> _Hot | None:
        hot = self._pages.get((id(cache), host, path, query))
        return hot if hot is not None and self.valid(hot, now) else None

    def valid(self, hot: _Hot, now: float) -> bool:
        """True while *hot* is still the fresh page on disk."""
        if now >= hot.expires or hot.stamp != hot.cache.change_stamp():
            return False
        if now - hot.checked >= self.RECHECK:
            try:
                st = os.stat(hot.file)
            except OSError:
                return False
            if (st.st_ino, st.st_size, st.st_mtime_ns) != hot.ident:
                return False
            hot.checked = now
        return True

    def read(self, cache: PageCache, host: str, path: str, query: str, now: float
             ) -> tuple[Any, _Hot | None]:
        """:meth:`PageCache.get`, and the page as kept in memory for the next hits when it
        is fresh and could be kept."""
        stamp = cache.change_stamp()
        page = cache.get(host, path, query)
        if (stamp is None or page is None or page.stale or page.ident is None
                or len(page.body) > self.MAX_BODY):
            return page, None
        file = os.path.join(cache.root, layout.CURRENT, page_key(host, path, query), layout.BODY)
        if len(self._pages) >= self.MAX_PAGES:
            self._pages.clear()
        hot = self._pages[(id(cache), host, path, query)] = _Hot(cache, file, stamp, page, now)
        return page, hot


class _Hot:
    """A page in memory with what every 200 hit sends precomputed (see ``_send_hot``)."""

    __slots__ = ("body", "cache", "checked", "created", "expires", "file", "headers", "ident",
                 "page", "stamp", "status")

    def __init__(self, cache: PageCache, file: str, stamp: bytes, page: Any,
                 now: float) -> None:
        self.cache = cache
        self.file = file
        self.stamp = stamp
        self.ident: tuple[int, int, int] = page.ident
        self.checked = now
        self.page = page
        self.body: bytes = page.body
        self.created: float = page.created
        self.expires: float = page.created + page.ttl
        # stored without Content-Length (see _stored_headers)
        self.headers: list[tuple[str, str]] = [
            *page.headers, ("Content-Length", str(len(self.body)))]
        self.status = _status_line(page.status)


def _status_line(status: int) -> str:
    return "200 OK" if status == 200 else str(status)


def _default_cache(site: Site) -> PageCache:
    return PageCache(site.pages_dir, ttl=site.cache.ttl, stale_seconds=site.cache.stale_seconds,
                     max_bytes=site.cache.max_bytes)


class TokenCookie:
    """Signs and checks the read-your-writes cookie."""

    def __init__(self, secret_key: str | bytes, *, max_age: float = 5.0,
                 name: str = RYW_COOKIE) -> None:
        self.serializer = URLSafeTimedSerializer(secret_key, salt="tenantkit-read-your-writes")
        self.max_age = max(1, round(max_age))
        self.name = name

    def header(self, token: str, *, secure: bool = False) -> str:
        value = self.serializer.dumps(token)
        flags = "; Secure" if secure else ""
        return (f"{self.name}={value}; Max-Age={self.max_age}; Path=/; HttpOnly; "
                f"SameSite=Lax{flags}")

    def read(self, cookie_header: str) -> str | None:
        """The token in a fresh, correctly signed cookie, else None (never raises)."""
        if self.name not in cookie_header:
            return None
        try:
            morsel = SimpleCookie(cookie_header).get(self.name)
        except CookieError:
            # http.cookies gives up on the whole header for one bad cookie; find ours by hand.
            morsel = None
            for part in cookie_header.split(";"):
                key, _, value = part.strip().partition("=")
                if key == self.name:
                    return self._loads(value)
        if morsel is None:
            return None
        return self._loads(morsel.value)

    def _loads(self, value: str) -> str | None:
        try:
            token = self.serializer.loads(value, max_age=self.max_age)
        except (BadData, UnicodeError, ValueError):
            return None
        if not isinstance(token, str) or len(token) > 4096:
            return None
        try:
            ConsistencyToken.loads(token)
        except TenantkitError:
            return None  # signed by us but not a token: a key shared with something else
        return token


def _has_bypass_cookie(cookie_header: str, prefixes: Iterable[str]) -> bool:
    if not cookie_header:
        return False
    names = [part.split("=", 1)[0].strip() for part in cookie_header.split(";")]
    return any(name.startswith(prefix) for prefix in prefixes for name in names if name)


def _parse_tags(value: str) -> tuple[str, ...]:
    return tuple(t for t in value.replace(",", " ").split() if t)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    weak = etag[2:] if etag.startswith("W/") else etag
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        candidate = candidate[2:] if candidate.startswith("W/") else candidate
        if candidate == weak:
            return True
    return False


def _not_modified(environ: WSGIEnvironment, headers: Mapping[str, str]) -> bool:
    etag = headers.get("etag")
    inm = environ.get("HTTP_IF_NONE_MATCH")
    if inm is not None:
        return bool(etag) and _etag_matches(inm, etag or "")
    ims = environ.get("HTTP_IF_MODIFIED_SINCE")
    modified = headers.get("last-modified")
    if ims and modified:
        try:
            return parsedate_to_datetime(modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


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
        self._hot = _HotPages()
        self._lane: dict[tuple[str, str, str, str], tuple[object, str, _Hot]] = {}

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
        hot = self._hot.get(cache, host, path, query, now)
        if hot is None:
            try:
                page, hot = self._hot.read(cache, host, path, query, now)
            except (CacheError, OSError, ValueError) as exc:
                logger.debug("site %s: not caching %r: %s", site.name, path, exc)
                return self._bypass(site, environ, start_response)
            if hot is None and page is not None and not page.stale:
                return self._serve(site, environ, start_response, page, "HIT")
        if hot is not None:
            if self.on_cache is not None:
                self.on_cache(site.name, "HIT")
            if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ:
                return self._serve(site, environ, start_response, hot.page, "HIT",
                                   counted=True)
            lane = environ.get(LANE_KEY)
            if lane is not None:
                self._remember(lane, site.name, hot)
            return _send_hot(hot, method, start_response, now)
        try:
            # With no page at all there is nothing stale to serve: every caller renders, so
            # the fill lock would only cost two file operations.
            ticket = cache.begin_fill(host, path, query, lock=page is not None)
        except (CacheError, OSError) as exc:
            logger.warning("site %s: page cache unusable: %s", site.name, exc)
            return self._bypass(site, environ, start_response)
        if page is not None and not ticket.leader:
            ticket.release()  # someone else regenerates it: serve the stale page meanwhile
            return self._serve(site, environ, start_response, page, "STALE")
        try:
            return self._fill(site, cache, ticket, environ, start_response)
        finally:
            ticket.release()

    # -- the hit lane: repeats of plain GETs that were hits -------------------------------

    def replay(self, key: tuple[str, str, str, str], sites: object,
               environ: WSGIEnvironment, start_response: StartResponse,
               on_response: Callable[[str, int], None] | None = None
               ) -> Iterable[bytes] | None:
        """Answer a plain GET or HEAD (see :func:`plain_request_key`) that was last answered
        from a page still hot, without resolving its site again: *sites* must be the same
        registry snapshot as then. None: nothing to replay, take the long way (with
        ``environ[LANE_KEY] = (key, sites)`` so that a hit is remembered)."""
        route = self._lane.get(key)
        if route is None:
            return None
        snapshot, name, hot = route
        now = time.time()
        if snapshot is not sites or not self._hot.valid(hot, now):
            self._lane.pop(key, None)
            return None
        if on_response is not None:
            on_response(name, 200)
        if self.on_cache is not None:
            self.on_cache(name, "HIT")
        return _send_hot(hot, environ.get("REQUEST_METHOD"), start_response, now)

    def _remember(self, lane: tuple[tuple[str, str, str, str], object], name: str,
                  hot: _Hot) -> None:
        key, sites = lane
        if len(self._lane) >= _HotPages.MAX_PAGES:
            self._lane.clear()
        self._lane[key] = (sites, name, hot)

    def _count(self, site: Site, result: str) -> None:
        if self.on_cache is not None:
            self.on_cache(site.name, result)

    def _serve(self, site: Site, environ: WSGIEnvironment, start_response: StartResponse,
               page: Any, result: str, *, counted: bool = False) -> Iterable[bytes]:
        if self.on_cache is not None and not counted:
            self.on_cache(site.name, result)
        if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ:
            stored = {k.lower(): v for k, v in page.headers}
            if _not_modified(environ, stored):
                headers = [(k, v) for k, v in page.headers
                           if k.lower() in ("etag", "last-modified")]
                headers.append((CACHE_HEADER, result))
                start_response("304 Not Modified", headers)
                return []
        body: bytes = page.body
        headers = list(page.headers)  # stored without Content-Length (see _stored_headers)
        age = max(0, int(time.time() - page.created))
        headers += [("Content-Length", str(len(body))), ("Age", str(age)),
                    (CACHE_HEADER, result)]
        start_response(_status_line(page.status), headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

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
        return _Rest(chunks, iterator, body)

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


def plain_request_key(environ: WSGIEnvironment) -> tuple[str, str, str, str] | None:
    """For a GET or HEAD that nothing but its URL can make personal (no cookie, no
    ``Authorization``, no conditional header), what the hit lane keys it by: the raw
    ``Host`` and ``X-Forwarded-Host`` headers, path and query. None for any other request."""
    method = environ.get("REQUEST_METHOD")
    host = environ.get("HTTP_HOST")
    if ((method != "GET" and method != "HEAD") or not host or environ.get("HTTP_COOKIE")
            or "HTTP_AUTHORIZATION" in environ or "HTTP_IF_NONE_MATCH" in environ
            or "HTTP_IF_MODIFIED_SINCE" in environ):
        return None
    return (host, environ.get("HTTP_X_FORWARDED_HOST", ""), environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""))


def _send_hot(hot: _Hot, method: Any, start_response: StartResponse,
              now: float) -> Iterable[bytes]:
    """``_serve``'s 200 answer, from what _Hot holds ready."""
    start_response(hot.status, [*hot.headers, ("Age", str(max(0, int(now - hot.created)))),
                                _HIT])
    return [] if method == "HEAD" else [hot.body]


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


class _Rest:
    """The part of a response body not yet consumed, then its original close()."""

    __slots__ = ("body", "chunks", "iterator")

    def __init__(self, chunks: list[bytes], iterator: Iterator[bytes],
                 body: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.iterator = iterator
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        yield from self.iterator

    def close(self) -> None:
        _close(self.body)
