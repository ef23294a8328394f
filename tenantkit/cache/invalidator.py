"""The per-node Invalidator: consumes events and purges the page caches, replica-safe.

Run one per node (or ``tenantkit invalidator``)::

    invalidator = Invalidator(settings, registry)
    invalidator.start()
    ...
    invalidator.stop()

It consumes the transport ``[bus] transport`` names (:mod:`tenantkit.cache.transports`) and,
whatever the transport, the trigger files in every site's ``.purge/`` directory (watchdog,
plus a periodic scan). A transport's demand to flush every site (after a reconnect, or a
gap in a stream) is obeyed. Purges go through :func:`tenantkit.cache.purge.purge`, on the
PageCache objects of ``caches`` (pass the shim's :class:`~tenantkit.cache.caches.SiteCaches`
when it runs in the shim's process).

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.events import Event, PurgeAction
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.purge import action_for, purge
from tenantkit.cache.transports import (
    Consumer,
    Transport,
    make_transport,
    node_name,
    read_trigger_file,
)
from tenantkit.config import Settings, mask_url
from tenantkit.db.gtid import wait_for_gtid
from tenantkit.db.servers import site_servers
from tenantkit.errors import CacheError, InvalidHost, MalformedEvent
from tenantkit.sites import Site

__all__ = ["Invalidator"]

log = logging.getLogger(__name__)


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


class Invalidator:
    """Consumes events on this node and purges the page caches, replica-safe.

    ``on_purge(event, site, action)`` is called after each purge (metrics, tests);
    ``transport`` overrides the one ``settings`` names; ``caches`` is the process's one
    PageCache per site (default: a registry of its own).
    """

    def __init__(self, settings: Settings, registry: Any, *, transport: Transport | None = None,
                 node: str | None = None, poll_timeout: float = 0.2, scan_interval: float = 2.0,
                 on_purge: Callable[[Event | None, Site, PurgeAction], None] | None = None,
                 caches: SiteCaches | None = None) -> None:
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
        self.caches = caches if caches is not None else SiteCaches()
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
        action = action_for(site, event)
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
        """The site's PageCache: the one this process keeps for it in :attr:`caches`."""
        return self.caches.get(site)

    def apply(self, site: Site, action: PurgeAction, event: Event | None) -> None:
        """Carry out ``action`` on the site's page cache (:func:`tenantkit.cache.purge.purge`)."""
        try:
            purge(self.cache_for(site), site, action)
        except InvalidHost as exc:
            log.warning("invalidator: purge for site %s: %s; dropped", site.name, exc)
            return
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
