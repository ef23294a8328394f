"""Issue 23: who renders a page again after a purge (the middleware's side of the fill lock).

The cross-process behaviour (two gunicorn workers, one render) is in
tests/e2e/test_stale_serving.py; here, the interleavings a real server cannot be made to hit
on demand.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from tk_test_apps import CALLS, HOLD
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


#: Files opened by the thread that set ``OPENS["thread"]`` (the audit event every os.open
#: raises; an audit hook stays for the life of the process, so it looks only then).
OPENS: dict[str, Any] = {"thread": None, "paths": []}


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and OPENS["thread"] == threading.get_ident():
        OPENS["paths"].append(args[0])


sys.addaudithook(_count_opens)


def test_a_stale_page_is_served_again_from_memory_while_this_process_renders_it(
        sites: Sites, make_client: MakeClient) -> None:
    # A STALE answer was a read of the stale copy (a file in the current generation, else
    # in each previous one) and a try of the fill lock (a file) every time: issue 23 asks
    # for hits and stale pages that cost little and never stall on the disk.
    sites.add("blog", ["blog.test"], app="tk_test_apps:held")
    app, client = make_client()
    ext = app.extensions["tenantkit"]
    cache = ext.caches.get(ext.registry.sites["blog"])
    assert client.get("/s/", headers=HOST).headers["X-Tenantkit-Cache"] == "MISS"
    cache.flush()
    HOLD.clear()  # the background render this caller hands over waits
    try:
        first = client.get("/s/", headers=HOST)
        assert first.headers["X-Tenantkit-Cache"] == "STALE"
        OPENS["paths"], OPENS["thread"] = [], threading.get_ident()
        try:
            answers = [client.get("/s/", headers=HOST) for _ in range(20)]
        finally:
            OPENS["thread"] = None
        assert {a.headers["X-Tenantkit-Cache"] for a in answers} == {"STALE"}
        assert all(a.data == first.data for a in answers)
        assert OPENS["paths"] == []
    finally:
        HOLD.set()
    assert ext.pagecache.renders.wait_idle(10.0)
    again = client.get("/s/", headers=HOST)
    assert again.headers["X-Tenantkit-Cache"] == "HIT" and again.data != first.data
    # What visitors got: the one MISS, 21 STALE, one HIT; the background render served
    # nobody (before, it counted as a second MISS).
    counts = {r: ext.metrics.cache_results.labels("blog", r)._value.get()
              for r in ("MISS", "STALE", "HIT")}
    assert counts == {"MISS": 1, "STALE": 21, "HIT": 1}
