from __future__ import annotations

import pytest

from tenantkit.config import DEFAULT_BYPASS_COOKIES
from tenantkit.web.cookies import cookie_names, has_bypass_cookie, php_cookie_name


@pytest.mark.parametrize(("written", "php"), [
    # What PHP 8.2 puts in $_COOKIE (checked against php -S in tests/e2e/test_php_cookies.py).
    pytest.param("comment.author.h", "comment_author_h", id="dots"),
    pytest.param("comment author h", "comment_author_h", id="spaces"),
    pytest.param(" \twp-postpass.h", "wp-postpass_h", id="leading white space"),
    pytest.param("comment[author_h", "comment_author_h", id="unbalanced bracket"),
    pytest.param("a[b.c", "a_b_c", id="after an unbalanced bracket"),
    pytest.param("comment_author_h[x]", "comment_author_h", id="array"),
    pytest.param("a[b]c.d", "a", id="array then text"),
    pytest.param("comment%2Eauthor_h", "comment%2Eauthor_h", id="not url-decoded"),
    pytest.param("a.b]", "a_b]", id="closing bracket"),
    pytest.param("[x]", None, id="empty array name"),
    pytest.param("   ", None, id="blank"),
])
def test_php_cookie_name(written: str, php: str | None) -> None:
    assert php_cookie_name(written) == php


def test_cookie_names_split_as_php_and_as_werkzeug() -> None:
    names = cookie_names('x="q; comment.author.h=2; y="; theme=dark')
    assert {"x", "comment_author_h", "comment.author.h", "theme"} <= names


@pytest.mark.parametrize(("header", "bypass"), [
    pytest.param("theme=dark; comment.author.5f3=Eve", True, id="php spelling"),
    pytest.param("wordpress_logged_in_1=me", True, id="plain"),
    pytest.param("a=1,comment_author_x=2", False, id="comma is no separator"),
    pytest.param("theme=dark; comment_authorx=1", False, id="another name"),
    pytest.param("", False, id="no cookies"),
])
def test_has_bypass_cookie(header: str, bypass: bool) -> None:
    assert has_bypass_cookie(header, DEFAULT_BYPASS_COOKIES) is bypass
