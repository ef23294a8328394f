"""Renders in the background: the caller that wins a stale page's fill lock is served the
stale copy at once and hands the render of the page to a few threads of its process::

    renders = BackgroundRenders(threads=2, max_queued=64)
    if not renders.submit(render):      # render: a callable that re-renders one page
        render_in_the_foreground()      # full (or stopped): the caller renders as before
    renders.stop()

Threads are started on the first submit (after a fork, a worker starts its own). A render
logs its own failures; this module only runs what it is given, at most ``threads`` at once
and at most ``max_queued`` waiting. The page-cache middleware keeps a second one, of one
thread, for the commits of pages whose last byte the visitor already has
(``BackgroundRenders(threads=1, name="commit")``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

__all__ = ["MAX_QUEUED", "THREADS", "BackgroundRenders"]

logger = logging.getLogger(__name__)

#: Background renders at once, per process: each holds a backend slot like a visitor.
THREADS = 2
#: Renders waiting, per process; past this the caller renders in the foreground.
MAX_QUEUED = 64


class BackgroundRenders:
    """A bounded queue of renders and the threads that run them (see the module docstring)."""

    def __init__(self, *, threads: int = THREADS, max_queued: int = MAX_QUEUED,
                 name: str = "render") -> None:
        self.threads = threads
        self.name = name
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(max_queued)
        self._lock = threading.Lock()
        self._started_in: int | None = None
        self._workers: list[threading.Thread] = []
        self._stopped = False
        self._busy = 0
        self._idle = threading.Condition(self._lock)

    def submit(self, render: Callable[[], None]) -> bool:
        """Queue *render*; False when it was not (the queue is full, or stopped): the
        caller renders itself."""
        with self._lock:
            if self._stopped or self.threads <= 0:
                return False
            if self._started_in != os.getpid():
                self._started_in = os.getpid()
                self._workers = [threading.Thread(target=self._run, daemon=True,
                                                  name=f"tenantkit-{self.name}-{n}")
                                 for n in range(self.threads)]
                for worker in self._workers:
                    worker.start()
            try:
                self._queue.put_nowait(render)
            except queue.Full:
                return False
            self._busy += 1
        return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every submitted render is done (tests, shutdown); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Let the running renders finish (at most *timeout* seconds each) and stop."""
        with self._lock:
            self._stopped = True
            workers, self._workers = self._workers, []
        for _ in workers:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for worker in workers:
            worker.join(timeout)

    def _run(self) -> None:
        while True:
            render = self._queue.get()
            if render is None:
                return
            try:
                render()
            except Exception:  # a render logs its own failures: this is a bug
                logger.exception("background %s failed", self.name)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
