"""An ephemeral ``redis-server`` for tests and benchmarks::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from tenantkit.testing.process import Process, find_binary

__all__ = ["RedisServer"]


class RedisServer(Process):
    """An ephemeral ``redis-server`` on 127.0.0.1:<port> with no persistence."""

    name = "redis-server"

    def __init__(self, workdir: Path | None = None) -> None:
        self._own = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="tenantkit-redis-")) if workdir is None else workdir
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        self.binary = find_binary("redis-server", "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--daemonize", "no", "--protected-mode", "no"]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)

    def close(self) -> None:
        self.stop()
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)
