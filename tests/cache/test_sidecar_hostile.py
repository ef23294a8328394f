"""A page's sidecar -- the extended attribute ``user.tenantkit.meta`` on its body, or the
``.meta.json`` file beside it -- is input like any other: corrupt, hostile or odd ones are a
miss (logged once), never an exception or a page served with the wrong headers. And a file
system without user extended attributes still caches."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tenantkit.cache import pagefile
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.pagefile import META, NGINX_TYPE, XATTR

H = "blog.example.org"


@pytest.fixture
def cache(tmp_path: Path) -> PageCache:
    return PageCache(tmp_path / "pages", ttl=100, stale_seconds=10)


def _edit(field: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    def edit(meta: dict[str, Any]) -> bytes:
        meta[field] = value
        return json.dumps(meta).encode()
    return edit


def _raw(data: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda meta: data


HOSTILE: list[Any] = [
    pytest.param(_raw(b"{not json"), id="bad json"),
    pytest.param(_raw(b""), id="empty"),
    pytest.param(_raw(b"[" * 1500 + b"]" * 1500), id="deeply nested"),
    pytest.param(_raw(b"\xff\xfe{}"), id="not utf-8"),
    pytest.param(_raw(b"[1, 2, 3]"), id="a list"),
    pytest.param(_raw(b"null"), id="null"),
    pytest.param(_edit("ttl", 1e400), id="infinite ttl"),
    pytest.param(_edit("ttl", "100"), id="ttl as string"),
    pytest.param(_edit("created", "nan"), id="nan created"),
    pytest.param(_edit("status", True), id="bool status"),
    pytest.param(_edit("status", 99999), id="status out of range"),
    pytest.param(_edit("headers", {"Content-Type": "text/html"}), id="headers as a dict"),
    pytest.param(_edit("headers", ["ab"]), id="header as a string"),
    pytest.param(_edit("headers", [["X-A", {"b": 1}]]), id="header value an object"),
    pytest.param(_edit("headers", [["X-A", "1\r\nSet-Cookie: x=1"]]), id="header injection"),
    pytest.param(_edit("headers", [["X-\ud800", "1"]]), id="lone surrogate"),
    pytest.param(_edit("headers", [["X A", "1"]]), id="header name with a space"),
    pytest.param(_edit("tags", "post:1"), id="tags as a string"),
    pytest.param(_edit("tags", [["post:1"]]), id="tag not a string"),
    pytest.param(_edit("ident", [1, 2]), id="short ident"),
]


@pytest.mark.parametrize("edit", HOSTILE)
@pytest.mark.parametrize("attached", [True, False], ids=["attribute", "file"])
def test_a_hostile_sidecar_is_a_miss_logged_once(
        cache: PageCache, edit: Callable[[dict[str, Any]], bytes], attached: bool,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if not attached:
        monkeypatch.setattr(pagefile, "_attach", lambda fd, data: False)
    cache.put(H, "/p/", b"page", headers=[("Content-Type", NGINX_TYPE)], tags=["post:1"])
    directory = cache.root / "current" / H / "p"
    body = directory / "index.html"
    if attached:
        meta = json.loads(os.getxattr(body, XATTR))
        os.setxattr(body, XATTR, edit(meta))
    else:
        meta = json.loads((directory / META).read_bytes())
        (directory / META).write_bytes(edit(meta))
    caplog.set_level(logging.WARNING, logger="tenantkit.cache.pagefile")
    for _ in range(3):
        assert cache.get(H, "/p/") is None
        assert cache.get_if_error(H, "/p/") is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "sidecar" in warnings[0].getMessage() and str(directory) in warnings[0].getMessage()
    # A purge of the broken page does not raise, and the next put repairs it.
    cache.purge_paths(H, ["/p/"])
    cache.put(H, "/p/", b"again", headers=[("Content-Type", NGINX_TYPE)])
    page = cache.get(H, "/p/")
    assert page is not None and page.body == b"again" and not page.stale


def test_a_huge_sidecar_file_is_not_read_whole(cache: PageCache, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pagefile, "_attach", lambda fd, data: False)
    cache.put(H, "/h/", b"page", headers=[("Content-Type", NGINX_TYPE)])
    sidecar = cache.root / "current" / H / "h" / META
    with sidecar.open("r+b") as f:
        f.truncate(pagefile.MAX_SIDECAR_BYTES + 1)  # sparse: costs no disk
    caplog.set_level(logging.WARNING, logger="tenantkit.cache.pagefile")
    assert cache.get(H, "/h/") is None
    assert any("larger than" in r.getMessage() for r in caplog.records)


def _no_user_xattrs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without user extended attributes (tmpfs before 6.6, some NFS): both
    calls fail with ENOTSUP -- a fault this machine's ext4 cannot be made to give."""
    def refuse(*args: object, **kwargs: object) -> Any:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
    monkeypatch.setattr(os, "setxattr", refuse)
    monkeypatch.setattr(os, "getxattr", refuse)


def test_without_user_xattrs_pages_round_trip_purge_and_flush(
        cache: PageCache, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _no_user_xattrs(monkeypatch)
    caplog.set_level(logging.WARNING)
    cache.put(H, "/a/", b"a", headers=[("Content-Type", NGINX_TYPE)], tags=["post:1"])
    directory = cache.root / "current" / H / "a"
    assert (directory / META).is_file()
    page = cache.get(H, "/a/")
    assert page is not None and page.body == b"a" and page.tags == ("post:1",)
    assert cache.purge_tags(["post:1"]) == 1
    stale = cache.get(H, "/a/")
    assert stale is not None and stale.stale and stale.body == b"a"
    cache.put(H, "/a/", b"a2", headers=[("Content-Type", NGINX_TYPE)])
    again = cache.get(H, "/a/")
    assert again is not None and again.body == b"a2" and not again.stale
    cache.flush()
    flushed = cache.get(H, "/a/")
    assert flushed is None or flushed.stale
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
