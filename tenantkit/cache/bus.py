"""The invalidation bus: how events reach every web node, and the per-node Invalidator.

Publish after a commit (never before)::

    publish(CommentPosted("blog", 42, True, gtid=gtid), settings=settings)

Run one Invalidator per node (or ``tenantkit invalidator``)::

    invalidator = Invalidator(settings, registry)
    invalidator.start()
    ...
    invalidator.stop()

Transports (``[bus] transport``):

- ``local``: in-process queues; the embedded default. With no Invalidator in the process,
  an event becomes a trigger file, so an ``invalidator`` process on the same host sees it.
- ``redis``: one Redis stream per deployment (``[bus] stream``), ``XADD ... MAXLEN ~``; one
  consumer group per node (``tenantkit:<node>``), so every node gets every event; ``XACK``
  only after the purge. After a reconnect, or when the node's position was trimmed away, the
  node flushes every site: it may have missed events. A failed publish falls back to a
  trigger file on this node.
- ``pubsub``: Redis ``PUBLISH``/``SUBSCRIBE`` on a channel of the stream's name; at most once,
  so every reconnect flushes every site. Kept for comparison (``benchmarks/invalidate.py``).
- ``files``: trigger files, ``cache_dir/<site>/.purge/*.json``. Every Invalidator watches these
  whatever the transport (watchdog, plus a periodic scan), so a PHP app with nothing else can
  drop one in.

The replica-safe purge: an event carries the GTID of its commit; the Invalidator first waits
(at most ``[bus] replica_wait_timeout`` seconds) until this node's replica (the site's first
replica, else the first of ``[database] replicas``) has applied it, then purges. On timeout it
purges now and once more after the lag bound (``[database] lag_threshold``), when the router
no longer reads from a replica that far behind.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
import sqlalchemy
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tenantkit import layout
from tenantkit.cache.events import (
    MAX_EVENT_BYTES,
    Event,
    Purge,
    PurgeAction,
    from_json,
    purge_action,
    to_json,
)
from tenantkit.cache.pagecache import PageCache
from tenantkit.config import Settings, mask_url
from tenantkit.db.gtid import wait_for_gtid
from tenantkit.db.servers import site_servers
from tenantkit.errors import BusError, CacheError, InvalidHost, MalformedEvent
from tenantkit.files import write_atomic
from tenantkit.hosts import normalize_host
from tenantkit.sites import Site

__all__ = [
    "Invalidator",
    "LocalTransport",
    "Message",
    "RedisPubSubTransport",
    "RedisStreamTransport",
    "Transport",
    "TriggerFileTransport",
    "close_transports",
    "make_transport",
    "node_name",
    "publish",
    "read_trigger_file",
]

log = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL = 5
SOCKET_TIMEOUT = 5.0


# --- messages and transports ---------------------------------------------------------------

@dataclass
class Message:
    """One delivery from a transport: an event, a malformed payload (``error``), or a demand
    to flush every site (``flush_all``, after a possible gap). ``ack`` after handling."""

    event: Event | None = None
    error: str | None = None
    flush_all: str | None = None
    ack: Callable[[], None] = lambda: None


class Consumer(Protocol):
    def poll(self, timeout: float) -> list[Message]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    name: str

    def publish(self, event: Event) -> None: ...

    def consumer(self, node: str) -> Consumer: ...

    def close(self) -> None: ...


def node_name(settings: Settings) -> str:
    """This node's name: ``[bus] node``, else the host name."""
    return settings.bus.node or socket.gethostname()


def _parse(raw: bytes | str) -> tuple[Event | None, str | None]:
    try:
        return from_json(raw), None
    except MalformedEvent as exc:
        return None, str(exc)


# local ---------------------------------------------------------------------------------------

class _Hub:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, list[queue.Queue[Event]]] = {}


_HUB = _Hub()


class LocalTransport:
    """In-process delivery to every Invalidator of this process with the same ``cache_dir``;
    with none running, the event becomes a trigger file (see :class:`TriggerFileTransport`)."""

    name = "local"

    def __init__(self, cache_dir: Path) -> None:
        self.scope = str(Path(cache_dir).resolve())
        self.files = TriggerFileTransport(cache_dir)

    def publish(self, event: Event) -> None:
        with _HUB.lock:
            targets = list(_HUB.queues.get(self.scope, ()))
        for target in targets:
            target.put(event)
        if not targets:
            self.files.publish(event)

    def consumer(self, node: str) -> Consumer:
        return _LocalConsumer(self.scope)

    def close(self) -> None:
        pass


class _LocalConsumer:
    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.queue: queue.Queue[Event] = queue.Queue()
        with _HUB.lock:
            _HUB.queues.setdefault(scope, []).append(self.queue)

    def poll(self, timeout: float) -> list[Message]:
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        events = [first]
        with contextlib.suppress(queue.Empty):
            while len(events) < 100:
                events.append(self.queue.get_nowait())
        return [Message(event=e) for e in events]

    def close(self) -> None:
        with _HUB.lock:
            queues = _HUB.queues.get(self.scope, [])
            if self.queue in queues:
                queues.remove(self.queue)


# trigger files -------------------------------------------------------------------------------

class TriggerFileTransport:
    """Writes each event as ``cache_dir/<site>/.purge/<id>.json`` (temporary name, then a
    rename, so a watcher never reads half a file). Consumed by every Invalidator's watcher."""

    name = "files"

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def publish(self, event: Event) -> None:
        directory = layout.purge_dir(layout.site_root(self.cache_dir, event.site))
        safe_id = re.sub(r"[^A-Za-z0-9_-]", "", event.id)[:32]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(directory / f"{time.time_ns()}-{safe_id}.json",
                         to_json(event).encode())
        except OSError as exc:
            raise BusError(f"cannot write a trigger file in {directory}: {exc.strerror} "
                           "(check that cache_dir is writable)") from exc

    def consumer(self, node: str) -> Consumer:
        return _NullConsumer()

    def close(self) -> None:
        pass


class _NullConsumer:
    """The watcher does the work for trigger files; this only paces the loop."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def poll(self, timeout: float) -> list[Message]:
        self._stop.wait(timeout)
        return []

    def close(self) -> None:
        self._stop.set()


def read_trigger_file(path: Path) -> Event:
    """Read one trigger file; :class:`MalformedEvent` when it is not a valid event."""
    with open(path, "rb") as f:
        raw = f.read(MAX_EVENT_BYTES + 1)
    return from_json(raw)


# redis ---------------------------------------------------------------------------------------

def _redis_client(url: str) -> redis.Redis:
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
        self.client = _redis_client(url)

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
        self.client = _redis_client(transport.url)
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
            event, error = _parse(raw)
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


class RedisPubSubTransport:
    """Redis pub/sub: at most once; every reconnect flushes every site."""

    name = "pubsub"

    def __init__(self, url: str, channel: str = "tenantkit:events") -> None:
        self.url = url
        self.channel = channel
        self.client = _redis_client(url)

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
        self.client = _redis_client(transport.url)
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
                event, error = _parse(message["data"])
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


# --- publishing ------------------------------------------------------------------------------

def make_transport(settings: Settings, kind: str | None = None) -> Transport:
    """The transport named by ``kind`` (default: ``[bus] transport``)."""
    kind = kind or settings.bus.transport
    if kind == "local":
        return LocalTransport(settings.cache_dir)
    if kind == "files":
        return TriggerFileTransport(settings.cache_dir)
    if kind == "redis":
        return RedisStreamTransport(settings.bus.redis_url, settings.bus.stream,
                                    settings.bus.stream_maxlen)
    if kind == "pubsub":
        return RedisPubSubTransport(settings.bus.redis_url, settings.bus.stream)
    raise BusError(f'bus: unknown transport {kind!r} (use "local", "redis", "pubsub" or "files")')


_TRANSPORTS: dict[tuple[Settings, str], Transport] = {}
_TRANSPORTS_LOCK = threading.Lock()


def _shared_transport(settings: Settings) -> Transport:
    key = (settings, settings.bus.transport)
    with _TRANSPORTS_LOCK:
        transport = _TRANSPORTS.get(key)
        if transport is None:
            transport = _TRANSPORTS[key] = make_transport(settings)
        return transport


def close_transports() -> None:
    """Close the transports :func:`publish` opened (at shutdown, and in tests)."""
    with _TRANSPORTS_LOCK:
        transports = list(_TRANSPORTS.values())
        _TRANSPORTS.clear()
    for transport in transports:
        transport.close()


def publish(event: Event, *, settings: Settings | None = None,
            transport: Transport | None = None) -> None:
    """Send ``event`` to every node. Call it only after the commit that caused it.

    With Redis down, the event becomes a trigger file on this node (the other nodes flush
    when they reconnect); :class:`BusError` only when that fails too.
    """
    if transport is None:
        settings = settings if settings is not None else Settings.load()
        transport = _shared_transport(settings)
    try:
        transport.publish(event)
    except BusError as exc:
        if settings is None or isinstance(transport, TriggerFileTransport):
            raise
        log.warning("%s; writing a trigger file instead", exc)
        TriggerFileTransport(settings.cache_dir).publish(event)


# --- the invalidator -------------------------------------------------------------------------

class _TriggerHandler(FileSystemEventHandler):
    def __init__(self, inbox: queue.Queue[Path]) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "moved", "modified"):
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        name = os.fsdecode(path)
        if name.endswith(".json"):  # temporary names end in .tmp
            self.inbox.put(Path(name))


class _StaticSites:
    def __init__(self, sites: Iterable[Site]) -> None:
        self.sites = {s.name: s for s in sites}


class Invalidator:
    """Consumes events on this node and purges the page caches, replica-safe.

    ``on_purge(event, site, action)`` is called after each purge (metrics, tests);
    ``transport`` overrides the one ``settings`` names.
    """

    def __init__(self, settings: Settings, registry: Any, *, transport: Transport | None = None,
                 node: str | None = None, poll_timeout: float = 0.2, scan_interval: float = 2.0,
                 on_purge: Callable[[Event | None, Site, PurgeAction], None] | None = None
                 ) -> None:
        self.settings = settings
        self.registry = registry
        self.transport = transport if transport is not None else make_transport(settings)
        self._own_transport = transport is None
        self.node = node or node_name(settings)
        self.poll_timeout = poll_timeout
        self.scan_interval = scan_interval
        self.on_purge = on_purge
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._inbox: queue.Queue[Path] = queue.Queue()
        self._observer: Any = None
        self._watched: dict[Path, Any] = {}
        self._caches: dict[str, tuple[Site, PageCache]] = {}
        self._engines: dict[str, sqlalchemy.Engine] = {}
        self._repurges: list[tuple[float, int, str, PurgeAction]] = []
        self._repurge_seq = 0
        self._last_scan = 0.0
        self.handled = 0
        self.errors = 0

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def sites(self) -> Mapping[str, Site]:
        sites: Mapping[str, Site] = self.registry.sites
        return sites

    def start(self) -> Invalidator:
        """Start consuming in a background thread; returns self."""
        if self._thread is not None:
            return self
        self._consumer = self.transport.consumer(self.node)
        self._observer = Observer()
        self._observer.daemon = True
        self._watch()
        self._observer.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tenantkit-invalidator",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and release everything (thread, watcher, connections)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
            self._watched.clear()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._own_transport:
            self.transport.close()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def __enter__(self) -> Invalidator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_forever(self) -> None:
        """Run in the calling thread until :meth:`stop` (from a signal handler, say)."""
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def _run(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep serving the other sites
                self.errors += 1
                log.exception("invalidator: unexpected error; continuing")
                self._stop.wait(0.5)

    def step(self) -> None:
        """One round: consume what the transport has, trigger files, due re-purges."""
        assert self._consumer is not None
        for message in self._consumer.poll(self.poll_timeout):
            if message.flush_all:
                log.warning("invalidator: flushing every site: %s", message.flush_all)
                self.flush_all()
            elif message.error:
                self.errors += 1
                log.warning("invalidator: dropped a malformed event: %s", message.error)
            elif message.event is not None and not self.handle(message.event):
                continue  # not acknowledged: delivered again after a restart
            message.ack()
        while True:
            try:
                path = self._inbox.get_nowait()
            except queue.Empty:
                break
            self.process_trigger_file(path)
        now = time.monotonic()
        while self._repurges and self._repurges[0][0] <= now:
            _, _, name, action = heapq.heappop(self._repurges)
            site = self.sites.get(name)
            if site is not None:
                log.info("invalidator: second purge of %s after the lag bound", name)
                self.apply(site, action, None)
        if now - self._last_scan >= self.scan_interval:
            self._last_scan = now
            self._watch()
            self.scan()

    # --- events ---------------------------------------------------------------------------

    def handle(self, event: Event) -> bool:
        """Purge for one event (after the replica wait). False when the purge failed."""
        site = self.sites.get(event.site)
        if site is None:
            log.warning("invalidator: event for unknown site %r dropped (known: %s)",
                        event.site, ", ".join(sorted(self.sites)) or "none")
            return True
        action = purge_action(event, site.cache.policy,
                              home_shows_comments=bool(site.meta.get("home_shows_comments",
                                                                     True)))
        if not action:
            return True
        if event.gtid and not self._replica_has(site, event.gtid):
            bound = max(self.settings.database.lag_threshold,
                        self.settings.bus.replica_wait_timeout)
            self._repurge_seq += 1
            heapq.heappush(self._repurges,
                           (time.monotonic() + bound, self._repurge_seq, site.name, action))
        try:
            self.apply(site, action, event)
        except CacheError as exc:  # the event asks for something impossible: retrying won't help
            self.errors += 1
            log.error("invalidator: purge of site %s failed: %s; event dropped", site.name, exc)
        except OSError as exc:
            self.errors += 1
            log.error("invalidator: purge of site %s failed: %s; will retry", site.name, exc)
            return False
        self.handled += 1
        return True

    def _replica_has(self, site: Site, gtid: str) -> bool:
        """Wait, bounded, until this node's replica has applied ``gtid``."""
        timeout = self.settings.bus.replica_wait_timeout
        servers = site_servers(site, self.settings)
        if timeout <= 0 or not servers.replicas:
            return True
        url = servers.replicas[0]
        engine = self._engines.get(url)
        if engine is None:
            engine = self._engines[url] = sqlalchemy.create_engine(
                url, pool_pre_ping=True, pool_size=1, max_overflow=2,
                connect_args=servers.connect_args(url),
            )
        try:
            with engine.connect() as conn:
                if wait_for_gtid(conn, gtid, timeout):
                    return True
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("invalidator: cannot wait for GTID %s on replica %s: %s", gtid,
                        mask_url(url), exc)
            return False
        log.warning("invalidator: replica %s has not applied %s after %gs: purging now and "
                    "again after the lag bound", mask_url(url), gtid, timeout)
        return False

    def cache_for(self, site: Site) -> PageCache:
        known = self._caches.get(site.name)
        if known is None or known[0] != site:
            cache = PageCache(site.pages_dir, ttl=site.cache.ttl,
                              stale_seconds=site.cache.stale_seconds,
                              max_bytes=site.cache.max_bytes)
            self._caches[site.name] = (site, cache)
            return cache
        return known[1]

    def apply(self, site: Site, action: PurgeAction, event: Event | None) -> None:
        """Carry out ``action`` on the site's page cache."""
        cache = self.cache_for(site)
        if action.flush:
            cache.flush()
        else:
            if action.tags:
                cache.purge_tags(action.tags)
            if action.paths:
                host = None
                if action.host is not None:
                    try:
                        host = normalize_host(action.host)
                    except InvalidHost as exc:
                        log.warning("invalidator: purge for site %s: %s; dropped", site.name, exc)
                        return
                cache.purge_paths(host, action.paths)
        if self.on_purge is not None:
            self.on_purge(event, site, action)

    def flush_all(self) -> None:
        """Flush every site (after a possible gap in the event stream)."""
        for site in list(self.sites.values()):
            try:
                self.apply(site, PurgeAction(flush=True), None)
            except (OSError, CacheError) as exc:
                log.error("invalidator: flush of site %s failed: %s", site.name, exc)

    # --- trigger files --------------------------------------------------------------------

    def _watch(self) -> None:
        if self._observer is None:
            return
        wanted = {site.purge_dir for site in self.sites.values()}
        for directory in wanted - self._watched.keys():
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self._watched[directory] = self._observer.schedule(
                    _TriggerHandler(self._inbox), str(directory), recursive=False)
            except OSError as exc:
                log.warning("invalidator: cannot watch %s: %s", directory, exc)
        for directory in self._watched.keys() - wanted:
            with contextlib.suppress(Exception):
                self._observer.unschedule(self._watched.pop(directory))

    def scan(self) -> int:
        """Process every trigger file present now (the watcher may miss some)."""
        count = 0
        for site in list(self.sites.values()):
            try:
                names = sorted(e.name for e in os.scandir(site.purge_dir)
                               if e.name.endswith(".json"))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                count += self.process_trigger_file(site.purge_dir / name)
        return count

    def process_trigger_file(self, path: Path) -> bool:
        """Handle and remove one trigger file. Malformed files are logged and removed."""
        site_name = path.parent.parent.name
        try:
            event = read_trigger_file(path)
        except FileNotFoundError:
            return False  # already handled (watcher and scan both saw it)
        except (MalformedEvent, OSError) as exc:
            self.errors += 1
            log.warning("invalidator: trigger file %s is malformed: %s; removed", path, exc)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        site = self.sites.get(site_name)
        if site is None or not _same_dir(site.purge_dir, path.parent):
            log.warning("invalidator: trigger file %s is not in a known site's purge "
                        "directory; removed", path)
        elif event.site != site.name:
            self.errors += 1
            log.warning("invalidator: trigger file %s names site %r but lies in site %r's "
                        "directory; removed (a site may only purge itself)", path, event.site,
                        site.name)
        elif not self.handle(event):
            return False  # kept: tried again at the next scan
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def purge_now(settings: Settings, sites: Iterable[Site], event: Purge) -> None:
    """Apply an explicit purge here and now, without a bus (``tenantkit purge`` with the
    local transport and no Invalidator running)."""
    registry = _StaticSites(sites)
    invalidator = Invalidator(settings, registry,
                              transport=TriggerFileTransport(settings.cache_dir))
    site = registry.sites[event.site]
    invalidator.apply(site, purge_action(event, site.cache.policy), event)
