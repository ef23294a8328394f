"""One stored page on disk: the body nginx serves and the sidecar that describes it.

::

    g7/<key>/index.html       the body, when nginx may serve it (BODY; see nginx_serves)
    g7/<key>/.page.body       the body of every other page: served by the shim only
    g7/<key>/.stale.html      a purged page, kept to be served stale (STALE_BODY)
    g7/<key>/.meta.json       the sidecar, when it cannot be attached (META, STALE_META)

The sidecar -- status, headers, tags, created, ttl, the identity of the body -- is attached to
the body file as the extended attribute :data:`XATTR`, set on the temporary file before its
rename: one file per put, and body and sidecar arrive together (issue 17: a put costs one
file, like cachelib's ``set``). Where the file system refuses user extended attributes, or
the sidecar is larger than it takes, the sidecar is a file next to the body, as before; it
records the identity (inode, size, mtime) of the body it describes, so a reader that catches
a writer between its two renames sees a mismatch and retries; it never returns a body with
another page's headers. Bodies are written by :class:`tenantkit.files.AtomicWriter`
(:class:`BodyWriter`), sidecar files by :func:`tenantkit.files.write_atomic`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tenantkit import layout
from tenantkit.files import AtomicWriter, read_regular_file, write_atomic
from tenantkit.validate import is_header, is_number, is_whole_number

__all__ = ["BODY", "META", "NGINX_TYPE", "PRIVATE_BODY", "STALE_BODY", "STALE_META", "XATTR",
           "BodyWriter", "CachedPage", "PageFiles", "SidecarMeta", "nginx_serves"]

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


#: Non-blocking: a FIFO planted as a body must not hold the thread that opens it.
_O_RDONLY = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: A sidecar file larger than this is unreadable (one is a few KB; 2000 tags take 30 KB).
MAX_SIDECAR_BYTES = 8 * 1024 * 1024
#: What a corrupt or hostile sidecar raises while read and parsed (RecursionError: JSON
#: nested deeper than the parser recurses).
_UNREADABLE = (OSError, ValueError, RecursionError)
#: The extended attribute a page's sidecar is attached to its body file under.
XATTR = "user.tenantkit.meta"
#: errnos that mean "no attribute here, or none can be set": use the sidecar file.
_NO_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG,
                       errno.ENOSPC, errno.ERANGE, errno.EPERM, errno.EACCES})


def _attached(file: int | str) -> bytes | None:
    """The sidecar attached to a body (an open descriptor or a path); None when it has
    none. FileNotFoundError when the path is gone."""
    try:
        return os.getxattr(file, XATTR)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise


def _sidecar_file(path: str) -> bytes:
    """The bytes of the sidecar file *path*; ValueError when it is larger than
    :data:`MAX_SIDECAR_BYTES`, NotARegularFile (an OSError) for a FIFO or device."""
    data = read_regular_file(Path(path), MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
    return data


def _attach(fd: int, data: bytes) -> bool:
    """Attach *data* as the sidecar of the open body *fd*; False when it cannot be."""
    try:
        os.setxattr(fd, XATTR, data)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return False
        raise
    return True
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
    #: when what the page is now ends: a fresh page stops being fresh, a stale one may no
    #: longer be served while it is rendered again (0.0: not known)
    until: float = 0.0


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
        """The sidecar in *raw* (parsed JSON); ValueError naming the first field that is not
        what :meth:`BodyWriter.commit` writes (a sidecar is input: anyone who can write the
        cache directory can write one)."""
        if not isinstance(raw, dict):
            raise ValueError(f"not an object but {type(raw).__name__}")
        ident = raw.get("ident")
        if not (isinstance(ident, list) and len(ident) == 3
                and all(is_whole_number(n, minimum=0, maximum=2**64) for n in ident)):
            raise ValueError("ident: expected three whole numbers")
        status = raw.get("status")
        if not is_whole_number(status, minimum=100, maximum=599):
            raise ValueError("status: expected a number from 100 to 599")
        headers = raw.get("headers")
        if not (isinstance(headers, list) and all(
                isinstance(h, list) and len(h) == 2 and is_header(h[0], h[1]) for h in headers)):
            raise ValueError("headers: expected [name, value] pairs a server can send")
        tags = raw.get("tags")
        if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            raise ValueError("tags: expected a list of strings")
        created, ttl, purged = raw.get("created"), raw.get("ttl"), raw.get("purged")
        if not is_number(created, minimum=0):
            raise ValueError("created: expected a finite time")
        if not is_whole_number(ttl, minimum=0):
            raise ValueError("ttl: expected a whole number of seconds")
        if purged is not None and not is_number(purged, minimum=0):
            raise ValueError("purged: expected a finite time or null")
        return cls(
            ident=(ident[0], ident[1], ident[2]), status=status,
            headers=tuple((h[0], h[1]) for h in headers), tags=tuple(tags),
            created=float(created), ttl=ttl, purged=None if purged is None else float(purged),
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


class BodyWriter:
    """Stores a page as its body arrives: one file, the body (given a unique identity) with
    its sidecar attached as an extended attribute (:data:`XATTR`), then the body under the
    other name removed. Where the attribute cannot be set (a file system without user
    extended attributes, a sidecar larger than it takes), the sidecar is written next to the
    body as :data:`META` instead::

        writer = BodyWriter(page_dir, public=True)   # FileNotFoundError: no page_dir
        try:
            for chunk in body:
                writer.write(chunk)
            writer.commit(meta)                      # the page is there now, whole
        finally:
            writer.abort()                           # else nothing of it is

    ``meta`` is the sidecar without ``ident``; ``public``: nginx may serve the body (see
    :func:`nginx_serves`); ``mode``: the files' (:func:`file_mode`)."""

    __slots__ = ("directory", "file", "mode", "name", "other")

    def __init__(self, directory: str, *, public: bool = True, mode: int = FILE_MODE) -> None:
        self.directory = directory
        self.mode = mode
        self.name, self.other = (BODY, PRIVATE_BODY) if public else (PRIVATE_BODY, BODY)
        self.file = AtomicWriter(f"{directory}/{self.name}", mode=mode)

    @property
    def size(self) -> int:
        return self.file.size

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(data)

    def abort(self) -> None:
        self.file.abort()

    def commit(self, meta: dict[str, Any], *, fresh: bool = False, stale: bool = False
               ) -> None:
        """Put the body in place with *meta* attached. ``fresh``: the directory was just
        made for this page, there is nothing else in it to remove. ``stale``: store it as
        the page's stale copy instead (*meta* says when it was purged), :data:`STALE_BODY`
        with its sidecar attached, else the file :data:`STALE_META`; nginx never serves it
        and the page's other files are left alone."""
        meta["body"] = self.name
        detached: list[bytes] = []

        def attach(fd: int, st: os.stat_result) -> None:
            meta["ident"] = [st.st_ino, st.st_size, st.st_mtime_ns]
            data = json.dumps(meta).encode()
            if not _attach(fd, data):
                detached.append(data)

        directory = self.directory
        body_name, meta_name = (STALE_BODY, STALE_META) if stale else (self.name, META)
        # Inode numbers are reused at once on ext4: the modification time (to the
        # nanosecond, nginx's Last-Modified) makes the identity unique.
        self.file.commit(mtime_ns=time.time_ns(), before_rename=attach,
                         path=f"{directory}/{body_name}")
        if detached:
            write_atomic(f"{directory}/{meta_name}", detached[0], mode=self.mode)
        elif not fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{meta_name}")  # left by a put that could not attach
        if not fresh and not stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{self.other}")


class PageFiles:
    """Reads and writes pages; keeps sidecars already parsed, keyed by body path and valid
    while the body's identity matches: a hit then costs one open, fstat and read."""

    MEMO_SIZE = 4096

    def __init__(self) -> None:
        self._memo: dict[str, SidecarMeta] = {}
        #: body path -> the identity whose unreadable sidecar was logged (once per body)
        self._logged: dict[str, tuple[int, int, int]] = {}

    def clear(self) -> None:
        self._memo.clear()
        self._logged.clear()

    def _unreadable(self, path: str, ident: tuple[int, int, int], exc: BaseException) -> None:
        """Log an unreadable sidecar once per body: it is a miss on every read until the
        page is stored again."""
        if self._logged.get(path) == ident:
            return
        if len(self._logged) > self.MEMO_SIZE:
            self._logged.clear()
        self._logged[path] = ident
        log.warning("page cache: unreadable sidecar of %s: %s (a miss until the page is "
                    "stored again)", path, str(exc)[:200])

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
        attached: bytes | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            body = _read_all(fd, st.st_size)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            memo = self._memo.get(path)
            if memo is not None and memo.ident == ident:
                return body, memo
            attached = _attached(fd)
        finally:
            os.close(fd)
        try:
            if attached is None:
                attached = _sidecar_file(directory + "/" + meta_name)
            meta = SidecarMeta.parse(json.loads(attached))
        except (FileNotFoundError, NotADirectoryError):
            return _CHANGING
        except _UNREADABLE as exc:
            self._unreadable(path, ident, exc)
            return _CHANGING
        if meta.ident == ident and len(body) == st.st_size:
            if len(self._memo) > self.MEMO_SIZE:
                self._memo.clear()
            self._memo[path] = meta
            return body, meta
        return _CHANGING

    @staticmethod
    def drop_stale(directory: str) -> None:
        for stale in (STALE_BODY, STALE_META):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{stale}")

    @staticmethod
    def move_stale(directory: str, now: float) -> bool:
        """Move a page out of nginx's way, keeping it as the stale copy purged at *now*.

        A page with its sidecar attached is marked purged first (in place: one attribute
        write), then renamed; one with a sidecar file is renamed, then its sidecar copied
        with the purge time as :data:`STALE_META`."""
        for name in _BODIES:
            path = f"{directory}/{name}"
            try:
                attached = _attached(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            marked = False
            if attached is not None:
                try:
                    meta = json.loads(attached)
                    meta["purged"] = now
                    os.setxattr(path, XATTR, json.dumps(meta).encode())
                    marked = True
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except (*_UNREADABLE, TypeError) as exc:
                    log.warning("page cache: cannot mark %s purged: %s", path, str(exc)[:200])
            try:
                os.replace(path, f"{directory}/{STALE_BODY}")
                break
            except (FileNotFoundError, NotADirectoryError):
                continue
        else:
            return False
        if attached is not None:
            if not marked:  # it would pass for fresh: no stale copy rather than a wrong one
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{directory}/{STALE_BODY}")
            return True
        try:
            meta = json.loads(_sidecar_file(f"{directory}/{META}"))
            meta["purged"] = now
            write_atomic(f"{directory}/{STALE_META}", json.dumps(meta).encode(), mode=FILE_MODE)
        except (*_UNREADABLE, TypeError):
            pass  # the stale copy is then unusable, which only means a miss
        return True

    @staticmethod
    def sidecar(directory: str, body_name: str = BODY, meta_name: str = META
                ) -> dict[str, Any] | None:
        """The raw sidecar of the page in *directory* (attached to *body_name*, else the
        file *meta_name*); None when there is none or it is unreadable."""
        try:
            attached = _attached(f"{directory}/{body_name}")
            if attached is None:
                attached = _sidecar_file(f"{directory}/{meta_name}")
            raw = json.loads(attached)
        except _UNREADABLE:
            return None
        return raw if isinstance(raw, dict) else None

    @staticmethod
    def remove(directory: str, names: Iterable[str] = PAGE_FILES) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{name}")
