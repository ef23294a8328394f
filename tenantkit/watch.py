"""SiteWatcher: reload a :class:`~tenantkit.registry.Registry` when its site files change.

::

    registry = Registry.load(settings)
    with SiteWatcher(registry):            # or watcher.start() ... watcher.stop()
        serve()

A watchdog observer on ``sites_dir`` marks the registry dirty on every create, modify, delete
and move (editors' atomic saves and ``mv`` into place are moves); a worker thread reloads once
the events have been quiet for ``debounce`` seconds (0.2 by default; never later than
``max_delay`` after the first event, so a steady trickle of writes cannot starve it). The same
thread also reloads every ``reconcile`` seconds (default 5) to survive lost events, file
systems without inotify, and a ``sites_dir`` that appears after start. Reloads are cheap:
unchanged files are not parsed again. ``stop()`` joins every thread it started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tenantkit.registry import Registry, ReloadReport

__all__ = ["SiteWatcher"]

log = logging.getLogger(__name__)

# Event types that cannot change a directory listing or a file's content.
_IGNORED = frozenset({"opened", "closed_no_write"})


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: SiteWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _IGNORED:
            self.watcher.notify()


class SiteWatcher:
    """Keeps *registry* in step with its ``sites_dir``; see the module docstring.

    ``use_events=False`` relies on the periodic scan alone (for file systems where inotify
    does not work, such as some network mounts). ``on_reload`` is called (in the watcher's
    thread) after every reload that swapped in a new snapshot, so that per-site state outside
    the registry (nginx's host links) follows at once, not at the next request.
    """

    def __init__(self, registry: Registry, *, debounce: float = 0.2, reconcile: float = 5.0,
                 max_delay: float = 1.0, use_events: bool = True,
                 on_reload: Callable[[], None] | None = None) -> None:
        if debounce < 0 or reconcile <= 0 or max_delay < debounce:
            raise ValueError("need debounce >= 0, reconcile > 0 and max_delay >= debounce")
        self.registry = registry
        self.debounce = debounce
        self.reconcile = reconcile
        self.max_delay = max_delay
        self.use_events = use_events
        self.on_reload = on_reload
        self.last_report: ReloadReport | None = None
        self.reloads = 0
        self._cond = threading.Condition()
        self._dirty_since: float | None = None
        self._last_event = 0.0
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._observer: Any = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> SiteWatcher:
        """Start watching (idempotent while running)."""
        if self._worker is not None:
            return self
        self._stopping = False
        self._start_observer()
        self._worker = threading.Thread(target=self._run, name="tenantkit-site-watcher",
                                        daemon=True)
        self._worker.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and join the threads (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        # The worker first: it may be starting an observer for a directory that appeared.
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():  # pragma: no cover - a reload stuck on I/O
                log.error("site watcher thread did not stop within %.1f s", timeout)
            self._worker = None
        self._stop_observer(timeout)

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    @property
    def observing(self) -> bool:
        """True when file-system events are being received (else the scan alone serves)."""
        return self._observer is not None

    def __enter__(self) -> SiteWatcher:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _start_observer(self) -> None:
        if not self.use_events or self._observer is not None:
            return
        observer = Observer()
        try:
            observer.schedule(_Handler(self), str(self.registry.settings.sites_dir),
                              recursive=False)
            observer.start()
        except OSError as exc:
            # Missing directory, inotify limits, ...: the periodic scan still serves, and the
            # next scan tries again.
            log.warning("watching %s for changes failed (%s); relying on a scan every %.1f s",
                        self.registry.settings.sites_dir, exc, self.reconcile)
            # The observer owns a reader thread from its construction on; stop() ends it
            # even when the observer thread itself never started.
            observer.stop()
            if observer.is_alive():  # pragma: no cover - start() raised after starting
                observer.join()
            return
        self._observer = observer
        # The directory may have changed between the last load and the first event.
        self.notify()

    def _stop_observer(self, timeout: float) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    # --- events and the worker ---------------------------------------------------------

    def notify(self) -> None:
        """Mark the registry dirty: it reloads after the debounce. Safe from any thread."""
        with self._cond:
            now = time.monotonic()
            if self._dirty_since is None:
                self._dirty_since = now
            self._last_event = now
            self._cond.notify_all()

    def _run(self) -> None:
        next_scan = time.monotonic() + self.reconcile
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._dirty_since is not None:
                        due = min(self._last_event + self.debounce,
                                  self._dirty_since + self.max_delay)
                        if now >= due:
                            break
                        wait = min(due, next_scan) - now
                    else:
                        wait = next_scan - now
                    if now >= next_scan:
                        break
                    self._cond.wait(max(wait, 0.001))
                self._dirty_since = None
            self._reload()
            next_scan = time.monotonic() + self.reconcile
            if self.use_events and self._observer is None and not self._stopping:
                self._start_observer()

    def _reload(self) -> None:
        try:
            before = self.registry.sites
            self.last_report = self.registry.reload()
            self.reloads += 1
        except Exception:  # keep watching: the next event or scan tries again
            log.exception("reloading sites from %s failed", self.registry.settings.sites_dir)
            return
        if self.on_reload is not None and self.registry.sites is not before:
            try:
                self.on_reload()
            except Exception:
                log.exception("after reloading sites: on_reload failed")
