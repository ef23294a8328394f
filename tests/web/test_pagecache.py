from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from tk_web import Sites
from werkzeug.test import Client

from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.pagefile import PRIVATE_BODY
from tenantkit.db.tokens import ConsistencyToken
from tenantkit.web.dispatch import HostDispatcher
from tenantkit.web.hotpages import HotPages
from tenantkit.web.rwcookie import TokenCookie

MakeClient = Callable[..., tuple[Flask, Client]]
HOST = {"Host": "blog.test"}


@pytest.fixture
def blog(sites: Sites, make_client: MakeClient) -> tuple[Flask, Client]:
    sites.add("blog", ["blog.test"], extra='[cache]\nbypass_cookies = ["my_session"]\n')
    sites.add("nocache", ["nocache.test"], extra="[cache]\nenabled = false\n")
    sites.add("wp", ["wp.test"])
    return make_client()


def get(client: Client, path: str = "/p/", **headers: str) -> Any:
    return client.get(path, headers={**HOST, **headers})


def test_miss_then_hit_and_tags_never_reach_the_client(blog: tuple[Flask, Client]) -> None:
    _, client = blog
    first = get(client, "/p/?tags=post:1+home")
    assert first.headers["X-Tenantkit-Cache"] == "MISS"
    assert "X-Tenantkit-Tags" not in first.headers
    second = get(client, "/p/?tags=post:1+home")
    assert second.headers["X-Tenantkit-Cache"] == "HIT"
    assert second.data == first.data
    assert second.headers["Content-Type"] == "text/plain"
    assert "X-Tenantkit-Tags" not in second.headers
    head = client.head("/p/?tags=post:1+home", headers=HOST)
    assert head.headers["X-Tenantkit-Cache"] == "HIT" and head.data == b""


def test_a_tag_purge_makes_the_next_request_regenerate(blog: tuple[Flask, Client]) -> None:
    app, client = blog
    get(client, "/p/", **{})
    ext = app.extensions["tenantkit"]
    site = ext.registry.sites["blog"]
    first = get(client, "/t/?tags=post:7").data
    assert get(client, "/t/?tags=post:7").headers["X-Tenantkit-Cache"] == "HIT"
    ext.caches.get(site).purge_tags(["post:7"])
    stale = get(client, "/t/?tags=post:7")  # while it is rendered again in the background
    assert stale.headers["X-Tenantkit-Cache"] == "STALE" and stale.data == first
    assert ext.pagecache.renders.wait_idle()
    again = get(client, "/t/?tags=post:7")
    assert again.headers["X-Tenantkit-Cache"] == "HIT"
    assert again.data != first  # rendered anew (the test app counts its calls)


def test_stale_is_served_while_another_request_regenerates(blog: tuple[Flask, Client]) -> None:
    app, client = blog
    ext = app.extensions["tenantkit"]
    first = get(client, "/s/?tags=post:9")
    cache = ext.caches.get(ext.registry.sites["blog"])
    cache.purge_tags(["post:9"])
    with cache.begin_fill("blog.test", "/s/", "tags=post:9") as ticket:
        assert ticket.leader
        stale = get(client, "/s/?tags=post:9")
        assert stale.headers["X-Tenantkit-Cache"] == "STALE"
        assert stale.data == first.data
    # The lock is free: the next caller takes it, is served the stale copy at once and
    # the page is rendered in the background.
    assert get(client, "/s/?tags=post:9").headers["X-Tenantkit-Cache"] == "STALE"
    assert ext.pagecache.renders.wait_idle()
    again = get(client, "/s/?tags=post:9")
    assert again.headers["X-Tenantkit-Cache"] == "HIT" and again.data != first.data


@pytest.mark.parametrize(("method", "headers"), [
    pytest.param("POST", {}, id="post"),
    pytest.param("DELETE", {}, id="delete"),
    pytest.param("GET", {"Authorization": "Basic dTpw"}, id="authorization"),
    pytest.param("GET", {"Host": "wp.test", "Cookie": "wordpress_logged_in_abc=1"},
                 id="default wordpress login cookie"),
    pytest.param("GET", {"Host": "wp.test", "Cookie": "x=1;comment_author_1=me"},
                 id="default wordpress comment cookie"),
    pytest.param("GET", {"Host": "wp.test", "Cookie": "punbb_cookie=1"}, id="default punbb"),
    pytest.param("GET", {"Cookie": "a=1; my_session=2"}, id="site bypass cookie"),
])
def test_bypass(blog: tuple[Flask, Client], method: str, headers: dict[str, str]) -> None:
    _, client = blog
    for _ in range(2):
        response = client.open("/b/", method=method, headers={**HOST, **headers})
        assert response.headers["X-Tenantkit-Cache"] == "BYPASS"


@pytest.mark.parametrize("query", [
    pytest.param("cookie", id="set-cookie"),
    pytest.param("private", id="cache-control private"),
    pytest.param("notfound", id="404"),
    pytest.param("vary", id="vary cookie"),
])
def test_personal_or_failed_responses_are_not_stored(blog: tuple[Flask, Client],
                                                     query: str) -> None:
    _, client = blog
    for _ in range(2):
        assert get(client, f"/n/?{query}").headers["X-Tenantkit-Cache"] == "MISS"


def test_other_cookies_do_not_bypass(blog: tuple[Flask, Client]) -> None:
    _, client = blog
    get(client, "/o/")
    assert get(client, "/o/", Cookie="_ga=1; theme=dark").headers["X-Tenantkit-Cache"] == "HIT"


def test_conditional_get(blog: tuple[Flask, Client]) -> None:
    _, client = blog
    first = get(client, "/c/")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert get(client, "/c/", **{"If-None-Match": etag}).status_code == 304
    assert get(client, "/c/", **{"If-None-Match": '"other"'}).status_code == 200
    assert get(client, "/c/", **{"If-Modified-Since": modified}).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert get(client, "/c/", **{"If-Modified-Since": old}).status_code == 200
    assert get(client, "/c/", **{"If-Modified-Since": "garbage"}).status_code == 200
    get(client, "/e/?etag")
    assert get(client, "/e/?etag", **{"If-None-Match": 'W/"v1"'}).status_code == 304


def test_a_weak_etag_gives_way_to_one_made_from_the_stored_body(
        blog: tuple[Flask, Client]) -> None:
    _, client = blog
    miss = get(client, "/w/?weak")
    hit = get(client, "/w/?weak")
    assert hit.headers["X-Tenantkit-Cache"] == "HIT"
    etag = hit.headers["ETag"]
    # Before, the app's weak W/"v1" was stored: it names no particular bytes.
    assert etag == miss.headers["ETag"] != 'W/"v1"' and not etag.startswith("W/")
    assert get(client, "/w/?weak", **{"If-None-Match": etag}).status_code == 304
    assert get(client, "/w/?weak", **{"If-None-Match": 'W/"v1"'}).status_code == 200


def test_disabled_cache_passes_through(blog: tuple[Flask, Client]) -> None:
    _, client = blog
    response = client.get("/", headers={"Host": "nocache.test"})
    assert response.status_code == 200 and "X-Tenantkit-Cache" not in response.headers


def test_hostile_paths_never_leave_the_cache_tree(blog: tuple[Flask, Client],
                                                  sites: Sites) -> None:
    _, client = blog
    for path in ["/../../etc/", "/%2e%2e/%2e%2e/x/", "/a/./b/", "/.meta.json/", "/" + "a/" * 40]:
        response = get(client, path)
        assert response.status_code == 200
    outside = [p for p in sites.root.rglob("*") if sites.cache_dir not in p.parents
               and p != sites.cache_dir and sites.dir not in p.parents and p != sites.dir]
    assert outside == []


def test_read_your_writes_cookie(blog: tuple[Flask, Client]) -> None:
    _, client = blog
    get(client, "/r/")
    assert get(client, "/r/").headers["X-Tenantkit-Cache"] == "HIT"
    wrote = client.post("/r/?write", headers=HOST)
    cookie = wrote.headers["Set-Cookie"]
    assert cookie.startswith("tenantkit_rw=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=5" in cookie
    value = cookie.split(";")[0]
    after = get(client, "/r/", Cookie=f"theme=dark; {value}")
    assert after.headers["X-Tenantkit-Cache"] == "BYPASS"
    assert re.search(rb"token=1\.[0-9a-f]+\.0-1-42", after.data)
    forged = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
    for bad in [forged, "tenantkit_rw=0-1-42", "tenantkit_rw=", 'tenantkit_rw="\\x"; a"b=c']:
        response = get(client, "/r/", Cookie=bad)
        assert response.headers["X-Tenantkit-Cache"] == "HIT", bad
        assert b"token=None" in response.data


def test_old_token_cookies_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    cookie = TokenCookie("k", max_age=5)
    token = ConsistencyToken("0-1-5", time.time()).dumps()
    fresh = cookie.header(token).split(";")[0]
    assert cookie.read(fresh) == token
    not_a_token = cookie.header("<script>").split(";")[0]
    assert cookie.read(not_a_token) is None  # signed, but not a token: ignored
    import time as real_time

    later = real_time.time() + 60
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: later)
    assert cookie.read(fresh) is None
    assert TokenCookie("other-key").read(fresh) is None


def test_pages_kept_in_memory_follow_the_files(blog: tuple[Flask, Client]) -> None:
    app, client = blog
    ext = app.extensions["tenantkit"]
    cache = ext.caches.get(ext.registry.sites["blog"])
    get(client, "/h/")
    assert get(client, "/h/").headers["X-Tenantkit-Cache"] == "HIT"
    assert cache.put("blog.test", "/h/", b"replaced", headers=[("Content-Type", "text/plain")])
    replaced = get(client, "/h/")
    assert replaced.headers["X-Tenantkit-Cache"] == "HIT" and replaced.data == b"replaced"
    cache.purge_paths("blog.test", ["/h/"])
    assert get(client, "/h/").headers["X-Tenantkit-Cache"] == "STALE"
    assert ext.pagecache.renders.wait_idle()
    assert get(client, "/h/").headers["X-Tenantkit-Cache"] == "HIT"
    cache.flush()
    assert get(client, "/h/").headers["X-Tenantkit-Cache"] == "STALE"
    assert ext.pagecache.renders.wait_idle()
    assert get(client, "/h/").headers["X-Tenantkit-Cache"] == "HIT"


def test_expired_pages_are_not_hits(sites: Sites, make_client: MakeClient) -> None:
    sites.add("short", ["short.test"], extra="[cache]\nttl = 1\nstale_seconds = 0\n")
    _, client = make_client()
    headers = {"Host": "short.test"}
    assert client.get("/e/", headers=headers).headers["X-Tenantkit-Cache"] == "MISS"
    assert client.get("/e/", headers=headers).headers["X-Tenantkit-Cache"] == "HIT"
    time.sleep(1.2)
    assert client.get("/e/", headers=headers).headers["X-Tenantkit-Cache"] == "MISS"


@pytest.mark.parametrize(("trusted", "secure"), [
    pytest.param(0, False, id="untrusted forwarded proto"),
    pytest.param(1, True, id="trusted forwarded proto"),
])
def test_token_cookie_is_secure_behind_https(sites: Sites, make_client: MakeClient,
                                             trusted: int, secure: bool) -> None:
    sites.add("blog", ["blog.test"])
    _, client = make_client(trusted_proxies=trusted)
    wrote = client.post("/r/?write", headers={**HOST, "X-Forwarded-Proto": "https"})
    assert ("; Secure" in wrote.headers["Set-Cookie"]) is secure


def _resolves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Host lookups the dispatcher makes from now on (the hit lane makes none)."""
    seen: list[str] = []
    original = HostDispatcher.resolve

    def resolve(self: HostDispatcher, environ: dict[str, Any]) -> Any:
        seen.append(environ.get("HTTP_HOST", ""))
        return original(self, environ)

    monkeypatch.setattr(HostDispatcher, "resolve", resolve)
    return seen


def test_repeated_plain_hits_skip_site_resolution(blog: tuple[Flask, Client],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, client = blog
    first = get(client, "/lane/").data
    assert get(client, "/lane/").headers["X-Tenantkit-Cache"] == "HIT"  # remembered here
    resolves = _resolves(monkeypatch)
    again = get(client, "/lane/")
    assert (again.headers["X-Tenantkit-Cache"], again.data) == ("HIT", first)
    assert int(again.headers["Content-Length"]) == len(first) and "Age" in again.headers
    head = client.head("/lane/", headers=HOST)
    assert (head.headers["X-Tenantkit-Cache"], head.data) == ("HIT", b"")
    assert resolves == []
    # Anything that could make the answer personal takes the long way.
    for headers in ({"Cookie": "a=1"}, {"Authorization": "Basic eDp5"},
                    {"If-None-Match": '"x"'}, {"X-Forwarded-Host": "other.test"}):
        get(client, "/lane/", **headers)
    assert len(resolves) == 4
    # Another host name of the same site, or another query, is a key of its own.
    assert get(client, "/lane/", Host="BLOG.test").headers["X-Tenantkit-Cache"] == "HIT"
    assert len(resolves) == 5


def test_the_hit_lane_follows_site_changes(sites: Sites, make_client: MakeClient) -> None:
    sites.add("one", ["moved.test"])
    app, client = make_client()
    headers = {"Host": "moved.test"}
    for _ in range(3):
        assert client.get("/m/", headers=headers).data.startswith(b"site=one ")
    (sites.dir / "one.toml").unlink()
    sites.add("two", ["moved.test"])
    app.extensions["tenantkit"].reload()
    moved = client.get("/m/", headers=headers)
    assert moved.data.startswith(b"site=two ") and moved.headers["X-Tenantkit-Cache"] == "MISS"
    (sites.dir / "two.toml").unlink()
    app.extensions["tenantkit"].reload()
    assert client.get("/m/", headers=headers).status_code == 421


def test_a_purge_by_another_process_is_seen_at_once(blog: tuple[Flask, Client]) -> None:
    app, client = blog
    site = app.extensions["tenantkit"].registry.sites["blog"]
    for _ in range(3):
        assert get(client, "/o/").headers["X-Tenantkit-Cache"] in ("MISS", "HIT")
    assert get(client, "/o/").headers["X-Tenantkit-Cache"] == "HIT"
    # Another worker's or node's invalidator has a PageCache of its own on the same files.
    PageCache(site.pages_dir).purge_paths("blog.test", ["/o/"])
    assert get(client, "/o/").headers["X-Tenantkit-Cache"] == "STALE"
    assert app.extensions["tenantkit"].pagecache.renders.wait_idle()
    assert get(client, "/o/").headers["X-Tenantkit-Cache"] == "HIT"
    PageCache(site.pages_dir).put("blog.test", "/o/", b"from elsewhere")
    assert get(client, "/o/").data == b"from elsewhere"


def test_pages_deleted_by_hand_stop_being_served(blog: tuple[Flask, Client],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    app, client = blog
    site = app.extensions["tenantkit"].registry.sites["blog"]
    for _ in range(3):
        get(client, "/d/")
    assert get(client, "/d/").headers["X-Tenantkit-Cache"] == "HIT"
    body = site.pages_dir / "current" / "blog.test" / "d" / PRIVATE_BODY  # text/plain
    body.unlink()  # rm, as an operator clearing the cache by hand would
    monkeypatch.setattr(HotPages, "RECHECK", 0.0)  # instead of waiting a second
    assert get(client, "/d/").headers["X-Tenantkit-Cache"] == "MISS"


def test_hits_without_a_change_stamp(blog: tuple[Flask, Client],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    app, client = blog
    site = app.extensions["tenantkit"].registry.sites["blog"]
    cache = app.extensions["tenantkit"].caches.get(site)
    monkeypatch.setattr(cache, "_stamp", None)  # e.g. a file system that cannot map it
    get(client, "/n/")
    for _ in range(3):
        assert get(client, "/n/").headers["X-Tenantkit-Cache"] == "HIT"
    cache.purge_paths("blog.test", ["/n/"])
    assert get(client, "/n/").headers["X-Tenantkit-Cache"] == "STALE"
    assert app.extensions["tenantkit"].pagecache.renders.wait_idle()
    assert get(client, "/n/").headers["X-Tenantkit-Cache"] == "HIT"


def test_a_miss_passes_every_chunk_on_and_stores_only_what_it_may(
        sites: Sites, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body is streamed to the visitor whole whatever happens to its copy for the cache:
    one over MAX_STORE_BYTES (raw, or once decoded: a gzip bomb) or a gzip stream that
    never ends is not stored; one under it is stored (decoded)."""
    import gzip

    import tk_test_apps

    from tenantkit.web import pagecache

    monkeypatch.setattr(pagecache, "MAX_STORE_BYTES", 5000)
    sites.add("chunks", ["chunks.test"], app="tk_test_apps:chunked")
    _, client = make_client()

    def fetch(path: str) -> Any:
        return client.get(path, headers={"Host": "chunks.test", "Accept-Encoding": "gzip"})

    whole = b"".join(b"%d" % (i % 10) * 1000 for i in range(8))
    for path in ("/big/", "/gz/", "/badgz/"):
        first = fetch(path)
        assert first.headers["X-Tenantkit-Cache"] == "MISS"
        body = first.data
        if path == "/gz/":
            body = gzip.decompress(body)
        if path != "/badgz/":
            assert body == whole, path  # the visitor got every byte
        assert fetch(path).headers["X-Tenantkit-Cache"] == "MISS", path  # never stored
    monkeypatch.setattr(pagecache, "MAX_STORE_BYTES", 8000)
    assert fetch("/big/").headers["X-Tenantkit-Cache"] == "MISS"
    hit = fetch("/big/")
    assert hit.headers["X-Tenantkit-Cache"] == "HIT" and hit.data == whole
    calls = tk_test_apps.CALLS.count("/gz/")
    fetch("/gz/")
    hit = client.get("/gz/", headers={"Host": "chunks.test"})
    assert hit.headers["X-Tenantkit-Cache"] == "HIT" and hit.data == whole  # stored decoded
    assert tk_test_apps.CALLS.count("/gz/") == calls + 1
