"""Issue 17: the stale rules -- revalidate within ``stale_seconds``, serve on a backend
error within ``stale_if_error`` -- and the page cache that applies them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.staleness import IF_ERROR, REVALIDATE, stale_horizon, stale_reason

from .helpers import FakeClock

HOST = "blog.test"


@pytest.mark.parametrize(("late", "expected"), [
    pytest.param(0.0, REVALIDATE, id="just ended"),
    pytest.param(29.9, REVALIDATE, id="within stale_seconds"),
    pytest.param(30.0, IF_ERROR, id="past stale_seconds"),
    pytest.param(299.9, IF_ERROR, id="within stale_if_error"),
    pytest.param(300.0, None, id="past both"),
])
def test_stale_reason(late: float, expected: str | None) -> None:
    assert stale_reason(1000.0, 1000.0 + late, stale_seconds=30, stale_if_error=300) == expected


def test_a_longer_stale_seconds_wins() -> None:
    assert stale_reason(0, 50, stale_seconds=60, stale_if_error=10) == REVALIDATE
    assert stale_reason(0, 70, stale_seconds=60, stale_if_error=10) is None
    assert stale_horizon(stale_seconds=60, stale_if_error=10) == 60


@pytest.fixture
def cache(tmp_path: Path, clock: FakeClock) -> PageCache:
    return PageCache(tmp_path / "pages", ttl=10, stale_seconds=5, stale_if_error=100,
                     clock=clock)


def test_an_expired_page_is_served_on_error_within_stale_if_error(
        cache: PageCache, clock: FakeClock) -> None:
    cache.put(HOST, "/a/", b"old")
    start = clock.now
    clock.now = start + 12  # expired 2 s ago: stale for anyone
    page = cache.get(HOST, "/a/")
    assert page is not None and page.stale
    clock.now = start + 50  # expired 40 s ago: only on error
    assert cache.get(HOST, "/a/") is None
    page = cache.get_if_error(HOST, "/a/")
    assert page is not None and page.stale and page.body == b"old"
    clock.now = start + 111  # past both windows
    assert cache.get_if_error(HOST, "/a/") is None


def test_a_purged_page_is_served_on_error_within_stale_if_error(
        cache: PageCache, clock: FakeClock) -> None:
    cache.put(HOST, "/a/", b"old")
    assert cache.purge_paths(HOST, ["/a/"]) == 1
    clock.now += 50
    assert cache.get(HOST, "/a/") is None
    page = cache.get_if_error(HOST, "/a/")
    assert page is not None and page.stale and page.body == b"old"
    fresh = cache.get_if_error(HOST, "/b/")
    assert fresh is None


def test_a_flushed_page_is_served_on_error_within_stale_if_error(
        cache: PageCache, clock: FakeClock) -> None:
    cache.put(HOST, "/a/", b"old")
    cache.flush()
    clock.now += 50
    assert cache.get(HOST, "/a/") is None
    page = cache.get_if_error(HOST, "/a/")
    assert page is not None and page.body == b"old"
    clock.now += 100
    assert cache.get_if_error(HOST, "/a/") is None


def test_a_fresh_page_is_served_on_error_as_it_is(cache: PageCache) -> None:
    cache.put(HOST, "/a/", b"new")
    page = cache.get_if_error(HOST, "/a/")
    assert page is not None and not page.stale


def test_a_purge_reports_the_pages_it_made_stale_for_rewarm(tmp_path: Path) -> None:
    from tenantkit.cache.events import PurgeAction
    from tenantkit.cache.purge import purge
    from tenantkit.config import CacheSettings
    from tenantkit.sites import Backend, Site

    site = Site(name="s", hosts=(HOST,), backend=Backend(type="wsgi", app="m:a"),
                cache=CacheSettings(policy="targeted", rewarm=True), cache_root=tmp_path)
    cache = PageCache(tmp_path / "pages")
    cache.put(HOST, "/a/", b"a", tags=("post:1",))
    cache.put(HOST, "/a/", b"a2", query="p=2", tags=("post:1",))
    cache.put(HOST, "/b/", b"b", tags=("post:2",))
    result = purge(cache, site, PurgeAction(tags=("post:1",)))
    assert sorted(result.keys) == [(HOST, "/a/", ""), (HOST, "/a/", "p=2")]
    assert purge(cache, site, PurgeAction(tags=("post:2",)), keys=False).keys == ()
