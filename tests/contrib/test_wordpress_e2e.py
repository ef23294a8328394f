"""End to end: Debian's WordPress, served by ``php -S``, on the MariaDB pair through the drop-in.

WordPress is installed by its own installer over HTTP; the front page reads from the replica;
a comment posted through wp-comments-post.php lands on the primary and reaches the replica;
the drop-in's event reaches tenantkit's Invalidator (Redis stream), which purges the site's
cached front page; an edit of the post (the REST API, logged in
through wp-login.php) does the same.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pymysql
import pytest
from werkzeug.test import Client

from tenantkit.cache.events import Event, PurgeAction
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.config import BusSettings, CacheSettings, DatabaseSettings, Settings
from tenantkit.export.wordpress import render_wp_config
from tenantkit.provision import provision
from tenantkit.registry import Registry
from tenantkit.sites import Site, SiteDatabase
from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster, RedisServer
from tenantkit.testing.wordpress import ADMIN_PASSWORD, http, php_server
from tenantkit.web.app import create_app

from .wordpress import write_config

HOST = "127.0.0.1"


class Recorder:
    """``on_purge`` callback: records (event, site, action) and lets the test wait."""

    def __init__(self) -> None:
        self.seen: list[tuple[Event | None, Site, PurgeAction]] = []
        self.cond = threading.Condition()

    def __call__(self, event: Event | None, site: Site, action: PurgeAction) -> None:
        with self.cond:
            self.seen.append((event, site, action))
            self.cond.notify_all()

    def wait_for(self, kind: str, timeout: float = 20.0) -> Event:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event, _site, _action in self.seen:
                    if event is not None and event.type == kind:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} purge within {timeout}s: {self.seen}")
                self.cond.wait(left)


def edit_post_as_admin(base: str, post_id: int, title: str) -> None:
    """Log in through wp-login.php, get a REST nonce, update the post's title."""
    result = rest_as_admin(base, f"posts/{post_id}", {"title": title})
    assert result["title"]["raw"] == title


def rest_as_admin(base: str, route: str, data: dict[str, Any]) -> Any:
    """Log in through wp-login.php, get a REST nonce, POST *data* to /wp/v2/<route>."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/wp-login.php", timeout=60) as resp:
        resp.read()
    login = urllib.parse.urlencode({"log": "admin", "pwd": ADMIN_PASSWORD,
                                    "wp-submit": "Log In", "testcookie": "1"}).encode()
    with opener.open(f"{base}/wp-login.php", data=login, timeout=60) as resp:
        resp.read()
    assert any(c.name.startswith("wordpress_logged_in_") for c in jar), list(jar)
    with opener.open(f"{base}/wp-admin/admin-ajax.php?action=rest-nonce", timeout=60) as resp:
        nonce = resp.read().decode().strip()
    assert re.fullmatch(r"[0-9a-f]{10}", nonce), nonce
    request = urllib.request.Request(
        f"{base}/index.php?rest_route=/wp/v2/{route}",
        data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", "X-WP-Nonce": nonce}, method="POST",
    )
    with opener.open(request, timeout=60) as resp:
        assert resp.status in (200, 201)
        return json.loads(resp.read())


def primary_query(pair: MariaDBCluster, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with pymysql.connect(**pair.primary.connect_args(), autocommit=True) as conn, \
            conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def replica_query(pair: MariaDBCluster, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with pymysql.connect(**pair.replica.connect_args(), autocommit=True) as conn, \
            conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


@pytest.mark.slow
def test_wordpress_end_to_end(php: str, wp_tree: Path, mariadb_pair: MariaDBCluster,
                              redis_server: RedisServer, tmp_path: Path) -> None:
    pair = mariadb_pair
    settings = Settings(
        sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache",
        database=DatabaseSettings(primary=pair.primary_url, replicas=(pair.replica_url,)),
        bus=BusSettings(transport="redis", redis_url=redis_server.url, node="node-a",
                        replica_wait_timeout=5),
    )
    site = provision(settings, "blog", [HOST], backend="http://127.0.0.1:9",
                     database=SiteDatabase(primary=pair.primary_url,
                                           replicas=(pair.replica_url,))).site
    write_config(wp_tree, {"DB_NAME": DATABASE, "DB_USER": USER, "DB_PASSWORD": PASSWORD,
                           "DB_HOST": f"127.0.0.1:{pair.primary.port}",
                           "TENANTKIT_STATE_DIR": str(tmp_path)},
                 extra_php=render_wp_config(site, settings))
    log = tmp_path / "php-server.log"
    recorder = Recorder()
    cache = PageCache(site.pages_dir)

    with php_server(php, wp_tree, log) as base, \
            Invalidator(settings, Registry.load(settings), on_purge=recorder, poll_timeout=0.05):
        # 1. WordPress's own installer, over HTTP, through the drop-in.
        status, page, _ = http(f"{base}/wp-admin/install.php?step=2", {
            "weblog_title": "tenantkit e2e", "user_name": "admin",
            "admin_password": ADMIN_PASSWORD, "admin_password2": ADMIN_PASSWORD,
            "pw_weak": "1", "admin_email": "admin@example.org", "blog_public": "0",
            "language": "",
        })
        assert status == 200 and "Success!" in page, page[-2000:]
        assert primary_query(pair, "SELECT COUNT(*) FROM wp_posts WHERE ID = 1") == [(1,)]
        # Anonymous comments are approved (the default holds a first-time commenter's).
        primary_query(pair, "UPDATE wp_options SET option_value = '0' "
                            "WHERE option_name = 'comment_previously_approved'")
        pair.wait_replicas()

        # 2. The front page reads from the replica, and touches nothing on the primary.
        def counters() -> tuple[int, int]:
            return pair.replica.status("Com_select"), pair.primary.status("Com_select")

        before = counters()
        status, page, _ = http(f"{base}/")
        assert status == 200 and "Hello world!" in page
        after = counters()
        assert after[0] - before[0] >= 2  # wpdb's sql_mode check, then the page's queries
        # Nothing on the primary: not even the SELECT @@SESSION.sql_mode a connection runs.
        assert after[1] == before[1]

        # 3. A comment through wp-comments-post.php: on the primary, then on the replica;
        # its event purges the cached front page.
        assert cache.put(HOST, "/", page.encode())
        assert cache.get(HOST, "/") is not None
        status, _, headers = http(f"{base}/wp-comments-post.php", {
            "comment_post_ID": "1", "author": "Ada", "email": "ada@example.org", "url": "",
            "comment": "First! from the e2e test", "submit": "Post Comment",
        })
        assert status == 302, headers
        rows = primary_query(pair, "SELECT comment_approved FROM wp_comments "
                                   "WHERE comment_content LIKE 'First!%%'")
        assert rows == [("1",)]
        event = recorder.wait_for("comment_posted")
        assert (event.site, event.post_id, event.approved) == ("blog", 1, True)
        assert event.origin == "php" and event.gtid is not None
        assert cache.get(HOST, "/") is None or cache.get(HOST, "/").stale  # type: ignore[union-attr]
        # The Invalidator waited for the replica before purging: the comment is there.
        assert replica_query(pair, "SELECT COUNT(*) FROM wp_comments "
                                   "WHERE comment_content LIKE 'First!%%'") == [(1,)]

        # 4. An edit of the post, through WordPress's REST API as the admin: same again.
        status, page, _ = http(f"{base}/")
        with urllib.request.urlopen(f"{base}/?p=1", timeout=60) as resp:  # follows redirects
            assert "First! from the e2e test" in resp.read().decode(errors="replace")
        assert cache.put(HOST, "/", page.encode())
        edit_post_as_admin(base, 1, "Edited by tenantkit")
        edited = recorder.wait_for("post_edited")
        assert (edited.site, edited.post_id) == ("blog", 1)
        assert cache.get(HOST, "/") is None or cache.get(HOST, "/").stale  # type: ignore[union-attr]
        assert replica_query(pair, "SELECT post_title FROM wp_posts WHERE ID = 1") \
            == [("Edited by tenantkit",)]
        status, page, _ = http(f"{base}/")
        assert "Edited by tenantkit" in page

    server_log = log.read_text(errors="replace")
    ours = [line for line in server_log.splitlines()
            if re.search(r"wp-db-router\.php|tenantkit-events\.php", line)]
    assert ours == []


# --- policy = "targeted": pages tagged by contrib/tenantkit-tags.php (issue 25) ----------------

#: A theme that shows comment counts in its listings: each post title says how many it has.
COUNTS_PLUGIN = """<?php
add_filter('the_title', static function ($title, $id = 0) {
    return is_admin() || !$id ? $title : $title . ' [' . get_comments_number($id) . ' comments]';
}, 10, 2);
"""


def _until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_wordpress_targeted_purges(php: str, wp_tree: Path, mariadb_pair: MariaDBCluster,
                                   redis_server: RedisServer, tmp_path: Path) -> None:
    """Behind the shim's page cache under policy = "targeted": a comment on post A refreshes
    A's page and the front page within 5 s while post B's page stays a HIT; an edit of A
    refreshes its category's page."""
    pair = mariadb_pair
    settings = Settings(
        sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache",
        database=DatabaseSettings(primary=pair.primary_url, replicas=(pair.replica_url,)),
        bus=BusSettings(transport="redis", redis_url=redis_server.url, node="node-a",
                        replica_wait_timeout=5),
        cache=CacheSettings(policy="targeted", ttl=600),
    )
    counts = wp_tree / "wp-content" / "mu-plugins" / "tk-test-counts.php"
    counts.write_text(COUNTS_PLUGIN)
    log = tmp_path / "php-server.log"
    try:
        with php_server(php, wp_tree, log) as base:
            site = provision(settings, "blog", [HOST], backend=base,
                             database=SiteDatabase(primary=pair.primary_url,
                                                   replicas=(pair.replica_url,))).site
            assert site.cache.policy == "targeted"
            write_config(wp_tree, {"DB_NAME": DATABASE, "DB_USER": USER, "DB_PASSWORD": PASSWORD,
                                   "DB_HOST": f"127.0.0.1:{pair.primary.port}",
                                   "TENANTKIT_STATE_DIR": str(tmp_path)},
                         extra_php=render_wp_config(site, settings))
            status, page, _ = http(f"{base}/wp-admin/install.php?step=2", {
                "weblog_title": "tenantkit tags", "user_name": "admin",
                "admin_password": ADMIN_PASSWORD, "admin_password2": ADMIN_PASSWORD,
                "pw_weak": "1", "admin_email": "admin@example.org", "blog_public": "0",
                "language": "",
            })
            assert status == 200 and "Success!" in page, page[-2000:]
            primary_query(pair, "UPDATE wp_options SET option_value = '0' "
                                "WHERE option_name = 'comment_previously_approved'")
            # Plain permalinks: /?p=N and /?cat=N are the pages themselves, not redirects.
            primary_query(pair, "UPDATE wp_options SET option_value = '' "
                                "WHERE option_name = 'permalink_structure'")
            cats = rest_as_admin(base, "categories", {"name": "Cats"})["id"]
            rest_as_admin(base, "posts/1", {"categories": [cats]})
            post_b = rest_as_admin(base, "posts", {"title": "Post B", "content": "bee",
                                                   "status": "publish"})["id"]
            pair.wait_replicas()

            current = site.pages_dir / "current"
            first = os.readlink(current) if current.is_symlink() else None
            app = create_app(settings, TENANTKIT_BACKGROUND=True)
            client = Client(app)
            port = base.rsplit(":", 1)[1]
            # A new consumer group flushes the site (at the end of its coalescing window):
            # the pages are stored after that.
            _until(lambda: current.is_symlink() and os.readlink(current) != first,
                   "the new consumer group's flush", 10)

            def get(path: str, query: str = "") -> tuple[str, str]:
                # buffered: read to the end and closed, as a server does
                response = client.get(f"{path}?{query}" if query else path,
                                      base_url=f"http://{HOST}:{port}", buffered=True)
                assert response.status_code == 200, (path, query, response.status_code)
                assert "X-Tenantkit-Tags" not in response.headers  # never to the visitor
                return response.headers.get("X-Tenantkit-Cache", ""), response.get_data(
                    as_text=True)

            pages = {"a": ("/", "p=1"), "b": ("/", f"p={post_b}"), "front": ("/", ""),
                     "cats": ("/", f"cat={cats}")}
            try:
                # Every page is stored on its first visit and served from the cache after
                # (once the invalidator has started: a new consumer group flushes the site).
                for path, query in pages.values():
                    _until(lambda p=path, q=query: get(p, q)[0] == "HIT", f"{path}?{query}", 10)
                cache = PageCache(site.pages_dir)

                def tags_of(name: str) -> set[str]:
                    stored = cache.get(HOST, *pages[name])
                    assert stored is not None, name
                    return set(stored.tags)

                assert {"post:1", f"term:{cats}", "author:1"} <= tags_of("a")
                assert f"post:{post_b}" in tags_of("b") and "post:1" not in tags_of("b")
                assert {"home", "post:1", f"post:{post_b}"} <= tags_of("front")
                assert {f"term:{cats}", "post:1"} <= tags_of("cats")
                assert f"post:{post_b}" not in tags_of("cats")
                def count_on_front() -> int:
                    found = re.search(r"Hello world! \[(\d+) comments\]", get(*pages["front"])[1])
                    assert found is not None
                    return int(found.group(1))

                before = count_on_front()

                # A comment on A: A's page and the front page within 5 s; B's page stays.
                status, _, headers = http(f"{base}/wp-comments-post.php", {
                    "comment_post_ID": "1", "author": "Ada", "email": "ada@example.org",
                    "url": "", "comment": "Tagged comment from the e2e test",
                    "submit": "Post Comment"})
                assert status == 302, headers
                _until(lambda: "Tagged comment from the e2e test" in get(*pages["a"])[1],
                       "the comment on post A's page", 5)
                _until(lambda: count_on_front() == before + 1,
                       "the comment count on the front page", 5)
                assert get(*pages["b"])[0] == "HIT"  # not re-rendered

                # An edit of A: its category's page shows the new title within 5 s.
                _until(lambda: get(*pages["cats"])[0] == "HIT", "the category page cached", 5)
                edit_post_as_admin(base, 1, "Edited with tags")
                _until(lambda: "Edited with tags" in get(*pages["cats"])[1],
                       "the edited title on the category page", 5)
                _until(lambda: "Edited with tags" in get(*pages["a"])[1],
                       "the edited title on post A's page", 5)
            finally:
                app.extensions["tenantkit"].stop()
    finally:
        counts.unlink()
    server_log = log.read_text(errors="replace")
    assert [line for line in server_log.splitlines()
            if re.search(r"tenantkit-tags\.php|tenantkit-events\.php|Fatal", line)] == []
