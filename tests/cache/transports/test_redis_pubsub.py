"""The Redis pub/sub transport against a real Redis."""

from __future__ import annotations

from pathlib import Path

import redis

from tenantkit.cache.events import CommentPosted
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.transports import RedisPubSubTransport
from tenantkit.config import Settings
from tenantkit.testing import RedisServer

from ..helpers import Purges, make_settings, registry_for, wait_until

STREAM = "tenantkit:events"


def _node(tmp_path: Path, name: str, url: str) -> tuple[Settings, PageCache]:
    settings = make_settings(tmp_path / name, transport="redis", redis_url=url, node=name)
    return settings, PageCache(settings.cache_dir / "blog" / "pages")


def test_pubsub_delivers_and_flushes_on_resubscribe(tmp_path: Path,
                                                    redis_server: RedisServer) -> None:
    settings, _cache = _node(tmp_path, "node-a", redis_server.url)
    purges = Purges()
    transport = RedisPubSubTransport(redis_server.url)
    inv = Invalidator(settings, registry_for(settings), transport=transport,
                      on_purge=purges, poll_timeout=0.1)
    client = redis.Redis.from_url(redis_server.url)
    try:
        inv.start()
        assert wait_until(lambda: client.pubsub_numsub(STREAM)[0][1] == 1)
        transport.publish(CommentPosted("blog", 1, True))
        assert purges.wait_count(1)
        assert purges.seen[0][1] == CommentPosted("blog", 1, True)
        redis_server.stop(kill=True)
        redis_server.start()
        assert purges.wait_count(2)
        assert purges.seen[1][1] is None  # at most once: a reconnect flushes
    finally:
        inv.stop()
        transport.close()
        client.close()
