"""Atomic file writes: a reader sees the old file or the new one, never half of either.

::

    write_atomic(Path("sites/blog.toml"), data, mode=0o640, durable=True)

The data goes to a temporary file in the target's own directory (so the rename never crosses
a filesystem), then ``os.replace`` puts it in place; the old file is never unlinked first.
The temporary file is removed if anything fails. ``OSError`` propagates: callers translate
it into their own error, with a message that says what to fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int | None = None,
                 durable: bool = False) -> None:
    """Write *data* to *path* atomically.

    ``mode`` sets the file's permissions (default: ``mkstemp``'s 0600); ``durable`` fsyncs
    the file and its directory, for files that must survive a crash (site files).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = ""
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in *directory* durable (a no-op where that is refused)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
