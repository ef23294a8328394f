"""tenantkit's own long-running commands as child processes, for tests and benchmarks::

    shim = Shim(workdir, env, "--workers", "2")        # tenantkit serve on a free port
    urllib3.request("GET", shim.url + "/", headers={"Host": "blog.test"})
    inv = Command(workdir, env, "invalidator", ready="invalidator for")
    inv.restart()                                      # SIGTERM, wait, start again
    shim.stop(); inv.stop()                            # the exit codes
    assert "Traceback" not in shim.output()

*env* is the whole environment of the child (``TENANTKIT_CONFIG``, ``TENANTKIT_SITES_DIR``,
...); its output (stdout and stderr) goes to a log file in *workdir*.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tenantkit.testing.net import free_port, wait_port

__all__ = ["TENANTKIT", "Command", "Shim", "stop"]

#: The ``tenantkit`` script of this interpreter's environment.
TENANTKIT = Path(sys.executable).parent / "tenantkit"


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send *sig* and wait (SIGKILL after *timeout*); the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Command:
    """``tenantkit *args`` as a child process, started at once; with *ready*, the start
    waits (up to 20 s) until that text is in its output."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str, ready: str = "",
                 log_name: str | None = None) -> None:
        self.workdir = workdir
        self.env = env
        self.args = args
        self.ready = ready
        self.log = workdir / (log_name or f"{args[0] if args else 'tenantkit'}.log")
        self.proc: subprocess.Popen[bytes] = self._spawn()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            return subprocess.Popen([str(TENANTKIT), *self.args], stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)

    def _wait_ready(self) -> None:
        if not self.ready:
            return
        start = self.log.stat().st_size if self.log.exists() else 0
        deadline = time.monotonic() + 20
        while True:
            with open(self.log, "rb") as log:
                log.seek(start)
                if self.ready.encode() in log.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"tenantkit {' '.join(self.args)} exited with "
                                   f"{self.proc.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tenantkit {' '.join(self.args)}: no {self.ready!r} "
                                   f"within 20 s:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop(self.proc, sig)

    def restart(self, sig: int = signal.SIGTERM) -> int:
        """Stop (the exit code) and start again, waiting for *ready* as at first."""
        code = self.stop(sig)
        self.proc = self._spawn()
        self._wait_ready()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Shim(Command):
    """``tenantkit serve --bind 127.0.0.1:<free port> *args``; ``.port``, ``.url``."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(workdir, env, "serve", "--bind", f"127.0.0.1:{self.port}", *args,
                         log_name=f"shim-{self.port}.log")

    def _wait_ready(self) -> None:
        wait_port(self.port, proc=self.proc, log=self.log)
