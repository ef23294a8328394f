"""A TCP proxy in front of a MySQL/MariaDB server that loses connections on demand.

::

    with FaultProxy(server_port) as proxy:        # clients connect to 127.0.0.1:proxy.port
        proxy.arm(b"tk_fault")                     # the next packet carrying the marker:
        ...                                        #   connection cut before it reaches the server
        proxy.arm(b"tk_fault", error=4031)         # or: the server's error 4031, then cut
        proxy.arm(b"tk_fault", times=2)            # the next two such packets
        assert proxy.fired.wait(5)                 # proxy.faults counts them

A real fault, as a client sees it: the statement never reaches the server, and the client's
read of the answer finds the connection closed (mysqlnd reports 2006 or 2013), or finds an
error packet and then the end of the connection (4031 "The client was disconnected by the
server because of inactivity", as MySQL 8 sends it). Armed, it fires *times* times, on the
next client packets holding the marker (uncompressed protocol only: the marker must be
visible on the wire).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

_MESSAGES = {
    4031: b"The client was disconnected by the server because of inactivity. See "
          b"wait_timeout and interactive_timeout for configuring this behavior.",
}


def error_packet(code: int, message: bytes, sequence: int = 1) -> bytes:
    """A MySQL ERR packet (protocol 4.1: 0xff, code, '#', SQLSTATE, message)."""
    payload = b"\xff" + struct.pack("<H", code) + b"#HY000" + message
    return struct.pack("<I", len(payload))[:3] + bytes([sequence]) + payload


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:*server_port*; see the module docstring."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._error: int | None = None
        self._times = 0
        self.faults = 0
        self.fired = threading.Event()
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def arm(self, marker: bytes, *, error: int | None = None, times: int = 1) -> None:
        """Fault the next *times* client packets that contain *marker*: cut the connection,
        after sending the server error *error* when given."""
        with self._lock:
            self._marker, self._error, self._times = marker, error, times
            self.fired.clear()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._thread.join(timeout=5)

    # --- the proxy ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.server_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.connections += 1
                self._sockets += [client, server]
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, upstream, client, server),
                                 daemon=True).start()

    def _fault(self, data: bytes) -> tuple[bool, int | None]:
        """Whether *data* is faulted, and the error to send first (None: just cut)."""
        with self._lock:
            if self._marker is None or self._marker not in data:
                return False, None
            error = self._error
            self.faults += 1
            self._times -= 1
            if self._times <= 0:
                self._marker, self._error = None, None
            return True, error

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool,
              client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if upstream:
                    faulted, error = self._fault(data)
                    if faulted:
                        if error is not None:
                            client.sendall(error_packet(error, _MESSAGES.get(error, b"fault")))
                        self.fired.set()
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
