"""Shared test setup. The real-server fixtures come from the tenantkit.testing plugin."""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

NOBODY = 65534


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A temporary directory that an unprivileged user can enter (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tenantkit-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def as_unprivileged() -> Callable[[Callable[[], None]], None]:
    """Run a check in a forked child that has dropped root, so permission errors are real.

    As a normal user the check simply runs here. Failures in the child come back as an
    AssertionError carrying the child's traceback.
    """

    def run(check: Callable[[], None]) -> None:
        if os.geteuid() != 0:
            check()
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop privileges, run, report, and leave without cleanup
            os.close(read_end)
            status = 0
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                check()
            except BaseException:
                os.write(write_end, traceback.format_exc().encode())
                status = 1
            os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, f"unprivileged check failed:\n{report}"

    return run
