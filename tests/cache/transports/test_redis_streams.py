"""The Redis Streams transport against a real Redis."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from tenantkit.cache.events import CommentPosted, SiteChanged
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
                      poll_timeout=0.1)
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
