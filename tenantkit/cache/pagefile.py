"""One stored page on disk: the body nginx serves and the sidecar that describes it.

::

    g7/<key>/index.html       the body, when nginx may serve it (BODY; see nginx_serves)
    g7/<key>/.page.body       the body of every other page: served by the shim only
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
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from tenantkit import layout
from tenantkit.files import write_atomic

__all__ = ["BODY", "META", "NGINX_TYPE", "PRIVATE_BODY", "STALE_BODY", "STALE_META",
           "CachedPage", "PageFiles", "SidecarMeta", "nginx_serves"]

log = logging.getLogger(__name__)

BODY = layout.BODY
#: The body of a page nginx must not serve itself (a name starting with a dot never is).
PRIVATE_BODY = ".page.body"
META = ".meta.json"
STALE_BODY = ".stale.html"
STALE_META = ".stale.json"
#: Every file of a page, fresh and stale.
PAGE_FILES = (BODY, PRIVATE_BODY, STALE_BODY, META, STALE_META)
_BODIES = (BODY, PRIVATE_BODY)
#: The Content-Type nginx gives every page it serves from disk (``tenantkit nginx-config``).
NGINX_TYPE = "text/html; charset=utf-8"
#: Headers nginx's answer reproduces: the type it sets, validators it makes from the file
#: (its own ETag and Last-Modified, equally valid), and Vary (nginx serves the identity body,
#: right for every Accept-Encoding).
_NGINX_HEADERS = frozenset({"content-type", "etag", "last-modified", "vary"})
READ_RETRIES = 3
#: Whatever the umask: nginx must be able to read the page.
FILE_MODE = 0o644
#: In a group-owned cache tree (its pages directory setgid, as ``provision --group`` or
#: ``[cache] group`` makes it): readable by that group (nginx's), by no one else.
GROUP_FILE_MODE = 0o640


def file_mode(root: str | os.PathLike[str]) -> int:
    """The mode of the page files under *root*: :data:`GROUP_FILE_MODE` when *root* is a
    setgid directory (every file and directory below inherits its group), else
    :data:`FILE_MODE`."""
    try:
        setgid = os.stat(root).st_mode & stat.S_ISGID
    except OSError:
        setgid = 0
    return GROUP_FILE_MODE if setgid else FILE_MODE


_O_RDONLY = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_CHANGING = object()


def nginx_serves(status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """True when nginx, serving the body file with ``tenantkit nginx-config``'s headers, sends
    exactly what the shim would: status 200, ``Content-Type: text/html; charset=utf-8``, no
    end-to-end header nginx cannot add (security headers, CORS, Link, Cache-Control, ...), no
    Content-Encoding and no Vary but on Accept-Encoding. Every other page is stored under
    :data:`PRIVATE_BODY` and served by the shim (issue 16: a JSON or RSS page served as HTML
    is stored XSS)."""
    if status != 200:
        return False
    html = False
    for name, value in headers:
        lower = name.lower()
        if lower not in _NGINX_HEADERS:
            return False
        if lower == "content-type":
            html = value.replace(" ", "").lower() == NGINX_TYPE.replace(" ", "")
            if not html:
                return False
        elif lower == "vary" and {v.strip().lower() for v in value.split(",")} - {
                "accept-encoding", ""}:
            return False
    return html


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
    #: the name of that file: BODY (nginx serves it too) or PRIVATE_BODY
    body_name: str = BODY


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
    body_name: str = BODY

    @classmethod
    def parse(cls, raw: Any) -> SidecarMeta:
        purged = raw.get("purged")
        return cls(
            ident=(int(raw["ident"][0]), int(raw["ident"][1]), int(raw["ident"][2])),
            status=int(raw["status"]),
            headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
            tags=tuple(str(t) for t in raw["tags"]), created=float(raw["created"]),
            ttl=int(raw["ttl"]), purged=None if purged is None else float(purged),
            body_name=PRIVATE_BODY if raw.get("body") == PRIVATE_BODY else BODY,
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
        names = _BODIES if body_name == BODY else (body_name,)
        for _ in range(READ_RETRIES):
            seen = False
            for name in names:
                found = self._read_one(directory, name, meta_name)
                if found is None:
                    continue
                seen = True
                if found is not _CHANGING:
                    return cast("tuple[bytes, SidecarMeta]", found)
            if not seen:
                return None
        return None

    def _read_one(self, directory: str, body_name: str, meta_name: str) -> Any:
        """(body, meta); None when the body file is not there; _CHANGING when its sidecar
        describes another body (a writer or purge is between two steps) or is missing."""
        path = directory + "/" + body_name
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
            return _CHANGING
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("page cache: unreadable sidecar in %s: %s", directory, exc)
            return _CHANGING
        if meta.ident == ident and len(body) == st.st_size:
            if len(self._memo) > self.MEMO_SIZE:
                self._memo.clear()
            self._memo[path] = meta
            return body, meta
        return _CHANGING

    @staticmethod
    def write(directory: str, body: bytes, meta: dict[str, Any], *,
              public: bool = True, mode: int = FILE_MODE) -> None:
        """Store a page: the body (given a unique identity), then its sidecar, then remove
        the body under the other name. ``meta`` is the sidecar without ``ident``;
        ``public``: nginx may serve the body (see :func:`nginx_serves`); ``mode``: the files'
        (:func:`file_mode`). FileNotFoundError when *directory* is missing."""
        name, other = (BODY, PRIVATE_BODY) if public else (PRIVATE_BODY, BODY)
        # Inode numbers are reused at once on ext4: the modification time (to the
        # nanosecond, nginx's Last-Modified) makes the identity unique.
        st = write_atomic(f"{directory}/{name}", body, mode=mode, mtime_ns=time.time_ns())
        meta["ident"] = [st.st_ino, st.st_size, st.st_mtime_ns]
        meta["body"] = name
        write_atomic(f"{directory}/{META}", json.dumps(meta).encode(), mode=mode)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{directory}/{other}")

    @staticmethod
    def drop_stale(directory: str) -> None:
        for stale in (STALE_BODY, STALE_META):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{stale}")

    @staticmethod
    def move_stale(directory: str, now: float) -> bool:
        """Move a page out of nginx's way, keeping it as the stale copy purged at *now*."""
        for name in _BODIES:
            try:
                os.replace(f"{directory}/{name}", f"{directory}/{STALE_BODY}")
                break
            except (FileNotFoundError, NotADirectoryError):
                continue
        else:
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
