"""Invalidation: commit-to-purge latency by source, the binlog reader's rate, a burst, and
PageCache against cachelib.

1. Four node processes, in one run, each with its own cache directory and its own replica
   of a MariaDB primary (two replicas, set up for the binlog source: two nodes per replica),
   each running an Invalidator over Redis Streams (the hooks' path: an event with the
   commit's GTID, a wait until the node's replica has it, the purge) and a BinlogSource on
   its replica (a ``tables`` map). The publisher commits one row at a time on the primary
   and every node reports when its purge is done: latency is from just after the commit to
   the end of the purge, per (commit, node), for "hooks over Redis Streams" and "binlog
   source". The replica's apply time (commit -> MASTER_GTID_WAIT returns) is measured too:
   the binlog source's latency includes it by construction.
2. The binlog reader alone: transactions per second read and purged while catching up on
   a backlog of single-row commits, and a 30 000-row import (10 statements): rows per second
   and how many purges the coalescing made of it.
3. A burst of 30 000 events over Redis Streams with the default ``stream_maxlen`` (10 000) to
   the four nodes, 400 pages each: the pages left fresh (never purged) must be 0.
4. ``PageCache.get`` / ``put`` against cachelib's ``FileSystemCache.get`` / ``set`` storing
   the same page (body, status, headers) on the same disk.

    python -m benchmarks.invalidate [--quick]
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pymysql

from benchmarks.harness import Report, alternate, main, percentile
from tenantkit.cache.events import CommentChanged, Event, PostEdited, PurgeAction
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.sources.binlog import BinlogSource
from tenantkit.cache.transports import make_transport
from tenantkit.config import BusSettings, CacheSettings, DatabaseSettings, Settings
from tenantkit.registry import Registry
from tenantkit.sites import Site
from tenantkit.testing import MariaDBCluster, RedisServer

HOST = "blog.example.org"
NODES = 4
REPLICAS = 2
BURST_PAGES = 400
BURST_EVENTS = 30000
IMPORT_ROWS = 30000


def _settings(root: Path, urls: tuple[str, str], redis_url: str, node: str) -> Settings:
    """Two sites on (primary, replica): ``hooks`` (purged by bus events) and ``binlog`` (by
    its table map)."""
    sites = root / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    primary, replica = urls
    database = f'[database]\nprimary = "{primary}"\nreplicas = ["{replica}"]\n'
    for name, meta in (("hooks", ""), ("binlog", '[meta]\ninvalidation = "tables"\n'
                                      'invalidation_tables = {bl_comments = "comment"}\n')):
        (sites / f"{name}.toml").write_text(
            f'hosts = ["{name}.{HOST}"]\n[backend]\ntype = "proxy"\n'
            f'url = "http://127.0.0.1:9"\n{database}{meta}')
    return Settings(sites_dir=sites, cache_dir=root / "cache",
                    database=DatabaseSettings(primary=primary),
                    cache=CacheSettings(policy="targeted"),
                    bus=BusSettings(transport="redis", redis_url=redis_url, node=node,
                                    replica_wait_timeout=5))


def _cache(settings: Settings, site: str) -> PageCache:
    return PageCache(settings.cache_dir / site / "pages")


def _urls(cluster: MariaDBCluster, replica: int) -> tuple[str, str]:
    return cluster.primary_url, cluster.replicas[replica].url()


def _node(root: str, urls: tuple[str, str], binlog_url: str, index: int, redis_url: str,
          results: Any, pipe: Connection) -> None:
    """One web node: an Invalidator over Redis Streams and a BinlogSource on its replica.
    Reports ("hooks", event id, ns) and ("binlog", post id, ns) for each purge; answers
    "fill" (pages of the burst) and "fresh" (how many of them were never purged)."""
    settings = _settings(Path(root) / f"node{index}", urls, redis_url, f"node{index}")
    registry = Registry.load(settings)

    def hooks(event: Event | None, site: Site, action: PurgeAction) -> None:
        if event is not None and event.origin in ("bench", "bench-end"):  # not the burst's
            results.put(("hooks", event.id, time.monotonic_ns()))

    def binlog(event: Event | None, site: Site, action: PurgeAction) -> None:
        now = time.monotonic_ns()
        for tag in action.tags:
            if tag.startswith("post:") and int(tag[5:]) < 100000:  # the latency rows only
                results.put(("binlog", int(tag[5:]), now))

    invalidator = Invalidator(settings, registry, poll_timeout=0.2, on_purge=hooks).start()
    source = BinlogSource(settings, registry, url=binlog_url, node=f"n{index}",
                          on_purge=binlog).start()
    invalidator.sources = [source]
    time.sleep(1.0)  # the first connect of a new consumer group flushes: let it pass
    pipe.send("ready")
    hooks_cache = _cache(settings, "hooks")
    try:
        while True:
            command = pipe.recv()
            if command == "stop":
                break
            if command == "fill":
                for i in range(BURST_PAGES):
                    hooks_cache.put(f"hooks.{HOST}", f"/burst/{i}/", b"x" * 2000,
                                    tags=[f"post:{100000 + i}"])
                pipe.send(invalidator.handled)
            elif command == "fresh":
                fresh = 0
                for i in range(BURST_PAGES):
                    page = hooks_cache.get(f"hooks.{HOST}", f"/burst/{i}/")
                    fresh += page is not None and not page.stale
                pipe.send(fresh)
    finally:
        source.stop()
        invalidator.stop()


def _commit(conn: Any, table: str, post_id: int) -> str:
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO tenantkit_test.{table} (comment_post_ID, comment_approved) "
                    "VALUES (%s, '1')", (post_id,))
        conn.commit()
        cur.execute("SELECT @@last_gtid")
        row = cur.fetchone()
    return str(row[0])


def _nodes(quick: bool, report: Report) -> None:
    commits = 30 if quick else 100
    root = Path(tempfile.mkdtemp(prefix="tk-bench-inval-"))
    server = RedisServer()
    cluster = MariaDBCluster(replicas=REPLICAS, binlog_source=True)
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    procs, pipes = [], []
    samples: dict[str, list[float]] = {"hooks over redis streams": [], "binlog source": [],
                                       "replica apply": []}
    try:
        server.start()
        cluster.start()
        for table in ("hk_comments", "bl_comments"):
            cluster.primary.query(
                f"CREATE TABLE tenantkit_test.{table} (comment_ID BIGINT PRIMARY KEY "
                "AUTO_INCREMENT, comment_post_ID BIGINT, comment_approved VARCHAR(20))")
        cluster.wait_replicas()
        for index in range(NODES):
            parent, child = ctx.Pipe()
            replica = index % REPLICAS
            proc = ctx.Process(target=_node, args=(
                str(root), _urls(cluster, replica), cluster.binlog_url(replica), index,
                server.url, results, child))
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a node process did not start")
            pipe.recv()
        publisher = make_transport(_settings(root / "pub", _urls(cluster, 0), server.url,
                                             "pub"))
        conn = pymysql.connect(**cluster.primary.connect_args())
        replica = cluster.replicas[0].admin()
        post = 0

        def wait_nodes(kind: str, key: object, start: int) -> None:
            got = 0
            while got < NODES:
                seen_kind, seen_key, done = results.get(timeout=30)
                if (seen_kind, seen_key) == (kind, key):
                    got += 1
                    samples[names[kind]].append((done - start) / 1e9)

        names = {"hooks": "hooks over redis streams", "binlog": "binlog source"}
        try:
            for _ in range(commits):
                # hooks: commit, then publish the event with its GTID (what hooks.py does)
                post += 1
                gtid = _commit(conn, "hk_comments", post)
                start = time.monotonic_ns()
                event = CommentChanged("hooks", post, gtid=gtid, origin="bench")
                publisher.publish(event)
                wait_nodes("hooks", event.id, start)
                # binlog: commit, nothing else
                post += 1
                gtid = _commit(conn, "bl_comments", post)
                start = time.monotonic_ns()
                wait_nodes("binlog", post, start)
                # the replica's apply time, alone
                post += 1
                gtid = _commit(conn, "hk_comments", post)
                start = time.monotonic_ns()
                with replica.cursor() as cur:
                    cur.execute("SELECT MASTER_GTID_WAIT(%s, 10)", (gtid,))
                samples["replica apply"].append((time.monotonic_ns() - start) / 1e9)
            _reader_rate(quick, cluster, root, conn, report)
            _burst(pipes, publisher, results, report)
        finally:
            conn.close()
            replica.close()
            publisher.close()
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        cluster.close()
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    report.add_group("commit-to-purge latency, 4 nodes", samples, unit="ms",
                     baseline="hooks over redis streams")
    p50 = {k: percentile(v, 50) * 1e3 for k, v in samples.items()}
    p99 = {k: percentile(v, 99) * 1e3 for k, v in samples.items()}
    for name in samples:
        print(f"{name}: p50 {p50[name]:.1f} ms, p99 {p99[name]:.1f} ms")
    over = p99["binlog source"] - p99["replica apply"]
    report.target(f"binlog source p99 <= 50 ms over the replica's apply time (got "
                  f"{p99['binlog source']:.1f} ms, apply p99 {p99['replica apply']:.1f} ms: "
                  f"+{over:.1f} ms)", over <= 50)


def _reader_rate(quick: bool, cluster: MariaDBCluster, root: Path, conn: Any,
                 report: Report) -> None:
    """The reader alone: catch up on a backlog of single-row commits; then an import."""
    backlog = 500 if quick else 2000
    settings = _settings(root / "reader", _urls(cluster, 0), "redis://127.0.0.1:9/0", "reader")
    registry = Registry.load(settings)
    source = BinlogSource(settings, registry, url=cluster.binlog_url(0), node="reader")
    source.start()
    source.stop()  # the position is saved: what follows is a backlog
    with conn.cursor() as cur:
        for i in range(backlog):
            cur.execute("INSERT INTO tenantkit_test.bl_comments (comment_post_ID, "
                        "comment_approved) VALUES (%s, '1')", (200000 + i % 500,))
            conn.commit()
    cluster.wait_replicas(60)
    source = BinlogSource(settings, registry, url=cluster.binlog_url(0), node="reader")
    started = time.monotonic()
    source.start()
    try:
        while source.transactions < backlog or not source._queue.empty():
            if time.monotonic() - started > 120:
                raise RuntimeError(f"the reader read {source.transactions} of {backlog}")
            time.sleep(0.01)
        seconds = time.monotonic() - started
        rate = backlog / seconds
        report.add_value("binlog reader", "transactions/s (catching up)", rate, "tx/s")
        print(f"binlog reader: {backlog} transactions in {seconds:.2f} s = {rate:.0f} tx/s, "
              f"{source.purges} purges")
        rows = IMPORT_ROWS // 10
        before_rows, before_purges = source.rows, source.purges
        values = ",".join(f"({300000 + i % 1000}, '1')" for i in range(rows))
        started = time.monotonic()
        with conn.cursor() as cur:
            for _ in range(10):
                cur.execute("INSERT INTO tenantkit_test.bl_comments (comment_post_ID, "
                            f"comment_approved) VALUES {values}")
                conn.commit()
        while source.rows - before_rows < IMPORT_ROWS or not source._queue.empty():
            if time.monotonic() - started > 120:
                raise RuntimeError(f"the reader read {source.rows - before_rows} rows")
            time.sleep(0.01)
        time.sleep(0.2)  # the last coalesced purge
        seconds = time.monotonic() - started
        purges = source.purges - before_purges
        report.add_value("binlog reader", "rows/s (30 000-row import)",
                         IMPORT_ROWS / seconds, "rows/s")
        report.add_value("binlog reader", "purges for the 30 000-row import", purges,
                         "purges")
        print(f"binlog reader: a {IMPORT_ROWS}-row import (commit to last purge) in "
              f"{seconds:.2f} s = {IMPORT_ROWS / seconds:.0f} rows/s, {purges} purges")
        report.target(f"a 30 000-row import is a handful of purges (got {purges})",
                      purges <= 20)
    finally:
        source.stop()


def _burst(pipes: list[Connection], publisher: Any, results: Any, report: Report) -> None:
    """30 000 events over Redis Streams (default stream_maxlen) to 4 nodes of 400 pages."""
    for pipe in pipes:
        pipe.send("fill")
    for pipe in pipes:
        pipe.recv()
    started = time.monotonic()
    for i in range(BURST_EVENTS):
        publisher.publish(PostEdited("hooks", 100000 + i % BURST_PAGES, origin="burst"))
    marker = PostEdited("hooks", 1, origin="bench-end")
    publisher.publish(marker)
    done = 0  # a node is done once it has handled the last event, after all the others
    while done < NODES:
        kind, key, _ = results.get(timeout=max(1.0, started + 120 - time.monotonic()))
        done += (kind, key) == ("hooks", marker.id)
    seconds = time.monotonic() - started
    fresh = []
    for pipe in pipes:
        pipe.send("fresh")
        fresh.append(pipe.recv())
    stale = sum(fresh)
    report.add_value("30 000-event burst, 4 nodes x 400 pages", "pages never purged", stale,
                     "pages")
    print(f"burst: {BURST_EVENTS} events, default stream_maxlen: pages never purged "
          f"{fresh} (all purged in {seconds:.1f} s)")
    report.target(f"0 pages left unpurged after a 30 000-event burst (got {stale})",
                  stale == 0)


def _throughput(quick: bool, report: Report) -> None:
    from cachelib import FileSystemCache

    root = Path(tempfile.mkdtemp(prefix="tk-bench-pc-"))
    keys = 100 if quick else 300
    body = (b"<html><body>" + b"<p>lorem ipsum dolor sit amet</p>" * 900 + b"</body></html>")
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "max-age=60")]
    try:
        ours = PageCache(root / "pages", ttl=3600)
        theirs = FileSystemCache(str(root / "cachelib"), threshold=keys * 4, default_timeout=3600)
        paths = [f"/2024/{i:04d}/post-{i}/" for i in range(keys)]
        value = {"body": body, "status": 200, "headers": headers}

        def put_ours() -> None:
            for path in paths:
                ours.put(HOST, path, body, headers=headers, tags=("home",))

        def put_theirs() -> None:
            for path in paths:
                theirs.set(HOST + path, value)

        def get_ours() -> None:
            for path in paths:
                page = ours.get(HOST, path)
                assert page is not None and page.body is not None

        def get_theirs() -> None:
            for path in paths:
                got = theirs.get(HOST + path)
                assert got is not None and got["body"] is not None

        rounds = 5 if quick else 15
        puts = alternate({"tenantkit": put_ours, "cachelib": put_theirs}, rounds=rounds)
        gets = alternate({"tenantkit": get_ours, "cachelib": get_theirs}, rounds=rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.add_group("page put (27 KB)", puts, unit="us", per_call=keys, baseline="cachelib")
    report.add_group("page get (27 KB)", gets, unit="us", per_call=keys, baseline="cachelib")
    ratio = report.median("page get (27 KB)", "cachelib") / report.median(
        "page get (27 KB)", "tenantkit")
    report.target(f"get throughput >= 1.0x cachelib (got {ratio:.2f}x)", ratio >= 1.0)
    report.notes.append("put does more than cachelib's set: a sidecar, a tag index entry, a "
                        "URL index entry, all atomic renames")


def run(quick: bool = False) -> Report:
    report = Report("invalidate", "commit-to-purge latency by source (hooks over Redis "
                    "Streams, binlog), binlog reader rate, a burst; PageCache vs cachelib")
    _throughput(quick, report)
    _nodes(quick, report)
    return report


if __name__ == "__main__":
    main(run)
