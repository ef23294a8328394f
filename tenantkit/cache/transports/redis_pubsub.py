"""``[bus] transport = "pubsub"``: Redis ``PUBLISH``/``SUBSCRIBE`` on a channel named like
the stream. At most once, so every re-subscribe asks the Invalidator to flush every site.
Kept for comparison (``benchmarks/invalidate.py``)::

    transport = RedisPubSubTransport("redis://127.0.0.1:6379/0", "tenantkit:events")
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis

from tenantkit.cache.events import Event, to_json
from tenantkit.cache.transports.base import Consumer, Message, parse_event
from tenantkit.cache.transports.redis_streams import redis_client
from tenantkit.config import mask_url
from tenantkit.errors import BusError

__all__ = ["RedisPubSubTransport"]

log = logging.getLogger(__name__)



class RedisPubSubTransport:
    """Redis pub/sub: at most once; every reconnect flushes every site."""

    name = "pubsub"

    def __init__(self, url: str, channel: str = "tenantkit:events") -> None:
        self.url = url
        self.channel = channel
        self.client = redis_client(url)

    def publish(self, event: Event) -> None:
        try:
            self.client.publish(self.channel, to_json(event))
        except redis.RedisError as exc:
            raise BusError(f"cannot publish to Redis at {mask_url(self.url)}: {exc} "
                           "(is Redis running and reachable?)") from exc

    def consumer(self, node: str) -> Consumer:
        return _PubSubConsumer(self)

    def close(self) -> None:
        self.client.close()


class _PubSubConsumer:
    def __init__(self, transport: RedisPubSubTransport) -> None:
        self.transport = transport
        self.client = redis_client(transport.url)
        self.pubsub: Any = None
        self.first = True
        self.backoff = 0.1

    def poll(self, timeout: float) -> list[Message]:
        out: list[Message] = []
        try:
            if self.pubsub is None:
                self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                self.pubsub.subscribe(self.transport.channel)
                if not self.first:
                    out.append(Message(flush_all="re-subscribed to Redis pub/sub"))
                self.first = False
                self.backoff = 0.1
            deadline = time.monotonic() + timeout
            while len(out) < 100:
                remaining = deadline - time.monotonic()
                message = self.pubsub.get_message(timeout=max(0.0, remaining) if not out else 0)
                if message is None:
                    break
                if message.get("type") != "message":
                    continue
                event, error = parse_event(message["data"])
                out.append(Message(event=event, error=error))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("bus: lost Redis pub/sub at %s: %s", mask_url(self.transport.url), exc)
            self._drop()
            time.sleep(min(self.backoff, timeout))
            self.backoff = min(self.backoff * 2, 2.0)
        return out

    def _drop(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                self.pubsub.close()
        self.pubsub = None

    def close(self) -> None:
        self._drop()
        self.client.close()
