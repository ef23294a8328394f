"""TokenCookie: the signed read-your-writes cookie, written and read with werkzeug."""

from __future__ import annotations

import time

import pytest

from tenantkit.db.router import ConsistencyToken
from tenantkit.web.rwcookie import TokenCookie


def test_header_flags() -> None:
    cookie = TokenCookie("k", max_age=5.4)
    header = cookie.header(ConsistencyToken("0-1-5", time.time()).dumps(), secure=True)
    flags = {part.strip().split("=")[0] for part in header.split(";")}
    assert {"tenantkit_rw", "Max-Age", "Path", "HttpOnly", "SameSite", "Secure"} <= flags
    assert "Max-Age=5" in header and "SameSite=Lax" in header and "Path=/" in header
    assert "Secure" not in cookie.header("x")


@pytest.mark.parametrize("around", [
    pytest.param("{}", id="alone"),
    pytest.param("theme=dark; {}; b=2", id="among others"),
    pytest.param('a"b=c; {}', id="after a garbled cookie"),
])
def test_read_finds_the_token(around: str) -> None:
    cookie = TokenCookie("k")
    token = ConsistencyToken("0-1-5", time.time()).dumps()
    assert cookie.read(around.format(cookie.header(token).split(";")[0])) == token


@pytest.mark.parametrize("header", ["", "theme=dark", "tenantkit_rw=", "tenantkit_rw=0-1-5",
                                    'tenantkit_rw="\\x"; a"b=c'])
def test_read_ignores_what_is_not_a_signed_token(header: str) -> None:
    assert TokenCookie("k").read(header) is None
