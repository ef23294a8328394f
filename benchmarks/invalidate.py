"""Invalidation: commit-to-purge latency over each transport, and PageCache against cachelib.

1. Latency: 4 node processes, each running an Invalidator per transport (Redis Streams and
   Redis pub/sub, one Redis), each with its own cache directory; the publisher sends one
   targeted event at a time and every node reports when its purge is done. ``local`` is the
   in-process transport: one Invalidator in the publishing process (it cannot reach other
   processes). Replica wait off. Latency is from just after the commit (the ``publish``
   call) to the end of the purge on a node, per (event, node).
2. ``PageCache.get`` / ``put`` against cachelib's ``FileSystemCache.get`` / ``set`` storing
   the same page (body, status, headers) on the same disk.

    python -m benchmarks.invalidate [--quick]
"""

from __future__ import annotations

import multiprocessing
import queue
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.harness import Report, alternate, main, percentile
from tenantkit.cache.events import Event, PostEdited, PurgeAction
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.transports import LocalTransport, make_transport
from tenantkit.config import BusSettings, Settings
from tenantkit.registry import Registry
from tenantkit.sites import Site
from tenantkit.testing import RedisServer

HOST = "blog.example.org"
NODES = 4
PAGES = 20
TRANSPORTS = ("redis", "pubsub")


def _settings(root: Path, transport: str, redis_url: str, node: str) -> Settings:
    sites = root / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / "blog.toml").write_text(
        f'hosts = ["{HOST}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[cache]\npolicy = "targeted"\n')
    return Settings(sites_dir=sites, cache_dir=root / "cache",
                    bus=BusSettings(transport=transport,  # type: ignore[arg-type]
                                    redis_url=redis_url, node=node, replica_wait_timeout=0))


def _fill(settings: Settings) -> None:
    cache = PageCache(settings.cache_dir / "blog" / "pages")
    for i in range(PAGES):
        cache.put(HOST, f"/p/{i}/", b"x" * 20000, tags=[f"post:{i}", "home"])


def _node(root: str, redis_url: str, index: int, results: Any, ready: Connection,
          stop: Any) -> None:
    invalidators = []

    def reporter(transport: str) -> Any:
        def on_purge(event: Event | None, site: Site, action: PurgeAction) -> None:
            if event is not None:
                results.put((transport, event.id, time.monotonic_ns()))
        return on_purge

    for transport in TRANSPORTS:
        settings = _settings(Path(root) / f"node{index}-{transport}", transport, redis_url,
                             f"node{index}")
        _fill(settings)
        invalidators.append(Invalidator(settings, Registry.load(settings), poll_timeout=0.2,
                                        on_purge=reporter(transport)).start())
    time.sleep(1.0)  # the first connect of a new consumer group flushes: let it pass
    for settings_root in Path(root).glob(f"node{index}-*"):
        _fill(Settings(cache_dir=settings_root / "cache"))
    ready.send("ready")
    stop.wait(600)
    for invalidator in invalidators:
        invalidator.stop()


def _latency(quick: bool, report: Report) -> None:
    events = 40 if quick else 200
    rounds = 4 if quick else 10
    root = Path(tempfile.mkdtemp(prefix="tk-bench-inval-"))
    server = RedisServer()
    server.start()
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    stop = ctx.Event()
    procs = []
    pipes = []
    local_seen: queue.Queue[tuple[str, int]] = queue.Queue()
    local_settings = _settings(root / "local", "local", server.url, "local")
    _fill(local_settings)
    local_transport = LocalTransport(local_settings.cache_dir)
    local = Invalidator(
        local_settings, Registry.load(local_settings), transport=local_transport,
        poll_timeout=0.2,
        on_purge=lambda e, s, a: local_seen.put((e.id, time.monotonic_ns())) if e else None,
    ).start()
    publishers = {t: make_transport(_settings(root / "pub", t, server.url, "pub"))
                  for t in TRANSPORTS}
    samples: dict[str, list[float]] = {"redis streams": [], "redis pub/sub": [], "local": []}
    names = {"redis": "redis streams", "pubsub": "redis pub/sub"}
    try:
        for index in range(NODES):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_node, args=(str(root), server.url, index, results, child,
                                                   stop))
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a node process did not start")
            pipe.recv()
        per_round = max(1, events // rounds)
        counter = 0
        for _ in range(rounds):
            for transport in (*TRANSPORTS, "local"):
                for _ in range(per_round):
                    counter += 1
                    event = PostEdited("blog", counter % PAGES)
                    start = time.monotonic_ns()
                    if transport == "local":
                        local_transport.publish(event)
                        event_id, done = local_seen.get(timeout=30)
                        assert event_id == event.id
                        samples["local"].append((done - start) / 1e9)
                        continue
                    publishers[transport].publish(event)
                    for _ in range(NODES):
                        kind, event_id, done = results.get(timeout=30)
                        if event_id != event.id:
                            continue  # a late duplicate: at least once
                        samples[names[kind]].append((done - start) / 1e9)
                    time.sleep(0.002)
    finally:
        stop.set()
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
        local.stop()
        for publisher in publishers.values():
            publisher.close()
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    report.add_group("commit-to-purge latency, 4 nodes", samples, unit="ms",
                     baseline="redis streams")
    streams = samples["redis streams"]
    p50 = percentile(streams, 50) * 1e3
    p99 = percentile(streams, 99) * 1e3
    report.target(f"redis streams p50 <= 5 ms (got {p50:.2f} ms)", p50 <= 5)
    report.target(f"redis streams p99 <= 25 ms (got {p99:.2f} ms)", p99 <= 25)


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
    report = Report("invalidate", "commit-to-purge latency by transport; PageCache vs cachelib")
    _throughput(quick, report)
    _latency(quick, report)
    return report


if __name__ == "__main__":
    main(run)
