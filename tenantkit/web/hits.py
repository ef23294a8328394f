"""A stored page as a WSGI response: the one place every cache hit is answered.

::

    stored = StoredResponse(cache.get(host, path, query))    # a CachedPage
    return send_page(stored, environ, start_response, "HIT", time.time())

The answer carries the stored status and every stored header, ``Content-Length``, ``Age``
and ``X-Tenantkit-Cache``; a conditional GET or HEAD whose ``If-None-Match`` (or, without
one, ``If-Modified-Since``) matches gets ``304 Not Modified`` with the headers RFC 9110
section 15.4.5 asks for (validators, ``Cache-Control``, ``Expires``, ``Vary``,
``Content-Location``); a HEAD gets no body. Pages are stored decoded; a page that says
``Vary: Accept-Encoding`` is sent gzipped (compressed once, with its own ETag) to a client
that accepts gzip. :class:`StoredResponse` computes what does not change between hits once, so a
page kept in memory (:mod:`tenantkit.web.hotpages`) costs one ``start_response`` per hit.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.sansio.http import is_resource_modified

from tenantkit.cache.pagecache import CachedPage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
else:
    StartResponse = WSGIEnvironment = Any

__all__ = ["CACHE_HEADER", "StoredResponse", "accepts_gzip", "not_modified", "send_page"]

#: Says what the page cache did: HIT, STALE, MISS or BYPASS.
CACHE_HEADER = "X-Tenantkit-Cache"
_VALIDATORS = ("etag", "last-modified")
#: What a 304 repeats of the 200 it stands for (RFC 9110 section 15.4.5).
_NOT_MODIFIED = frozenset({"etag", "last-modified", "cache-control", "expires", "vary",
                           "content-location"})


def accepts_gzip(value: str) -> bool:
    """True when an ``Accept-Encoding`` value accepts gzip (by name or ``*``, q > 0)."""
    for item in value.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class StoredResponse:
    """What every answer from one stored page shares."""

    __slots__ = ("_gzipped", "body", "created", "etag", "headers", "last_modified",
                 "not_modified_headers", "stale", "status", "validators", "varies")

    def __init__(self, page: CachedPage) -> None:
        self.body = page.body
        self.created = page.created
        self.stale = page.stale
        self.status = "200 OK" if page.status == 200 else str(page.status)
        # stored without Content-Length (see PageCacheMiddleware._stored_headers)
        self.headers = [*page.headers, ("Content-Length", str(len(page.body)))]
        self.validators = [(k, v) for k, v in page.headers if k.lower() in _VALIDATORS]
        self.not_modified_headers = [(k, v) for k, v in page.headers
                                     if k.lower() in _NOT_MODIFIED]
        last = {k.lower(): v for k, v in self.validators}
        self.etag = last.get("etag")
        self.last_modified = last.get("last-modified")
        self.varies = any(k.lower() == "vary" and "accept-encoding" in v.lower()
                          for k, v in page.headers)
        self._gzipped: tuple[bytes, list[tuple[str, str]], list[tuple[str, str]],
                             str | None] | None = None

    def gzipped(self) -> tuple[bytes, list[tuple[str, str]], list[tuple[str, str]],
                               str | None]:
        """(body, headers, 304 headers, etag) of the gzip form, made on first use."""
        if self._gzipped is None:
            body = gzip.compress(self.body, compresslevel=6, mtime=0)
            etag = None if self.etag is None else _variant_etag(self.etag)

            def swap(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
                return [(k, etag if k.lower() == "etag" and etag is not None else v)
                        for k, v in headers if k.lower() != "content-length"]

            headers = [*swap(self.headers), ("Content-Encoding", "gzip"),
                       ("Content-Length", str(len(body)))]
            self._gzipped = (body, headers, swap(self.not_modified_headers), etag)
        return self._gzipped


def _variant_etag(etag: str) -> str:
    """The ETag of a page's gzip form: its own, as Apache's mod_deflate makes it."""
    if etag.endswith('"'):
        return etag[:-1] + '-gzip"'
    return etag + "-gzip"


def not_modified(environ: WSGIEnvironment, etag: str | None,
                 last_modified: str | None) -> bool:
    """True when the request's validators match: If-None-Match (weak comparison) when the
    request has one, else If-Modified-Since. If-Match and If-Range are not looked at."""
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    return not is_resource_modified(
        http_if_none_match=if_none_match,
        http_if_modified_since=(environ.get("HTTP_IF_MODIFIED_SINCE")
                                if if_none_match is None else None),
        etag=etag, last_modified=last_modified)


def send_page(page: StoredResponse, environ: WSGIEnvironment, start_response: StartResponse,
              result: str, now: float) -> Iterable[bytes]:
    """Answer the request with *page*; *result* goes into ``X-Tenantkit-Cache``."""
    body, headers, unchanged, etag = page.body, page.headers, page.not_modified_headers, \
        page.etag
    if page.varies and accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
        body, headers, unchanged, etag = page.gzipped()
    age = ("Age", str(max(0, int(now - page.created))))
    if (("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ)
            and not_modified(environ, etag, page.last_modified)):
        start_response("304 Not Modified", [*unchanged, age, (CACHE_HEADER, result)])
        return []
    start_response(page.status, [*headers, age, (CACHE_HEADER, result)])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
