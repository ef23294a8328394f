"""The node-level lock that makes one process the node's invalidation actor.

Every process on a node that runs an :class:`~tenantkit.cache.invalidator.Invalidator` (each
gunicorn worker of ``tenantkit serve``, a standalone ``tenantkit invalidator``) tries the
same lock, ``cache_dir/_node/invalidator-<node>.lock`` (:func:`tenantkit.layout.invalidator_lock`);
the one that holds it consumes the bus and the trigger files, the others stand by and try
again. The kernel releases the lock when its holder dies, however it dies::

    lock = NodeLock(settings.cache_dir, "web1")
    if lock.acquire():        # never blocks
        ...                   # the node's actor until lock.release() or exit
    else:
        lock.holder()         # the actor's pid (None: unknown)

The lock is ``flock`` on the file: it holds between processes and between two NodeLocks of
one process alike. The holder writes its pid into the file so the others can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from tenantkit import layout
from tenantkit.cache.status import safe_name
from tenantkit.files import read_regular_file

__all__ = ["NodeLock"]


class NodeLock:
    """``flock(LOCK_EX | LOCK_NB)`` on the node's invalidator lock file."""

    def __init__(self, cache_dir: str | os.PathLike[str], node: str) -> None:
        self.path = layout.invalidator_lock(cache_dir, safe_name(node))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this object holds it now. OSError
        when the file cannot be created or opened (cache_dir not writable)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def holder(self) -> int | None:
        """The pid the holder wrote, None when it cannot be read."""
        try:
            text = read_regular_file(self.path, 32).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

