"""send_page: the one answer every cache hit gets (status, headers, Age, 304, HEAD)."""

from __future__ import annotations

from typing import Any

import pytest

from tenantkit.cache.pagecache import CachedPage
from tenantkit.web.hits import StoredResponse, send_page

ETAG = '"abc"'
MODIFIED = "Wed, 01 May 2024 10:00:00 GMT"


def _page(headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/html"),
                                                  ("ETag", ETAG), ("Last-Modified", MODIFIED)),
          *, stale: bool = False) -> CachedPage:
    return CachedPage(b"<p>hi</p>", 200, headers, ("home",), 1000.0, 300, 0.0, stale)


def _send(page: CachedPage, now: float = 1042.9, **environ: str) -> tuple[str, Any, bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, headers

    body = b"".join(send_page(StoredResponse(page), {"REQUEST_METHOD": "GET", **environ},
                              start_response, "HIT", now))
    return seen["status"], dict(seen["headers"]), body


def test_a_hit_carries_length_age_and_the_cache_header() -> None:
    status, headers, body = _send(_page())
    assert status == "200 OK" and body == b"<p>hi</p>"
    assert headers["Content-Length"] == "9" and headers["Age"] == "42"
    assert headers["X-Tenantkit-Cache"] == "HIT" and headers["ETag"] == ETAG


def test_head_gets_the_headers_without_the_body() -> None:
    status, headers, body = _send(_page(), REQUEST_METHOD="HEAD")
    assert status == "200 OK" and body == b"" and headers["Content-Length"] == "9"


@pytest.mark.parametrize("request_headers, expected", [
    pytest.param({"HTTP_IF_NONE_MATCH": ETAG}, "304", id="etag matches"),
    pytest.param({"HTTP_IF_NONE_MATCH": 'W/"abc"'}, "304", id="weak etag matches"),
    pytest.param({"HTTP_IF_NONE_MATCH": '"x", "abc"'}, "304", id="one of a list"),
    pytest.param({"HTTP_IF_NONE_MATCH": "*"}, "304", id="star"),
    pytest.param({"HTTP_IF_NONE_MATCH": '"other"'}, "200", id="other etag"),
    pytest.param({"HTTP_IF_NONE_MATCH": '"other"', "HTTP_IF_MODIFIED_SINCE": MODIFIED}, "200",
                 id="If-None-Match decides alone"),
    pytest.param({"HTTP_IF_NONE_MATCH": ""}, "200", id="empty If-None-Match"),
    pytest.param({"HTTP_IF_MODIFIED_SINCE": MODIFIED}, "304", id="not modified since"),
    pytest.param({"HTTP_IF_MODIFIED_SINCE": "Tue, 30 Apr 2024 10:00:00 GMT"}, "200",
                 id="modified since"),
    pytest.param({"HTTP_IF_MODIFIED_SINCE": "garbage"}, "200", id="garbled date"),
    pytest.param({"HTTP_IF_MATCH": '"other"'}, "200", id="If-Match is not looked at"),
])
def test_conditional_requests(request_headers: dict[str, str], expected: str) -> None:
    status, headers, body = _send(_page(), **request_headers)
    assert status.split()[0] == expected
    if expected == "304":
        assert body == b"" and headers == {"ETag": ETAG, "Last-Modified": MODIFIED,
                                           "Age": headers["Age"], "X-Tenantkit-Cache": "HIT"}


def test_a_page_without_validators_is_never_not_modified() -> None:
    status, _, _ = _send(_page((("Content-Type", "text/html"),)), HTTP_IF_NONE_MATCH="*",
                         HTTP_IF_MODIFIED_SINCE=MODIFIED)
    assert status == "200 OK"
