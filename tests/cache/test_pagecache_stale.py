"""Issue 23: a purge never leaves visitors without a page, and a page rendered across a purge
is kept as a stale copy (never fresh) so that the cache converges under a stream of writes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tenantkit.cache import generations
from tenantkit.cache.caches import site_page_cache
from tenantkit.cache.nodecounters import RENDERS, NodeCounters, read_node_counters
from tenantkit.cache.pagecache import PageCache
from tenantkit.config import CacheSettings
from tenantkit.sites import Backend, Site

from .helpers import FakeClock

H = "blog.example.org"


@pytest.fixture
def cache(tmp_path: Path, clock: FakeClock) -> PageCache:
    return PageCache(tmp_path / "pages", ttl=100, stale_seconds=10, clock=clock)


def _stale_body(cache: PageCache, path: str = "/p/") -> bytes | None:
    page = cache.get(H, path)
    assert page is None or page.stale, "expected a stale page (or none)"
    return None if page is None else page.body


def test_any_number_of_flushes_within_stale_seconds_leaves_the_page(cache: PageCache,
                                                                    clock: FakeClock) -> None:
    cache.put(H, "/p/", b"v1")
    for _ in range(6):  # three whole-site flushes within 40 ms, twice over
        cache.flush()
        clock.now += 0.5
        assert _stale_body(cache) == b"v1"
    assert not (cache.root / "current" / H / "p" / "index.html").exists()  # nginx misses
    clock.now += 10 - 3.0  # stale_seconds after the first flush: too old now
    assert cache.get(H, "/p/") is None


def test_the_newest_older_copy_is_served(cache: PageCache, clock: FakeClock) -> None:
    cache.put(H, "/p/", b"v1")
    cache.flush()
    clock.now += 1
    cache.put(H, "/p/", b"v2")  # re-rendered in the new generation
    cache.flush()
    cache.flush()
    cache.flush()
    assert _stale_body(cache) == b"v2"
    # v2 was purged by the flush after it, not before: stale_seconds from that flush.
    clock.now += 9.5
    assert _stale_body(cache) == b"v2"


def test_targeted_purges_then_flushes_keep_the_page(cache: PageCache, clock: FakeClock) -> None:
    cache.put(H, "/p/", b"v1", tags=["post:1"])
    assert cache.purge_tags(["post:1"]) == 1
    assert cache.purge_tags(["post:1"]) == 0  # nothing fresh left to move
    assert cache.purge_paths(H, ["/p/"]) == 0
    assert _stale_body(cache) == b"v1"
    cache.flush()
    cache.flush()
    clock.now += 1
    cache.purge_tags(["post:1"])
    assert _stale_body(cache) == b"v1"
    clock.now += 9  # stale_seconds after the first purge
    assert cache.get(H, "/p/") is None


@pytest.mark.parametrize("purge", [
    pytest.param(lambda c: c.purge_tags(["post:1"]), id="tag"),
    pytest.param(lambda c: c.purge_paths(H, ["/p/"]), id="path"),
    pytest.param(lambda c: c.flush(), id="flush"),
    pytest.param(lambda c: (c.flush(), c.flush()), id="two-flushes"),
])
def test_a_render_overtaken_by_a_purge_is_kept_stale_then_replaced(
        cache: PageCache, clock: FakeClock, purge: object) -> None:
    cache.put(H, "/p/", b"before", tags=["post:1"])
    with cache.begin_fill(H, "/p/") as ticket:
        clock.now += 1
        purge(cache)  # type: ignore[operator]
        clock.now += 1
        assert cache.put(H, "/p/", b"across", tags=["post:1"], ticket=ticket) is False
    page = cache.get(H, "/p/")
    assert page is not None and page.stale and page.body == b"across"
    assert not (cache.root / "current" / H / "p" / "index.html").exists()  # never fresh
    with cache.begin_fill(H, "/p/") as ticket:  # the next caller revalidates
        assert ticket.leader
        assert cache.put(H, "/p/", b"after", tags=["post:1"], ticket=ticket)
    page = cache.get(H, "/p/")
    assert page is not None and not page.stale and page.body == b"after"


def test_a_render_overtaken_is_served_stale_for_stale_seconds_after_it_is_stored(
        cache: PageCache, clock: FakeClock) -> None:
    # A render slower than stale_seconds is still worth serving while the next one runs.
    with cache.begin_fill(H, "/p/") as ticket:
        cache.flush()
        clock.now += 12
        assert not cache.put(H, "/p/", b"across", ticket=ticket)
    clock.now += 9.5
    assert _stale_body(cache) == b"across"
    clock.now += 0.5  # stale_seconds after it was stored
    assert cache.get(H, "/p/") is None


def test_a_stale_copy_never_replaces_a_fresh_page(cache: PageCache) -> None:
    with cache.begin_fill(H, "/p/") as slow:
        cache.purge_tags(["post:1"])
        assert cache.put(H, "/p/", b"fresh", tags=["post:1"])  # someone rendered after it
        assert not cache.put(H, "/p/", b"across", tags=["post:1"], ticket=slow)
    page = cache.get(H, "/p/")
    assert page is not None and not page.stale and page.body == b"fresh"


def _flushes_done(root: Path, expected: int) -> list[str]:
    for _ in range(200):  # the background delete
        names = [p.name for p in root.glob("g*")]
        if len(names) <= expected:
            break
        threading.Event().wait(0.02)
    return names


def test_sweep_keeps_a_bounded_number_of_generations(cache: PageCache, clock: FakeClock) -> None:
    for i in range(generations.MAX_PREVIOUS + 10):
        cache.put(H, "/p/", b"v%d" % i)
        cache.flush()
        clock.now += 0.1
    names = _flushes_done(cache.root, generations.MAX_PREVIOUS + 1)
    assert len(names) == generations.MAX_PREVIOUS + 1
    current = os.readlink(cache.root / "current")
    assert current == f"g{generations.MAX_PREVIOUS + 11}"
    assert _stale_body(cache) == b"v%d" % (generations.MAX_PREVIOUS + 9)
    # Flushes with nothing stored between them keep no empty generation but the newest.
    for _ in range(5):
        cache.flush()
    names = _flushes_done(cache.root, generations.MAX_PREVIOUS + 2)
    assert len(names) == generations.MAX_PREVIOUS + 2
    assert _stale_body(cache) == b"v%d" % (generations.MAX_PREVIOUS + 9)
    # Past the stale horizon (stale_if_error is 0 here) nothing old is kept.
    clock.now += 11
    cache.flush()
    assert sorted(_flushes_done(cache.root, 2)) == sorted(
        [os.readlink(cache.root / "current"), os.readlink(cache.root / "previous")])


def test_renders_are_counted_for_the_node(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    site = Site(name="blog", hosts=(H,), backend=Backend(type="wsgi", app="m:a"),
                cache_root=cache_dir / "blog", cache=CacheSettings(stale_seconds=10))
    cache = site_page_cache(site)
    assert cache.put(H, "/a/", b"a")
    with cache.begin_fill(H, "/b/") as ticket:
        cache.flush()
        assert not cache.put(H, "/b/", b"b", ticket=ticket)  # stored stale: a render too
    NodeCounters.for_dir(cache_dir).save()
    assert read_node_counters(cache_dir)[RENDERS] == {"blog": 2}
