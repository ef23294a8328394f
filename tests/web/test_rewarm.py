"""The re-warmer (tenantkit.web.rewarm) against real upstream sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tk_web import DripServer, Sites

from tenantkit.cache.purge import PurgeResult
from tenantkit.web.app import create_app

HOST = "warm.test"


def _poll(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"still waiting for {what} after {timeout:g}s"
        time.sleep(0.02)


@pytest.mark.parametrize("head_first", [
    pytest.param(True, id="drips its body"),
    pytest.param(False, id="drips its head"),
])
def test_a_dripping_upstream_is_cut_off_at_the_rewarm_deadline(tmp_path: Path,
                                                              head_first: bool) -> None:
    """One byte every 50 ms, each well within the read timeout: before, the re-warm thread
    read it for as long as the upstream went on (100,000 bytes: ~80 min), and no other
    purged page was ever fetched again."""
    drip = DripServer(0.05, head_first=head_first)
    sites = Sites(tmp_path)
    sites.add("warm", [HOST], url=drip.url,
              extra='read_timeout = 5\n[cache]\npolicy = "targeted"\nrewarm = true\n')
    app = create_app(sites.settings())
    ext = app.extensions["tenantkit"]
    try:
        ext.rewarm.deadline = 1.0
        site = ext.registry.sites["warm"]
        started = time.monotonic()
        ext.rewarm.purged(site, PurgeResult("warm", pages=2,
                                            keys=((HOST, "/drip/", ""), (HOST, "/next/", ""))))
        _poll(lambda: any(" /next/" in line for line in drip.lines), "the next page's fetch")
        assert time.monotonic() - started < 8.0
        cache = ext.caches.get(site)
        _poll(lambda: cache.get(HOST, "/next/") is not None, "the next page stored")
        assert cache.get(HOST, "/drip/") is None  # cut off: never stored
    finally:
        ext.stop()
        drip.close()
