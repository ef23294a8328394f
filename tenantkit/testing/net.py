"""Loopback networking for tests and benchmarks: free ports, waiting for a listener, and
:class:`LoopbackProxy`, a TCP proxy to put between a client and a server (delays, faults,
byte counts). Needs nothing but the standard library::

    port = free_port()
    wait_port(port, timeout=5, proc=server_process)
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

__all__ = ["LoopbackProxy", "free_port", "wait_port"]


#: Ports :func:`free_port` picks from when the kernel's ephemeral range starts above them.
PORTS_BELOW_EPHEMERAL = (20000, 32000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the kernel's
    ephemeral range: a server given the port binds it later, and meanwhile any outgoing
    connection on the machine may be given an ephemeral port as its own (a MariaDB that then
    fails to start, "address in use")."""
    low, high = PORTS_BELOW_EPHEMERAL
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        high = min(high, int(f.read().split()[0]))
    rng = random.SystemRandom()
    for _ in range(200 if high > low else 0):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below it
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None,
              log: Path | None = None) -> None:
    """Wait until something listens on 127.0.0.1:*port*; raise at once if *proc* exits
    (with the end of *log*), or TimeoutError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log is not None and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{text[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 (``.port``) to *upstream*, for tests and benchmarks that need
    something between a client and a server (delays, faults, byte counts)::

        class Counting(LoopbackProxy):
            def relay(self, client, server):
                self.spawn(self.pump, client, server)
                self.spawn(self.pump, server, client)

        with Counting(("127.0.0.1", cluster.primary.port)) as proxy:
            connect(port=proxy.port)

    Subclasses implement :meth:`relay` for each accepted connection and start its threads
    with :meth:`spawn`. Both sockets time out every *tick* seconds so that loops can look at
    ``self._stop``; :meth:`close` stops everything.
    """

    def __init__(self, upstream: tuple[str, int], *, tick: float = 0.1) -> None:
        self.upstream = upstream
        self.tick = tick
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(tick)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.spawn(self._accept)

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        """Run *target* in a daemon thread that :meth:`close` waits for."""
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        """Carry one accepted connection (*client*) to its upstream connection (*server*)."""
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(self.tick)
                self._sockets.append(sock)
            self.relay(client, server)

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self.listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
