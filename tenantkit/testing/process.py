"""A server started from an installed binary in a temporary directory: finding the binary
(:func:`find_binary`, :class:`ServiceMissing` naming the package to install) and the
start/stop/probe life cycle that :class:`~tenantkit.testing.mariadb.MariaDBServer` and
:class:`~tenantkit.testing.redis.RedisServer` share.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tenantkit.testing.net import free_port

__all__ = ["START_TIMEOUT", "Process", "ServiceMissing", "find_binary"]

START_TIMEOUT = 30.0


class ServiceMissing(RuntimeError):
    """A server binary the fixture needs is not installed."""


def find_binary(name: str, package: str) -> str:
    """Return the path of server binary *name*, looking in PATH and the sbin directories.

    ``TENANTKIT_<NAME>`` (e.g. ``TENANTKIT_MARIADBD``) overrides the search.
    Raises :class:`ServiceMissing` naming the Debian package to install.
    """
    override = os.environ.get("TENANTKIT_" + name.upper().replace("-", "_"))
    if override:
        return override
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin:/usr/libexec"
    found = shutil.which(name, path=path)
    if found is None:
        raise ServiceMissing(f"{name} not found: install it (apt-get install {package})")
    return found


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.02)


class Process:
    """A child server process with stop/start; subclasses say how to start and probe it."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server (no-op when running) and wait until it accepts connections."""
        if self.running:
            return
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            _wait_until(self._ready_or_dead, START_TIMEOUT, f"{self.name} start")
        except TimeoutError:
            self.stop(kill=True)
            raise
        if not self.running:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited at start; its log ends with:\n{tail}")

    def _ready_or_dead(self) -> bool:
        return not self.running or self.ready()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM and wait (SIGKILL with ``kill=True``, like a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
