"""One bad event never stops a node: poison entries go to a dead letter, their site is flushed.

The same table of poison payloads runs against both places an event can come from: a Redis
stream entry (real Redis) and a trigger file (real files, written by another process).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tenantkit.cache.events import Purge, to_json
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.transports import RedisStreamTransport
from tenantkit.config import Settings
from tenantkit.testing import RedisServer

from .helpers import HOST, Purges, make_settings, registry_for, wait_until

STREAM = "tenantkit:events"
NEWS = "news.example.org"

POISON = [
    pytest.param('{"v":1,"type":"purge","site":"blog","tags":' + "[" * 30000 + "]" * 30000
                 + "}", id="deeply nested json (RecursionError)"),
    pytest.param('{"v":1,"type":"purge","site":"blog","tags":["\\ud800"]}',
                 id="lone surrogate in a tag (UnicodeEncodeError)"),
    pytest.param('{"v":1,"type":"purge","site":"blog","paths":["/\\udc80"],"tags":["x\\udfff"]}',
                 id="lone surrogates in a path and a tag"),
    pytest.param('{"v":1,"type":"post_edited","site":"blog","post_id":"seven"}',
                 id="malformed field"),
]


def _node(tmp_path: Path, url: str = "redis://127.0.0.1:1/0", transport: str = "redis"
          ) -> tuple[Settings, PageCache, PageCache]:
    settings = make_settings(tmp_path, transport=transport, redis_url=url,
                             sites=("blog", "news"), policy="targeted")
    return (settings, PageCache(settings.cache_dir / "blog" / "pages"),
            PageCache(settings.cache_dir / "news" / "pages"))


def _stale(cache: PageCache, host: str, path: str) -> bool:
    page = cache.get(host, path)
    return page is None or page.stale


@pytest.mark.parametrize("payload", POISON)
def test_poison_stream_entry_is_dead_lettered_and_never_blocks(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
        payload: str) -> None:
    redis_server.flushall()
    settings, blog, news = _node(tmp_path, redis_server.url)
    registry = registry_for(settings)
    client = redis.Redis.from_url(redis_server.url)
    publisher = RedisStreamTransport(redis_server.url)
    purges = Purges()
    inv = Invalidator(settings, registry, on_purge=purges, poll_timeout=0.1)
    try:
        with caplog.at_level(logging.WARNING):
            inv.start()
            assert purges.wait_count(2)  # the new group's flush of both sites
            blog.put(HOST, "/", b"blog home", tags=["home"])
            news.put(NEWS, "/", b"news home", tags=["home"])
            client.xadd(STREAM, {"event": payload})
            publisher.publish(Purge("news", tags=("home",)))
            # The good event behind the poison is handled ...
            assert wait_until(lambda: _stale(news, NEWS, "/"), timeout=10)
            # ... the poison is acknowledged, kept in the dead letter, and its site flushed.
            assert wait_until(lambda: client.xlen(f"{STREAM}:dead") == 1, timeout=5)
            assert wait_until(lambda: _stale(blog, HOST, "/"), timeout=5)
            assert wait_until(lambda: client.xinfo_groups(STREAM)[0]["pending"] == 0)
        dead = client.xrange(f"{STREAM}:dead")[0][1]
        assert dead[b"event"] == payload.encode()
        assert dead[b"dead-node"] == b"node-a" and dead[b"dead-reason"]
        assert caplog.text.count("could not be handled") == 1
        assert inv.dead_letters == 1
    finally:
        inv.stop()
    # A restart does not read the poison again: the node consumes new events at once.
    news.put(NEWS, "/", b"news again", tags=["home"])
    purges2 = Purges()
    inv = Invalidator(settings, registry, on_purge=purges2, poll_timeout=0.1)
    try:
        inv.start()
        publisher.publish(Purge("news", tags=("home",)))
        assert wait_until(lambda: _stale(news, NEWS, "/"), timeout=10)
        assert inv.dead_letters == 0
        assert client.xlen(f"{STREAM}:dead") == 1
    finally:
        inv.stop()
        publisher.close()
        client.close()


_WRITER = r"""
import os, sys, tempfile
directory, name, payload = sys.argv[1], sys.argv[2], sys.argv[3].encode()
fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
with os.fdopen(fd, "wb") as f:
    f.write(payload)
os.replace(tmp, os.path.join(directory, name))
"""


def _drop(directory: Path, name: str, payload: str) -> None:
    subprocess.run([sys.executable, "-c", _WRITER, str(directory), name, payload], check=True,
                   timeout=30)


@pytest.mark.parametrize("payload", POISON)
def test_poison_trigger_file_goes_to_failed_and_never_stops_the_scan(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, payload: str) -> None:
    settings, blog, news = _node(tmp_path, transport="files")
    blog_dir = settings.cache_dir / "blog" / ".purge"
    news_dir = settings.cache_dir / "news" / ".purge"
    blog_dir.mkdir(parents=True)
    news_dir.mkdir(parents=True)
    blog.put(HOST, "/", b"blog home", tags=["home"])
    news.put(NEWS, "/", b"news home", tags=["home"])
    # Present at start: the scan meets the poison first (sorted names), then a good file.
    _drop(blog_dir, "0001-poison.json", payload)
    _drop(blog_dir, "0002-good.json", to_json(Purge("blog", tags=("nothing",))))
    purges = Purges()
    with caplog.at_level(logging.WARNING), Invalidator(
            settings, registry_for(settings), on_purge=purges, poll_timeout=0.05,
            scan_interval=0.2) as inv:
        assert wait_until(lambda: (blog_dir / "failed" / "0001-poison.json").exists(),
                          timeout=10)
        assert wait_until(lambda: not (blog_dir / "0002-good.json").exists(), timeout=10)
        assert wait_until(lambda: _stale(blog, HOST, "/"))  # the poison's site was flushed
        # And the watcher still hands new files over.
        _drop(news_dir, "0003-news.json", to_json(Purge("news", tags=("home",))))
        assert wait_until(lambda: _stale(news, NEWS, "/"), timeout=10)
        assert inv.dead_letters == 1
    failed = blog_dir / "failed"
    assert (failed / "0001-poison.json").read_text() == payload
    assert (failed / "0001-poison.json.reason").read_text().strip()
    assert sorted(p.name for p in blog_dir.iterdir()) == ["failed"]
    assert caplog.text.count("could not be handled") == 1


def test_a_purge_that_keeps_failing_is_retried_then_dead_lettered(
        tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenantkit.cache import invalidator as invalidator_module

    redis_server.flushall()
    monkeypatch.setattr(invalidator_module, "RETRY_DELAY", 0.05, raising=False)
    settings, _blog, news = _node(tmp_path, redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    publisher = RedisStreamTransport(redis_server.url)
    calls: list[str] = []
    real_purge_tags = PageCache.purge_tags

    def failing(self: PageCache, tags: object) -> int:
        if "broken" in tags:  # type: ignore[operator]
            calls.append("broken")
            raise OSError(5, "Input/output error")
        return real_purge_tags(self, tags)  # type: ignore[arg-type]

    monkeypatch.setattr(PageCache, "purge_tags", failing)
    purges = Purges()
    inv = Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.1)
    try:
        inv.start()
        assert purges.wait_count(2)
        news.put(NEWS, "/", b"news home", tags=["home"])
        publisher.publish(Purge("blog", tags=("broken",)))
        publisher.publish(Purge("news", tags=("home",)))
        assert wait_until(lambda: _stale(news, NEWS, "/"), timeout=10)  # not blocked
        assert wait_until(lambda: client.xlen(f"{STREAM}:dead") == 1, timeout=10)
        assert len(calls) == 3
        assert wait_until(lambda: client.xinfo_groups(STREAM)[0]["pending"] == 0)
    finally:
        inv.stop()
        publisher.close()
        client.close()
