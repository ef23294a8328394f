"""One stored page on disk: the body nginx serves and the sidecar that describes it.

::

    g7/<key>/index.html       the body (BODY)
    g7/<key>/.meta.json       status, headers, tags, created, ttl, identity of the body (META)
    g7/<key>/.stale.html      a purged page, kept to be served stale (STALE_BODY, STALE_META)

The sidecar records the identity (inode, size, mtime) of the body it describes, so a reader
that catches a writer between its two renames sees a mismatch and retries; it never returns a
body with another page's headers. Both files are written by :func:`tenantkit.files.write_atomic`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tenantkit import layout
from tenantkit.files import write_atomic

__all__ = ["BODY", "META", "STALE_BODY", "STALE_META", "CachedPage", "PageFiles",
           "SidecarMeta"]

log = logging.getLogger(__name__)

BODY = layout.BODY
META = ".meta.json"
STALE_BODY = ".stale.html"
STALE_META = ".stale.json"
#: Every file of a page, fresh and stale.
PAGE_FILES = (BODY, STALE_BODY, META, STALE_META)
READ_RETRIES = 3
#: Whatever the umask: nginx must be able to read the page.
FILE_MODE = 0o644

_O_RDONLY = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class CachedPage:
    """A page from the cache. ``stale`` pages were purged or expired and may be served only
    while someone re-renders them."""

    body: bytes
    status: int
    headers: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    created: float
    ttl: int
    age: float
    stale: bool = False
    #: (inode, size, mtime_ns) of the body file the page was read from
    ident: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class SidecarMeta:
    """A parsed sidecar."""

    ident: tuple[int, int, int]
    status: int
    headers: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    created: float
    ttl: int
    purged: float | None

    @classmethod
    def parse(cls, raw: Any) -> SidecarMeta:
        purged = raw.get("purged")
        return cls(
            ident=(int(raw["ident"][0]), int(raw["ident"][1]), int(raw["ident"][2])),
            status=int(raw["status"]),
            headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
            tags=tuple(str(t) for t in raw["tags"]), created=float(raw["created"]),
            ttl=int(raw["ttl"]), purged=None if purged is None else float(purged),
        )


def _read_all(fd: int, size: int) -> bytes:
    data = os.read(fd, size + 1)
    if len(data) >= size:
        return data
    chunks = [data]
    while True:
        chunk = os.read(fd, max(size - len(data), 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class PageFiles:
    """Reads and writes pages; keeps sidecars already parsed, keyed by body path and valid
    while the body's identity matches: a hit then costs one open, fstat and read."""

    MEMO_SIZE = 4096

    def __init__(self) -> None:
        self._memo: dict[str, SidecarMeta] = {}

    def clear(self) -> None:
        self._memo.clear()

    def read(self, directory: str, body_name: str = BODY, meta_name: str = META
             ) -> tuple[bytes, SidecarMeta] | None:
        """The body and sidecar of the page in *directory*, or None when there is none (or
        its sidecar is unreadable, or a writer kept it changing)."""
        path = directory + "/" + body_name
        for _ in range(READ_RETRIES):
            try:
                fd = os.open(path, _O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                st = os.fstat(fd)
                body = _read_all(fd, st.st_size)
            finally:
                os.close(fd)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            memo = self._memo.get(path)
            if memo is not None and memo.ident == ident:
                return body, memo
            try:
                with open(directory + "/" + meta_name, "rb") as f:
                    raw = json.loads(f.read())
                meta = SidecarMeta.parse(raw)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("page cache: unreadable sidecar in %s: %s", directory, exc)
                return None
            if meta.ident == ident and len(body) == st.st_size:
                if len(self._memo) > self.MEMO_SIZE:
                    self._memo.clear()
                self._memo[path] = meta
                return body, meta
            # A writer is between its two renames, or a purge between its two moves: retry.
        return None

    @staticmethod
    def write(directory: str, body: bytes, meta: dict[str, Any]) -> None:
        """Store a page: the body (given a unique identity), then its sidecar. ``meta`` is
        the sidecar without ``ident``. FileNotFoundError when *directory* is missing."""
        # Inode numbers are reused at once on ext4: the modification time (to the
        # nanosecond, nginx's Last-Modified) makes the identity unique.
        st = write_atomic(f"{directory}/{BODY}", body, mode=FILE_MODE, mtime_ns=time.time_ns())
        meta["ident"] = [st.st_ino, st.st_size, st.st_mtime_ns]
        write_atomic(f"{directory}/{META}", json.dumps(meta).encode(), mode=FILE_MODE)

    @staticmethod
    def drop_stale(directory: str) -> None:
        for stale in (STALE_BODY, STALE_META):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{stale}")

    @staticmethod
    def move_stale(directory: str, now: float) -> bool:
        """Move a page out of nginx's way, keeping it as the stale copy purged at *now*."""
        try:
            os.replace(f"{directory}/{BODY}", f"{directory}/{STALE_BODY}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            with open(f"{directory}/{META}", "rb") as f:
                meta = json.loads(f.read())
            meta["purged"] = now
            write_atomic(f"{directory}/{STALE_META}", json.dumps(meta).encode(), mode=FILE_MODE)
        except (OSError, ValueError):
            pass  # the stale copy is then unusable, which only means a miss
        return True

    @staticmethod
    def remove(directory: str, names: Iterable[str] = PAGE_FILES) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{name}")
