"""keys: page keys, index names and the host check, without a cache on disk."""

from __future__ import annotations

import pytest

from tenantkit.cache.keys import check_host, page_key, safe_host, tag_name, url_name
from tenantkit.errors import CacheError

H = "blog.example.org"


@pytest.mark.parametrize("path, query, expected", [
    pytest.param("/", "", H, id="root"),
    pytest.param("/a/b/", "", f"{H}/a/b", id="nginx path"),
    pytest.param("/a/b", "", None, id="no trailing slash"),
    pytest.param("/a/.git/", "", None, id="dot segment"),
    pytest.param("/a/", "x=1", None, id="query"),
])
def test_page_key_shapes(path: str, query: str, expected: str | None) -> None:
    key = page_key(H, path, query)
    if expected is not None:
        assert key == expected
    else:
        assert key.startswith(f".q/{H}/") and len(key.rsplit("/", 1)[1]) == 64


def test_names_are_distinct_and_safe() -> None:
    assert tag_name("post:42") == "t-post:42"
    assert tag_name("../x").startswith("h-") and "/" not in tag_name("../x")
    assert url_name(H, "/a/") != url_name(H, "/b/")
    with pytest.raises(CacheError):
        tag_name("")


def test_host_check() -> None:
    assert check_host("Blog.Example.org.") == H
    assert safe_host(H) and not safe_host(".q") and not safe_host("a/b")
    with pytest.raises(CacheError):
        check_host("bad host")
