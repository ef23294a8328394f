"""The change stamp of a page cache: 16 bytes in a file every process maps shared.

::

    stamp = ChangeStamp.open(root / ".changes")    # None when the file cannot be mapped
    seen = stamp.current()                         # read without a system call
    ...                                            # read a page
    stamp.changed()                                # after a put, purge or eviction
    stamp.changed(flushed=True)                    # after a flush
    assert stamp.current() != seen

Bytes 0-7 change with every change, bytes 8-15 with flushes only. A change writes new random
values rather than a count, so no lock across processes is needed: while a reader sees the
same value, nothing changed the cache in between.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
from pathlib import Path

__all__ = ["ChangeStamp"]

log = logging.getLogger(__name__)


class ChangeStamp:
    """The mapped stamp file; see the module docstring."""

    __slots__ = ("_map",)

    def __init__(self, mapped: mmap.mmap) -> None:
        self._map = mapped

    @classmethod
    def open(cls, path: Path) -> ChangeStamp | None:
        """The stamp at *path*, mapped shared (the file is created when missing); None, with
        a warning, when it cannot be."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            log.warning("page cache: cannot open %s (%s): pages are re-read on every hit",
                        path, exc.strerror)
            return None
        try:
            if os.fstat(fd).st_size < 16:
                os.ftruncate(fd, 16)
            return cls(mmap.mmap(fd, 16))
        except (OSError, ValueError) as exc:
            log.warning("page cache: cannot map %s (%s): pages are re-read on every hit",
                        path, exc)
            return None
        finally:
            os.close(fd)

    def current(self) -> bytes:
        """Changes with every put, purge, flush or eviction, in any process."""
        return self._map[:8]

    def flushes(self) -> bytes:
        """Changes with every flush, in any process."""
        return self._map[8:16]

    def changed(self, *, flushed: bool = False) -> None:
        if flushed:
            self._map[8:16] = random.getrandbits(64).to_bytes(8, "little")
        self._map[:8] = random.getrandbits(64).to_bytes(8, "little")
