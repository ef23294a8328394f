"""HTTP/1.1 connections to an upstream that keep every response with its own request.

:func:`upstream_pool` is urllib3's ``connection_from_url`` with two rules added where the
status line and the connection's fate are decided -- the response parser of
:mod:`http.client` -- so that nothing above it can get them wrong::

    pool = upstream_pool("http://127.0.0.1:8080", maxsize=16, timeout=urllib3.Timeout(5, 60))
    response = pool.urlopen("GET", "/", headers={"Host": "blog.example"}, retries=False,
                            preload_content=False)

1. **Interim responses are consumed.** ``http.client`` skips ``100 Continue`` only: a
   ``103 Early Hints`` (or ``102``, or any other 1xx) becomes "the response", with no body,
   and the real response stays on the connection for whoever sends the next request on it.
   Here every 1xx but ``101`` is read and dropped, headers and all (at most
   :data:`MAX_INTERIM` of them), and the final response is the one returned. ``101
   Switching Protocols`` ends HTTP on the connection: it is returned as is, and the caller
   refuses it and closes the connection.
2. **A request that says ``Connection: close`` closes its connection** after its response
   (RFC 9112 section 9.6), whatever the upstream answers. ``http.client`` only looks at the
   response's ``Connection`` field. The proxy sends ``close`` when it cannot be sure the
   upstream read exactly the request it was sent (every request with a body).

3. **An exchange may have an overall deadline** (:class:`Deadline`, used by the re-warmer):
   when it passes, the connection's socket is shut down, so that a read blocked on an
   upstream that drips a byte now and then -- each within the read timeout -- returns. The
   caller sees ``expired`` and treats whatever it read as incomplete.

The rest -- reuse only after a response whose end was found by its framing (Content-Length
or chunked), with a keep-alive upstream -- is ``http.client``'s own rule; the proxy adds the
last one: a response not read to its end closes its connection (see
:class:`tenantkit.web.backends.ProxyApp`).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool

__all__ = ["MAX_INTERIM", "Deadline", "FinalResponse", "upstream_pool"]

#: More interim responses than this before the final one: the upstream is broken.
MAX_INTERIM = 16
_MAX_LINE = 65536
_MAX_HEADERS = 100


class FinalResponse(http.client.HTTPResponse):
    """``http.client``'s response, reading past every interim (1xx) response but 101."""

    close_after = False

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(MAX_INTERIM + 1):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            self._skip_fields()
        raise http.client.HTTPException(
            f"more than {MAX_INTERIM} interim responses before the final one")

    def _skip_fields(self) -> None:
        """Read an interim response's header fields and drop them (never forwarded)."""
        for _ in range(_MAX_HEADERS + 1):
            line = self.fp.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                raise http.client.LineTooLong("interim response header line")
            if line in (b"\r\n", b"\n", b""):
                return
        raise http.client.HTTPException(f"interim response with more than {_MAX_HEADERS} "
                                        "header fields")

    def _check_close(self) -> bool:
        if self.close_after:
            return True
        closes: bool = super()._check_close()  # type: ignore[misc]
        return closes


class _ClosingResponse(FinalResponse):
    close_after = True


class Deadline:
    """An overall deadline (``time.monotonic()`` seconds) for the upstream exchanges made by
    this thread while it is active::

        deadline = Deadline(time.monotonic() + 30)
        with deadline.active():
            response = pool.urlopen(...)        # its connection's socket is watched
            ...read the body...
        deadline.expired                        # True: what was read is cut short

    When it passes, the watched socket is shut down (a timer thread); reads on it return at
    once. ``expired`` says that happened, or that the deadline had passed already."""

    _local = threading.local()

    def __init__(self, when: float) -> None:
        self.when = when
        self._expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.when

    @classmethod
    def current(cls) -> Deadline | None:
        deadline: Deadline | None = getattr(cls._local, "deadline", None)
        return deadline

    @contextlib.contextmanager
    def active(self) -> Any:
        """Watch the sockets of the requests this thread sends meanwhile."""
        previous = Deadline.current()
        Deadline._local.deadline = self
        try:
            yield self
        finally:
            Deadline._local.deadline = previous

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            if self._timer is None:
                self._timer = threading.Timer(max(0.0, self.when - time.monotonic()),
                                              self._expire)
                self._timer.daemon = True
                self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def done(self) -> None:
        """The exchange is over (its connection closed or back in the pool): stop watching."""
        with self._lock:
            timer, self._timer = self._timer, None
            self._socks = []
        if timer is not None:
            timer.cancel()


def _sent(connection: HTTPConnection) -> None:
    deadline = Deadline.current()
    if deadline is not None:
        deadline.watch(connection.sock)


def _asks_to_close(headers: Any) -> bool:
    for name, value in (headers or {}).items():
        if name.lower() == "connection" and "close" in (
                t.strip().lower() for t in str(value).split(",")):
            return True
    return False


class UpstreamConnection(HTTPConnection):
    """urllib3's connection answering with :class:`FinalResponse` (see the module)."""

    def request(self, method: str, url: str, body: Any = None, headers: Any = None,
                **options: Any) -> None:
        self.response_class = _ClosingResponse if _asks_to_close(headers) else FinalResponse
        super().request(method, url, body=body, headers=headers, **options)
        _sent(self)


class UpstreamHTTPSConnection(HTTPSConnection):
    """:class:`UpstreamConnection` over TLS."""

    def request(self, method: str, url: str, body: Any = None, headers: Any = None,
                **options: Any) -> None:
        self.response_class = _ClosingResponse if _asks_to_close(headers) else FinalResponse
        super().request(method, url, body=body, headers=headers, **options)
        _sent(self)


def upstream_pool(url: str, *, maxsize: int, timeout: urllib3.Timeout) -> HTTPConnectionPool:
    """A connection pool for *url* whose connections follow the module's rules."""
    pool = urllib3.connection_from_url(url, maxsize=maxsize, block=False, timeout=timeout,
                                       retries=False)
    if pool.scheme == "https":
        pool.ConnectionCls = UpstreamHTTPSConnection
    else:
        pool.ConnectionCls = UpstreamConnection
    return pool
