"""HTTP/1.1 keep-alive connections to an upstream that keep every response with its own
request: :mod:`http.client` connections in a small pool, with the rules below added where the
status line, the framing and the connection's fate are decided -- the response parser -- so
that nothing above it can get them wrong::

    pool = UpstreamPool("http://127.0.0.1:8080", maxsize=16, connect_timeout=5,
                        read_timeout=60)
    conn = pool.get()                              # an idle connection, or a new one
    conn.request("GET", "/", headers={"Host": "blog.example"})
    response = conn.getresponse()
    ...read it with response.read1(n) until b"", then complete(response)...
    pool.put(conn)                                 # only after a complete response

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
3. **A response with two different lengths, or one that is not digits, is refused**
   (``Content-Length: 5`` and ``Content-Length: 6``, ``5, 6``, ``+5``, ``5_0``):
   ``http.client`` would frame it by the first, read by ``int()``. So is one with a
   ``Transfer-Encoding`` other than one ``chunked`` (``gzip, chunked``): ``http.client``
   would frame it by its ``Content-Length``. (A chunked response's ``Content-Length`` means
   nothing, RFC 9112 section 6.3: the proxy never forwards it.)
4. **An exchange may have an overall deadline** (:class:`Deadline`, used by the re-warmer):
   when it passes, the connection's socket is shut down, so that a read blocked on an
   upstream that drips a byte now and then -- each within the read timeout -- returns. The
   caller sees ``expired`` and treats whatever it read as incomplete.

A connection goes back to the pool only after a response read to the end its framing gives
(:func:`complete`: Content-Length or chunked, never "until the close"), from an upstream that
keeps the connection alive; anything else (the visitor went away, the upstream closed
mid-body, an error) closes it. An idle connection the upstream has closed (or that has bytes
waiting, which no idle connection may have) is not reused. The connect timeout applies to
connecting, the read timeout to every send and read after it. A connection that cannot be
made raises :class:`Unreachable`; a timeout is a :class:`TimeoutError`.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import select
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MAX_INTERIM", "Deadline", "FinalResponse", "Unreachable", "UpstreamPool",
           "complete"]

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

    def begin(self) -> None:
        super().begin()
        codings = self.msg.get_all("transfer-encoding")
        if codings and (len(codings) > 1 or not self.chunked):
            # http.client would frame it by its Content-Length, or read it to the close.
            raise http.client.HTTPException(
                f"a Transfer-Encoding other than chunked: {', '.join(codings)[:100]!r}")
        lengths = self.msg.get_all("content-length")
        if lengths and not self.chunked:
            values = {v.strip() for value in lengths for v in value.split(",")}
            if len(values) > 1 or not all(v.isascii() and v.isdigit() for v in values):
                raise http.client.HTTPException(
                    f"a bad Content-Length: {', '.join(lengths)[:100]!r}")

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


class Unreachable(OSError):
    """The connection to the upstream could not be made (refused, no route, DNS)."""


def _sent(connection: http.client.HTTPConnection) -> None:
    deadline = Deadline.current()
    if deadline is not None:
        deadline.watch(connection.sock)


def _asks_to_close(headers: Any) -> bool:
    for name, value in (headers or {}).items():
        if name.lower() == "connection" and "close" in (
                t.strip().lower() for t in str(value).split(",")):
            return True
    return False


class _Rules:
    """What :class:`UpstreamConnection` adds to an ``http.client`` connection."""

    sock: socket.socket | None
    response_class: type[http.client.HTTPResponse]
    read_timeout: float | None = None

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except TimeoutError:
            raise
        except OSError as exc:
            raise Unreachable(f"cannot connect: {exc}") from exc
        if self.sock is not None:
            self.sock.settimeout(self.read_timeout)

    def request(self, method: str, url: str, body: Any = None,
                headers: Any = None, **options: Any) -> None:
        self.response_class = _ClosingResponse if _asks_to_close(headers) else FinalResponse
        super().request(method, url, body, headers or {}, **options)  # type: ignore[misc]
        _sent(self)  # type: ignore[arg-type]


class UpstreamConnection(_Rules, http.client.HTTPConnection):
    """An ``http.client`` connection answering with :class:`FinalResponse` (see the module)."""


class UpstreamHTTPSConnection(_Rules, http.client.HTTPSConnection):
    """:class:`UpstreamConnection` over TLS (certificates verified)."""


def complete(response: http.client.HTTPResponse) -> bool:
    """True once *response* (read with ``read1`` until it gave ``b""``) was read to the end
    its framing gives: every chunk, or all Content-Length bytes (``http.client`` returns
    ``b""`` at an early close without saying so). A body without either ends at the close:
    complete as far as the framing tells (an HTML page must also have its end, see
    :data:`tenantkit.web.backends.HTML_END`), its connection never reused."""
    if response.length is not None:  # also 0 for HEAD, 204 and 304, chunked or not
        return response.length == 0
    return response.isclosed()  # chunked: after the last chunk; else at the close


def _dropped(sock: socket.socket | None) -> bool:
    """True when an idle connection cannot carry another request: closed by the upstream,
    or with bytes waiting that belong to no request."""
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class UpstreamPool:
    """Keep-alive connections to one upstream: at most *maxsize* idle ones are kept, the
    most recently used first; none is ever shared by two requests at once."""

    def __init__(self, url: str, *, maxsize: int, connect_timeout: float,
                 read_timeout: float) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.maxsize = maxsize
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: collections.deque[http.client.HTTPConnection] = collections.deque()
        self._closed = False
        self._context = ssl.create_default_context() if self.scheme == "https" else None

    def get(self) -> http.client.HTTPConnection:
        """An idle connection still usable, else a new one (connected on first send)."""
        idle = self._idle
        while True:
            try:
                conn = idle.pop()
            except IndexError:
                break
            if not _dropped(conn.sock):
                return conn
            conn.close()
        new: UpstreamConnection | UpstreamHTTPSConnection
        if self._context is not None:
            new = UpstreamHTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                          context=self._context)
        else:
            new = UpstreamConnection(self.host, self.port, timeout=self.connect_timeout)
        new.read_timeout = self.read_timeout
        return new

    def put(self, conn: http.client.HTTPConnection) -> None:
        """Keep *conn* for the next request; its last response must be :func:`complete` and
        closed. Closed instead when the upstream closes it, or the pool is full or closed."""
        if self._closed or conn.sock is None or len(self._idle) >= self.maxsize:
            conn.close()
            return
        self._idle.append(conn)
        if self._closed:  # close() ran meanwhile
            self.close()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return
