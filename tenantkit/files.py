"""Atomic file writes: a reader sees the old file or the new one, never half of either.

::

    write_atomic(Path("sites/blog.toml"), data, mode=0o640, durable=True)
    st = write_atomic(f"{page_dir}/index.html", body, mode=0o644, mtime_ns=time.time_ns())
    replace_symlink("g7", Path("pages/current"))

The data goes to a temporary file in the target's own directory (so the rename never crosses
a filesystem), then ``os.replace`` puts it in place; the old file is never unlinked first.
The temporary file (``.tmp-<pid>-<thread>-<n>``: a dot name, never a page or a site file) is
removed if anything fails. ``OSError`` propagates (``FileNotFoundError`` when the directory is
missing): callers translate it into their own error, with a message that says what to fix.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["AtomicWriter", "NotARegularFile", "fsync_dir", "read_regular_file",
           "replace_symlink", "write_atomic"]

_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_TMP_IDS = itertools.count()
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _temp_name(directory: str) -> str:
    return f"{directory}/.tmp-{_PID[0]}-{threading.get_ident()}-{next(_TMP_IDS)}"


class AtomicWriter:
    """:func:`write_atomic` for data that arrives in pieces: a temporary file in the target's
    directory, written as the pieces come, renamed over *path* by :meth:`commit` or removed
    by :meth:`abort` (either may be called any number of times; the first one counts)::

        writer = AtomicWriter(f"{page_dir}/index.html", mode=0o644)  # FileNotFoundError: no dir
        try:
            for chunk in chunks:
                writer.write(chunk)
            st = writer.commit(mtime_ns=time.time_ns())
        finally:
            writer.abort()                                           # a no-op after commit

    ``mode``: the file's permissions whatever the umask (default: 0600, less the umask)."""

    __slots__ = ("_fd", "_tmp", "mode", "path", "size")

    def __init__(self, path: str | os.PathLike[str], *, mode: int | None = None) -> None:
        self.path = os.fspath(path)
        self.mode = mode
        self.size = 0
        directory = os.path.dirname(self.path) or "."
        for _ in range(8):
            tmp = _temp_name(directory)
            try:
                # Created with its mode: no fchmod unless the umask took bits away.
                self._fd = os.open(tmp, _O_NEW, 0o600 if mode is None else mode)
                break
            except FileExistsError:  # left by a dead process whose pid came round again
                continue
        else:
            raise FileExistsError(errno.EEXIST, "cannot create a temporary file", directory)
        self._tmp = tmp

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.size += len(view)
        while view:
            view = view[os.write(self._fd, view):]

    def commit(self, *, durable: bool = False, mtime_ns: int | None = None,
               before_rename: Callable[[int, os.stat_result], None] | None = None,
               path: str | None = None) -> os.stat_result:
        """Put the file in *path*'s place (the writer's own, unless another in the same
        directory is named); returns its ``fstat``. ``durable`` fsyncs the file and its
        directory; ``mtime_ns`` sets its times; ``before_rename(fd, stat)`` is called on the
        finished file before the rename. On any error the file is removed."""
        if path is not None:
            if os.path.dirname(path) != os.path.dirname(self.path):
                raise ValueError(f"{path}: not in {os.path.dirname(self.path)!r}")
            self.path = path
        if not self._tmp:
            raise ValueError(f"{self.path}: already committed or aborted")
        try:
            fd = self._fd
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if durable:
                os.fsync(fd)
            st = os.fstat(fd)
            if self.mode is not None and stat.S_IMODE(st.st_mode) != self.mode:
                os.fchmod(fd, self.mode)
                st = os.fstat(fd)
            if before_rename is not None:
                before_rename(fd, st)
            self._close()
            os.replace(self._tmp, self.path)
            self._tmp = ""
        finally:
            self.abort()
        if durable:
            fsync_dir(Path(os.path.dirname(self.path) or "."))
        return st

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def abort(self) -> None:
        """Remove the temporary file (nothing once committed)."""
        self._close()
        tmp, self._tmp = self._tmp, ""
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None,
                 durable: bool = False, mtime_ns: int | None = None,
                 before_rename: Callable[[int, os.stat_result], None] | None = None
                 ) -> os.stat_result:
    """Write *data* to *path* atomically; returns the new file's ``fstat``.

    ``mode`` sets the file's permissions whatever the umask (default: 0600, less the umask);
    ``durable`` fsyncs the file and its directory, for files that must survive a crash (site
    files); ``mtime_ns`` sets the file's access and modification times; ``before_rename(fd,
    stat)`` is called on the finished temporary file before it takes *path*'s place (to set
    extended attributes that must arrive with the data).
    """
    writer = AtomicWriter(path, mode=mode)
    try:
        writer.write(data)
        return writer.commit(durable=durable, mtime_ns=mtime_ns, before_rename=before_rename)
    finally:
        writer.abort()


def replace_symlink(target: str, link: str | os.PathLike[str]) -> None:
    """Make *link* a symlink to *target*, atomically: a reader finds the old link or the new
    one, never none."""
    link = os.fspath(link)
    tmp = _temp_name(os.path.dirname(link) or ".")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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


class NotARegularFile(OSError):
    """A path that names something other than a regular file (its kind in the message)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: Path, limit: int) -> bytes:
    """Up to *limit* bytes of *path*, refusing without blocking anything but a regular file:
    opening a FIFO for reading waits for a writer forever, and a device may never end.
    Raises :class:`NotARegularFile`, or the OSError of the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(_kind(mode))
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            chunk = os.read(fd, limit - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
