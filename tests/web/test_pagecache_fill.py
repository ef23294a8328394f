"""Issue 23: who renders a page again after a purge (the middleware's side of the fill lock).

The cross-process behaviour (two gunicorn workers, one render) is in
tests/e2e/test_stale_serving.py; here, the interleavings a real server cannot be made to hit
on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from tk_test_apps import CALLS
from tk_web import Sites
from werkzeug.test import Client

from tenantkit.cache.fill import FillTicket
from tenantkit.cache.pagecache import PageCache

MakeClient = Callable[..., tuple[Flask, Client]]
HOST = {"Host": "blog.test"}


def test_a_caller_that_wins_the_lock_after_the_page_was_stored_renders_nothing(
        sites: Sites, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    sites.add("blog", ["blog.test"])
    app, client = make_client()
    ext = app.extensions["tenantkit"]
    cache = ext.caches.get(ext.registry.sites["blog"])
    assert client.get("/d/?tags=post:3", headers=HOST).headers["X-Tenantkit-Cache"] == "MISS"
    cache.purge_tags(["post:3"])
    real = cache.begin_fill

    def begin_fill(host: str, path: str, query: str = "", **options: Any) -> FillTicket:
        # Between this caller's read of the stale copy and its try for the lock, the
        # previous holder (another worker) stored the page and let the lock go.
        PageCache(cache.root).put(host, path, b"stored by the other worker", query=query,
                                  tags=["post:3"])
        return real(host, path, query, **options)

    monkeypatch.setattr(cache, "begin_fill", begin_fill)
    renders = len(CALLS)
    answer = client.get("/d/?tags=post:3", headers=HOST)
    assert answer.headers["X-Tenantkit-Cache"] == "HIT"
    assert answer.data == b"stored by the other worker"
    assert len(CALLS) == renders
