"""files: atomic writes and symlink swaps."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tenantkit.files import replace_symlink, write_atomic


def test_write_atomic_replaces_and_reports_the_file(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    target.write_bytes(b"old")
    stamp = time.time_ns()
    st = write_atomic(str(target), b"new", mode=0o644, mtime_ns=stamp)
    assert target.read_bytes() == b"new"
    now = os.stat(target)
    assert (st.st_ino, st.st_size, st.st_mtime_ns) == (now.st_ino, 3, stamp)
    assert stat.S_IMODE(now.st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["page.html"]


def test_write_atomic_default_mode_and_durable(tmp_path: Path) -> None:
    target = tmp_path / "site.toml"
    write_atomic(target, b"x", durable=True)
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o077 == 0


def test_write_atomic_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"x")


def test_replace_symlink(tmp_path: Path) -> None:
    link = tmp_path / "current"
    replace_symlink("g1", link)
    replace_symlink("g2", link)
    assert os.readlink(link) == "g2" and sorted(os.listdir(tmp_path)) == ["current"]
