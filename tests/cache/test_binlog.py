"""The binlog source against a real primary and two replicas (one per node), each with
``log_slave_updates``, ``binlog_format=ROW`` and ``binlog_row_metadata=FULL``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkit import layout
from tenantkit.cache.events import PurgeAction
from tenantkit.cache.nodecounters import FLUSHES, PURGES, NodeCounters
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.sources.binlog import BinlogSource, check_replica
from tenantkit.cache.status import InvalidatorStatus, read_statuses
from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.registry import Registry
from tenantkit.testing import MariaDBCluster, ServiceMissing

from .helpers import HOST, Purges, wait_until


@pytest.fixture(scope="module")
def binlog_cluster() -> Iterator[MariaDBCluster]:
    try:
        cluster = MariaDBCluster(replicas=2, binlog_source=True)
    except ServiceMissing as exc:
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(f"{exc}")
    with cluster:
        cluster.primary.query(
            "CREATE TABLE tenantkit_test.wp_posts (ID BIGINT PRIMARY KEY AUTO_INCREMENT, "
            "post_author BIGINT, post_type VARCHAR(20), post_status VARCHAR(20), "
            "post_title TEXT)")
        cluster.primary.query(
            "CREATE TABLE tenantkit_test.wp_comments (comment_ID BIGINT PRIMARY KEY "
            "AUTO_INCREMENT, comment_post_ID BIGINT, comment_approved VARCHAR(20), "
            "comment_content TEXT)")
        cluster.primary.query(
            "CREATE TABLE tenantkit_test.wp_options (option_id BIGINT PRIMARY KEY AUTO_INCREMENT, "
            "option_name VARCHAR(191) UNIQUE, option_value LONGTEXT)")
        cluster.primary.query(
            "CREATE TABLE tenantkit_test.wp_term_relationships (object_id BIGINT, "
            "term_taxonomy_id BIGINT, PRIMARY KEY (object_id, term_taxonomy_id))")
        cluster.primary.query(
            "CREATE TABLE tenantkit_test.wp_term_taxonomy (term_taxonomy_id BIGINT PRIMARY KEY, "
            "term_id BIGINT)")
        cluster.wait_replicas()
        yield cluster


def _node(tmp_path: Path, cluster: MariaDBCluster, index: int, policy: str = "targeted"
          ) -> tuple[Settings, Registry, PageCache, str]:
    sites = tmp_path / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    replica = cluster.replicas[index]
    (sites / "blog.toml").write_text(
        f'hosts = ["{HOST}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        f'[cache]\npolicy = "{policy}"\nstale_seconds = 30\n'
        f'[database]\nprimary = "{cluster.primary_url}"\nreplicas = ["{replica.url()}"]\n'
        'table_prefix = "wp_"\n[meta]\ninvalidation = "wordpress"\n')
    settings = Settings(sites_dir=sites, cache_dir=tmp_path / "cache",
                        database=DatabaseSettings(primary=cluster.primary_url),
                        bus=BusSettings(node=f"node-{index}"))
    registry = Registry.load(settings)
    assert registry.sites, registry.errors
    reader = cluster.binlog_url(index)
    return settings, registry, PageCache(settings.cache_dir / "blog" / "pages"), reader


def _stale(cache: PageCache, path: str) -> bool:
    page = cache.get(HOST, path)
    return page is None or page.stale


def test_the_replicas_are_set_up_for_the_binlog_source(binlog_cluster: MariaDBCluster
                                                       ) -> None:
    for replica in binlog_cluster.replicas:
        assert check_replica(f"mysql+pymysql://root@127.0.0.1:{replica.port}/") == []
    problems = check_replica(f"mysql+pymysql://root@127.0.0.1:{binlog_cluster.primary.port}/")
    assert [p.split(" ")[0] for p in problems] == ["binlog_format", "binlog_row_metadata"]
    # The replication user has the grant it needs; the application user does not.
    assert check_replica(binlog_cluster.replicas[0].url(user="repl", password="repl")) == []
    problems = check_replica(binlog_cluster.replicas[0].url())
    assert len(problems) == 1 and "no REPLICATION SLAVE grant" in problems[0]


def test_a_comment_inserted_by_plain_sql_purges_the_post(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    settings, registry, cache, reader = _node(tmp_path, binlog_cluster, 0)
    purges = Purges()
    with BinlogSource(settings, registry, url=reader, on_purge=purges):
        assert purges.wait_count(1)  # first start: no position, so one flush
        cache.put(HOST, "/p/7/", b"post 7", tags=["post:7"])
        cache.put(HOST, "/p/8/", b"post 8", tags=["post:8"])
        # As wp-cli or a plugin would: no hook, no drop-in, just SQL on the primary.
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved, "
            "comment_content) VALUES (7, '1', 'hello')")
        assert wait_until(lambda: _stale(cache, "/p/7/"), timeout=10)
        assert not _stale(cache, "/p/8/")
        # A spam comment purges nothing; an autosave revision neither.
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (8, 'spam')")
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_posts (post_author, post_type, post_status) "
            "VALUES (1, 'revision', 'inherit')")
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_options (option_name, option_value) "
            "VALUES ('_transient_x', 'y')")
        count = len(purges.seen)
        binlog_cluster.wait_replicas()
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (7, '1')")
        assert purges.wait_count(count + 1)
        assert not _stale(cache, "/p/8/")
        assert all(not p[3].flush for p in purges.seen[1:])


def test_post_edit_purges_its_terms_author_home_and_feed(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    settings, registry, _cache, reader = _node(tmp_path, binlog_cluster, 0)
    binlog_cluster.primary.query("INSERT INTO tenantkit_test.wp_term_taxonomy VALUES (30, 3)")
    binlog_cluster.primary.query("INSERT INTO tenantkit_test.wp_posts (ID, post_author, post_type, "
                                 "post_status, post_title) VALUES (50, 4, 'post', 'draft', "
                                 "'x')")
    binlog_cluster.primary.query("INSERT INTO tenantkit_test.wp_term_relationships VALUES (50, 30)")
    binlog_cluster.wait_replicas()
    purges = Purges()
    with BinlogSource(settings, registry, url=reader, on_purge=purges):
        assert purges.wait_count(1)
        binlog_cluster.primary.query(
            "UPDATE tenantkit_test.wp_posts SET post_status = 'publish' WHERE ID = 50")
        assert purges.wait_count(2)
    assert set(purges.seen[1][3].tags) == {"post:50", "home", "feed", "term:3", "author:4"}


def test_restart_resumes_without_replaying_or_skipping(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    settings, registry, cache, reader = _node(tmp_path, binlog_cluster, 0)
    with BinlogSource(settings, registry, url=reader, on_purge=Purges()) as source:
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (21, '1')")
        assert wait_until(lambda: source.purges >= 1, timeout=10)
    state = json.loads(source.state_path.read_text())
    assert state["gtid"]
    # Written while no source runs: the restart must see it (not skip) ...
    cache.put(HOST, "/p/22/", b"22", tags=["post:22"])
    cache.put(HOST, "/p/21/", b"21", tags=["post:21"])
    binlog_cluster.primary.query(
        "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
        "VALUES (22, '1')")
    binlog_cluster.wait_replicas()
    purges = Purges()
    with BinlogSource(settings, registry, url=reader, on_purge=purges):
        assert purges.wait_count(1)
        assert purges.seen[0][3].tags == ("post:22", "home")  # not a flush
        assert _stale(cache, "/p/22/")
        # ... and not replay what the first run had done: post 21 stays fresh.
        assert not _stale(cache, "/p/21/")


@pytest.mark.parametrize("damage", ["corrupt", "purged"])
def test_lost_position_flushes_every_site_once_and_goes_on(
        tmp_path: Path, binlog_cluster: MariaDBCluster, caplog: pytest.LogCaptureFixture,
        damage: str) -> None:
    settings, registry, cache, reader = _node(tmp_path, binlog_cluster, 0)
    with BinlogSource(settings, registry, url=reader, on_purge=Purges()) as source:
        pass
    replica = binlog_cluster.replicas[0]
    if damage == "corrupt":
        source.state_path.write_text('{"gtid": "not-a-gtid\x00')
    else:
        for _ in range(3):
            binlog_cluster.primary.query(
                "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
                "VALUES (99, '1')")
        binlog_cluster.wait_replicas()
        replica.purge_binary_logs()  # the saved position is in no binlog now: error 1236
    cache.put(HOST, "/", b"home", tags=["home"])
    purges = Purges()
    with caplog.at_level(logging.WARNING), BinlogSource(settings, registry, url=reader,
                                                        on_purge=purges):
        assert purges.wait_count(1, timeout=15)
        assert purges.seen[0][3].flush
        assert _stale(cache, "/")
        cache.put(HOST, "/p/31/", b"31", tags=["post:31"])
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (31, '1')")
        assert wait_until(lambda: _stale(cache, "/p/31/"), timeout=10)
    lines = [r.getMessage() for r in caplog.records if "flushing every site" in r.getMessage()
             and "no saved binlog position" not in r.getMessage()]  # the first run's
    assert len(lines) == 1, lines
    assert ("is unreadable" if damage == "corrupt" else "is no longer on") in lines[0]
    assert len(purges.seen) == 2 and not purges.seen[1][3].flush  # one flush, then post 31
    # Counted for the node (the status page and /metrics): the first run's flush and this one.
    counts = NodeCounters.for_dir(settings.cache_dir).counts()
    assert counts[FLUSHES][purges.seen[0][2].name] == 2
    assert counts[PURGES][purges.seen[1][2].name] == 1
    # ... and it starts from the current position, not the lost one: a restart is quiet.
    assert json.loads(source.state_path.read_text())["gtid"] == \
        replica.query("SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
    caplog.clear()
    with caplog.at_level(logging.WARNING), BinlogSource(settings, registry, url=reader,
                                                        on_purge=Purges()):
        pass
    assert not [r for r in caplog.records if "flushing" in r.getMessage()]


@pytest.mark.parametrize("lost", ["none saved", "binlogs purged"])
def test_a_write_during_the_flush_is_not_skipped(
        tmp_path: Path, binlog_cluster: MariaDBCluster, lost: str) -> None:
    """The position to start from is taken BEFORE the flush: a write that the replica
    applies while the sites are being flushed (after a page was re-filled without it) is
    read, and its page purged, not skipped."""
    settings, registry, cache, reader = _node(tmp_path, binlog_cluster, 0)
    if lost == "binlogs purged":
        with BinlogSource(settings, registry, url=reader, on_purge=Purges()):
            pass
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (98, '1')")
        binlog_cluster.wait_replicas()
        binlog_cluster.replicas[0].purge_binary_logs()
    purges = Purges()

    def during_the_flush(event: object, site: object, action: PurgeAction) -> None:
        purges(None, site, action)  # type: ignore[arg-type]
        if action.flush and len(purges.seen) == 1:
            cache.put(HOST, "/p/61/", b"61 without its comment", tags=["post:61"])
            binlog_cluster.primary.query(
                "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
                "VALUES (61, '1')")
            binlog_cluster.wait_replicas()

    with BinlogSource(settings, registry, url=reader, on_purge=during_the_flush):
        assert purges.wait_count(1)
        assert purges.seen[0][3].flush
        assert wait_until(lambda: _stale(cache, "/p/61/"), timeout=10)


def test_two_nodes_each_purge_after_their_own_replica_has_the_row(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    nodes = [_node(tmp_path / f"n{i}", binlog_cluster, i) for i in (0, 1)]
    purges = [Purges(), Purges()]
    sources = [BinlogSource(s, r, url=u, on_purge=p, node=f"node-{i}")
               for i, ((s, r, _, u), p) in enumerate(zip(nodes, purges, strict=True))]
    for source in sources:
        source.start()
    try:
        for p in purges:
            assert p.wait_count(1)
        for _, _, cache, _ in nodes:
            cache.put(HOST, "/p/41/", b"41", tags=["post:41"])
        with binlog_cluster.replica_held(1):  # node 1's replica does not apply anything
            binlog_cluster.primary.query(
                "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
                "VALUES (41, '1')")
            assert wait_until(lambda: _stale(nodes[0][2], "/p/41/"), timeout=10)
            assert not _stale(nodes[1][2], "/p/41/")  # its replica has not got the row
        assert wait_until(lambda: _stale(nodes[1][2], "/p/41/"), timeout=10)
    finally:
        for source in sources:
            source.stop()


def test_a_burst_is_coalesced(tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    settings, registry, _cache, reader = _node(tmp_path, binlog_cluster, 0)
    purges = Purges()
    with BinlogSource(settings, registry, url=reader, on_purge=purges) as source:
        assert purges.wait_count(1)
        values = ",".join(f"({1000 + i}, '1')" for i in range(3000))
        for _ in range(10):  # 30 000 rows in 10 statements
            binlog_cluster.primary.query(
                "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
                f"VALUES {values}")
        assert wait_until(lambda: source.rows >= 30000, timeout=60)
        assert wait_until(lambda: source._queue.empty(), timeout=30)
    assert len(purges.seen) - 1 <= 10  # a handful of purges, not 30 000


def test_the_invalidator_command_with_the_binlog_source(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    """``tenantkit invalidator --source binlog``: a plain SQL write purges the page, and the
    node's status file says what runs (what /_tenantkit/health reads)."""
    settings, _registry, cache, reader = _node(tmp_path, binlog_cluster, 1)
    config = tmp_path / "tenantkit.toml"
    config.write_text(f'sites_dir = "{settings.sites_dir}"\ncache_dir = "{settings.cache_dir}"\n'
                      f'[bus]\ntransport = "files"\nnode = "web-1"\n')
    log = tmp_path / "invalidator.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from tenantkit.cli import main; main()", "--config",
             str(config), "invalidator", "--source", "binlog", "--binlog-url", reader],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        # The first start has no position: one flush, then the position is saved.
        state = layout.binlog_state(settings.cache_dir, "127.0.0.1",
                                    binlog_cluster.replicas[1].port)
        assert wait_until(state.is_file, timeout=30), log.read_text()
        cache.put(HOST, "/p/71/", b"71", tags=["post:71"])
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (71, '1')")
        assert wait_until(lambda: _stale(cache, "/p/71/"), timeout=15), log.read_text()

        def reported() -> list[InvalidatorStatus]:
            return [s for s in read_statuses(settings.cache_dir)
                    if s.last_event is not None and s.source == "bus+binlog"]
        assert wait_until(lambda: bool(reported()), timeout=15), log.read_text()
        status = reported()[0]
        assert (status.node, status.transport, status.connected) == ("web-1", "files", True)
        assert status.problem() is None and status.lag is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


def test_sites_in_one_database_are_told_apart_by_their_table_prefix(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    settings, _registry, cache, reader = _node(tmp_path, binlog_cluster, 0)
    binlog_cluster.primary.query(
        "CREATE TABLE IF NOT EXISTS tenantkit_test.two_comments LIKE tenantkit_test.wp_comments")
    replica = binlog_cluster.replicas[0]
    (settings.sites_dir / "two.toml").write_text(
        'hosts = ["two.example.org"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[cache]\npolicy = "targeted"\n'
        f'[database]\nprimary = "{binlog_cluster.primary_url}"\nreplicas = ["{replica.url()}"]\n'
        'table_prefix = "two_"\n[meta]\ninvalidation = "wordpress"\n')
    registry = Registry.load(settings)
    assert set(registry.sites) == {"blog", "two"}
    two = PageCache(settings.cache_dir / "two" / "pages")
    purges = Purges()
    with BinlogSource(settings, registry, url=reader, on_purge=purges):
        assert purges.wait_count(2)  # the first start flushes both sites
        cache.put(HOST, "/p/81/", b"blog 81", tags=["post:81"])
        two.put("two.example.org", "/p/81/", b"two 81", tags=["post:81"])
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.two_comments (comment_post_ID, comment_approved) "
            "VALUES (81, '1')")
        assert purges.wait_count(3)
        page = two.get("two.example.org", "/p/81/")
        assert page is None or page.stale
        assert not _stale(cache, "/p/81/")  # same post id, other site: untouched
        assert [p[2].name for p in purges.seen[2:]] == ["two"]


def test_a_killed_connection_resumes_where_it_was(
        tmp_path: Path, binlog_cluster: MariaDBCluster) -> None:
    """The reader reconnects by itself after a lost connection: from the last transaction
    read, not from where it started (which would replay every purge since)."""
    settings, registry, _cache, reader = _node(tmp_path, binlog_cluster, 0)
    replica = binlog_cluster.replicas[0]

    def dumps() -> set[int]:
        return {int(row[0]) for row in replica.query("SHOW PROCESSLIST")
                if row[4] == "Binlog Dump"}

    purges = Purges()
    with BinlogSource(settings, registry, url=reader, on_purge=purges):
        assert purges.wait_count(1)  # the first start's flush
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (91, '1')")
        assert purges.wait_count(2)
        assert wait_until(lambda: bool(dumps()), timeout=10)
        killed = dumps()
        for thread in killed:
            replica.query(f"KILL {thread}")
        assert wait_until(lambda: bool(dumps() - killed), timeout=15)
        binlog_cluster.primary.query(
            "INSERT INTO tenantkit_test.wp_comments (comment_post_ID, comment_approved) "
            "VALUES (92, '1')")
        assert purges.wait_for(lambda seen: any("post:92" in p[3].tags for p in seen))
    again = [p[3].tags for p in purges.seen[2:]]
    assert not any("post:91" in tags for tags in again), again
