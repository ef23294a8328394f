"""The per-node Invalidator: consumes events and purges the page caches, replica-safe.

Run one per node (or ``tenantkit invalidator``)::

    invalidator = Invalidator(settings, registry)
    invalidator.start()
    ...
    invalidator.stop()

**One actor per node.** However many processes of a node run an Invalidator (each gunicorn
worker of ``tenantkit serve``, a standalone ``tenantkit invalidator``), only the one holding
the node's lock (:mod:`tenantkit.cache.nodelock`) consumes the bus and the trigger files;
the others stand by (:attr:`Invalidator.role` ``"standby"``; :meth:`Invalidator.state`
names the actor's pid) and try the lock about once a second, taking over when the actor
dies. So a reconnect, a gap or a poison event flushes each site once per node. The Redis
Streams consumer is named after the node, not the process: a standby that takes over reads
the entries the dead actor left pending. A standby registers no in-process (``local``)
consumer, so what its process publishes becomes a trigger file for the actor.

``on_purged`` (the shim's re-warming, :mod:`tenantkit.web.rewarm`) runs in the actor's
process only: when the standalone ``tenantkit invalidator`` is the actor, purged pages are
not re-warmed, and their next visitor re-renders them (served stale meanwhile).

It consumes the transport ``[bus] transport`` names (:mod:`tenantkit.cache.transports`) and,
whatever the transport, the trigger files in every site's ``.purge/`` directory (watchdog,
plus a periodic scan). A transport's demand to flush every site (after a reconnect, or a
gap in a stream) is obeyed.

**Coalescing.** Every purge asked for -- a bus event, a trigger file, a flush, the
replica-safe second purge -- goes through a :class:`~tenantkit.cache.coalesce.Coalescer`:
purges of one site within ``[bus] coalesce_window`` seconds are carried out as one. A bus
entry is acknowledged (a trigger file removed) only after the merged purge that covers it
was carried out, so a crash loses nothing.

**Two threads.** The bus thread reads the transport (a Redis read may block up to its
socket timeout) and acknowledges; the purge thread handles trigger files, carries out the
merged purges and writes the status file, and never waits on Redis.

Nothing stops the loop: an entry that cannot be handled -- malformed, or handling it raised
anything at all, or a purge that kept failing -- is acknowledged and moved to the transport's
dead letter (``<stream>:dead`` in Redis, ``.purge/failed/`` for trigger files), counted in
:attr:`Invalidator.dead_letters`, logged once, and its site is flushed (every site when the
payload names none), since a lost event may mean stale pages.

Every :data:`~tenantkit.cache.status.INTERVAL` seconds the actor writes what it is doing
(connected, last purge, binlog lag of :attr:`Invalidator.sources`, dead letters) to
``cache_dir/_status/<node>.json`` (:mod:`tenantkit.cache.status`), which the health check,
the status page and the metrics of every process on the node read; what it purged is
counted in the node counters (:mod:`tenantkit.cache.nodecounters`).

Purges go through :func:`tenantkit.cache.purge.purge`, on the PageCache objects of ``caches``
(pass the shim's :class:`~tenantkit.cache.caches.SiteCaches` when it runs in the shim's
process).

The replica-safe purge: an event carries the GTID of its commit; the Invalidator first waits
(at most ``[bus] replica_wait_timeout`` seconds) until this node's replica (the first replica
:func:`~tenantkit.db.servers.site_servers` gives the site) has applied it, then purges. On
timeout it purges now and once more after the lag bound (``[database] lag_threshold``), when
the router no longer reads from a replica that far behind.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tenantkit import layout
from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.coalesce import Coalescer, Merged, Request
from tenantkit.cache.events import Event, PurgeAction
from tenantkit.cache.nodecounters import COALESCED, FLUSHES, PURGES, NodeCounters
from tenantkit.cache.nodelock import NodeLock
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.purge import PurgeResult, action_for, purge
from tenantkit.cache.status import INTERVAL as STATUS_INTERVAL
from tenantkit.cache.status import InvalidatorStatus, write_status
from tenantkit.cache.transports import (
    Consumer,
    Message,
    Transport,
    make_transport,
    node_name,
    read_trigger_file,
)
from tenantkit.config import Settings, mask_url
from tenantkit.db.gtid import wait_for_gtid
from tenantkit.db.servers import site_servers
from tenantkit.errors import CacheError, InvalidHost, MalformedEvent
from tenantkit.files import write_atomic
from tenantkit.sites import Site

__all__ = ["Invalidator"]

log = logging.getLogger(__name__)


#: Attempts at an event whose purge fails with an OSError before it is dead-lettered.
MAX_ATTEMPTS = 3
RETRY_DELAY = 0.5
#: Seconds an event waits for a replica already found behind (a healthy one applies a
#: write within this; one still behind costs each event no more).
BEHIND_WAIT = 0.2
#: Seconds between a standby's tries of the node lock.
STANDBY_RETRY = 1.0
#: Bus entries handed to the purge thread and not yet acknowledged, at most; the bus thread
#: reads no more until some are.
MAX_INFLIGHT = 1000


class _TriggerHandler(FileSystemEventHandler):
    def __init__(self, inbox: queue.Queue[Path], directory: Path,
                 wake: Callable[[], None]) -> None:
        self.inbox = inbox
        self.directory = os.path.realpath(directory)
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "moved", "modified"):
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        name = os.fsdecode(path)
        # temporary names end in .tmp; dead letters (failed/) are not for us
        if name.endswith(".json") and os.path.realpath(os.path.dirname(name)) == self.directory:
            self.inbox.put(Path(name))
            self.wake()


class Invalidator:
    """Consumes events on this node and purges the page caches, replica-safe.

    ``on_purge(event, site, action)`` is called after each purge carried out (metrics,
    tests; ``event`` is None for a flush, a second purge or several merged purges);
    ``on_purged(site, result)`` after each purge that reported the pages it made stale
    (``result.keys``: a site with ``[cache] rewarm``, see :mod:`tenantkit.web.rewarm`);
    ``transport`` overrides the one ``settings`` names; ``caches`` is the process's one
    PageCache per site (default: a registry of its own); ``coalesce_window`` overrides
    ``[bus] coalesce_window``.
    """

    def __init__(self, settings: Settings, registry: Any, *, transport: Transport | None = None,
                 node: str | None = None, poll_timeout: float = 0.2, scan_interval: float = 2.0,
                 on_purge: Callable[[Event | None, Site, PurgeAction], None] | None = None,
                 caches: SiteCaches | None = None,
                 on_purged: Callable[[Site, PurgeResult], None] | None = None,
                 coalesce_window: float | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.transport = transport if transport is not None else make_transport(settings)
        self._own_transport = transport is None
        self.node = node or node_name(settings)
        self.poll_timeout = poll_timeout
        self.scan_interval = scan_interval
        self.on_purge = on_purge
        self.on_purged = on_purged
        window = settings.bus.coalesce_window if coalesce_window is None else coalesce_window
        self.coalescer = Coalescer(window)
        self._lock = NodeLock(settings.cache_dir, self.node)
        #: "starting", "actor" (consumes for the node), "standby" or "stopped".
        self.role = "stopped"
        self._stop = threading.Event()
        self._started = False
        self._thread: threading.Thread | None = None
        self._purger: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._inbox: queue.Queue[Path] = queue.Queue()
        self._observer: Any = None
        self._watched: dict[Path, Any] = {}
        self.caches = caches if caches is not None else SiteCaches()
        self._engines: dict[str, sqlalchemy.Engine] = {}
        #: Guards the second-purge heap and the replica engines (both threads use them).
        self._mutex = threading.Lock()
        #: Replicas that did not apply an event's GTID in time (not waited for until they
        #: have caught up).
        self._behind: set[str] = set()
        self._repurges: list[tuple[float, int, str, PurgeAction]] = []
        self._repurge_seq = 0
        self._last_scan = 0.0
        self._retries: list[tuple[float, int, int, Message]] = []
        #: (message, attempts, error) of bus entries whose purge was carried out or failed
        self._done: queue.Queue[tuple[Message, int, BaseException | None]] = queue.Queue()
        self._inflight = 0
        self._file_attempts: dict[Path, int] = {}
        self._files_inflight: set[Path] = set()
        self.handled = 0
        self.errors = 0
        #: Entries moved to a dead letter since start.
        self.dead_letters = 0
        #: Other sources purging on this node (binlog readers), in its status file.
        self.sources: list[Any] = []
        self.last_event: float | None = None
        self._last_report = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def counters(self) -> NodeCounters:
        """This process's node counters (looked up each time: a new one after a fork)."""
        return NodeCounters.for_dir(self.settings.cache_dir)

    @property
    def sites(self) -> Mapping[str, Site]:
        sites: Mapping[str, Site] = self.registry.sites
        return sites

    def start(self) -> Invalidator:
        """Start in a background thread; returns self. When the node lock is free this
        process is the node's actor at once (its consumer is registered on return), else
        it stands by."""
        if self._thread is not None:
            return self
        if not self._started and self._stop.is_set():
            # Stopped before it ever started (a signal during start-up): that start is off;
            # a later one runs.
            self._started = True
            return self
        if self._started:
            self._stop.clear()  # started again after a stop
        self._started = True
        self.role = "starting"
        if self._take_lock():
            self._become_actor()
        self._thread = threading.Thread(target=self._run, name="tenantkit-invalidator",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and release everything (threads, watcher, connections, the node lock). What
        was asked for and not yet carried out is carried out first."""
        self._stop.set()
        self.coalescer.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._purger is not None:
            self._purger.join(timeout)
            self._purger = None
        if self._consumer is not None:
            self._finish_done()
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
        self.counters.save()
        self._lock.release()
        self.role = "stopped"

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

    def state(self) -> str:
        """What this process's invalidator does, for the health check and the status page:
        ``running`` (the node's actor), ``standby: node actor is pid N``, ``starting`` or
        ``stopped``."""
        if self.role == "standby":
            pid = self._lock.holder()
            return f"standby: node actor is pid {pid}" if pid else "standby"
        return "running" if self.role == "actor" else self.role

    def _run(self) -> None:
        if self.role != "actor":
            self.role = "standby"
            log.info("invalidator: standing by on node %s: %s; trying again every %gs",
                     self.node, self.state().replace("standby: ", ""), STANDBY_RETRY)
            while not self._stop.wait(STANDBY_RETRY):
                if self._take_lock():
                    log.warning("invalidator: pid %d took over as node %s's actor",
                                os.getpid(), self.node)
                    self._become_actor()
                    break
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep serving the other sites
                self.errors += 1
                log.exception("invalidator: unexpected error; continuing")
                self._stop.wait(0.5)

    def _become_actor(self) -> None:
        """Consume the node's bus and trigger files: the consumer, the watcher, the purge
        thread."""
        self._consumer = self.transport.consumer(self.node)
        self._observer = Observer()
        self._observer.daemon = True
        self._watch()
        self._observer.start()
        self.role = "actor"
        self._purger = threading.Thread(target=self._purge_loop,
                                        name="tenantkit-invalidator-purge", daemon=True)
        self._purger.start()

    def _take_lock(self) -> bool:
        """True when this process is (now) the node's actor."""
        try:
            return self._lock.acquire()
        except OSError as exc:  # cannot coordinate: act, as before there was a lock
            if self.role != "actor":
                log.warning("invalidator: cannot use the node lock %s (%s); this process "
                            "consumes the bus without it", self._lock.path, exc)
            return True

    def step(self) -> None:
        """One round of the bus thread: acknowledge what was purged, consume what the
        transport has, retry failed entries."""
        assert self._consumer is not None
        self._finish_done()
        if self._inflight >= MAX_INFLIGHT:  # the purge thread is behind: read no more
            with contextlib.suppress(queue.Empty):
                self._finish_one(self._done.get(timeout=self.poll_timeout))
            return
        for message in self._consumer.poll(self.poll_timeout):
            self.deliver(message)
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, _, attempts, message = heapq.heappop(self._retries)
            self.deliver(message, attempts)

    def _purge_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._purge_round()
            except Exception:
                self.errors += 1
                log.exception("invalidator: unexpected error in the purge thread; continuing")
                self._stop.wait(0.5)
        # stopping: carry out what was asked for (acknowledged by stop())
        for merged in self.coalescer.take_due(everything=True):
            self._carry_out(merged)

    def _purge_round(self) -> None:
        """One round of the purge thread: trigger files, due second purges, merged purges
        whose window closed, the periodic scan and status report; then wait for more."""
        for path in _drain(self._inbox):
            self.process_trigger_file(path)
        now = time.monotonic()
        with self._mutex:
            due = []
            while self._repurges and self._repurges[0][0] <= now:
                due.append(heapq.heappop(self._repurges))
            next_repurge = self._repurges[0][0] if self._repurges else None
        for _, _, name, action in due:
            log.info("invalidator: second purge of %s after the lag bound", name)
            self.coalescer.add(name, action)
        for merged in self.coalescer.take_due():
            self._carry_out(merged)
        now = time.monotonic()
        if now - self._last_scan >= self.scan_interval:
            self._last_scan = now
            self._watch()
            self.scan()
        if now - self._last_report >= STATUS_INTERVAL:
            self._last_report = now
            write_status(self.settings.cache_dir, self.status())
            self.counters.save()
        wait = min(0.5, self._last_scan + self.scan_interval - now,
                   self._last_report + STATUS_INTERVAL - now)
        if next_repurge is not None:
            wait = min(wait, next_repurge - now)
        if self._inbox.empty():
            self.coalescer.wait(max(wait, 0.0))

    def status(self) -> InvalidatorStatus:
        """What this invalidator reports in its status file (:mod:`tenantkit.cache.status`)."""
        bus = self.bus_status()
        sources = [source.status() for source in self.sources]
        errors = [str(bus.get("error") or "the bus is not connected")] \
            if bus.get("connected") is False else []
        errors += [str(s.get("error") or "not connected") for s in sources
                   if not s.get("connected")]
        lags = [float(s["lag"]) for s in sources if s.get("lag") is not None]
        times = [t for t in (self.last_event, *(s.get("last_event") for s in sources))
                 if t is not None]
        return InvalidatorStatus(
            node=self.node, source="bus+binlog" if sources else "bus",
            transport=self.transport.name, connected=not errors, error="; ".join(errors),
            last_event=max(times) if times else None, lag=max(lags) if lags else None,
            dead_letters=self.dead_letters, handled=self.handled)

    # --- events ---------------------------------------------------------------------------

    def deliver(self, message: Message, attempts: int = 0) -> None:
        """Hand one delivery to the purge thread; it is acknowledged once its (merged)
        purge was carried out, or moved to the dead letter, or (purge failed with an
        OSError) tried again shortly. Never raises."""
        if message.flush_all:
            log.warning("invalidator: flushing every site: %s", message.flush_all)
            self._inflight += 1
            self.flush_all(done=lambda error: self._done.put((message, attempts, None)))
            return
        if message.event is None:
            self._dead_letter(message.ref, message.site, message.error or "no event",
                              message.reject)
            return
        self._inflight += 1

        def done(error: BaseException | None) -> None:
            self._done.put((message, attempts, error))

        try:
            queued = self._request(message.event, done)
        except Exception as exc:  # a poison event: it must never stop this node
            self._inflight -= 1
            self._dead_letter(message.ref, message.event.site, _describe(exc), message.reject)
            return
        if not queued:
            self._inflight -= 1
            message.ack()

    def _finish_done(self) -> None:
        for item in _drain(self._done):
            self._finish_one(item)

    def _finish_one(self, item: tuple[Message, int, BaseException | None]) -> None:
        """Acknowledge, retry or dead-letter one bus entry whose purge was attempted."""
        message, attempts, error = item
        self._inflight -= 1
        site = message.event.site if message.event is not None else message.site
        if error is None:
            message.ack()
        elif not isinstance(error, OSError):  # a poison event
            self._dead_letter(message.ref, site, _describe(error), message.reject)
        elif attempts + 1 >= MAX_ATTEMPTS:
            self._dead_letter(message.ref, site, f"the purge failed {MAX_ATTEMPTS} times",
                              message.reject)
        else:  # not acknowledged: tried again here (and redelivered after a restart)
            self._repurge_seq += 1
            heapq.heappush(self._retries, (time.monotonic() + RETRY_DELAY * 2 ** attempts,
                                           self._repurge_seq, attempts + 1, message))

    def _dead_letter(self, ref: str, site_name: str | None, reason: str,
                     move: Callable[[str], None]) -> None:
        """Move an entry that cannot be handled out of the way, count it, log it once and
        flush its site (every site when it names none): its event may be lost."""
        self.errors += 1
        self.dead_letters += 1
        if site_name is None:
            targets = list(self.sites.values())
            flushed = "every site"
        else:
            site = self.sites.get(site_name)
            targets = [site] if site is not None else []
            flushed = f"site {site_name}" if site is not None else "nothing (unknown site)"
        log.error("invalidator: %s could not be handled (%s); moved to the dead letter, "
                  "flushing %s", ref or "an event", reason, flushed)
        try:
            move(reason)
        except Exception as exc:
            log.error("invalidator: cannot move %s to the dead letter: %s", ref or "an entry",
                      _describe(exc))
        for site in targets:
            self.coalescer.add(site.name, PurgeAction(flush=True))

    def _action(self, event: Event) -> tuple[Site, PurgeAction] | None:
        """The site and what ``event`` purges on it (after the replica wait, scheduling the
        second purge when the replica is behind); None when it purges nothing."""
        site = self.sites.get(event.site)
        if site is None:
            log.warning("invalidator: event for unknown site %r dropped (known: %s)",
                        event.site, ", ".join(sorted(self.sites)) or "none")
            return None
        action = action_for(site, event)
        if not action:
            return None
        if event.gtid and not self._replica_has(site, event.gtid):
            bound = max(self.settings.database.lag_threshold,
                        self.settings.bus.replica_wait_timeout)
            with self._mutex:
                self._repurge_seq += 1
                heapq.heappush(self._repurges,
                               (time.monotonic() + bound, self._repurge_seq, site.name, action))
            self.coalescer.wake()
        return site, action

    def _request(self, event: Event, done: Callable[[BaseException | None], None]) -> bool:
        """Ask the purge thread for ``event``'s purge; ``done`` is called once it was carried
        out. False when the event purges nothing (``done`` is not called)."""
        found = self._action(event)
        if found is None:
            return False
        site, action = found
        self.coalescer.add(site.name, action, event=event, done=done)
        return True

    def handle(self, event: Event) -> bool:
        """Purge for one event now, in the calling thread (after the replica wait), not
        merged with anything. False when the purge failed."""
        found = self._action(event)
        if found is None:
            return True
        site, action = found
        outcome: list[BaseException | None] = []
        merged = Merged(site.name, 0.0)
        merged.add(Request(site.name, action, event, outcome.append))
        self._carry_out(merged)
        return not outcome or not isinstance(outcome[0], OSError)

    def _carry_out(self, merged: Merged) -> None:
        """Carry out one merged purge and tell each request how it went. A merged purge that
        raises anything but an OSError is carried out again request by request, so one
        poison request cannot take the others with it."""
        site = self.sites.get(merged.site)
        error: BaseException | None = None
        if site is not None:
            try:
                self._purge(site, merged)
            except OSError as exc:
                self.errors += 1
                log.error("invalidator: purge of site %s failed: %s; will retry", site.name,
                          exc)
                error = exc
            except Exception as exc:
                if len(merged.requests) > 1:
                    for request in merged.requests:
                        alone = Merged(merged.site, merged.due)
                        alone.add(request)
                        self._carry_out(alone)
                    return
                if isinstance(exc, InvalidHost):
                    log.warning("invalidator: purge for site %s: %s; dropped", site.name, exc)
                elif isinstance(exc, CacheError):  # impossible to carry out: retrying won't help
                    self.errors += 1
                    log.error("invalidator: purge of site %s failed: %s; event dropped",
                              site.name, exc)
                else:
                    error = exc
        for request in merged.requests:
            if request.done is not None:
                request.done(error)
            elif error is not None:
                log.error("invalidator: flush of site %s failed: %s", merged.site,
                          _describe(error))

    def _purge(self, site: Site, merged: Merged) -> None:
        actions = merged.actions()
        if not actions:
            return
        cache = self.cache_for(site)
        results = [purge(cache, site, action) for action in actions]
        self.last_event = time.time()
        self.handled += sum(1 for r in merged.requests if r.event is not None)
        self.counters.add(FLUSHES if merged.flush else PURGES, site.name)
        if len(merged.requests) > 1:
            self.counters.add(COALESCED, site.name, len(merged.requests) - 1)
        for action, result in zip(actions, results, strict=True):
            if self.on_purged is not None and result.keys:
                self.on_purged(site, result)
            if self.on_purge is not None:
                self.on_purge(merged.event, site, action)

    def _replica_has(self, site: Site, gtid: str) -> bool:
        """Wait, bounded, until this node's replica has applied ``gtid``."""
        timeout = self.settings.bus.replica_wait_timeout
        servers = site_servers(site, self.settings)
        if timeout <= 0 or not servers.replicas:
            return True
        url = servers.replicas[0]
        with self._mutex:  # both threads wait on replicas: one engine per replica
            engine = self._engines.get(url)
            if engine is None:
                engine = self._engines[url] = sqlalchemy.create_engine(
                    url, pool_pre_ping=True, pool_size=1, max_overflow=2,
                    connect_args=servers.connect_args(url),
                )
        # A replica found behind is waited for only briefly (BEHIND_WAIT) until it has
        # caught up: the whole timeout for each event in turn would hold every later purge.
        with self._mutex:
            behind = url in self._behind
        try:
            with engine.connect() as conn:
                if wait_for_gtid(conn, gtid, min(timeout, BEHIND_WAIT) if behind else timeout):
                    if behind:
                        with self._mutex:
                            self._behind.discard(url)
                        log.info("invalidator: replica %s has caught up", mask_url(url))
                    return True
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("invalidator: cannot wait for GTID %s on replica %s: %s", gtid,
                        mask_url(url), exc)
            return False
        if not behind:
            with self._mutex:
                self._behind.add(url)
            log.warning("invalidator: replica %s has not applied %s after %gs: purging now "
                        "and again after the lag bound; until it has caught up, events wait "
                        "for it %gs at most", mask_url(url), gtid, timeout, BEHIND_WAIT)
        return False

    def cache_for(self, site: Site) -> PageCache:
        """The site's PageCache: the one this process keeps for it in :attr:`caches`."""
        return self.caches.get(site)

    def flush_all(self, done: Callable[[BaseException | None], None] | None = None) -> None:
        """Ask for a flush of every site (after a possible gap in the event stream);
        ``done`` is called once every site was flushed."""
        sites = list(self.sites.values())
        if not sites:
            if done is not None:
                done(None)
            return
        left = [len(sites)]
        lock = threading.Lock()

        def one_done(error: BaseException | None) -> None:
            if error is not None:
                log.error("invalidator: flush failed: %s", _describe(error))
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last and done is not None:
                done(None)

        for site in sites:
            self.coalescer.add(site.name, PurgeAction(flush=True), done=one_done)

    def bus_status(self) -> dict[str, Any]:
        """The consumer's view of the bus (health checks): ``connected``, and for Redis
        ``unreachable_since`` (Unix time) and ``error`` while it is down."""
        status = getattr(self._consumer, "status", None)
        return dict(status) if isinstance(status, dict) else {}

    # --- trigger files --------------------------------------------------------------------

    def _watch(self) -> None:
        if self._observer is None:
            return
        wanted = {site.purge_dir for site in self.sites.values()}
        for directory in wanted - self._watched.keys():
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self._watched[directory] = self._observer.schedule(
                    _TriggerHandler(self._inbox, directory, self.coalescer.wake),
                    str(directory), recursive=False)
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
        """Hand one trigger file's purge to the coalescer; the file is removed once that
        purge was carried out. One that cannot be handled (malformed, for another site, or
        handling it raised) goes to ``.purge/failed/`` and the site is flushed; one whose
        purge failed with an OSError is kept for the next scan, and dead-lettered after
        :data:`MAX_ATTEMPTS` tries."""
        if path in self._files_inflight:
            return False  # already waiting for its purge
        site = self.sites.get(path.parent.parent.name)
        if site is None or not _same_dir(site.purge_dir, path.parent):
            log.warning("invalidator: trigger file %s is not in a known site's purge "
                        "directory; removed", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        try:
            event = read_trigger_file(path)
        except FileNotFoundError:
            return False  # already handled (watcher and scan both saw it)
        except (MalformedEvent, OSError) as exc:
            return self._dead_file(site, path, _describe(exc))
        if event.site != site.name:
            return self._dead_file(site, path, f"it names site {event.site!r} but lies in "
                                   f"site {site.name!r}'s directory (a site may only purge "
                                   "itself)")
        try:
            queued = self._request(event, self._file_done(site, path))
        except Exception as exc:  # a poison event: it must never stop the scan
            return self._dead_file(site, path, _describe(exc))
        if queued:
            self._files_inflight.add(path)
        else:
            self._file_attempts.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True

    def _file_done(self, site: Site, path: Path) -> Callable[[BaseException | None], None]:
        def done(error: BaseException | None) -> None:
            self._files_inflight.discard(path)
            if error is None:
                self._file_attempts.pop(path, None)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif not isinstance(error, OSError):
                self._dead_file(site, path, _describe(error))
            else:
                attempts = self._file_attempts[path] = self._file_attempts.get(path, 0) + 1
                if attempts >= MAX_ATTEMPTS:  # else kept: tried again at the next scan
                    self._dead_file(site, path, f"the purge failed {MAX_ATTEMPTS} times")
        return done

    def _dead_file(self, site: Site, path: Path, reason: str) -> bool:
        self._file_attempts.pop(path, None)

        def move(why: str) -> None:
            failed = layout.failed_dir(site.cache_root)
            failed.mkdir(exist_ok=True)
            try:
                os.replace(path, failed / path.name)
            except FileNotFoundError:
                return
            write_atomic(failed / f"{path.name}.reason",
                         why.encode("utf-8", "backslashreplace") + b"\n")

        self._dead_letter(f"trigger file {path}", site.name, reason, move)
        return False


T = TypeVar("T")


def _drain(inbox: queue.Queue[T]) -> Iterator[T]:
    """What *inbox* holds now, taken one by one without waiting."""
    while True:
        try:
            yield inbox.get_nowait()
        except queue.Empty:
            return


def _describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, MalformedEvent) else f"{type(exc).__name__}: {exc}"
    return text.encode("utf-8", "backslashreplace").decode()[:300]


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
