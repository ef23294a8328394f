"""The binlog source keeps purging across a failover: the node's replica is re-pointed to the
promoted primary and its own binlog goes on (no restart of the source)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.sources.binlog import BinlogSource
from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.registry import Registry
from tenantkit.testing import MariaDBCluster, ServiceMissing
from tenantkit.testing.plugin import service_missing

from .helpers import HOST, Purges, wait_until


@pytest.fixture
def cluster() -> Iterator[MariaDBCluster]:
    try:
        cluster = MariaDBCluster(replicas=2, semi_sync=True, binlog_source=True)
    except ServiceMissing as exc:
        service_missing(exc)
    with cluster:
        cluster.primary.query(
            "CREATE TABLE tenantkit_test.wp_comments (comment_ID BIGINT PRIMARY KEY "
            "AUTO_INCREMENT, comment_post_ID BIGINT, comment_approved VARCHAR(20), "
            "comment_content TEXT)")
        cluster.wait_replicas()
        yield cluster


def test_the_binlog_source_purges_across_a_failover(tmp_path: Path,
                                                     cluster: MariaDBCluster) -> None:
    node = cluster.replicas[1]  # this node's replica: re-pointed, never promoted
    other = cluster.replicas[0]
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "blog.toml").write_text(
        f'hosts = ["{HOST}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[cache]\npolicy = "targeted"\nstale_seconds = 30\n'
        f'[database]\nprimaries = ["{cluster.primary_url}", "{other.url()}"]\n'
        f'replicas = ["{node.url()}"]\ntable_prefix = "wp_"\n[meta]\ninvalidation = "wordpress"\n')
    settings = Settings(sites_dir=sites, cache_dir=tmp_path / "cache",
                        database=DatabaseSettings(primary=cluster.primary_url),
                        bus=BusSettings(node="node-1"))
    registry = Registry.load(settings)
    assert registry.sites, registry.errors
    cache = PageCache(settings.cache_dir / "blog" / "pages")

    def stale(path: str) -> bool:
        page = cache.get(HOST, path)
        return page is None or page.stale

    purges = Purges()
    reader = cluster.binlog_url(1)
    with BinlogSource(settings, registry, url=reader, on_purge=purges):
        assert purges.wait_count(1)  # first start: one flush
        cache.put(HOST, "/p/7/", b"post 7", tags=["post:7"])
        cluster.primary.query("INSERT INTO tenantkit_test.wp_comments (comment_post_ID, "
                              "comment_approved) VALUES (7, '1')")
        assert wait_until(lambda: stale("/p/7/"), timeout=10)

        cluster.wait_replicas()  # both as advanced: replica 1 is the one promoted
        new = cluster.failover()
        assert new is other
        cache.put(HOST, "/p/8/", b"post 8", tags=["post:8"])
        cache.put(HOST, "/p/9/", b"post 9", tags=["post:9"])
        new.query("INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
                  "VALUES (8, '1')")
        assert wait_until(lambda: stale("/p/8/"), timeout=15), \
            "a write on the promoted primary purges through the re-pointed replica's binlog"
        assert not stale("/p/9/")
        assert all(not p[3].flush for p in purges.seen[1:]), "no flush: the position held"
