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

A page is keyed by the host and exactly the request target the backend rendered
(:func:`tenantkit.web.target.request_target`: raw, ``%2F`` is not ``/``), with the site's
``[cache] ignore_query_args`` (``utm_*``, ``fbclid``, ``gclid``, ...) left out of the key --
they are still forwarded.

Only 200 responses to GET are stored, and only when nothing in them is personal or
short-lived: no ``Set-Cookie``; no ``Cache-Control: private``, ``no-store``, ``no-cache`` or
a zero lifetime (``s-maxage``, else ``max-age``, is the page's lifetime when given, else the
site's ``ttl``); ``Vary`` on nothing but ``Accept-Encoding``; nothing the backend said,
by the end of the body, must not be (``environ[NOT_STORABLE]``: an HTML page that ends at
the close without its ``</html>``); no
``Content-Encoding`` but ``gzip``, which is decoded once on store (a hit is gzipped again
for a client that accepts it, see :mod:`tenantkit.web.hits`). Every end-to-end header is
stored with the page (all but hop-by-hop and per-response ones: ``Date``, ``Age``,
``Server``, ``Content-Length``).
Tags come from the ``X-Tenantkit-Tags`` response header (comma- or space-separated), which
never reaches the client. Stored pages get an ``ETag`` -- the app's when it is strong and
names the body as stored, else a hash of the stored body (:func:`content_etag`), so that a
re-render of the same bytes keeps its ETag and a browser revalidating it gets 304 -- and a
``Last-Modified``; conditional GETs on hits answer 304. The visitor of a miss gets the
hits' validators: the hashed ETag only when the whole body was in hand before the status
line went out (a list, or an upstream page of up to 64 KiB: most pages).

A miss costs the visitor little more than the backend itself: the body is passed on chunk
by chunk as the backend gives it; a page up to :data:`STORE_BUFFER` is kept until the
visitor has its last byte, a larger one is written to the page's file chunk by chunk once
the visitor has each; and once the last chunk went out -- only when the body was read to
its end (a body the upstream cut short is never stored) -- a background thread writes the
rest and renames the file into place, while the server goes on to the visitor's next
request. Nothing of a larger page is held in memory, and nothing is stored past
:data:`MAX_STORE_BYTES`.

Read-your-writes: after a request whose backend wrote (the router's consistency token is
found in ``environ["tenantkit.write_token"]`` or the ``X-Tenantkit-Token`` response header),
the token goes into a signed (itsdangerous), HttpOnly, SameSite=Lax cookie. For as long as it
is fresh, that browser's requests skip the page cache and carry the token in
``environ["tenantkit.consistency_token"]`` for the app's router
(``router.with_token(...)``). A forged, garbled or old cookie is ignored.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.nodecounters import STALE_SERVED
from tenantkit.cache.pagecache import FillTicket, PageCache, PageWriter
from tenantkit.errors import CacheError
from tenantkit.sites import Site
from tenantkit.web.backends import DEADLINE, HOP_BY_HOP, NOT_STORABLE, end_to_end
from tenantkit.web.background import BackgroundRenders
from tenantkit.web.cookies import has_bypass_cookie
from tenantkit.web.hits import CACHE_HEADER, StoredResponse, send_page
from tenantkit.web.hostlinks import HostLinks
from tenantkit.web.hotpages import LANE_KEY, HotPages, plain_request_key
from tenantkit.web.rwcookie import TOKEN_HEADER, TOKEN_IN, TOKEN_OUT, TokenCookie
from tenantkit.web.target import cache_query, request_target

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
#: A page's first bytes, up to this, are kept in memory until the visitor has the whole page
#: (the file is written then, off the visitor's time); a larger page's file is opened when
#: its body passes this, and written chunk by chunk. As much as the proxy reads at first.
STORE_BUFFER = 64 * 1024
#: Commits of stored pages waiting, per process; past this a miss commits its page itself.
COMMITS_QUEUED = 64
#: Headers a stored page does not keep: hop-by-hop (RFC 9110 section 7.6.1), per-response,
#: recomputed on every hit, or ours. Every other header the app sent is kept.
_DROP = HOP_BY_HOP | {
    "content-length", "content-encoding", "date", "age", "server", "set-cookie",
    CACHE_HEADER.lower(), TAGS_HEADER, TOKEN_HEADER,
}
#: Content codings a page may be stored with: decoded on store.
_DECODABLE = frozenset({"gzip", "x-gzip"})


def cache_control(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The response's Cache-Control directives, lowercased names to values ("" for none)."""
    directives: dict[str, str] = {}
    for key, value in headers:
        if key.lower() == "cache-control":
            for item in value.split(","):
                name, _, arg = item.strip().partition("=")
                if name:
                    directives.setdefault(name.strip().lower(), arg.strip().strip('"'))
    return directives


def lifetime(headers: Iterable[tuple[str, str]], default: int) -> int:
    """How long a shared cache may keep this response (RFC 9111 section 4.2.1): ``s-maxage``,
    else ``max-age``, else *default*; 0 for ``no-store``, ``no-cache`` or ``private``."""
    directives = cache_control(headers)
    if directives.keys() & {"no-store", "no-cache", "private"}:
        return 0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            value = directives[name]
            return int(value) if value.isascii() and value.isdigit() else 0
    return default


def content_etag(body: Any) -> str:
    """The strong ETag of a stored page made from its body: the chunks of the body, or a
    hashlib hash fed with them (see :class:`_Store`)::

        content_etag([b"<html>", b"...</html>"]) == content_etag([b"<html>...</html>"])
    """
    digest = body
    if not hasattr(body, "hexdigest"):
        digest = _body_hash()
        for chunk in body:
            digest.update(chunk)
    return f'"{digest.hexdigest()}"'


def _body_hash() -> Any:
    return hashlib.blake2b(digest_size=16)


def _strong(etag: str | None) -> bool:
    """True for a strong entity tag (``"abc"``), False for a weak one or none."""
    return etag is not None and etag.startswith('"') and etag.endswith('"') and len(etag) > 1


def _parse_tags(value: str) -> tuple[str, ...]:
    return tuple(t for t in value.replace(",", " ").split() if t)


#: A page of one PageCache: (id of the cache, host, path, query).
_PageId = tuple[int, str, str, str]

#: Seconds a background render may take, whole, at most (the proxy cuts it off then).
BACKGROUND_SECONDS = 60.0


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
                 on_cache: Callable[[str, str], None] | None = None,
                 renders: BackgroundRenders | None = None,
                 commits: BackgroundRenders | None = None) -> None:
        self.app = app
        #: Where the caller that wins a stale page's fill lock hands its render.
        self.renders = renders if renders is not None else BackgroundRenders()
        #: Where a miss hands the commit of its page once the visitor has the last byte.
        self.commits = commits if commits is not None else BackgroundRenders(
            threads=1, max_queued=COMMITS_QUEUED, name="commit")
        self.caches = caches or SiteCaches()
        self.cookie = TokenCookie(secret_key, max_age=token_max_age) if secret_key else None
        self.host_links = host_links
        self.on_cache = on_cache
        self._hot = HotPages()
        #: The stale pages this process renders in the background now (it holds their fill
        #: locks): their other callers are served the stale copy without trying the lock.
        self._rendering: set[_PageId] = set()

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
        path, query = request_target(environ)
        query = cache_query(query, site.cache.ignore_query_args)
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
        page = (id(cache), host, path, query)
        if stored is not None and page in self._rendering:
            # This process renders it already (its fill lock is ours): no lock to try.
            return self._send_stale(site, cache, stored, environ, start_response)
        try:
            # With no copy at all (a first visit, or none within stale_seconds) every caller
            # renders: waiting for another's render would hold a worker thread for as long,
            # and pages that are never stored (cookies, no-store) would queue one by one.
            # With a copy, the fill lock (a file: one holder across the node's processes)
            # picks the one caller that renders; every other is served the copy at once.
            ticket = cache.begin_fill(host, path, query, lock=stored is not None)
        except (CacheError, OSError) as exc:
            logger.warning("site %s: page cache unusable: %s", site.name, exc)
            return self._bypass(site, environ, start_response)
        if stored is not None:
            if not ticket.leader:
                ticket.release()  # someone else regenerates it: serve the stale page meanwhile
                return self._send_stale(site, cache, stored, environ, start_response)
            fresh = self._stored_since(cache, host, path, query)
            if fresh is not None:  # the previous holder stored it after we read the copy
                ticket.release()
                self._count(site, "HIT")
                return send_page(fresh, environ, start_response, "HIT", time.time())
            if self._render_in_background(site, cache, ticket, query, environ, page):
                return self._send_stale(site, cache, stored, environ, start_response)
        try:
            response = self._fill(site, cache, ticket, query, environ, start_response)
        except BaseException:
            ticket.release()
            raise
        if not isinstance(response, _StoringBody):  # a store holds the fill lock till done
            ticket.release()
        return response

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

    def _render_in_background(self, site: Site, cache: PageCache, ticket: FillTicket,
                              query: str, environ: WSGIEnvironment, page: _PageId) -> bool:
        """Hand the render of a stale page, whose fill lock this caller holds, to
        :attr:`renders` (the caller serves the stale copy at once): it renders the page as
        this caller's plain GET would, stores it and releases the lock. Until then *page*
        is in :attr:`_rendering`. False when the queue is full, or the caller is itself
        background work (a re-warm fetch, which carries a deadline): the caller renders
        itself."""
        if DEADLINE in environ:
            return False
        plain = dict(environ)
        plain.update({"REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO(b"")})
        for name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            plain.pop(name, None)
        plain.setdefault(DEADLINE, time.monotonic() + BACKGROUND_SECONDS)

        def render() -> None:
            try:
                body = self._fill(site, cache, ticket, query, plain, _discard)
                try:
                    for _ in body:
                        pass
                finally:
                    _close(body)
            except Exception as exc:
                logger.warning("site %s: rendering %s again in the background failed: %s",
                               site.name, ticket.path, exc)
            finally:
                ticket.release()
                self._rendering.discard(page)

        self._rendering.add(page)
        if self.renders.submit(render):
            return True
        self._rendering.discard(page)
        return False

    @staticmethod
    def _stored_since(cache: PageCache, host: str, path: str, query: str
                      ) -> StoredResponse | None:
        """The fresh page of this key if one was stored since it was read, else None."""
        try:
            page = cache.get(host, path, query)
        except (CacheError, OSError, ValueError):
            return None
        return None if page is None or page.stale else StoredResponse(page)

    def _send_stale(self, site: Site, cache: PageCache, stored: StoredResponse,
                    environ: WSGIEnvironment, start_response: StartResponse
                    ) -> Iterable[bytes]:
        self._count(site, "STALE")
        cache.tally(STALE_SERVED)
        return send_page(stored, environ, start_response, "STALE", time.time())

    def _count_render(self, site: Site, environ: WSGIEnvironment) -> None:
        """Count a render as the MISS its visitor got; background work (a render after a
        STALE answer, a re-warm: it carries a :data:`DEADLINE`) has no visitor, and the
        node's render counter counts it (:data:`~tenantkit.cache.nodecounters.RENDERS`)."""
        if DEADLINE not in environ:
            self._count(site, "MISS")

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

    def _fill(self, site: Site, cache: PageCache, ticket: FillTicket, query: str,
              environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        capture = _Capture()
        try:
            body = self.app(environ, capture)
        except Exception as exc:
            served = self._stale_if_error(site, cache, ticket, query, environ, start_response,
                                          f"the backend raised {type(exc).__name__}")
            if served is None:
                self._count_render(site, environ)
                raise
            return served
        if _failed(capture.status):
            served = self._stale_if_error(site, cache, ticket, query, environ, start_response,
                                          f"the backend answered {capture.status[:3]}")
            if served is not None:
                _close(body)
                return served
        self._count_render(site, environ)
        try:
            ttl = self._storable(site, environ, capture)
            out, tags = self._outgoing(environ, capture.headers, "MISS")
            store = None
            if ttl:
                store = self._open_store(site, cache, ticket, query, out, tags, ttl,
                                         whole=_whole(body))
            start_response(capture.status, out, capture.exc_info)
        except BaseException:
            _close(body)
            raise
        if store is None:
            return body
        return _StoringBody(body, store, ticket, self._committer(environ), environ)

    def _committer(self, environ: WSGIEnvironment) -> BackgroundRenders | None:
        """Who commits a page once its visitor has the last byte: :attr:`commits`, so that
        the server can go on to the visitor's next request at once; None (the request's
        own thread, before its body ends) for background work (a render or re-warm, which
        carries a deadline: its page must be stored when it is done, and nobody waits for
        it) and for a server that runs no threads (``wsgi.multithread`` false: a test
        client, a page stored by the time its response was read)."""
        if DEADLINE in environ or not environ.get("wsgi.multithread"):
            return None
        return self.commits

    def _open_store(self, site: Site, cache: PageCache, ticket: FillTicket, query: str,
                    out: list[tuple[str, str]], tags: tuple[str, ...], ttl: int, *,
                    whole: list[bytes] | None = None) -> _Store | None:
        """Start storing the response whose headers are *out* (the visitor's, given the
        validators the hits will have when its body is stored as it is and, for a hashed
        ETag, *whole*, the whole body, is known); None when it cannot be stored."""
        inflater = None
        for key, value in out:
            if key.lower() == "content-encoding" and value.strip().lower() not in (
                    "identity", ""):
                inflater = zlib.decompressobj(wbits=31)  # gzip: _storable let nothing else by
        keep = [(k, v) for k, v in end_to_end(out) if k.lower() not in _DROP]
        names = {k.lower() for k, _ in keep}
        etag = next((v for k, v in keep if k.lower() == "etag"), None)
        # An upstream's ETag that is weak, or names its encoded body, is not the stored
        # page's: that one is made from the stored body (_Store.commit).
        hashed = inflater is not None or not _strong(etag)
        if hashed:
            keep = [(k, v) for k, v in keep if k.lower() != "etag"]
        if "last-modified" not in names:
            keep.append(("Last-Modified", formatdate(time.time(), usegmt=True)))
        if inflater is None:  # the visitor gets the validators the hits will have
            out += [(k, v) for k, v in keep if k.lower() not in names]
            if hashed:
                out[:] = [(k, v) for k, v in out if k.lower() != "etag"]
                if whole is not None:
                    out.append(("ETag", content_etag(whole)))

        def open_writer() -> PageWriter:
            return cache.writer(ticket.host, ticket.path, query=query, status=200,
                                headers=keep, tags=tags, ttl=ttl, ticket=ticket)

        links = self.host_links if not query else None
        return _Store(site, ticket.path, open_writer, inflater, links,
                      _body_hash() if hashed else None)

    def _stale_if_error(self, site: Site, cache: PageCache, ticket: FillTicket, query: str,
                        environ: WSGIEnvironment, start_response: StartResponse,
                        failure: str) -> Iterable[bytes] | None:
        """Serve-stale-on-error: the stored page instead of the backend's failure, when one
        was purged or expired within the site's ``stale_if_error`` (or ``stale_seconds``),
        marked ``STALE``; None when there is none (the failure goes to the visitor)."""
        try:
            stored = cache.get_if_error(ticket.host, ticket.path, query)
        except (CacheError, OSError, ValueError):
            stored = None
        if stored is None:
            return None
        logger.info("site %s: %s for %s: served the stored page (stale_if_error)", site.name,
                    failure, ticket.path)
        return self._send_stale(site, cache, StoredResponse(stored), environ, start_response)

    def _storable(self, site: Site, environ: WSGIEnvironment, capture: _Capture) -> int:
        """How long the response may be stored; 0 when it must not be."""
        if environ.get("REQUEST_METHOD") != "GET" or not capture.status.startswith("200"):
            return 0
        if TOKEN_OUT in environ or NOT_STORABLE in environ:
            return 0
        for key, value in capture.headers:
            lower = key.lower()
            if lower in ("set-cookie", TOKEN_HEADER):
                return 0
            # The key is host and target only: a page that differs by anything but the
            # content coding (decoded on store) must not be shared.
            if lower == "vary" and {v.strip().lower() for v in value.split(",")} - {
                    "accept-encoding", ""}:
                return 0
            if lower == "content-encoding" and value.strip().lower() not in (
                    _DECODABLE | {"identity", ""}):
                return 0
        return lifetime(capture.headers, site.cache.ttl)


def _discard(status: str, headers: list[tuple[str, str]],
             exc_info: Any = None) -> Callable[[bytes], object]:
    """The start_response of a background render: nobody waits for its answer."""
    return _no_write


def _failed(status: str) -> bool:
    """A status that means the backend failed (5xx: error, busy, timed out, unreachable)."""
    return status[:1] == "5"


def _whole(body: Iterable[bytes]) -> list[bytes] | None:
    """The whole body when it is in hand already: a list, or a proxied upstream body read
    to its end before the status line (``whole``, see :mod:`tenantkit.web.backends`)."""
    if type(body) is list:
        return body
    whole: list[bytes] | None = getattr(body, "whole", None)
    return whole


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


class _Store:
    """A response's body on its way into the cache (see :class:`_StoringBody`). Its first
    :data:`STORE_BUFFER` bytes are kept until the visitor has the whole page: a page that
    small is written, file and all, only then (by :meth:`commit`); past that, the page's file
    is opened and every chunk written to it once the visitor has it."""

    __slots__ = ("digest", "host_links", "inflater", "open_writer", "path", "pending", "site",
                 "size", "writer")

    def __init__(self, site: Site, path: str, open_writer: Callable[[], PageWriter],
                 inflater: Any, host_links: HostLinks | None, digest: Any = None) -> None:
        self.site = site
        self.path = path
        #: None once the writer is opened, or the page given up
        self.open_writer: Callable[[], PageWriter] | None = open_writer
        self.writer: PageWriter | None = None
        self.pending: list[bytes] = []
        #: bytes of the (decoded) body so far
        self.size = 0
        self.inflater = inflater
        self.host_links = host_links
        #: Fed with the stored body when the page's ETag is made from it (content_etag).
        self.digest = digest

    def feed(self, chunk: bytes) -> None:
        if self.writer is None and self.open_writer is None:
            return  # given up, or done
        try:
            if self.inflater is not None:
                chunk = self.inflater.decompress(chunk, MAX_STORE_BYTES + 1 - self.size)
                if self.inflater.unconsumed_tail:
                    chunk = b"\0" * (MAX_STORE_BYTES + 1)  # decoded, larger than the cap
            if self.size + len(chunk) > MAX_STORE_BYTES:
                logger.info("site %s: %s not stored: larger than %d bytes", self.site.name,
                            self.path, MAX_STORE_BYTES)
                self.abort()
                return
            self.size += len(chunk)
            if self.digest is not None:
                self.digest.update(chunk)
            if self.writer is not None:
                self.writer.write(chunk)
                return
            self.pending.append(chunk)
            if self.size > STORE_BUFFER:
                self._open()
        except (CacheError, zlib.error) as exc:
            logger.warning("site %s: cannot store %r: %s", self.site.name, self.path, exc)
            self.abort()

    def _open(self) -> PageWriter | None:
        """Open the page's file and write what was kept; None when it cannot be stored."""
        opener, self.open_writer = self.open_writer, None
        pending, self.pending = self.pending, []
        if opener is None:
            return None
        try:
            writer = self.writer = opener()
            writer.write(b"".join(pending))
        except (CacheError, OSError, ValueError) as exc:
            logger.warning("site %s: cannot store %r: %s", self.site.name, self.path, exc)
            self.abort()
            return None
        return writer

    def abort(self) -> None:
        self.open_writer = None
        self.pending = []
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.abort()

    def commit(self) -> None:
        writer = self.writer if self.writer is not None else self._open()
        self.writer = None
        if writer is None:
            return
        try:
            inflater = self.inflater
            if inflater is not None and not inflater.eof:
                writer.abort()  # a gzip stream that never ended: not the page
                return
            if self.digest is not None:
                writer.meta["headers"].append(["ETag", content_etag(self.digest)])
            stored = writer.commit()
        except (CacheError, OSError, ValueError) as exc:
            logger.warning("site %s: cannot store %r: %s", self.site.name, self.path, exc)
            return
        finally:
            writer.abort()
        if stored and self.host_links is not None:
            self.host_links.ensure(self.site.name, writer.meta["host"])


class _StoringBody:
    """The backend's body passed to the visitor chunk by chunk, each chunk fed to the page's
    :class:`_Store` after the visitor has it: nothing of the page but its first
    :data:`STORE_BUFFER` bytes is held in memory. Once the last chunk went out -- only when
    the body was read to its end -- the page is committed (written if it was small, then
    renamed into place) by *commits*, in the background: the server goes on to the
    visitor's next request at once, and a request sent the instant the visitor has the
    whole page may still be a miss. *commits* full, or ``None``: committed before the
    iteration ends. A backend that fails mid-body (an upstream that closes early,
    :class:`~tenantkit.web.backends.UpstreamClosed`), a visitor that goes away, a body over
    :data:`MAX_STORE_BYTES`: nothing is stored. The fill lock (*ticket*) is held until the
    page is committed or given up."""

    __slots__ = ("body", "commits", "environ", "handed", "store", "ticket")

    def __init__(self, body: Iterable[bytes], store: _Store, ticket: FillTicket,
                 commits: BackgroundRenders | None, environ: WSGIEnvironment) -> None:
        self.body = body
        self.store = store
        self.ticket = ticket
        self.commits = commits
        self.environ = environ
        #: the store and the ticket belong to the commit now
        self.handed = False

    def __iter__(self) -> Iterator[bytes]:
        feed = self.store.feed
        for chunk in self.body:
            yield chunk
            feed(chunk)
        # The server asks for more only once the last chunk went out.
        self.handed = True
        if self.commits is None or not self.commits.submit(self._commit):
            self._commit()

    def _commit(self) -> None:
        try:
            if NOT_STORABLE in self.environ:  # the backend said so at the end of the body
                self.store.abort()
            else:
                self.store.commit()
        finally:
            self.ticket.release()

    def close(self) -> None:
        try:
            _close(self.body)  # the backend's slot and connection
        finally:
            if not self.handed:
                try:
                    self.store.abort()
                finally:
                    self.ticket.release()
