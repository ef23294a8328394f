"""``[bus] transport = "redis"``: Redis Streams, at least once, to every node.

One stream per deployment (``[bus] stream``), ``XADD ... MAXLEN ~``; one consumer group per
node (``tenantkit:<node>``), so every node gets every event; ``XACK`` only after the purge.
An entry that cannot be handled is copied to ``<stream>:dead`` (with the reason and the node)
and acknowledged, so it never blocks a node. The consumer asks the Invalidator to flush every
site whenever it may have missed events: after Redis was unreachable (at start or later), and
when entries this node never read were trimmed away -- checked on every read, in the same
``MULTI`` as the ``XREADGROUP`` (the group's ``lag`` against the stream's length, Redis 7).
The gaps a node sees while it reads full batches of a burst are one flush, made once it has
caught up (or after ``GAP_MERGE_SECONDS``), not one per read::

    transport = RedisStreamTransport("redis://127.0.0.1:6379/0", "tenantkit:events")
    consumer = transport.consumer("node-a")

:func:`redis_client` is the one way the bus connects to Redis (health checks, timeouts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tenantkit.cache.events import Event, to_json
from tenantkit.cache.transports.base import Consumer, Message, parse_event, site_hint
from tenantkit.config import mask_url
from tenantkit.errors import BusError

__all__ = ["HEALTH_CHECK_INTERVAL", "SOCKET_TIMEOUT", "RedisStreamTransport", "redis_client"]

#: Entries read per ``XREADGROUP``.
BATCH = 100
#: At most this long between gaps seen during a burst and their (one) flush, in seconds.
GAP_MERGE_SECONDS = 1.0
#: Reconnection backoff after Redis was unreachable: from the first to the last, doubling.
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0

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
        self.dead_stream = f"{stream}:dead"
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
    def __init__(self, transport: RedisStreamTransport, node: str) -> None:
        self.transport = transport
        self.client = redis_client(transport.url)
        self.stream = transport.stream
        self.group = f"tenantkit:{node}"
        self.name = node
        self.connected = False
        self.first_connect = True
        #: When Redis became unreachable (wall clock), None while it is reachable.
        self.unreachable_since: float | None = None
        self.unreachable_error = ""
        self.pending_cursor: str | None = "0"  # reading our pending entries; None: new ones
        self.backoff = MIN_BACKOFF
        self.next_attempt = 0.0
        self._closed = threading.Event()
        self._old_redis_logged = False
        self._gap_seen: tuple[Any, Any] = (None, None)
        #: A gap seen while behind: (reason, monotonic time first seen); flushed once.
        self._gap_pending: tuple[str, float] | None = None

    def _connect(self) -> list[Message]:
        """(Re)join the group; returns a flush demand when events may have been missed."""
        created = self._create_group()
        reason = None
        if created:
            reason = f"new consumer group {self.group} (events before it are unknown)"
        elif self.unreachable_since is not None:
            reason = "Redis was unreachable (events published meanwhile may be lost)"
        elif not self.first_connect:
            reason = "reconnected to Redis"
        if self.unreachable_since is not None:
            log.warning("bus: Redis at %s is reachable again after %.1fs; catching up",
                        mask_url(self.transport.url), time.time() - self.unreachable_since)
        self.connected = True
        self.first_connect = False
        self.unreachable_since = None
        self.pending_cursor = "0"
        self.backoff = MIN_BACKOFF
        return [Message(flush_all=reason)] if reason else []

    def _create_group(self) -> bool:
        """Create this node's group at the stream's end; False when it exists. The group
        starts with a valid ``entries-read`` (Redis 7), so its ``lag`` is exact from the
        first read."""
        try:
            info = self.client.xinfo_stream(self.stream)
            last, added = info["last-generated-id"], info.get("entries-added")
        except redis.ResponseError:  # no stream yet
            last, added = "$", 0
        try:
            self.client.xgroup_create(self.stream, self.group, id=last, mkstream=True,
                                      entries_read=added)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def _lost(self, exc: Exception) -> None:
        """Redis is unreachable: log once per outage, retry with a growing backoff."""
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            self.unreachable_error = str(exc)[:200]
            log.warning("bus: Redis at %s is unreachable (%s); retrying every %g-%gs, and "
                        "every site is flushed once it is back", mask_url(self.transport.url),
                        exc, MIN_BACKOFF, MAX_BACKOFF)
        else:
            log.debug("bus: Redis still unreachable: %s", exc)
        self.connected = False
        self.next_attempt = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def _gap(self, info: dict[str, Any], groups: list[dict[str, Any]]) -> str | None:
        """A reason when entries this group was never given were trimmed away (read in the
        same transaction as the XREADGROUP that follows, so nothing can slip between); one
        reason per gap, however many reads see it (pending entries do not move the group)."""
        group = next((g for g in groups if _text(g.get("name")) == self.group), None)
        if group is None:
            return None  # the XREADGROUP fails with NOGROUP: handled there
        first = info.get("first-entry")
        state = (group.get("last-delivered-id"), first[0] if first else None)
        reason = self._trimmed(info, group)
        if reason is None or state == self._gap_seen:
            return None
        self._gap_seen = state
        return reason

    def _merged_gap(self, gap: str | None, *, caught_up: bool) -> str | None:
        """The gap to flush for now, if any. While the node reads full batches (a burst that
        keeps trimming the stream), the gaps it sees are merged into one flush: made once it
        has caught up, or after :data:`GAP_MERGE_SECONDS` at most -- not one per read. The
        flush still comes before the entries of the read that makes it."""
        if gap and self._gap_pending is None:
            self._gap_pending = (gap, time.monotonic())
        if self._gap_pending is None:
            return None
        reason, since = self._gap_pending
        if caught_up or time.monotonic() - since >= GAP_MERGE_SECONDS:
            self._gap_pending = None
            return reason
        return None

    def _trimmed(self, info: dict[str, Any], group: dict[str, Any]) -> str | None:
        length = int(info.get("length") or 0)
        lag = group.get("lag")
        if lag is not None and group.get("entries-read") is not None:
            # Redis 7: entries added but never delivered to this group; only exact while
            # the group's read counter is valid (else Redis counts trimmed entries as read)
            return _TRIMMED if int(lag) > length else None
        added = info.get("entries-added")
        read = group.get("entries-read")
        if added is not None and read is not None:
            return _TRIMMED if int(added) - length > int(read) else None
        if added is None and not self._old_redis_logged:  # Redis < 7
            self._old_redis_logged = True
            log.warning("bus: Redis older than 7 does not count stream entries: a trimmed "
                        "stream is detected only when the first entry is past this node's "
                        "position (upgrade Redis, or raise [bus] stream_maxlen)")
        first = info.get("first-entry")
        delivered = _stream_id(group.get("last-delivered-id"))
        if first is not None and _stream_id(first[0]) > delivered and (
                added is None or int(added) > length):
            return _TRIMMED
        return None

    def _read(self) -> tuple[list[Any], str | None]:
        start = self.pending_cursor if self.pending_cursor is not None else ">"
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.xinfo_groups(self.stream)
        pipe.xreadgroup(self.group, self.name, {self.stream: start}, count=BATCH)
        info, groups, reply = pipe.execute()
        entries: list[Any] = reply[0][1] if reply else []
        if self.pending_cursor is not None:
            self.pending_cursor = _text(entries[-1][0]) if entries else None
        return entries, self._gap(info, groups)

    def _wait(self, timeout: float) -> None:
        """Block until this group has new entries (or ``timeout``), without reading any."""
        groups = self.client.xinfo_groups(self.stream)
        group = next((g for g in groups if _text(g.get("name")) == self.group), None)
        if group is None:
            return
        self.client.xread({self.stream: group["last-delivered-id"]}, count=1,
                          block=max(1, int(timeout * 1000)))

    def poll(self, timeout: float) -> list[Message]:
        out: list[Message] = []
        if not self.connected:
            remaining = self.next_attempt - time.monotonic()
            if remaining > 0:
                self._closed.wait(min(remaining, timeout))
                return out
        try:
            if not self.connected:
                out += self._connect()
            new = self.pending_cursor is None  # reading new entries, not our pending ones
            entries, gap = self._read()
            if not entries and not gap and not out and self.pending_cursor is None:
                self._wait(timeout)
                new = True
                entries, gap = self._read()
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                log.warning("bus: consumer group %s is gone (Redis restarted?)", self.group)
                self.connected = False
                self.first_connect = False
                return out
            raise BusError(f"bus: Redis refused a read of {self.stream}: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._lost(exc)
            return out
        flush = self._merged_gap(gap, caught_up=new and len(entries) < BATCH)
        if flush:
            out.append(Message(flush_all=flush))
            if entries:  # this read moved the group on: the same gap is not new at the next
                self._gap_seen = (entries[-1][0], self._gap_seen[1])
        for entry_id, fields in entries:
            ref = f"entry {_text(entry_id)} of {self.stream}"
            if fields is None:  # a pending entry trimmed before we acked it: content unknown
                out.append(Message(flush_all=f"pending {ref} was trimmed before it was handled",
                                   ack=self._acker(entry_id)))
                continue
            raw = fields.get(b"event", b"")
            event, error = parse_event(raw)
            out.append(Message(event=event, error=error, ack=self._acker(entry_id), raw=raw,
                               dead_letter=self._dead_letterer(entry_id, fields), ref=ref,
                               site=event.site if event is not None else site_hint(raw)))
        return out

    def _acker(self, entry_id: Any) -> Callable[[], None]:
        def ack() -> None:
            try:
                self.client.xack(self.stream, self.group, entry_id)
            except redis.RedisError as exc:  # stays pending: re-read after reconnect
                log.warning("bus: XACK %s failed: %s", entry_id, exc)
        return ack

    def _dead_letterer(self, entry_id: Any, fields: dict[Any, Any]) -> Callable[[str], None]:
        def dead_letter(reason: str) -> None:
            kept = {**fields, b"dead-reason": reason[:500].encode("utf-8", "backslashreplace"),
                    b"dead-id": entry_id, b"dead-node": self.name.encode()}
            try:
                pipe = self.client.pipeline(transaction=True)
                pipe.xadd(self.transport.dead_stream, kept, maxlen=self.transport.maxlen,
                          approximate=True)
                pipe.xack(self.stream, self.group, entry_id)
                pipe.execute()
            except redis.RedisError as exc:  # stays pending: handled again after a reconnect
                log.warning("bus: cannot move %s to %s: %s", _text(entry_id),
                            self.transport.dead_stream, exc)
        return dead_letter

    @property
    def status(self) -> dict[str, Any]:
        """For health checks: whether Redis is reachable, and since when it is not."""
        return {"connected": self.connected, "unreachable_since": self.unreachable_since,
                "error": self.unreachable_error if self.unreachable_since else None}

    def close(self) -> None:
        self._closed.set()
        self.client.close()


_TRIMMED = "the stream was trimmed past this node's position (events it never read are lost)"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
