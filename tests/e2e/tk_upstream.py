"""Scripted HTTP/1.1 upstreams on raw sockets, for the proxy's framing tests, and a raw client.

:class:`RawUpstream` accepts on a loopback port and runs ``serve(conn, reader, upstream)``
for every connection in its own thread; *reader* is a buffered reader over the socket, so
the script sees the byte stream exactly as an HTTP/1.1 server would, and decides how
(badly) it parses it. Every request head it parsed is kept in ``heads``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

#: Against hangs only: every wait in these helpers ends by then.
TIMEOUT = 10.0


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    raw: bytes = field(repr=False)

    @property
    def line(self) -> str:
        return f"{self.method} {self.target}"

    def length(self) -> int:
        return int(self.headers.get("content-length", "0"))


def read_request(reader: BinaryIO) -> Request | None:
    """One request head from *reader* (not its body); None at EOF or on garbage."""
    raw = b""
    for _ in range(100):  # bounded: at most 100 lines in a head
        line = reader.readline(65536)
        if not line:
            return None
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        if raw == line and line.strip() == b"":
            raw = b""  # tolerate a stray CRLF between requests
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for header in lines[1:]:
        name, sep, value = header.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(parts[0], parts[1], headers, raw)


def response(status: str, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}",
            "Content-Type: text/html; charset=utf-8", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


Script = Callable[[socket.socket, BinaryIO, "RawUpstream"], None]


class RawUpstream:
    """A loopback server running *script* on each connection (see the module docstring)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.heads: list[Request] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def lines(self) -> list[str]:
        with self.lock:
            return [r.line for r in self.heads]

    def record(self, request: Request) -> None:
        with self.lock:
            self.heads.append(request)

    def _accept(self) -> None:
        for _ in range(1000):  # bounded
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._closing:
                conn.close()
                return
            conn.settimeout(TIMEOUT)
            with self.lock:
                self.connections += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            try:
                self.script(conn, reader, self)
            except OSError:
                pass  # the peer went away: what the script was doing no longer matters
            except Exception as exc:  # reported by the test, never lost in a thread
                self.errors.append(repr(exc))

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=2):
            pass
        self._acceptor.join(TIMEOUT)
        self.listener.close()
        with self.lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(TIMEOUT)


def exchange(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send *data* to 127.0.0.1:*port* (then half-close), return everything read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        for _ in range(10_000):  # bounded
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def status_of(reply: bytes) -> int:
    """The status of the first (final) response in *reply*; 0 when there is none."""
    parts = reply.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
