"""The request target, ignored query arguments and the stored lifetime (issue 16)."""

from __future__ import annotations

import pytest

from tenantkit.config import DEFAULT_IGNORED_QUERY_ARGS
from tenantkit.web.pagecache import lifetime
from tenantkit.web.target import cache_query, request_target, untrusted_script_name


@pytest.mark.parametrize(("environ", "target"), [
    pytest.param({"RAW_URI": "/a%2Fb/?x=1", "PATH_INFO": "/a/b/"}, ("/a%2Fb/", "x=1"),
                 id="raw, not decoded"),
    pytest.param({"REQUEST_URI": "/p/", "PATH_INFO": "/p/"}, ("/p/", ""), id="werkzeug"),
    pytest.param({"RAW_URI": "http://h/x", "PATH_INFO": "/x", "QUERY_STRING": "q"},
                 ("/x", "q"), id="absolute form: rebuilt"),
    pytest.param({"SCRIPT_NAME": "/s", "PATH_INFO": "/caf\xc3\xa9/"}, ("/s/caf%C3%A9/", ""),
                 id="rebuilt and quoted"),
])
def test_request_target(environ: dict[str, str], target: tuple[str, str]) -> None:
    assert request_target(environ) == target


@pytest.mark.parametrize(("query", "kept"), [
    pytest.param("a=1&utm_source=x&utm_medium=y", "a=1", id="utm prefix"),
    pytest.param("fbclid=1&gclid=2", "", id="only marketing"),
    pytest.param("utm=1&xutm_source=2", "utm=1&xutm_source=2", id="prefix is a prefix"),
    pytest.param("b=2&a=1&fbclid=z", "b=2&a=1", id="order kept"),
    pytest.param("", "", id="empty"),
])
def test_cache_query(query: str, kept: str) -> None:
    assert cache_query(query, DEFAULT_IGNORED_QUERY_ARGS) == kept


def test_a_script_name_header_is_undone() -> None:
    environ = {"HTTP_SCRIPT_NAME": "/evil", "SCRIPT_NAME": "/evil", "PATH_INFO": "/"}
    untrusted_script_name(environ)
    assert environ == {"SCRIPT_NAME": "", "PATH_INFO": "/evil/"}


@pytest.mark.parametrize(("value", "ttl"), [
    pytest.param(None, 300, id="none: the site's ttl"),
    pytest.param("max-age=0", 0, id="max-age=0"),
    pytest.param("public, max-age=60", 60, id="max-age"),
    pytest.param("max-age=0, s-maxage=600", 600, id="s-maxage wins"),
    pytest.param("s-maxage=0, max-age=600", 0, id="s-maxage=0 wins too"),
    pytest.param("no-cache", 0, id="no-cache"),
    pytest.param("private, s-maxage=60", 0, id="private"),
    pytest.param('max-age="30"', 30, id="quoted"),
    pytest.param("max-age=abc", 0, id="garbage: not stored"),
])
def test_lifetime(value: str | None, ttl: int) -> None:
    headers = [] if value is None else [("Cache-Control", value)]
    assert lifetime(headers, 300) == ttl
