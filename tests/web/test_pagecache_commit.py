"""Issue 17 section 2: a miss's page is committed off the visitor's time.

A threaded server (``wsgi.multithread``, as gunicorn's gthread workers) reads a connection's
next request only once the previous response's body has ended; the commit of the page
(write, rename, index) must not be in that time. The guarantees stay: a page is stored
shortly after, a render a purge overtook is never stored fresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from tk_web import Sites
from werkzeug.test import Client

from tenantkit.cache.pagecache import PageWriter

MakeClient = Callable[..., tuple[Flask, Client]]
#: What a threaded server puts in environ.
THREADED = {"wsgi.multithread": True}
LIMIT = 10.0


def _get(client: Client, path: str) -> Any:
    return client.get(path, headers={"Host": "blog.test"}, environ_overrides=THREADED)


def _until_hit(client: Client, path: str) -> None:
    deadline = time.monotonic() + LIMIT
    while _get(client, path).headers["X-Tenantkit-Cache"] != "HIT":
        assert time.monotonic() < deadline, f"{path} never stored"
        time.sleep(0.01)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(started, release): every page commit signals *started*, then waits for *release*
    (at most LIMIT seconds) before it does its work: a slow disk."""
    started, release = threading.Event(), threading.Event()
    commit = PageWriter.commit

    def slow_commit(self: PageWriter) -> bool:
        started.set()
        release.wait(LIMIT)
        return commit(self)

    monkeypatch.setattr(PageWriter, "commit", slow_commit)
    return started, release


def test_the_next_request_is_answered_before_the_previous_page_is_committed(
        sites: Sites, make_client: MakeClient,
        held: tuple[threading.Event, threading.Event]) -> None:
    started, release = held
    sites.add("blog", ["blog.test"])
    app, client = make_client()
    try:
        begun = time.monotonic()
        first = _get(client, "/a/")
        # Before, the body ended only once the page was committed: here, after LIMIT s.
        assert time.monotonic() - begun < LIMIT / 2
        assert first.headers["X-Tenantkit-Cache"] == "MISS"
        assert started.wait(LIMIT)  # committed meanwhile, in the background
        begun = time.monotonic()
        second = _get(client, "/b/")  # the visitor's next request
        assert time.monotonic() - begun < LIMIT / 2
        assert second.headers["X-Tenantkit-Cache"] == "MISS"
    finally:
        release.set()
    _until_hit(client, "/a/")
    _until_hit(client, "/b/")
    assert app.extensions["tenantkit"].pagecache.commits.wait_idle()


def test_a_page_purged_before_its_commit_is_never_stored_fresh(
        sites: Sites, make_client: MakeClient,
        held: tuple[threading.Event, threading.Event]) -> None:
    started, release = held
    sites.add("blog", ["blog.test"])
    app, client = make_client()
    tk = app.extensions["tenantkit"]
    try:
        assert _get(client, "/p/?tags=post:1").headers["X-Tenantkit-Cache"] == "MISS"
        assert started.wait(LIMIT)
        cache = tk.caches.get(tk.registry.resolve("blog.test"))
        cache.purge_tags(["post:1"])  # the page was rendered before this: not fresh
    finally:
        release.set()
    assert tk.pagecache.commits.wait_idle()
    page = cache.get("blog.test", "/p/", "tags=post:1")
    assert page is None or page.stale


def test_a_small_page_touches_the_disk_only_once_its_visitor_has_it(
        sites: Sites, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """No directory, no file while the body is on its way (before: made after the first
    chunk, in the visitor's time); a page larger than STORE_BUFFER is written as it
    passes, not held in memory."""
    from tenantkit.web import pagecache

    sites.add("chunks", ["chunks.test"], app="tk_test_apps:chunked")
    app, _ = make_client()
    pages = sites.cache_dir / "chunks" / "pages"

    def written() -> dict[Path, int]:
        return {p: p.stat().st_size for p in pages.rglob("*") if p.is_file() and "big" in str(p)}

    def fetch_halfway() -> dict[Path, int]:
        """What of the page was on disk while half of it had gone out."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/big/", "QUERY_STRING": "",
                   "SERVER_NAME": "chunks.test", "SERVER_PORT": "80", "HTTP_HOST": "chunks.test",
                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": None, "wsgi.errors": None, "wsgi.multithread": False}
        body = app(environ, lambda status, headers, exc_info=None: None)
        chunks = iter(body)
        for _ in range(4):  # 4 of the 8 chunks of 1000 bytes went out
            next(chunks)
        on_disk = written()
        assert b"".join(chunks)  # the rest
        body.close()
        return on_disk

    assert fetch_halfway() == {}
    assert list(written().values()) == [8000]  # stored once the body ended (inline here)
    for path in written():
        path.unlink()
    monkeypatch.setattr(pagecache, "STORE_BUFFER", 2500)
    # the first three chunks, written once they went out; the fourth is on its way
    assert list(fetch_halfway().values()) == [3000]
    assert list(written().values()) == [8000]
