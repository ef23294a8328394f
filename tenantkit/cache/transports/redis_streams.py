"""``[bus] transport = "redis"``: Redis Streams, at least once, to every node.

One stream per deployment (``[bus] stream``), ``XADD ... MAXLEN ~``; one consumer group per
node (``tenantkit:<node>``), so every node gets every event; ``XACK`` only after the purge.
After a reconnect, or when the node's position was trimmed away, the consumer asks the
Invalidator to flush every site: it may have missed events::

    transport = RedisStreamTransport("redis://127.0.0.1:6379/0", "tenantkit:events")
    consumer = transport.consumer("node-a")

:func:`redis_client` is the one way the bus connects to Redis (health checks, timeouts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from tenantkit.cache.events import Event, to_json
from tenantkit.cache.transports.base import Consumer, Message, parse_event
from tenantkit.config import mask_url
from tenantkit.errors import BusError

__all__ = ["HEALTH_CHECK_INTERVAL", "SOCKET_TIMEOUT", "RedisStreamTransport", "redis_client"]

log = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL = 5
SOCKET_TIMEOUT = 5.0


def redis_client(url: str) -> redis.Redis:
    """A client with the bus's health checks and timeouts; :class:`BusError` for a bad URL."""
    try:
        return redis.Redis.from_url(
            url, health_check_interval=HEALTH_CHECK_INTERVAL, socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=2.0, socket_keepalive=True,
        )
    except ValueError as exc:
        raise BusError(f"bus: bad redis_url {mask_url(url)!r}: {exc}") from exc


def _stream_id(raw: bytes | str | None) -> tuple[int, int]:
    if raw is None:
        return (0, 0)
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamTransport:
    """Redis Streams: at least once, to every node (one consumer group per node)."""

    name = "redis"

    def __init__(self, url: str, stream: str = "tenantkit:events", maxlen: int = 10000) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.client = redis_client(url)

    def publish(self, event: Event) -> None:
        try:
            self.client.xadd(self.stream, {"event": to_json(event)}, maxlen=self.maxlen,
                             approximate=True)
        except redis.RedisError as exc:
            raise BusError(f"cannot publish to Redis at {mask_url(self.url)}: {exc} "
                           "(is Redis running and reachable?)") from exc

    def consumer(self, node: str) -> Consumer:
        return _StreamConsumer(self, node)

    def close(self) -> None:
        self.client.close()


class _StreamConsumer:
    GAP_CHECK_SECONDS = 5.0

    def __init__(self, transport: RedisStreamTransport, node: str) -> None:
        self.transport = transport
        self.client = redis_client(transport.url)
        self.stream = transport.stream
        self.group = f"tenantkit:{node}"
        self.name = node
        self.connected = False
        self.first_connect = True
        self.pending_phase = True
        self.last_gap_check = 0.0
        self.backoff = 0.1

    def _connect(self) -> list[Message]:
        """(Re)join the group; returns a flush demand when events may have been missed."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
            created = True
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            created = False
        self.connected = True
        self.pending_phase = True
        reason = None
        if created:
            reason = f"new consumer group {self.group} (events before it are unknown)"
        elif not self.first_connect:
            reason = "reconnected to Redis"
        else:
            reason = self._gap()
        self.first_connect = False
        self.backoff = 0.1
        return [Message(flush_all=reason)] if reason else []

    def _gap(self) -> str | None:
        """A reason when entries this group never read were trimmed away."""
        self.last_gap_check = time.monotonic()
        info = self.client.xinfo_stream(self.stream)
        groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                  for g in self.client.xinfo_groups(self.stream)}
        group = groups.get(self.group)
        if group is None:
            return "consumer group vanished"
        delivered = _stream_id(group.get("last-delivered-id"))
        if delivered >= _stream_id(info.get("last-generated-id")):
            return None
        first = info.get("first-entry")
        if first is not None and _stream_id(first[0]) <= delivered:
            return None
        # Every entry after our position is still there unless entries were removed: then
        # the counters say whether any of the removed ones were never read by this group.
        added = int(info.get("entries-added") or 0)
        removed = added - int(info.get("length") or 0)
        read = group.get("entries-read")
        if removed <= 0 or (read is not None and removed - int(read) <= 0):
            return None
        return "the stream was trimmed past this node's position"

    def poll(self, timeout: float) -> list[Message]:
        out: list[Message] = []
        try:
            if not self.connected:
                out += self._connect()
            elif time.monotonic() - self.last_gap_check > self.GAP_CHECK_SECONDS:
                reason = self._gap()
                if reason:
                    out.append(Message(flush_all=reason))
            start = "0" if self.pending_phase else ">"
            block = None if self.pending_phase or out else max(1, int(timeout * 1000))
            reply: Any = self.client.xreadgroup(self.group, self.name, {self.stream: start},
                                           count=100, block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                log.warning("bus: consumer group %s is gone (Redis restarted?)", self.group)
                self.connected = False
                self.first_connect = False
                return out
            raise BusError(f"bus: Redis refused XREADGROUP: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if self.connected:
                log.warning("bus: lost Redis at %s: %s", mask_url(self.transport.url), exc)
            self.connected = False
            time.sleep(min(self.backoff, timeout))
            self.backoff = min(self.backoff * 2, 2.0)
            return out
        entries = reply[0][1] if reply else []
        if self.pending_phase and not entries:
            self.pending_phase = False
        for entry_id, fields in entries:
            if fields is None:  # pending entry deleted by trimming: nothing to do but ack
                out.append(Message(error="pending entry was trimmed",
                                   ack=self._acker(entry_id)))
                continue
            raw = fields.get(b"event", b"")
            event, error = parse_event(raw)
            out.append(Message(event=event, error=error, ack=self._acker(entry_id)))
        return out

    def _acker(self, entry_id: Any) -> Callable[[], None]:
        def ack() -> None:
            try:
                self.client.xack(self.stream, self.group, entry_id)
            except redis.RedisError as exc:  # stays pending: re-read after reconnect
                log.warning("bus: XACK %s failed: %s", entry_id, exc)
        return ack

    def close(self) -> None:
        self.client.close()
