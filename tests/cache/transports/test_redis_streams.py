"""The Redis Streams transport against a real Redis."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from tenantkit.cache import invalidator as invalidator_module
from tenantkit.cache.events import CommentPosted, SiteChanged, to_json
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.transports import RedisStreamTransport
from tenantkit.config import Settings
from tenantkit.testing import RedisServer

from ..helpers import HOST, Purges, make_settings, registry_for, wait_until

STREAM = "tenantkit:events"


def _node(tmp_path: Path, name: str, url: str) -> tuple[Settings, PageCache]:
    settings = make_settings(tmp_path / name, transport="redis", redis_url=url, node=name)
    return settings, PageCache(settings.cache_dir / "blog" / "pages")


def test_every_node_gets_every_event_and_acks_after_purge(tmp_path: Path,
                                                          redis_server: RedisServer) -> None:
    nodes = [_node(tmp_path, n, redis_server.url) for n in ("node-a", "node-b")]
    purges = [Purges(), Purges()]
    publisher = RedisStreamTransport(redis_server.url)
    invalidators = [
        Invalidator(s, registry_for(s), on_purge=p, poll_timeout=0.1).start()
        for (s, _), p in zip(nodes, purges, strict=True)
    ]
    client = redis.Redis.from_url(redis_server.url)
    try:
        for p in purges:  # a new consumer group flushes once: it cannot know what it missed
            assert p.wait_count(1)
        for _, cache in nodes:
            cache.put(HOST, "/", b"home")
        publisher.publish(CommentPosted("blog", 1, True, gtid=None))
        for p in purges:
            assert p.wait_count(2)
            assert p.seen[1][1] == CommentPosted("blog", 1, True)
        for _, cache in nodes:
            assert cache.get(HOST, "/").stale  # type: ignore[union-attr]
        groups = {g["name"].decode(): g for g in client.xinfo_groups(STREAM)}
        assert set(groups) == {"tenantkit:node-a", "tenantkit:node-b"}
        assert wait_until(lambda: all(g["pending"] == 0 for g in client.xinfo_groups(STREAM)))
    finally:
        for inv in invalidators:
            inv.stop()
        publisher.close()
        client.close()


def test_publish_trims_the_stream(redis_server: RedisServer) -> None:
    publisher = RedisStreamTransport(redis_server.url, maxlen=10)
    client = redis.Redis.from_url(redis_server.url)
    try:
        for _ in range(1000):
            publisher.publish(SiteChanged("blog"))
        assert client.xlen(STREAM) < 300
    finally:
        publisher.close()
        client.close()


def test_malformed_stream_entries_are_dead_lettered_acked_and_skipped(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    redis_server.flushall()
    settings, _cache = _node(tmp_path, "node-a", redis_server.url)
    purges = Purges()
    client = redis.Redis.from_url(redis_server.url)
    inv = Invalidator(settings, registry_for(settings), on_purge=purges,
                      poll_timeout=0.1, coalesce_window=0)  # one purge each, none merged
    try:
        with caplog.at_level(logging.WARNING):
            inv.start()
            assert purges.wait_count(1)
            client.xadd(STREAM, {"event": b"\xff garbage"})
            client.xadd(STREAM, {"other": b"field"})
            client.xadd(STREAM, {"event": '{"v": 1, "type": "purge", "site": "blog", '
                                          '"paths": ["relative"]}'})
            RedisStreamTransport(redis_server.url).publish(CommentPosted("blog", 7, True))
            assert purges.wait_for(lambda seen: any(s[1] is not None for s in seen))
        assert caplog.text.count("could not be handled") == 3
        assert [e[1][b"dead-reason"][:22] for e in client.xrange(f"{STREAM}:dead")] == [
            b"event: not UTF-8 text ", b"event: not valid JSON ", b'event: field "paths": ']
        assert wait_until(lambda: client.xinfo_groups(STREAM)[0]["pending"] == 0)
        # Each one flushed its site (every site when it names none): events may be lost.
        assert sum(1 for s in purges.seen if s[1] is None) == 1 + 3
    finally:
        inv.stop()
        client.close()


def test_redis_killed_and_restarted_mid_stream_flushes(tmp_path: Path,
                                                      redis_server: RedisServer) -> None:
    settings, cache = _node(tmp_path, "node-a", redis_server.url)
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges,
                      poll_timeout=0.1)
    try:
        inv.start()
        assert purges.wait_count(1)
        redis_server.stop(kill=True)
        # Written while Redis is down: its event (published meanwhile) is lost with Redis.
        cache.put(HOST, "/", b"pre-restart")
        redis_server.start()
        assert purges.wait_count(2)
        assert purges.seen[1][3].flush
        page = cache.get(HOST, "/")
        assert page is None or page.stale  # no page stays stale-but-fresh after the gap
        # And the node consumes again.
        cache.put(HOST, "/", b"again")
        RedisStreamTransport(redis_server.url).publish(SiteChanged("blog"))
        assert purges.wait_count(3)
    finally:
        inv.stop()


def test_position_trimmed_away_flushes(tmp_path: Path, redis_server: RedisServer) -> None:
    settings, cache = _node(tmp_path, "node-a", redis_server.url)
    registry = registry_for(settings)
    purges = Purges()
    inv = Invalidator(settings, registry, on_purge=purges, poll_timeout=0.1)
    inv.start()
    assert purges.wait_count(1)
    inv.stop()
    cache.put(HOST, "/", b"stale soon")
    publisher = RedisStreamTransport(redis_server.url, maxlen=10)
    try:
        for _ in range(500):  # for another site: only the gap can purge "blog"
            publisher.publish(SiteChanged("other"))
    finally:
        publisher.close()
    purges2 = Purges()
    inv = Invalidator(settings, registry, on_purge=purges2, poll_timeout=0.1)
    try:
        inv.start()
        assert purges2.wait_count(1)
        assert purges2.seen[0][1] is None and purges2.seen[0][3].flush
        assert cache.get(HOST, "/").stale  # type: ignore[union-attr]
    finally:
        inv.stop()


def test_restart_without_a_gap_does_not_flush(tmp_path: Path, redis_server: RedisServer) -> None:
    settings, _cache = _node(tmp_path, "node-a", redis_server.url)
    registry = registry_for(settings)
    purges = Purges()
    inv = Invalidator(settings, registry, on_purge=purges, poll_timeout=0.1)
    inv.start()
    assert purges.wait_count(1)
    inv.stop()
    publisher = RedisStreamTransport(redis_server.url)
    publisher.publish(CommentPosted("blog", 5, True))  # published while the node was down
    publisher.close()
    purges2 = Purges()
    inv = Invalidator(settings, registry, on_purge=purges2, poll_timeout=0.1)
    try:
        inv.start()
        assert purges2.wait_count(1)
        assert purges2.seen[0][1] == CommentPosted("blog", 5, True)  # delivered, not a flush
    finally:
        inv.stop()


def test_a_frozen_redis_is_noticed_and_flushes(tmp_path: Path, redis_server: RedisServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from tenantkit.cache.transports import redis_streams

    monkeypatch.setattr(redis_streams, "SOCKET_TIMEOUT", 1.0)
    settings, cache = _node(tmp_path, "node-a", redis_server.url)
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1)
    try:
        inv.start()
        assert purges.wait_count(1)
        cache.put(HOST, "/", b"page")
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)  # the socket stays open, nothing answers
        try:
            time.sleep(2.5)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert purges.wait_count(2)  # the read timed out, the node reconnected and flushed
        assert purges.seen[1][1] is None
        assert cache.get(HOST, "/").stale  # type: ignore[union-attr]
    finally:
        inv.stop()


def test_a_trimmed_burst_is_noticed_on_the_read_itself(
        tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node is busy while a burst trims an event for "blog" it never read: the very
    next read says so and every site is flushed, before the events behind the burst."""
    import threading

    from tenantkit.cache.events import Purge
    from tenantkit.cache.transports import redis_streams

    # No periodic check may rescue the node: only the read itself can notice.
    monkeypatch.setattr(redis_streams._StreamConsumer, "GAP_CHECK_SECONDS", 3600.0,
                        raising=False)
    redis_server.flushall()
    settings = make_settings(tmp_path, transport="redis", redis_url=redis_server.url,
                             sites=("blog", "news"), policy="targeted")
    blog = PageCache(settings.cache_dir / "blog" / "pages")
    purges = Purges()
    busy, release = threading.Event(), threading.Event()

    def on_purge(event: object, site: object, action: object) -> None:
        purges(event, site, action)  # type: ignore[arg-type]
        if isinstance(event, Purge) and "hold" in event.tags:
            busy.set()
            release.wait(20)

    # One purge at a time, none merged: the node is busy while the burst trims the stream.
    monkeypatch.setattr(invalidator_module, "MAX_INFLIGHT", 1)
    inv = Invalidator(settings, registry_for(settings), on_purge=on_purge, poll_timeout=0.1,
                      coalesce_window=0)
    publisher = RedisStreamTransport(redis_server.url, maxlen=50)
    client = redis.Redis.from_url(redis_server.url)
    try:
        inv.start()
        assert purges.wait_count(2)  # the new group's flush
        blog.put(HOST, "/p/1/", b"post", tags=["post:1"])
        publisher.publish(Purge("news", tags=("hold",)))
        assert busy.wait(10)
        publisher.publish(Purge("blog", tags=("post:1",)))  # trimmed before the node reads it
        pipe = client.pipeline(transaction=False)
        for _ in range(2000):
            pipe.xadd(STREAM, {"event": to_json(Purge("news", tags=("x",)))}, maxlen=50,
                      approximate=True)
        pipe.execute()
        publisher.publish(Purge("news", tags=("marker",)))
        release.set()
        assert purges.wait_for(lambda seen: any(
            isinstance(s[1], Purge) and "marker" in s[1].tags for s in seen))
        assert blog.get(HOST, "/p/1/").stale  # type: ignore[union-attr]
        flushes = [s for s in purges.seen[2:] if s[1] is None]
        assert {s[2].name for s in flushes} == {"blog", "news"}  # once, every site
        assert len(flushes) == 2
    finally:
        release.set()
        inv.stop()
        publisher.close()
        client.close()


def test_started_with_redis_down_logs_once_backs_off_and_flushes_when_it_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer(tmp_path / "redis")  # our own, not started yet: the port refuses
    settings, cache = _node(tmp_path, "node-a", server.url)
    cache.put(HOST, "/", b"page")
    commands: list[str] = []
    real = redis.Redis.execute_command

    def counting(self: redis.Redis, *args: object, **options: object) -> object:
        commands.append(str(args[0]))
        return real(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counting)
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1)
    try:
        with caplog.at_level(logging.WARNING):
            inv.start()
            time.sleep(2.0)
            assert not purges.seen
            assert caplog.text.count("unreachable") == 1  # once, not once per attempt
            assert len(commands) <= 8  # 0.1 + 0.2 + 0.4 + 0.8 s: a backoff, not a spin
            assert inv.bus_status()["connected"] is False
            server.start()
            assert purges.wait_count(1, timeout=15)  # caught up with a flush
        assert purges.seen[0][1] is None and purges.seen[0][3].flush
        assert cache.get(HOST, "/").stale  # type: ignore[union-attr]
        assert "reachable again" in caplog.text
        assert inv.bus_status()["connected"] is True
    finally:
        inv.stop()
        server.close()


def test_started_while_redis_hangs_flushes_when_it_answers(
        tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The group exists and nothing was trimmed, but events published while Redis hung went
    to trigger files elsewhere: the node cannot know, so it flushes."""
    import signal

    from tenantkit.cache.transports import redis_streams

    monkeypatch.setattr(redis_streams, "SOCKET_TIMEOUT", 1.0)
    settings, cache = _node(tmp_path, "node-a", redis_server.url)
    registry = registry_for(settings)
    first = Invalidator(settings, registry, on_purge=Purges(), poll_timeout=0.1).start()
    time.sleep(0.5)
    first.stop()
    cache.put(HOST, "/", b"page")
    purges = Purges()
    inv = Invalidator(settings, registry, on_purge=purges, poll_timeout=0.1)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        inv.start()
        time.sleep(2.5)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    try:
        assert purges.wait_count(1, timeout=15)
        assert purges.seen[0][1] is None and purges.seen[0][3].flush
        assert cache.get(HOST, "/").stale  # type: ignore[union-attr]
    finally:
        inv.stop()


def test_a_burst_that_keeps_trimming_is_one_flush_not_one_per_read(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a node reads full batches and the stream is trimmed under it again and again,
    the gaps are merged: one flush once it has caught up (a 30 000-event burst made over a
    hundred flushes per node, and as many log lines)."""
    from tenantkit.cache.transports import redis_streams

    monkeypatch.setattr(redis_streams, "GAP_MERGE_SECONDS", 60.0)
    transport = RedisStreamTransport(redis_server.url)
    consumer = transport.consumer("node-a")
    client = redis.Redis.from_url(redis_server.url)
    try:
        first = consumer.poll(0.1)  # joins: a new group's flush
        assert [m.flush_all is not None for m in first] == [True]
        flushes, handled = [], 0
        for _ in range(5):  # each round trims what the node has not read yet
            pipe = client.pipeline(transaction=False)
            for _ in range(300):
                pipe.xadd(STREAM, {"event": to_json(SiteChanged("blog"))}, maxlen=150,
                          approximate=False)
            pipe.execute()
            for message in consumer.poll(0.1):
                if message.flush_all:
                    flushes.append(message.flush_all)
                else:
                    handled += 1
                message.ack()
        while True:  # catch up
            messages = consumer.poll(0.1)
            if not messages:
                break
            for message in messages:
                if message.flush_all:
                    flushes.append(message.flush_all)
                else:
                    handled += 1
                message.ack()
        assert handled == 5 * 100 + 150 - 100  # full batches, then what was left
        assert len(flushes) == 1 and "trimmed" in flushes[0]
    finally:
        consumer.close()
        transport.close()
        client.close()
