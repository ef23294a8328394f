"""One actor per node, coalesced purges, and trigger files that never wait on Redis.

Real ``tenantkit invalidator`` processes, a real Redis (killed, restarted, paused with
SIGSTOP) and real trigger files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tenantkit.cache.events import Purge, to_json
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.nodecounters import COALESCED, FLUSHES, PURGES, read_node_counters
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.transports import RedisStreamTransport, TriggerFileTransport
from tenantkit.config import Settings
from tenantkit.testing import RedisServer

from .helpers import HOST, Purges, make_settings, registry_for, wait_until

STREAM = "tenantkit:events"
NODE = "web1"
NEWS = "news.example.org"


def _settings(tmp_path: Path, url: str, transport: str = "redis") -> Settings:
    return make_settings(tmp_path, transport=transport, redis_url=url, node=NODE,
                         sites=("blog", "news"), policy="targeted")


def _config(settings: Settings, tmp_path: Path, *, window: float = 0.25) -> Path:
    path = tmp_path / "tenantkit.toml"
    path.write_text(
        f'sites_dir = "{settings.sites_dir}"\ncache_dir = "{settings.cache_dir}"\n'
        f'[bus]\ntransport = "{settings.bus.transport}"\nredis_url = '
        f'"{settings.bus.redis_url}"\nnode = "{NODE}"\ncoalesce_window = {window}\n')
    return path


class Procs:
    """``tenantkit invalidator`` processes of one node, each logging to its own file."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"inv-{len(self.procs)}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from tenantkit.cli import main; main()",
                 "--config", str(self.config), "invalidator"],
                stdout=subprocess.DEVNULL, stderr=fh)
        self.procs.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp_path / f"inv-{index}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Procs]]:
    made: list[Procs] = []
    yield made
    for p in made:
        p.stop()


def _generation(settings: Settings, site: str) -> int:
    return int(os.readlink(settings.cache_dir / site / "pages" / "current")[1:])


def test_a_redis_reconnect_flushes_each_site_once_per_node(
        tmp_path: Path, redis_server: RedisServer, procs: list[Procs]) -> None:
    """Three invalidator processes on one node (as the gunicorn workers and the standalone
    one): one consumes, two stand by; Redis killed and restarted flushes each site once."""
    redis_server.flushall()
    settings = _settings(tmp_path, redis_server.url)
    node = Procs(tmp_path, _config(settings, tmp_path))
    procs.append(node)
    actor = node.start()
    # The new consumer group's flush: each site's generation 1 -> 2.
    assert wait_until(lambda: all(
        (settings.cache_dir / s / "pages" / "current").is_symlink()
        and _generation(settings, s) == 2 for s in ("blog", "news")), timeout=30)
    node.start()
    node.start()
    assert wait_until(lambda: all("standing by" in node.log(i) for i in (1, 2)), timeout=30)
    assert f"node actor is pid {actor.pid}" in node.log(1)

    redis_server.stop(kill=True)
    redis_server.start()
    assert wait_until(lambda: all(_generation(settings, s) == 3 for s in ("blog", "news")),
                      timeout=30)
    # Every process would have noticed the outage within its backoff (at most 5 s).
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        assert [_generation(settings, s) for s in ("blog", "news")] == [3, 3]
        time.sleep(0.1)
    for proc in node.procs:
        assert proc.poll() is None


def _has_group(client: redis.Redis, group: str) -> bool:
    try:
        return any(g["name"].decode() == group for g in client.xinfo_groups(STREAM))
    except redis.ResponseError:  # no stream yet
        return False


def test_a_standby_takes_over_and_purges_what_the_dead_actor_left_pending(
        tmp_path: Path, redis_server: RedisServer, procs: list[Procs]) -> None:
    redis_server.flushall()
    settings = _settings(tmp_path, redis_server.url)
    # The actor holds what it read for 5 s (its coalescing window) before purging it.
    node = Procs(tmp_path, _config(settings, tmp_path, window=5.0))
    procs.append(node)
    actor = node.start()
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    client = redis.Redis.from_url(redis_server.url)
    purges = Purges()
    standby = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1)
    publisher = RedisStreamTransport(redis_server.url)
    try:
        assert wait_until(lambda: (settings.cache_dir / "_status").is_dir(), timeout=30)
        standby.start()
        assert standby.role == "standby"
        assert wait_until(lambda: standby.state() == f"standby: node actor is pid {actor.pid}")
        group = f"tenantkit:{NODE}"
        # The actor holds the node lock before its consumer group exists; an event published
        # before the group is made is one the group starts after (a gap: a flush).
        assert wait_until(lambda: _has_group(client, group))
        blog.put(HOST, "/p/1/", b"post 1", tags=["post:1"])
        event = Purge("blog", tags=("post:1",))
        publisher.publish(event)
        assert wait_until(lambda: client.xpending(STREAM, group)["pending"] == 1)
        assert not blog.get(HOST, "/p/1/").stale  # type: ignore[union-attr]
        actor.kill()  # read, not acknowledged, not purged
        actor.wait()
        assert wait_until(lambda: standby.role == "actor", timeout=10)
        assert standby.state() == "running"
        assert purges.wait_for(lambda seen: any(s[1] == event for s in seen), timeout=10)
        assert blog.get(HOST, "/p/1/").stale  # type: ignore[union-attr]
        assert wait_until(lambda: client.xpending(STREAM, group)["pending"] == 0)
        assert not any(s[3].flush for s in purges.seen)  # taking over is no gap
    finally:
        standby.stop()
        publisher.close()
        client.close()


def test_trigger_files_are_handled_while_redis_hangs(
        tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flushall()
    settings = _settings(tmp_path, redis_server.url)
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1)
    assert redis_server.proc is not None
    try:
        inv.start()
        assert purges.wait_count(2)  # the new group's flush of both sites
        blog.put(HOST, "/", b"home", tags=["home"])
        redis_server.proc.send_signal(signal.SIGSTOP)  # reads block for the socket timeout
        time.sleep(0.5)  # the bus thread is now inside a read that cannot return
        TriggerFileTransport(settings.cache_dir).publish(Purge("blog", paths=("/",),
                                                               host=HOST))
        started = time.monotonic()
        assert wait_until(lambda: blog.get(HOST, "/").stale, timeout=10)  # type: ignore
        assert time.monotonic() - started < 1.5
        assert not list((settings.cache_dir / "blog" / ".purge").glob("*.json"))
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        inv.stop()


def test_purges_of_one_site_are_merged_and_acknowledged_after_the_purge(
        tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flushall()
    settings = _settings(tmp_path, redis_server.url)
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    news = PageCache(settings.cache_dir / "news" / "pages")
    client = redis.Redis.from_url(redis_server.url)
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1,
                      coalesce_window=3.0)
    group = f"tenantkit:{NODE}"
    try:
        inv.start()
        assert purges.wait_count(2, timeout=20)  # the new group's flush (merged per site)
        for n in range(1, 6):
            blog.put(HOST, f"/p/{n}/", b"post", tags=[f"post:{n}"])
        blog.put(HOST, "/keep/", b"kept", tags=["post:99"])
        blog.put("blog2.example.org", "/about/", b"about", tags=["page:about"])
        news.put(NEWS, "/", b"news", tags=["home"])
        pipe = client.pipeline(transaction=False)
        for n in range(1, 6):
            pipe.xadd(STREAM, {"event": to_json(Purge("blog", tags=(f"post:{n}",)))})
        pipe.xadd(STREAM, {"event": to_json(Purge("blog", paths=("/about/",),
                                                  host="blog2.example.org"))})
        pipe.xadd(STREAM, {"event": to_json(Purge("news", tags=("home",)))})
        pipe.execute()
        seen = len(purges.seen)
        # Read, but not acknowledged while the merged purge waits for its window.
        assert wait_until(lambda: client.xpending(STREAM, group)["pending"] == 7)
        assert not blog.get(HOST, "/p/1/").stale  # type: ignore[union-attr]
        assert wait_until(lambda: client.xpending(STREAM, group)["pending"] == 0, timeout=15)
        assert all(blog.get(HOST, f"/p/{n}/").stale for n in range(1, 6))  # type: ignore
        assert blog.get("blog2.example.org", "/about/").stale  # type: ignore[union-attr]
        assert not blog.get(HOST, "/keep/").stale  # type: ignore[union-attr]
        assert news.get(NEWS, "/").stale  # type: ignore[union-attr]
        # blog: one purge (its tags with the paths of the one host named), news: one.
        done = sorted(purges.seen[seen:], key=lambda s: s[2].name)
        assert [(s[2].name, s[1]) for s in done] == [("blog", None),
                                                      ("news", Purge("news", tags=("home",)))]
        assert set(done[0][3].tags) == {f"post:{n}" for n in range(1, 6)}
        assert done[0][3].paths == ("/about/",) and done[0][3].host == "blog2.example.org"
    finally:
        inv.stop()
        client.close()
    counters = read_node_counters(settings.cache_dir)
    assert counters[PURGES] == {"blog": 1, "news": 1}
    assert counters[COALESCED] == {"blog": 5}
    assert counters[FLUSHES] == {"blog": 1, "news": 1}


def test_queued_trigger_files_are_one_flush(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "redis://127.0.0.1:1/0", transport="files")
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    blog.put(HOST, "/", b"home")
    before = _generation(settings, "blog")
    files = TriggerFileTransport(settings.cache_dir)
    for _ in range(5):  # queued while no invalidator ran
        files.publish(Purge("blog", all=True))
    files.publish(Purge("blog", tags=("post:1",)))
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.05,
                     scan_interval=0.1):
        assert wait_until(lambda: not list(
            (settings.cache_dir / "blog" / ".purge").glob("*.json")))
        assert purges.wait_count(1)
    assert _generation(settings, "blog") == before + 1
    assert [(s[2].name, s[3].flush) for s in purges.seen] == [("blog", True)]
    counters = read_node_counters(settings.cache_dir)
    assert counters[FLUSHES] == {"blog": 1} and counters[COALESCED] == {"blog": 5}


def test_a_failed_merged_purge_is_retried_then_dead_lettered(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A purge that fails with an OSError (a directory where the flush writes a file)
    leaves its entry unacknowledged and is tried again; mended meanwhile, it is
    acknowledged; still failing after three tries, the entry goes to the dead letter. Other
    sites go on."""
    import logging

    redis_server.flushall()
    settings = _settings(tmp_path, redis_server.url)
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    news = PageCache(settings.cache_dir / "news" / "pages")
    client = redis.Redis.from_url(redis_server.url)
    publisher = RedisStreamTransport(redis_server.url)
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1)
    group = f"tenantkit:{NODE}"

    def flushed_marker() -> Path:
        return news.root / news.generation() / ".flushed"

    def break_news() -> None:
        (flushed_marker() / "in-the-way").mkdir(parents=True)

    def mend_news() -> None:
        (flushed_marker() / "in-the-way").rmdir()
        flushed_marker().rmdir()

    try:
        with caplog.at_level(logging.WARNING):
            inv.start()
            assert purges.wait_count(2)  # the new group's flush of both sites
            break_news()
            publisher.publish(Purge("news", all=True))
            assert wait_until(lambda: "purge of site news failed" in caplog.text)
            assert client.xpending(STREAM, group)["pending"] == 1
            mend_news()
            assert wait_until(lambda: client.xpending(STREAM, group)["pending"] == 0)
            assert client.exists(f"{STREAM}:dead") == 0

            break_news()
            blog.put(HOST, "/p/1/", b"post", tags=["post:1"])
            publisher.publish(Purge("news", all=True))
            publisher.publish(Purge("blog", tags=("post:1",)))
            assert wait_until(lambda: blog.get(HOST, "/p/1/").stale)  # type: ignore
            assert wait_until(lambda: client.xlen(f"{STREAM}:dead") == 1, timeout=15)
            dead = client.xrange(f"{STREAM}:dead")[0][1]
            assert dead[b"dead-reason"] == b"the purge failed 3 times"
            assert wait_until(lambda: client.xpending(STREAM, group)["pending"] == 0)
            assert inv.dead_letters == 1
    finally:
        inv.stop()
        publisher.close()
        client.close()


def test_a_lock_file_that_cannot_be_used_still_purges(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory where the node lock should be: logged once, and this process purges
    without the lock rather than not at all."""
    import logging

    settings = _settings(tmp_path, "redis://127.0.0.1:1/0", transport="files")
    (settings.cache_dir / "_node" / f"invalidator-{NODE}.lock").mkdir(parents=True)
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    blog.put(HOST, "/", b"home")
    with caplog.at_level(logging.WARNING), Invalidator(
            settings, registry_for(settings), poll_timeout=0.05) as inv:
        assert inv.role == "actor"
        TriggerFileTransport(settings.cache_dir).publish(Purge("blog", paths=("/",),
                                                               host=HOST))
        assert wait_until(lambda: blog.get(HOST, "/").stale)  # type: ignore[union-attr]
    assert caplog.text.count("cannot use the node lock") == 1
