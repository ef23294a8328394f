"""Re-warm after purge: the pages a targeted purge made stale are fetched again once, in the
background and at a bounded rate, so that the next visitor gets a hit.

A site opts in with ``[cache] rewarm = true``. The purge reports the pages it made stale
(:attr:`tenantkit.cache.purge.PurgeResult.keys`); the extension hands them over from its
admin purge and its invalidator (``on_purged``)::

    rewarm = Rewarmer(dispatcher, rate=10.0)      # dispatcher: the shim's HostDispatcher
    rewarm.purged(site, result)                   # queued, fetched one by one
    rewarm.stop()

Each page is requested in-process, through the shim's own stack -- the dispatcher, the
page-cache middleware (which stores the answer like any miss) and the site's backend, its
``max_concurrency`` included -- as a plain ``GET`` of its host, path and query with no
cookie, never through the network. A flush is not re-warmed (it would fetch every page of
the site). At most :data:`MAX_QUEUED` pages wait; more are dropped with one log line. The
request says ``http``: a site that redirects plain HTTP answers a redirect, which is not
stored, and the page is warmed by its next visitor as before.

Each fetch has an overall deadline, :data:`FETCH_SECONDS` (``deadline``): an upstream that
drips a byte now and then, each within its read timeout, is cut off then (the proxy shuts
its connection, :data:`tenantkit.web.backends.DEADLINE`), the page is not stored and the
re-warmer goes on with the next one; an in-process app is not read past it.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from tenantkit.cache.pagecache import PageRef
from tenantkit.cache.purge import PurgeResult
from tenantkit.sites import Site
from tenantkit.web.backends import DEADLINE

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment
else:
    WSGIApplication = WSGIEnvironment = Any

__all__ = ["FETCH_SECONDS", "MAX_QUEUED", "RATE", "USER_AGENT", "Rewarmer", "rewarm_environ"]

logger = logging.getLogger(__name__)

#: Pages fetched per second, at most, by one process.
RATE = 10.0
#: Pages waiting to be fetched, at most; more are dropped.
MAX_QUEUED = 1000
USER_AGENT = "tenantkit-rewarm"
#: Seconds one fetch may take, whole, at most.
FETCH_SECONDS = 30.0


def rewarm_environ(host: str, path: str, query: str) -> WSGIEnvironment:
    """The WSGI environ of a visitor's plain GET of *host*, *path* (raw, as the page cache
    keys it) and *query*."""
    target = path + ("?" + query if query else "")
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"), "QUERY_STRING": query,
        "RAW_URI": target, "REQUEST_URI": target, "SERVER_NAME": host, "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host, "HTTP_USER_AGENT": USER_AGENT,
        "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }


class Rewarmer:
    """Fetches purged pages again through *app* (see the module docstring)."""

    def __init__(self, app: WSGIApplication, *, rate: float = RATE,
                 max_queued: int = MAX_QUEUED, deadline: float = FETCH_SECONDS) -> None:
        self.app = app
        self.deadline = deadline
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._queue: queue.Queue[tuple[str, PageRef]] = queue.Queue(max_queued)
        self._waiting: set[tuple[str, PageRef]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Pages fetched again since start (tests, metrics).
        self.fetched = 0

    def purged(self, site: Site, result: PurgeResult) -> None:
        """Queue the pages *result* made stale, when *site* asks for re-warming."""
        if not site.cache.rewarm or result.flushed or not result.keys:
            return
        dropped = 0
        with self._lock:
            if self._stop.is_set():
                return
            for ref in result.keys:
                item = (site.name, ref)
                if item in self._waiting:
                    continue  # already waiting: fetched once
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    dropped += 1
                    continue
                self._waiting.add(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tenantkit-rewarm",
                                                daemon=True)
                self._thread.start()
        if dropped:
            logger.warning("site %s: %d purged pages not re-warmed: %d already waiting "
                           "(rewarm)", site.name, dropped, self._queue.maxsize)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._lock:
                self._waiting.discard(item)
            self._fetch(*item)
            if self.interval and self._stop.wait(self.interval):  # the rate bound
                return

    def _fetch(self, site: str, ref: PageRef) -> None:
        host, path, query = ref
        status: list[str] = []

        def start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            return lambda data: None

        environ = rewarm_environ(host, path, query)
        end = environ[DEADLINE] = time.monotonic() + self.deadline
        try:
            body: Iterable[bytes] = self.app(environ, start_response)
            try:
                for _ in body:
                    if time.monotonic() > end:
                        raise TimeoutError(f"not done after {self.deadline:g}s (the "
                                           "re-warm deadline)")
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            logger.warning("site %s: re-warming %s%s failed: %s", site, host, path, exc)
            return
        self.fetched += 1
        logger.debug("site %s: re-warmed %s%s: %s", site, host, path,
                     status[-1] if status else "-")
