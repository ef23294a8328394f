"""A stored page as a WSGI response: the one place every cache hit is answered.

::

    stored = StoredResponse(cache.get(host, path, query))    # a CachedPage
    return send_page(stored, environ, start_response, "HIT", time.time())

The answer carries the stored status and headers, ``Content-Length``, ``Age`` and
``X-Tenantkit-Cache``; a conditional GET or HEAD whose ``If-None-Match`` (or, without one,
``If-Modified-Since``) matches gets ``304 Not Modified`` with the page's validators; a HEAD
gets no body. :class:`StoredResponse` computes what does not change between hits once, so a
page kept in memory (:mod:`tenantkit.web.hotpages`) costs one ``start_response`` per hit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.sansio.http import is_resource_modified

from tenantkit.cache.pagecache import CachedPage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
else:
    StartResponse = WSGIEnvironment = Any

__all__ = ["CACHE_HEADER", "StoredResponse", "not_modified", "send_page"]

#: Says what the page cache did: HIT, STALE, MISS or BYPASS.
CACHE_HEADER = "X-Tenantkit-Cache"
_VALIDATORS = ("etag", "last-modified")


class StoredResponse:
    """What every answer from one stored page shares."""

    __slots__ = ("body", "created", "etag", "headers", "last_modified", "stale", "status",
                 "validators")

    def __init__(self, page: CachedPage) -> None:
        self.body = page.body
        self.created = page.created
        self.stale = page.stale
        self.status = "200 OK" if page.status == 200 else str(page.status)
        # stored without Content-Length (see PageCacheMiddleware._stored_headers)
        self.headers = [*page.headers, ("Content-Length", str(len(page.body)))]
        self.validators = [(k, v) for k, v in page.headers if k.lower() in _VALIDATORS]
        last = {k.lower(): v for k, v in self.validators}
        self.etag = last.get("etag")
        self.last_modified = last.get("last-modified")


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
    if (("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ)
            and not_modified(environ, page.etag, page.last_modified)):
        start_response("304 Not Modified", [*page.validators, (CACHE_HEADER, result)])
        return []
    start_response(page.status, [*page.headers, ("Age", str(max(0, int(now - page.created)))),
                                 (CACHE_HEADER, result)])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [page.body]
