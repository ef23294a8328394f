"""Fills: who re-renders a page, and the guard that refuses a page a purge has overtaken.

::

    ticket = cache.begin_fill(host, path)        # records when the render began
    if ticket.leader:                            # holds the key's fill lock
        ...render, then cache.put(..., ticket=ticket)
    ticket.release()

A purge marks each tag or URL it purges (``gN/.purged/<name>``, mtime = purge time) before it
moves pages; :meth:`PageCache.put` with a ticket never stores the page as fresh when a marker
of one of its names is newer than the ticket (:func:`purged_since`): it keeps it as a stale
copy, served while one caller renders it again. Fill locks are files in
``.locks/`` created with ``O_EXCL``, so one process of the node holds a key's lock at a time;
a lock older than the fill timeout is taken over (its holder is presumed dead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenantkit.cache.pagecache import PageCache

__all__ = ["LOCKS", "PURGED", "FillTicket", "mark_purged", "purged_since", "try_lock"]

log = logging.getLogger(__name__)

#: Per-key fill locks, under the cache root.
LOCKS = ".locks"
#: Purge markers, under a generation.
PURGED = ".purged"


class FillTicket:
    """Returned by :meth:`PageCache.begin_fill`: remembers when the render began (the fill
    guard) and holds the key's fill lock when ``leader`` is true. Use it as a context
    manager; the lock is released on exit, whatever happens."""

    def __init__(self, cache: PageCache, key: str, host: str, path: str, generation: str,
                 started_ns: int, lock_path: str | None, lock_ino: int | None) -> None:
        self.cache = cache
        self.key = key
        self.host = host
        self.path = path
        self.generation = generation
        self.started_ns = started_ns
        self._lock_path = lock_path
        self._lock_ino = lock_ino

    @property
    def leader(self) -> bool:
        """True when this caller holds the key's fill lock (it should re-render)."""
        return self._lock_ino is not None

    def release(self) -> None:
        if self._lock_ino is None or self._lock_path is None:
            return
        ino, self._lock_ino = self._lock_ino, None
        try:
            if os.stat(self._lock_path).st_ino == ino:  # still ours, not stolen after a timeout
                os.unlink(self._lock_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> FillTicket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def try_lock(lock_path: str, timeout: float) -> int | None:
    """Take the fill lock at *lock_path* without waiting: its inode, or None when someone
    else holds it (for less than *timeout* seconds)."""
    for _ in range(2):
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - os.stat(lock_path).st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if age < timeout:
                return None
            log.warning("page cache: fill lock %s is %.0fs old: taking it over", lock_path, age)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
            continue
        except FileNotFoundError:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            continue
        try:
            return os.fstat(fd).st_ino
        finally:
            os.close(fd)
    return None


def mark_purged(gen_dir: str, name: str) -> None:
    """Record that *name* (a tag or URL name) was purged now, in generation *gen_dir*."""
    marker = f"{gen_dir}/{PURGED}/{name}"
    now = time.time_ns()
    try:
        fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644)
    except FileNotFoundError:
        os.makedirs(f"{gen_dir}/{PURGED}", exist_ok=True)
        fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    os.utime(marker, ns=(now, now))


def purged_since(gen_dir: str, names: Iterable[str], since_ns: int) -> bool:
    """True when any of *names* was purged in generation *gen_dir* at or after *since_ns*."""
    base = f"{gen_dir}/{PURGED}/"
    for name in names:
        try:
            if os.stat(base + name).st_mtime_ns >= since_ns:
                return True
        except (FileNotFoundError, NotADirectoryError):
            continue
    return False
