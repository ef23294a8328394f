from __future__ import annotations

import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from tenantkit.cache import pagefile
from tenantkit.cache.keys import page_key
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.pagefile import NGINX_TYPE as HTML
from tenantkit.cache.pagefile import PRIVATE_BODY, XATTR
from tenantkit.errors import CacheError

from .helpers import FakeClock


@pytest.fixture
def cache(tmp_path: Path, clock: FakeClock) -> PageCache:
    return PageCache(tmp_path / "pages", ttl=100, stale_seconds=10, clock=clock)


H = "blog.example.org"


def test_put_then_get_round_trips(cache: PageCache) -> None:
    assert cache.put(H, "/a/b/", b"<p>hi</p>", status=203, headers=[("Content-Type", "text/html")],
                     tags=["post:1", "home"])
    page = cache.get(H, "/a/b/")
    assert page is not None
    assert (page.body, page.status, page.headers, page.tags, page.stale) == (
        b"<p>hi</p>", 203, (("Content-Type", "text/html"),), ("post:1", "home"), False)


def test_layout_is_servable_by_nginx(cache: PageCache) -> None:
    cache.put(H, "/2024/hello/", b"body", headers=[("Content-Type", HTML)])
    served = cache.root / "current" / H / "2024" / "hello" / "index.html"
    assert served.read_bytes() == b"body"
    assert os.readlink(cache.root / "current") == "g1"
    # One file: the sidecar is attached to the body (issue 17), none next to it.
    assert json.loads(os.getxattr(served, XATTR))["body"] == "index.html"
    assert not (served.parent / ".meta.json").exists()


@pytest.mark.parametrize("headers", [
    pytest.param([], id="no type"),
    pytest.param([("Content-Type", "application/json")], id="json"),
    pytest.param([("Content-Type", "text/html")], id="no charset"),
    pytest.param([("Content-Type", HTML), ("X-Frame-Options", "DENY")], id="security header"),
    pytest.param([("Content-Type", HTML), ("Vary", "User-Agent")], id="vary"),
])
def test_pages_nginx_would_serve_differently_are_kept_from_it(
        cache: PageCache, headers: list[tuple[str, str]]) -> None:
    cache.put(H, "/j/", b"{}", headers=headers)
    directory = cache.root / "current" / H / "j"
    assert not (directory / "index.html").exists()
    assert (directory / PRIVATE_BODY).read_bytes() == b"{}"
    page = cache.get(H, "/j/")
    assert page is not None and page.body == b"{}" and page.body_name == PRIVATE_BODY
    cache.put(H, "/j/", b"<p>", headers=[("Content-Type", HTML)])  # now an html page
    assert (directory / "index.html").read_bytes() == b"<p>"
    assert not (directory / PRIVATE_BODY).exists()
    assert cache.get(H, "/j/").body == b"<p>"  # type: ignore[union-attr]
    cache.purge_paths(H, ["/j/"])
    assert not (directory / "index.html").exists()


@pytest.mark.parametrize(("path", "servable"), [
    pytest.param("/a/", True, id="plain"),
    pytest.param("/a%2Fb/", False, id="encoded slash"),
    pytest.param("/caf%C3%A9/", False, id="any escape"),
    pytest.param("/index.html/", False, id="index.html segment"),
    pytest.param("/a/index.html/", False, id="deeper index.html segment"),
])
def test_keys_nginx_could_confuse_are_hashed(path: str, servable: bool) -> None:
    assert (not page_key(H, path).startswith(".q/")) is servable


def test_query_keys_go_to_the_hashed_tree(cache: PageCache) -> None:
    assert page_key(H, "/", "p=42").startswith(f".q/{H}/")
    assert page_key(H, "/", "p=42") != page_key(H, "/", "p=43")
    cache.put(H, "/", b"q42", query="p=42")
    cache.put(H, "/", b"root")
    assert cache.get(H, "/", "p=42").body == b"q42"  # type: ignore[union-attr]
    assert cache.get(H, "/").body == b"root"  # type: ignore[union-attr]


def test_miss_is_none(cache: PageCache) -> None:
    assert cache.get(H, "/nothing/") is None


def test_purge_tags_leaves_a_stale_copy_for_stale_seconds(cache: PageCache, clock: FakeClock
                                                          ) -> None:
    cache.put(H, "/p/", b"old", tags=["post:1"])
    cache.put(H, "/q/", b"other", tags=["post:2"])
    assert cache.purge_tags(["post:1"]) == 1
    assert not (cache.root / "current" / H / "p" / "index.html").exists()  # nginx misses
    page = cache.get(H, "/p/")
    assert page is not None and page.stale and page.body == b"old"
    assert cache.get(H, "/q/").stale is False  # type: ignore[union-attr]
    clock.now += 11
    assert cache.get(H, "/p/") is None


def test_purge_paths_takes_every_query_variant(cache: PageCache) -> None:
    cache.put(H, "/", b"home")
    cache.put(H, "/", b"page2", query="paged=2")
    cache.put(H, "/other/", b"x")
    assert cache.purge_paths(H, ["/"]) == 2
    assert cache.get(H, "/").stale  # type: ignore[union-attr]
    assert cache.get(H, "/", "paged=2").stale  # type: ignore[union-attr]
    assert not cache.get(H, "/other/").stale  # type: ignore[union-attr]


def test_purge_paths_of_every_host(cache: PageCache) -> None:
    cache.put(H, "/x/", b"1")
    cache.put("www.example.org", "/x/", b"2")
    assert cache.purge_paths(None, ["/x/"]) == 2


def test_expired_pages_are_stale_then_gone(cache: PageCache, clock: FakeClock) -> None:
    cache.put(H, "/e/", b"e")
    clock.now += 100
    assert cache.get(H, "/e/").stale  # type: ignore[union-attr]
    clock.now += 10
    assert cache.get(H, "/e/") is None


def test_flush_swaps_generation_and_keeps_previous_as_stale(cache: PageCache, clock: FakeClock
                                                            ) -> None:
    cache.put(H, "/f/", b"f")
    assert cache.flush() == "g2"
    assert os.readlink(cache.root / "current") == "g2"
    assert not (cache.root / "current" / H / "f" / "index.html").exists()
    assert cache.get(H, "/f/").stale  # type: ignore[union-attr]
    clock.now += 10
    assert cache.get(H, "/f/") is None
    cache.flush()
    cache.flush()
    for _ in range(100):  # the background delete of g1, g2
        if sorted(p.name for p in cache.root.glob("g*")) == ["g3", "g4"]:
            break
        threading.Event().wait(0.02)
    assert sorted(p.name for p in cache.root.glob("g*")) == ["g3", "g4"]


def test_fill_lock_has_one_leader_and_is_released(cache: PageCache) -> None:
    with cache.begin_fill(H, "/l/") as first:
        second = cache.begin_fill(H, "/l/")
        assert first.leader and not second.leader
    assert cache.begin_fill(H, "/l/").leader


def test_fill_lock_is_released_on_error(cache: PageCache) -> None:
    with pytest.raises(RuntimeError), cache.begin_fill(H, "/l/") as ticket:
        assert ticket.leader
        raise RuntimeError("render failed")
    assert cache.begin_fill(H, "/l/").leader


def test_fill_lock_times_out(tmp_path: Path) -> None:
    cache = PageCache(tmp_path / "pages", fill_timeout=0)
    first = cache.begin_fill(H, "/l/")
    assert first.leader
    assert cache.begin_fill(H, "/l/").leader  # the first holder is presumed dead
    first.release()


@pytest.mark.parametrize("purge", [
    pytest.param(lambda c: c.purge_tags(["post:1"]), id="tag"),
    pytest.param(lambda c: c.purge_paths(H, ["/g/"]), id="path"),
    pytest.param(lambda c: c.flush(), id="flush"),
])
def test_fill_guard_refuses_a_render_overtaken_by_a_purge(cache: PageCache, purge: object) -> None:
    with cache.begin_fill(H, "/g/") as ticket:
        purge(cache)  # type: ignore[operator]
        assert cache.put(H, "/g/", b"pre-write", tags=["post:1"], ticket=ticket) is False
    page = cache.get(H, "/g/")
    assert page is None or page.body != b"pre-write" or page.stale
    with cache.begin_fill(H, "/g/") as ticket:
        assert cache.put(H, "/g/", b"post-write", tags=["post:1"], ticket=ticket)
    assert cache.get(H, "/g/").body == b"post-write"  # type: ignore[union-attr]


def test_fill_guard_ignores_unrelated_purges(cache: PageCache) -> None:
    with cache.begin_fill(H, "/g/") as ticket:
        cache.purge_tags(["post:2"])
        cache.purge_paths(H, ["/other/"])
        assert cache.put(H, "/g/", b"ok", tags=["post:1"], ticket=ticket)


def test_max_bytes_evicts_oldest_first(tmp_path: Path) -> None:
    cache = PageCache(tmp_path / "pages", max_bytes=10_000)
    for i in range(30):
        assert cache.put(H, f"/p{i}/", b"x" * 1000)
    cache.evict()
    stats = cache.stats()
    assert stats.bytes <= 10_000
    assert cache.get(H, "/p29/") is not None
    assert cache.get(H, "/p0/") is None


def test_max_bytes_bounds_the_generations_kept_for_stale_too(tmp_path: Path, clock: FakeClock
                                                               ) -> None:
    cache = PageCache(tmp_path / "pages", stale_seconds=100, clock=clock)
    for generation in ("old", "mid", "new"):
        for i in range(5):
            assert cache.put(H, f"/{generation}{i}/", b"x" * 1000)
        if generation != "new":
            cache.flush()
    assert sorted(p.name for p in cache.root.glob("g*")) == ["g1", "g2", "g3"]
    cache.max_bytes = 12_000
    assert cache.evict() == 5  # the pages of the oldest generation, g1
    # Only the previous generation that fits beside current (5 KB + 5 KB <= 12 KB) is kept.
    assert sorted(p.name for p in cache.root.glob("g*")) == ["g2", "g3"]
    assert cache.get(H, "/old0/") is None
    assert cache.get(H, "/mid0/").stale  # type: ignore[union-attr]
    assert cache.get(H, "/new0/") is not None


def test_stats_count(cache: PageCache) -> None:
    cache.put(H, "/s/", b"abc")
    cache.get(H, "/s/")
    cache.get(H, "/none/")
    stats = cache.stats()
    assert (stats.pages, stats.hits, stats.misses, stats.puts) == (1, 1, 1, 1)
    assert stats.bytes >= 3  # the body; an attached sidecar is no file


def test_a_torn_sidecar_is_a_miss_not_a_mixed_page(cache: PageCache,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pagefile, "_attach", lambda fd, data: False)  # sidecar files
    cache.put(H, "/t/", b"first", headers=[("X-V", "1")])
    directory = cache.root / "current" / H / "t"
    meta = (directory / ".meta.json").read_bytes()
    cache.put(H, "/t/", b"second!", headers=[("X-V", "2")])
    (directory / ".meta.json").write_bytes(meta)  # body of one write, sidecar of another
    fresh = PageCache(cache.root)
    assert fresh.get(H, "/t/") is None


def test_get_never_checks_exists_first(cache: PageCache) -> None:
    cache.put(H, "/r/", b"r", headers=[("Content-Type", HTML)])
    (cache.root / "current" / H / "r" / "index.html").unlink()
    (cache.root / "current" / H / "r" / ".meta.json").unlink(missing_ok=True)
    assert cache.get(H, "/r/") is None


BAD_HOSTS = [
    pytest.param("../etc", id="dot-dot"),
    pytest.param("..", id="only dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param("", id="empty"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a..b", id="empty label"),
    pytest.param("x\x00y", id="nul"),
    pytest.param("host:80:80", id="two ports"),
    pytest.param("[::1", id="open bracket"),
    pytest.param(".q", id="hidden name"),
    pytest.param("a" * 64 + ".org", id="label too long"),
    pytest.param("[::1]/../x", id="ipv6 with path"),
    pytest.param("blog example", id="space"),
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_hostile_hosts_are_refused(cache: PageCache, tmp_path: Path, host: str) -> None:
    with pytest.raises(CacheError, match="normalised host"):
        cache.put(host, "/", b"x")
    with pytest.raises(CacheError):
        cache.get(host, "/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages"]


BAD_PATHS = [
    pytest.param("/../../../etc/", id="dot-dot"),
    pytest.param("/a/../../b/", id="dot-dot inside"),
    pytest.param("/./", id="dot"),
    pytest.param("//", id="empty segment"),
    pytest.param("/.meta.json/", id="sidecar name"),
    pytest.param("/.tags/t-home/", id="index name"),
    pytest.param("/.q/", id="query tree name"),
    pytest.param("/index.html/", id="body name is a plain segment"),
    pytest.param("/a\x00b/", id="nul"),
    pytest.param("/a\\..\\b/", id="backslashes"),
    pytest.param("/" + "a" * 300 + "/", id="long segment"),
    pytest.param("/a" * 40 + "/", id="deep"),
    pytest.param("/\u00e9t\u00e9/", id="non-ascii"),
    pytest.param("/%2e%2e/", id="percent dots"),
    pytest.param("/a b/", id="space"),
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_hostile_paths_stay_inside_the_site_tree(cache: PageCache, tmp_path: Path, path: str
                                                 ) -> None:
    assert cache.put(H, path, b"x", tags=["t"])
    assert cache.get(H, path).body == b"x"  # type: ignore[union-attr]
    root = (tmp_path / "pages").resolve()
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            real = full.resolve() if not full.is_symlink() else full.parent.resolve()
            assert real.is_relative_to(root), full
    key = page_key(H, path)
    assert ".." not in key.split("/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages"]
    # Either the nginx tree under the host, or the hashed tree.
    assert key.startswith((f"{H}/", f".q/{H}/"))
    assert cache.purge_paths(H, [path]) == 1


def test_hosts_are_normalised(cache: PageCache) -> None:
    cache.put("Blog.Example.ORG.:8080", "/n/", b"n")
    assert cache.get(H, "/n/").body == b"n"  # type: ignore[union-attr]
    assert page_key("[::1]:8080", "/") == "[::1]"


def test_relative_paths_are_refused(cache: PageCache) -> None:
    with pytest.raises(CacheError, match="must start with '/'"):
        cache.put(H, "a/b/", b"x")


def test_unusual_tags_are_hashed(cache: PageCache) -> None:
    cache.put(H, "/t/", b"x", tags=["../../evil", "t\x00"])
    names = {p.name for p in (cache.root / "current" / ".tags").iterdir()}
    assert all(n.startswith(("h-", "u-")) for n in names)
    assert cache.purge_tags(["../../evil"]) == 1


def test_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CacheError, match="cannot create the directory"):
        PageCache(tmp_path / "file" / "pages")


def _put_elsewhere(root: str) -> None:
    PageCache(root).put(H, "/child/", b"written by another process")


def test_change_stamp_moves_with_every_change_in_any_process(tmp_path: Path) -> None:
    root = tmp_path / "pages"
    ours, theirs = PageCache(root, max_bytes=10**9), PageCache(root)
    stamp = ours.change_stamp()
    assert stamp is not None and len(stamp) == 8 and theirs.change_stamp() == stamp

    def moved() -> bool:
        nonlocal stamp
        now = ours.change_stamp()
        changed, stamp = now != stamp, now
        return changed

    assert theirs.put(H, "/x/", b"1", tags=["t"]) and moved()
    assert ours.get(H, "/x/") is not None and not moved()  # reading changes nothing
    assert theirs.purge_tags(["unused"]) == 0 and not moved()  # nor does an empty purge
    assert theirs.purge_tags(["t"]) == 1 and moved()
    assert ours.put(H, "/y/", b"before the flush") and moved()
    assert ours.get(H, "/y/") is not None
    assert ours.get(H, "/absent/") is None  # looks for a previous generation: none yet
    theirs.flush()
    assert moved()
    page = ours.get(H, "/y/")  # their flush: our copy of the old generation is stale now
    assert page is not None and page.stale and page.body == b"before the flush"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_put_elsewhere, args=(str(root),))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and moved()
    ours.max_bytes = 1
    # /child/ in current, then /y/ and the stale /x/ of the previous generation.
    assert ours.evict() == 3 and moved()


def test_a_sidecar_too_large_to_attach_is_a_file_and_still_round_trips(
        cache: PageCache) -> None:
    tags = [f"term:{i:06d}" for i in range(2000)]  # far more than an ext4 attribute takes
    cache.put(H, "/big/", b"big", headers=[("Content-Type", HTML)], tags=tags)
    directory = cache.root / "current" / H / "big"
    assert (directory / ".meta.json").is_file()
    page = cache.get(H, "/big/")
    assert page is not None and page.body == b"big" and len(page.tags) == 2000
    cache.put(H, "/big/", b"small", headers=[("Content-Type", HTML)], tags=["post:1"])
    assert not (directory / ".meta.json").exists()  # attached again: the file goes
    again = cache.get(H, "/big/")
    assert again is not None and again.tags == ("post:1",)


@pytest.mark.parametrize("attached", [True, False], ids=["attached", "sidecar file"])
def test_a_purged_page_is_stale_in_either_form(cache: PageCache, attached: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not attached:
        monkeypatch.setattr(pagefile, "_attach", lambda fd, data: False)
    cache.put(H, "/p/", b"old", headers=[("Content-Type", HTML)], tags=["post:9"])
    assert cache.purge_tags(["post:9"]) == 1
    directory = cache.root / "current" / H / "p"
    assert not (directory / "index.html").exists()
    page = cache.get(H, "/p/")
    assert page is not None and page.stale and page.body == b"old"
