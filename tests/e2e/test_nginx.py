"""nginx in front of the shim, with the server block `tenantkit nginx-config` prints."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tk_test_apps
import urllib3
from tk_procs import Nginx
from tk_web import Sites, wait_stored
from werkzeug.serving import make_server

from tenantkit.export.nginx import render_config
from tenantkit.testing import free_port
from tenantkit.web.app import create_app


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Sites, object]]:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test", "*.alpha.test"], app="tk_test_apps:hello_html")
    sites.add("beta", ["beta.test"], app="tk_test_apps:hello_html")
    settings = sites.settings(trusted_proxies=1)
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    nginx = Nginx(tmp_path, render_config(settings, upstream=f"127.0.0.1:{server.server_port}",
                                          listen=f"127.0.0.1:{port}"))
    try:
        nginx.start(port)
        yield f"http://127.0.0.1:{port}", sites, app
    finally:
        nginx.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)
        app.extensions["tenantkit"].stop()


def test_nginx_serves_hits_from_disk_and_passes_the_rest(
        stack: tuple[str, Sites, object]) -> None:
    url, sites, app = stack
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        def get(path: str, host: str = "alpha.test", method: str = "GET",
                **headers: str) -> urllib3.BaseHTTPResponse:
            reply = http.request(method, url + path, headers={"Host": host, **headers})
            if (reply.headers.get("X-Tenantkit-Cache") == "MISS" and "?" not in path
                    and "/." not in path):  # a page is stored just after its visitor has it
                wait_stored(sites.cache_dir, host.partition(".")[2].partition(".")[0]
                            if host.startswith("www.") else host.partition(".")[0],
                            host, path)
            return reply

        first = get("/post/1/")
        assert first.status == 200 and first.headers["X-Tenantkit-Cache"] == "MISS"
        calls = len(tk_test_apps.CALLS)
        hit = get("/post/1/")
        assert hit.status == 200 and hit.headers["X-Tenantkit-Cache"] == "HIT"
        assert hit.data == first.data
        assert len(tk_test_apps.CALLS) == calls  # nginx answered, the app never saw it
        assert hit.headers["Content-Type"].startswith("text/html")
        wild = get("/post/1/", host="www.alpha.test")
        assert wild.headers["X-Tenantkit-Cache"] == "MISS"  # another host, another page
        assert get("/post/1/", host="beta.test").data.startswith(b"site=beta")

        for how in [{"Cookie": "wordpress_logged_in_x=1"}, {"Authorization": "Bearer x"}]:
            assert get("/post/1/", **how).headers["X-Tenantkit-Cache"] == "BYPASS", how
        # Every spelling PHP reads as a bypass cookie's name (issue 24) goes to the shim.
        for cookie in ["comment.author.5f3=Eve", "a=1;  wp-postpass.5f3=h",
                       "wordpress logged in_5f3=u", "comment[author_5f3=Eve",
                       "x=1;\ttenantkit.wp.pin=1", "forum.cookie.x=1"]:
            assert get("/post/1/", Cookie=cookie).headers["X-Tenantkit-Cache"] == "BYPASS", \
                cookie
        # The read-your-writes cookie goes to the shim, which ignores a forged one: a hit
        # served by the shim has the same type nginx gives it.
        forged = get("/post/1/", Cookie="a=b; tenantkit_rw=x")
        assert forged.headers["X-Tenantkit-Cache"] == "HIT"
        assert forged.headers["Content-Type"] == "text/html; charset=utf-8"
        assert get("/post/1/", method="POST").headers["X-Tenantkit-Cache"] == "BYPASS"
        assert get("/post/1/?x=1").headers["X-Tenantkit-Cache"] in ("MISS", "HIT")
        assert len(tk_test_apps.CALLS) > calls
        assert get("/post/1/", Cookie="theme=dark").headers["X-Tenantkit-Cache"] == "HIT"

        ext = app.extensions["tenantkit"]  # type: ignore[attr-defined]
        cache = ext.caches.get(ext.registry.sites["alpha"])
        cache.purge_paths("alpha.test", ["/post/1/"])
        # Served stale while it is rendered again in the background, then a hit:
        assert get("/post/1/").headers["X-Tenantkit-Cache"] == "STALE"
        assert ext.pagecache.renders.wait_idle()
        assert get("/post/1/").headers["X-Tenantkit-Cache"] == "HIT"
        cache.flush()
        assert get("/post/1/").headers["X-Tenantkit-Cache"] == "STALE"
        assert ext.pagecache.renders.wait_idle()
        assert get("/post/1/").headers["X-Tenantkit-Cache"] == "HIT"

        assert get("/", host="nobody.test").status == 421
        assert get("/.meta.json/").headers.get("X-Tenantkit-Cache") != "HIT"
        assert get("/post/1/.meta.json").status == 200  # a page of the site, not the sidecar
        assert b"status" not in get("/post/1/.meta.json").data


def test_a_removed_site_is_no_longer_served_by_nginx(stack: tuple[str, Sites, object]) -> None:
    url, sites, app = stack
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        headers = {"Host": "beta.test"}
        http.request("GET", url + "/x/", headers=headers)
        wait_stored(sites.cache_dir, "beta", "beta.test", "/x/")
        assert http.request("GET", url + "/x/", headers=headers).headers[
            "X-Tenantkit-Cache"] == "HIT"
        (sites.dir / "beta.toml").unlink()
        app.extensions["tenantkit"].reload()  # type: ignore[attr-defined]
        assert http.request("GET", url + "/x/", headers=headers).status == 421


@pytest.mark.parametrize("change", ["moved", "removed"])
def test_host_links_follow_the_registry_without_a_request(tmp_path: Path, change: str) -> None:
    """Issue 16: a host moved to another site, or a removed site, stops being served from the
    old cache by nginx at once: the watcher's reload prunes the link, no request needed."""
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:hello_html")
    sites.add("beta", ["beta.test"], app="tk_test_apps:hello_html")
    settings = sites.settings()
    app = create_app(settings, TENANTKIT_BACKGROUND=True)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    nginx = Nginx(tmp_path, render_config(settings, upstream=f"127.0.0.1:{server.server_port}",
                                          listen=f"127.0.0.1:{port}"))
    link = settings.cache_dir / "_hosts" / "beta.test"
    try:
        nginx.start(port)
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            url = f"http://127.0.0.1:{port}/x/"
            http.request("GET", url, headers={"Host": "beta.test"})
            wait_stored(settings.cache_dir, "beta", "beta.test", "/x/")
            hit = http.request("GET", url, headers={"Host": "beta.test"})
            assert hit.headers["X-Tenantkit-Cache"] == "HIT" and b"site=beta" in hit.data
            assert os.path.islink(link)
            if change == "moved":
                sites.add("beta", ["other.test"], app="tk_test_apps:hello_html")
                sites.add("alpha", ["alpha.test", "beta.test"], app="tk_test_apps:hello_html")
            else:
                (sites.dir / "beta.toml").unlink()
            deadline = time.monotonic() + 10
            while os.path.lexists(link) and time.monotonic() < deadline:
                time.sleep(0.05)  # the watcher reloads within a second; nobody asks the shim
            assert not os.path.lexists(link), "nginx would still serve beta's cached page"
            reply = http.request("GET", url, headers={"Host": "beta.test"})
            assert b"site=beta" not in reply.data
    finally:
        nginx.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)
        app.extensions["tenantkit"].stop()  # type: ignore[attr-defined]


def test_stale_host_links_are_cleaned_up_at_start(tmp_path: Path) -> None:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:hello_html")
    settings = sites.settings()
    hosts = settings.cache_dir / "_hosts"
    hosts.mkdir(parents=True)
    os.symlink("../gone/pages/current/gone.test", hosts / "gone.test")
    app = create_app(settings)
    try:
        assert not os.path.lexists(hosts / "gone.test")
    finally:
        app.extensions["tenantkit"].stop()  # type: ignore[attr-defined]
