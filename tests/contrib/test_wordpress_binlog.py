"""End to end through the binlog source: Debian's WordPress on a primary and a replica set up
for it (``MariaDBCluster(binlog_source=True)``); ``wp_insert_post()`` called from a PHP CLI
script -- no HTTP request, and no invalidator consuming the drop-in's events -- reaches the
replica, whose binlog the node's :class:`~tenantkit.cache.sources.binlog.BinlogSource`
reads: the cached front page is purged (a targeted purge, not a flush: the options WordPress
rewrites on the way are ignored), and the page served next shows the new post.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.sources.binlog import BinlogSource
from tenantkit.config import BusSettings, CacheSettings, DatabaseSettings, Settings
from tenantkit.export.wordpress import render_wp_config
from tenantkit.provision import provision
from tenantkit.registry import Registry
from tenantkit.sites import SiteDatabase
from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster, ServiceMissing

from .test_wordpress_e2e import ADMIN_PASSWORD, HOST, Recorder, http, php_server, primary_query
from .wordpress import write_config

INSERT_POST = r"""<?php
// As a cron job, an import script or wp-cli would: WordPress loaded, no HTTP request.
define('WP_USE_THEMES', false);
$_SERVER['HTTP_HOST'] = '127.0.0.1';
require $argv[1] . '/wp-load.php';
$id = wp_insert_post(['post_title' => $argv[2], 'post_content' => 'written from php-cli',
                      'post_status' => 'publish', 'post_author' => 1], true);
if (is_wp_error($id)) { fwrite(STDERR, $id->get_error_message()); exit(1); }
echo $id;
"""


@pytest.fixture(scope="module")
def binlog_pair() -> Iterator[MariaDBCluster]:
    try:
        cluster = MariaDBCluster(replicas=1, binlog_source=True)
    except ServiceMissing as exc:
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(str(exc))
    with cluster:
        yield cluster


@pytest.mark.slow
def test_wp_insert_post_from_php_cli_updates_the_front_page(
        php: str, wp_tree: Path, binlog_pair: MariaDBCluster, tmp_path: Path) -> None:
    pair = binlog_pair
    settings = Settings(
        sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache",
        database=DatabaseSettings(primary=pair.primary_url, replicas=(pair.replica_url,)),
        bus=BusSettings(node="node-a"), cache=CacheSettings(policy="targeted", ttl=600))
    site = provision(settings, "blog", [HOST], backend="http://127.0.0.1:9",
                     database=SiteDatabase(primary=pair.primary_url,
                                           replicas=(pair.replica_url,)),
                     meta={"invalidation": "wordpress"}).site
    write_config(wp_tree, {"DB_NAME": DATABASE, "DB_USER": USER, "DB_PASSWORD": PASSWORD,
                           "DB_HOST": f"127.0.0.1:{pair.primary.port}",
                           "TENANTKIT_STATE_DIR": str(tmp_path)},
                 extra_php=render_wp_config(site, settings))
    script = tmp_path / "insert-post.php"
    script.write_text(INSERT_POST)
    cache = PageCache(site.pages_dir)
    recorder = Recorder()
    with php_server(php, wp_tree, tmp_path / "php-server.log") as base:
        status, page, _ = http(f"{base}/wp-admin/install.php?step=2", {
            "weblog_title": "tenantkit binlog", "user_name": "admin",
            "admin_password": ADMIN_PASSWORD, "admin_password2": ADMIN_PASSWORD,
            "pw_weak": "1", "admin_email": "admin@example.org", "blog_public": "0",
            "language": ""})
        assert status == 200 and "Success!" in page, page[-2000:]
        # WordPress's first page view stores its default widget and theme options (once).
        status, page, _ = http(f"{base}/")
        assert status == 200 and "Hello world!" in page
        pair.wait_replicas()
        registry = Registry.load(settings)
        with BinlogSource(settings, registry, url=pair.binlog_url(), on_purge=recorder):
            with recorder.cond:  # the first start has no position: one flush
                assert recorder.cond.wait_for(lambda: len(recorder.seen) == 1, 15)
            status, page, _ = http(f"{base}/")
            assert status == 200 and "Hello world!" in page
            assert "Written by a CLI script" not in page
            assert cache.put(HOST, "/", page.encode(), tags=["home"])
            assert cache.put(HOST, "/?p=1", b"post 1", tags=["post:1"])

            done = subprocess.run([php, str(script), str(wp_tree), "Written by a CLI script"],
                                  capture_output=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            post_id = int(done.stdout)
            assert primary_query(pair, "SELECT post_status FROM wp_posts WHERE ID = %s",
                                 post_id) == [("publish",)]

            def front_page_purged() -> bool:
                page = cache.get(HOST, "/")
                # The recorder hears of the purge just after it is done: wait for both.
                return (page is None or page.stale) and len(recorder.seen) > 1
            with recorder.cond:
                assert recorder.cond.wait_for(front_page_purged, 15), recorder.seen
            purges = recorder.seen[1:]
            assert all(event is None for event, _, _ in purges)  # from the binlog only
            assert not any(action.flush for _, _, action in purges), purges
            assert any({f"post:{post_id}", "home"} <= set(action.tags)
                       for _, _, action in purges), purges
            stored = cache.get(HOST, "/?p=1")
            assert stored is not None and not stored.stale  # a targeted purge: post 1 stays
            # The purge came after the replica had the row: the page served now shows it.
            status, page, _ = http(f"{base}/")
            assert status == 200 and "Written by a CLI script" in page
