"""The replica-safe purge: a node purges only once its own replica has the commit."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from tenantkit.cache.events import PostEdited
from tenantkit.cache.hooks import install
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.transports import LocalTransport, RedisStreamTransport
from tenantkit.db.gtid import last_gtid, wait_for_gtid
from tenantkit.testing import MariaDBCluster, RedisServer

from .helpers import HOST, Purges, make_settings, registry_for, wait_until


def _setup_table(primary: Engine, cluster: MariaDBCluster) -> None:
    with primary.begin() as conn:
        conn.execute(text("CREATE TABLE posts (id INT PRIMARY KEY, body VARCHAR(50))"))
        conn.execute(text("INSERT INTO posts VALUES (1, 'v1')"))
    cluster.wait_replicas()


def _commit(primary: Engine, body: str) -> str | None:
    with primary.connect() as conn:
        conn.execute(text("UPDATE posts SET body = :b WHERE id = 1"), {"b": body})
        conn.commit()
        return last_gtid(conn)


class Renderer(threading.Thread):
    """Plays the web tier: on a miss or stale page, render from the replica and store."""

    def __init__(self, cache: PageCache, replica: Engine) -> None:
        super().__init__(daemon=True)
        self.cache = cache
        self.replica = replica
        self.stop = threading.Event()
        self.stored: list[tuple[float, bytes]] = []

    def run(self) -> None:
        while not self.stop.wait(0.005):
            page = self.cache.get(HOST, "/1/")
            if page is not None and not page.stale:
                continue
            with self.cache.begin_fill(HOST, "/1/") as ticket:
                with self.replica.connect() as conn:
                    body = conn.execute(text("SELECT body FROM posts WHERE id = 1")).scalar()
                data = str(body).encode()
                if self.cache.put(HOST, "/1/", data, tags=["post:1"], ticket=ticket):
                    self.stored.append((time.monotonic(), data))


def _run_renderer(cache: PageCache, replica: Engine, body: Callable[[], None]) -> Renderer:
    renderer = Renderer(cache, replica)
    renderer.start()
    try:
        body()
    finally:
        renderer.stop.set()
        renderer.join(10)
    return renderer


def test_held_replica_never_refills_pre_write_data(tmp_path: Path,
                                                   mariadb_pair: MariaDBCluster) -> None:
    settings = make_settings(tmp_path, replicas=(mariadb_pair.replica_url,),
                             replica_wait_timeout=20)
    primary = create_engine(mariadb_pair.primary_url)
    replica = create_engine(mariadb_pair.replica_url)
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    transport = LocalTransport(settings.cache_dir)
    inv = Invalidator(settings, registry_for(settings), transport=transport, on_purge=purges,
                      poll_timeout=0.05)
    try:
        _setup_table(primary, mariadb_pair)
        inv.start()

        def scenario() -> None:
            assert wait_until(lambda: cache.get(HOST, "/1/") is not None)
            mariadb_pair.hold_replica()
            gtid = _commit(primary, "v2")
            assert gtid
            transport.publish(PostEdited("blog", 1, gtid=gtid))
            time.sleep(1.0)
            assert purges.seen == []  # still waiting for the replica
            mariadb_pair.release_replica()
            assert purges.wait_count(1)

            def refilled() -> bool:
                page = cache.get(HOST, "/1/")
                return page is not None and not page.stale and page.body == b"v2"

            assert wait_until(refilled), "the renderer re-filled the page after the purge"

        renderer = _run_renderer(cache, replica, scenario)
        purged_at = purges.seen[0][0]
        after = [body for when, body in renderer.stored if when > purged_at]
        assert after, "the renderer re-filled the page after the purge"
        assert set(after) == {b"v2"}
        page = cache.get(HOST, "/1/")
        assert page is not None and page.body == b"v2" and not page.stale
    finally:
        inv.stop()
        primary.dispose()
        replica.dispose()


def test_replica_wait_timeout_purges_now_and_after_the_lag_bound(
        tmp_path: Path, mariadb_pair: MariaDBCluster) -> None:
    settings = make_settings(tmp_path, replicas=(mariadb_pair.replica_url,),
                             replica_wait_timeout=0.3, lag_threshold=1.0)
    primary = create_engine(mariadb_pair.primary_url)
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    transport = LocalTransport(settings.cache_dir)
    inv = Invalidator(settings, registry_for(settings), transport=transport, on_purge=purges,
                      poll_timeout=0.05)
    try:
        _setup_table(primary, mariadb_pair)
        inv.start()
        with mariadb_pair.replica_held():
            gtid = _commit(primary, "v2")
            cache.put(HOST, "/1/", b"v1")
            transport.publish(PostEdited("blog", 1, gtid=gtid))
            assert purges.wait_count(1)
            cache.put(HOST, "/1/", b"v1 again, read from the lagging replica")
            assert purges.wait_count(2)
        assert purges.seen[1][0] - purges.seen[0][0] >= 0.9
        assert purges.seen[1][1] is None  # the second purge is the scheduled one
        assert cache.get(HOST, "/1/").stale  # type: ignore[union-attr]
    finally:
        inv.stop()
        primary.dispose()


def test_second_purges_merge_with_each_other_and_with_due_purges(
        tmp_path: Path, mariadb_pair: MariaDBCluster) -> None:
    """Two events behind a lagging replica: their purges are one, and their two second
    purges after the lag bound are one too (not four purges, each on top of the next)."""
    settings = make_settings(tmp_path, replicas=(mariadb_pair.replica_url,),
                             replica_wait_timeout=0.3, lag_threshold=1.0)
    primary = create_engine(mariadb_pair.primary_url)
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    transport = LocalTransport(settings.cache_dir)
    inv = Invalidator(settings, registry_for(settings), transport=transport, on_purge=purges,
                      poll_timeout=0.05, coalesce_window=1.0)
    try:
        _setup_table(primary, mariadb_pair)
        inv.start()
        with mariadb_pair.replica_held():
            cache.put(HOST, "/1/", b"v1")
            for body in ("v2", "v3"):
                gtid = _commit(primary, body)
                transport.publish(PostEdited("blog", 1, gtid=gtid))
            assert purges.wait_count(2, timeout=15)
            time.sleep(2.0)  # past both second purges' bound and window: nothing more
        assert len(purges.seen) == 2, purges.seen
        assert all(s[3].flush for s in purges.seen)
        assert purges.seen[1][0] - purges.seen[0][0] >= 0.9
    finally:
        inv.stop()
        primary.dispose()


def _node_config(tmp_path: Path, name: str, sites_dir: Path, replica_url: str,
                 redis_url: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'sites_dir = "{sites_dir}"\ncache_dir = "{tmp_path / name / "cache"}"\n'
        f'[database]\nreplicas = ["{replica_url}"]\n'
        f'[bus]\ntransport = "redis"\nredis_url = "{redis_url}"\nnode = "{name}"\n'
        f"replica_wait_timeout = 20\n"
    )
    return path


def test_two_nodes_each_purge_after_their_own_replica(
        tmp_path: Path, mariadb_cluster: Callable[..., MariaDBCluster],
        redis_server: RedisServer) -> None:
    cluster = mariadb_cluster(replicas=2)
    settings = make_settings(tmp_path / "shared", transport="redis", redis_url=redis_server.url)
    primary = create_engine(cluster.primary_url)
    caches = [PageCache(tmp_path / n / "cache" / "blog" / "pages") for n in ("a", "b")]
    procs = []
    try:
        with primary.begin() as conn:
            conn.execute(text("CREATE TABLE wp_comments (comment_ID INT PRIMARY KEY, "
                              "comment_post_ID INT, comment_approved VARCHAR(20))"))
        cluster.wait_replicas()
        for index, name in enumerate(("a", "b")):
            config = _node_config(tmp_path, name, settings.sites_dir, cluster.replica_urls[index],
                                  redis_server.url)
            with open(tmp_path / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", "from tenantkit.cli import main; main()",
                     "--config", str(config), "invalidator"],
                    stdout=subprocess.DEVNULL, stderr=log))
        # A new node flushes once (it cannot know what it missed): wait for that.
        for cache in caches:
            assert wait_until(lambda c=cache: os.readlink(c.root / "current") == "g2", 30)
            cache.put(HOST, "/", b"before the comment")

        from sqlalchemy.orm import sessionmaker  # the write goes through node A's session

        from .test_hooks import Comment

        factory = sessionmaker(primary)
        publisher = RedisStreamTransport(redis_server.url)
        site = registry_for(settings).sites["blog"]
        remove = install(factory, site, transport=publisher)
        try:
            with cluster.replica_held(1):
                with factory() as session:
                    session.add(Comment(comment_ID=1, comment_post_ID=1, comment_approved="1"))
                    session.commit()
                assert wait_until(lambda: caches[0].get(HOST, "/").stale)  # type: ignore
                time.sleep(1.0)
                assert not caches[1].get(HOST, "/").stale  # type: ignore[union-attr]
            assert wait_until(lambda: caches[1].get(HOST, "/").stale)  # type: ignore
            rows = cluster.replicas[1].query(
                f"SELECT COUNT(*) FROM {cluster.database}.wp_comments")
            assert rows[0][0] == 1
        finally:
            remove()
            publisher.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        primary.dispose()


def test_site_with_own_primary_is_purged_without_waiting_for_global_replicas(
        tmp_path: Path, mariadb_pair: MariaDBCluster) -> None:
    """The global replica replicates nothing of this site's: no wait on it, one purge."""
    settings = make_settings(tmp_path, replicas=(mariadb_pair.replica_url,),
                             replica_wait_timeout=5, lag_threshold=1.0)
    site_file = settings.sites_dir / "blog.toml"
    site_file.write_text(site_file.read_text()
                         + f'[database]\nprimary = "{mariadb_pair.primary_url}"\n')
    registry = registry_for(settings)
    assert registry.sites["blog"].database.primary == mariadb_pair.primary_url
    primary = create_engine(mariadb_pair.primary_url)
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    transport = LocalTransport(settings.cache_dir)
    inv = Invalidator(settings, registry, transport=transport, on_purge=purges,
                      poll_timeout=0.05)
    try:
        with primary.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE posts (id INT PRIMARY KEY)")
        inv.start()
        with mariadb_pair.replica_held():
            with primary.connect() as conn:
                conn.exec_driver_sql("INSERT INTO posts VALUES (1)")
                conn.commit()
                gtid = last_gtid(conn)
            assert gtid
            cache.put(HOST, "/1/", b"v1")
            started = time.monotonic()
            transport.publish(PostEdited("blog", 1, gtid=gtid))
            assert purges.wait_count(1, timeout=10)
            assert purges.seen[0][0] - started < 2.5, "waited on a replica the site has not"
            time.sleep(1.5)  # past the lag bound: no second, scheduled purge
            assert len(purges.seen) == 1
    finally:
        inv.stop()
        primary.dispose()


def test_events_behind_a_lagging_replica_do_not_each_wait_the_whole_timeout(
        tmp_path: Path, mariadb_pair: MariaDBCluster, caplog: pytest.LogCaptureFixture) -> None:
    """Once the replica missed one event's GTID, later events wait for it only briefly:
    four events are purged about one timeout after the first (was one timeout each), and
    once it has caught up an event waits as before."""
    settings = make_settings(tmp_path, replicas=(mariadb_pair.replica_url,),
                             replica_wait_timeout=2.0, lag_threshold=1.0)
    primary = create_engine(mariadb_pair.primary_url)
    purges = Purges()
    transport = LocalTransport(settings.cache_dir)
    inv = Invalidator(settings, registry_for(settings), transport=transport, on_purge=purges,
                      poll_timeout=0.05, coalesce_window=0)
    caplog.set_level(logging.INFO, logger="tenantkit.cache.invalidator")
    try:
        _setup_table(primary, mariadb_pair)
        inv.start()
        with mariadb_pair.replica_held():
            started = time.monotonic()
            for n in range(4):
                transport.publish(PostEdited("blog", 1, gtid=_commit(primary, f"v{n}")))
            assert purges.wait_for(lambda seen: sum(1 for s in seen if s[1]) >= 4)
            firsts = [when for when, event, *_ in purges.seen if event is not None]
            # One timeout (2 s) for the first, at most BEHIND_WAIT (0.2 s) for each other:
            # generous for a loaded machine, well under the 8 s of four whole timeouts.
            assert firsts[3] - started < 5.0, [round(t - started, 2) for t in firsts]
        gtid = _commit(primary, "after")
        assert wait_until(lambda: _replica_has_gtid(mariadb_pair, gtid))
        transport.publish(PostEdited("blog", 1, gtid=gtid))
        assert purges.wait_for(lambda seen: sum(1 for s in seen if s[1]) >= 5)
        assert "has caught up" in caplog.text
    finally:
        inv.stop()
        primary.dispose()


def _replica_has_gtid(pair: MariaDBCluster, gtid: str | None) -> bool:
    replica = create_engine(pair.replica_url)
    try:
        with replica.connect() as conn:
            return wait_for_gtid(conn, gtid, 0)
    finally:
        replica.dispose()
