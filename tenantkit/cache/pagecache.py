"""A per-site file page cache that nginx can serve by itself.

::

    cache = PageCache(site.pages_dir, ttl=300, stale_seconds=30)
    page = cache.get("blog.example.org", "/2024/hello/")
    if page is None or page.stale:
        with cache.begin_fill("blog.example.org", "/2024/hello/") as ticket:
            if page is not None and not ticket.leader:
                return page                      # someone else re-renders: serve stale
            body = render()
            cache.put("blog.example.org", "/2024/hello/", body, tags=("post:42", "home"),
                      ticket=ticket)             # refused if a purge hit it meanwhile

    cache.purge_tags(["post:42"])                 # targeted
    cache.purge_paths("blog.example.org", ["/"])  # one URL (and its query variants)
    cache.flush()                                 # the whole site: a new generation

Layout under ``root`` (``cache_dir/<site>/pages``)::

    current -> g7                                  symlink, swapped atomically by flush()
    previous -> g6                                 the last generation, served stale for a while
    g7/<host>/<path>/index.html                    what nginx serves (paths ending in "/")
    g7/<host>/<path>/.meta.json                    status, headers, tags, created, ttl, identity
    g7/.q/<host>/<ab>/<sha256>/index.html          every other key (query strings, odd paths)
    g7/.tags/<tag>/<key-hash> -> <page dir>        tag index (symlinks), per generation
    g7/.purged/<tag or url>                        purge markers (mtime = purge time)
    g6/.flushed                                    when g6 stopped being current
    .locks/<key-hash>                              per-key fill locks
    .changes                                       change stamp (see change_stamp())

nginx serves hits with ``try_files /current/$host$uri/index.html @app`` for ``$uri`` ending in
``/`` (and ``location ~ /\\. { deny all; }``); names starting with a dot never come from a URL.

Every write is a temporary file in the target directory and an ``os.replace``; nothing is ever
unlinked first. The sidecar records the identity (inode, size, mtime) of the body it describes, so a
reader that catches a writer between the two renames sees a mismatch and retries; it never
returns a body with another page's headers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import mmap
import os
import random
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tenantkit import layout
from tenantkit.errors import CacheError, InvalidHost
from tenantkit.hosts import normalize_host

__all__ = ["CacheStats", "CachedPage", "FillTicket", "PageCache", "page_key"]

log = logging.getLogger(__name__)

BODY = layout.BODY
META = ".meta.json"
STALE_BODY = ".stale.html"
STALE_META = ".stale.json"
QUERY_TREE = ".q"
TAGS = ".tags"
PURGED = ".purged"
LOCKS = ".locks"
FLUSHED = ".flushed"
CHANGES = ".changes"

MAX_SEGMENT = 200
MAX_DEPTH = 32
MAX_NGINX_PATH = 1024
MAX_TAG = 200
READ_RETRIES = 3

_SAFE_HOST = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*|\[[0-9a-f:.]{2,45}\]").fullmatch
# Path segments that may become directory names of the nginx tree: no dot first (that rules
# out ".", "..", our sidecars and temp files), nothing a shell or nginx would treat oddly.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@%-][A-Za-z0-9._~!$&'()*+,;=:@%-]*").fullmatch
_SAFE_TAG = re.compile(r"[A-Za-z0-9_:=@+-][A-Za-z0-9_:=@+.-]{0,99}").fullmatch


def _hash(*parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _check_host(host: str) -> str:
    try:
        normal = normalize_host(host) if isinstance(host, str) else ""
    except InvalidHost as exc:
        raise CacheError(f"page cache: not a normalised host name: {exc}") from None
    # normalize_host already refuses anything that is not a safe name; checked again because
    # this string becomes a directory name.
    if not _SAFE_HOST(normal) or len(normal) > 253:
        shown = host if not isinstance(host, str) or len(host) <= 80 else host[:77] + "..."
        raise CacheError(
            f"page cache: host {shown!r} is not a normalised host name (pass the request's "
            "host after normalize_host: lowercase, no port, IPv6 in brackets)"
        )
    return normal


@functools.lru_cache(maxsize=8192)
def page_key(host: str, path: str, query: str = "") -> str:
    """The page's directory relative to a generation: ``host/a/b`` for nginx-servable keys,
    ``.q/host/ab/<sha256>`` for every other key. Raises :class:`CacheError` for a bad host or a
    path that does not start with ``/``."""
    normal = _check_host(host)
    if not isinstance(path, str) or not path.startswith("/"):
        raise CacheError(f"page cache: path {path!r} must start with '/' (pass the URL path)")
    if not query and path.endswith("/") and len(path) <= MAX_NGINX_PATH:
        segments = path[1:-1].split("/") if path != "/" else []
        if len(segments) <= MAX_DEPTH and all(
            len(s) <= MAX_SEGMENT and _SAFE_SEGMENT(s) for s in segments
        ):
            return "/".join([normal, *segments])
    digest = _hash(normal, path, query)
    return f"{QUERY_TREE}/{normal}/{digest[:2]}/{digest}"


def _tag_name(tag: str) -> str:
    if not isinstance(tag, str) or not tag:
        raise CacheError(f"page cache: tag {tag!r} must be a non-empty string")
    return "t-" + tag if _SAFE_TAG(tag) else "h-" + _hash(tag)


def _url_name(host: str, path: str) -> str:
    return "u-" + _hash(host, path)[:40]


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


@dataclass
class CacheStats:
    """Counters of this process plus the on-disk size of the current generation."""

    generation: str
    pages: int
    bytes: int
    hits: int
    stale_hits: int
    misses: int
    puts: int
    refused: int
    purged: int
    flushes: int
    evicted: int


@dataclass(frozen=True)
class _Meta:
    """A parsed sidecar."""

    ident: tuple[int, int, int]
    status: int
    headers: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    created: float
    ttl: int
    purged: float | None

    @classmethod
    def parse(cls, raw: Any) -> _Meta:
        purged = raw.get("purged")
        return cls(
            ident=(int(raw["ident"][0]), int(raw["ident"][1]), int(raw["ident"][2])),
            status=int(raw["status"]),
            headers=tuple((str(k), str(v)) for k, v in raw["headers"]),
            tags=tuple(str(t) for t in raw["tags"]), created=float(raw["created"]),
            ttl=int(raw["ttl"]), purged=None if purged is None else float(purged),
        )


_O_RDONLY = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_TMP_IDS = itertools.count()


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


class FillTicket:
    """Returned by :meth:`PageCache.begin_fill`: remembers when the render began (the fill
    guard) and holds the key's fill lock when ``leader`` is true. Use it as a context
    manager; the lock is released on exit, whatever happens."""

    def __init__(self, cache: PageCache, key: str, host: str, path: str, generation: str,
                 started_ns: int, lock_path: Path | None, lock_ino: int | None) -> None:
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


@dataclass
class _Counters:
    hits: int = 0
    stale_hits: int = 0
    misses: int = 0
    puts: int = 0
    refused: int = 0
    purged: int = 0
    flushes: int = 0
    evicted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    # The hot path (get) bumps its counters without the lock: statistics, not accounting.
    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class PageCache:
    """The page cache of one site, rooted at ``cache_dir/<site>/pages``.

    ``ttl``: seconds a page is fresh; ``stale_seconds``: how long a purged or expired page may
    still be served while one caller re-renders it; ``max_bytes``: the oldest pages go when
    the current generation grows past it; ``fill_timeout``: a fill lock older than this is
    taken over (its holder is presumed dead); ``clock``: wall-clock seconds (tests pass a fake).
    """

    def __init__(self, root: str | os.PathLike[str], *, ttl: int = 300, stale_seconds: int = 30,
                 max_bytes: int | None = None, fill_timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.ttl = ttl
        self.stale_seconds = stale_seconds
        self.max_bytes = max_bytes
        self.fill_timeout = fill_timeout
        self.clock = clock
        self._current = str(self.root / layout.CURRENT)
        self._previous = str(self.root / "previous")
        self._counters = _Counters()
        # Sidecars already parsed, keyed by body path, valid while the body's identity
        # matches: a hit then costs one open, fstat and read, like a plain file cache.
        self._meta_memo: dict[str, _Meta] = {}
        self._bytes_since_check = 0
        self._last_size_check = 0.0
        self._size_lock = threading.Lock()
        self._stamp: mmap.mmap | None = None
        self._previous_memo: tuple[bytes, float | None] | None = None
        self._ensure_root()

    # --- layout ---------------------------------------------------------------------------

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / LOCKS).mkdir(exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"page cache {self.root}: cannot create the directory: {exc.strerror} "
                "(check that cache_dir exists and is writable)"
            ) from exc
        if not os.path.islink(self._current):
            self._swap_current(self._new_generation())
        self._stamp = _map_stamp(self.root / CHANGES)

    # --- change stamp ---------------------------------------------------------------------

    def change_stamp(self) -> bytes | None:
        """A value that changes whenever any process changes this cache (a put, purge, flush
        or eviction), read without a system call: while it stays the same, a page read before
        is still the page on disk. None when the stamp file cannot be mapped."""
        stamp = self._stamp
        return None if stamp is None else stamp[:8]

    def _changed(self, *, flushed: bool = False) -> None:
        stamp = self._stamp
        if stamp is not None:
            # New random values rather than counts: no lock across processes is needed.
            # Bytes 0-7 change with everything, bytes 8-15 with flushes only.
            if flushed:
                stamp[8:16] = random.getrandbits(64).to_bytes(8, "little")
            stamp[:8] = random.getrandbits(64).to_bytes(8, "little")

    def generation(self) -> str:
        """The name of the current generation (``g1``, ``g2``, ...)."""
        while True:
            try:
                return os.readlink(self._current)
            except FileNotFoundError:  # someone removed it: start over
                self._ensure_root()
            except OSError as exc:
                raise CacheError(f"page cache {self.root}: 'current' is not a symlink ({exc})"
                                 ) from exc

    def _new_generation(self) -> str:
        numbers = [int(m.group(1)) for name in os.listdir(self.root)
                   if (m := re.fullmatch(r"g(\d+)", name))]
        number = max(numbers, default=0) + 1
        while True:
            name = f"g{number}"
            try:
                os.mkdir(self.root / name)
                return name
            except FileExistsError:
                number += 1

    def _swap_link(self, link: str, target: str) -> None:
        tmp = f"{link}.{secrets.token_hex(6)}.tmp"
        os.symlink(target, tmp)
        try:
            os.replace(tmp, link)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _swap_current(self, generation: str) -> None:
        self._swap_link(self._current, generation)

    # --- reads ----------------------------------------------------------------------------

    def _read_page(self, directory: str, body_name: str, meta_name: str
                   ) -> tuple[bytes, _Meta] | None:
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
            memo = self._meta_memo.get(path)
            if memo is not None and memo.ident == ident:
                return body, memo
            try:
                with open(directory + "/" + meta_name, "rb") as f:
                    raw = json.loads(f.read())
                meta = _Meta.parse(raw)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("page cache: unreadable sidecar in %s: %s", directory, exc)
                return None
            if meta.ident == ident and len(body) == st.st_size:
                if len(self._meta_memo) > 4096:
                    self._meta_memo.clear()
                self._meta_memo[path] = meta
                return body, meta
            # A writer is between its two renames, or a purge between its two moves: retry.
        return None

    def get(self, host: str, path: str, query: str = "") -> CachedPage | None:
        """The cached page, fresh or (``stale=True``) within its stale window, else None.

        A page stops being fresh when it expires or is purged (a flush purges every page),
        whichever comes first; it may be served stale for ``stale_seconds`` after that.
        """
        key = page_key(host, path, query)
        now = self.clock()
        directory = self._current + "/" + key
        found = self._read_page(directory, BODY, META)
        if found is None:
            found = self._read_page(directory, STALE_BODY, STALE_META)
        if found is None:
            found = self._from_previous(key)
        counters = self._counters
        if found is None:
            counters.misses += 1
            return None
        body, meta = found
        end = meta.created + meta.ttl
        if meta.purged is not None and meta.purged < end:
            end = meta.purged
        if now < end:
            counters.hits += 1
            stale = False
        elif now < end + self.stale_seconds:
            counters.stale_hits += 1
            stale = True
        else:
            counters.misses += 1
            return None
        return CachedPage(body, meta.status, meta.headers, meta.tags, meta.created, meta.ttl,
                          max(0.0, now - meta.created), stale, meta.ident)

    def _previous_flushed(self) -> float | None:
        """When the generation ``previous`` points to was flushed; None when there is none.
        Read again only after a flush (in any process) changed the flush stamp."""
        stamp = self._stamp
        seen = None if stamp is None else stamp[8:16]
        memo = self._previous_memo
        if seen is not None and memo is not None and memo[0] == seen:
            return memo[1]
        try:
            with open(os.path.join(self._previous, FLUSHED), "rb") as f:
                flushed: float | None = float(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            flushed = None
        if seen is not None:
            self._previous_memo = (seen, flushed)
        return flushed

    def _from_previous(self, key: str) -> tuple[bytes, _Meta] | None:
        """The key's page in the generation before the last flush: purged at that flush."""
        flushed = self._previous_flushed()
        if flushed is None or self.clock() >= flushed + self.stale_seconds:
            return None  # no previous generation, or too long ago to serve even stale
        directory = f"{self._previous}/{key}"
        found = self._read_page(directory, STALE_BODY, STALE_META)
        if found is None:
            found = self._read_page(directory, BODY, META)
        if found is None:
            return None
        body, meta = found
        purged = flushed if meta.purged is None else min(flushed, meta.purged)
        return body, dataclasses.replace(meta, purged=purged)

    # --- fills ----------------------------------------------------------------------------

    def begin_fill(self, host: str, path: str, query: str = "", *,
                   lock: bool = True) -> FillTicket:
        """Start a render of this key: records the time (so that :meth:`put` can refuse a page
        a purge has overtaken) and tries, without waiting, to take the key's fill lock.

        ``lock=False`` skips the lock (the ticket is never the leader): for a key with no page
        at all, when there is nothing stale to serve and every caller renders anyway."""
        key = page_key(host, path, query)
        started = time.time_ns()
        generation = self.generation()
        lock_path = self.root / LOCKS / _hash(key)[:40] if lock else None
        return FillTicket(self, key, _check_host(host), path, generation, started, lock_path,
                          None if lock_path is None else self._try_lock(lock_path))

    def _try_lock(self, lock_path: Path) -> int | None:
        for _ in range(2):
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    age = time.time() - os.stat(lock_path).st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < self.fill_timeout:
                    return None
                log.warning("page cache: fill lock %s is %.0fs old: taking it over", lock_path, age)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
                continue
            except FileNotFoundError:
                (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
                continue
            try:
                return os.fstat(fd).st_ino
            finally:
                os.close(fd)
        return None

    def _purged_since(self, generation: str, names: Iterable[str], since_ns: int) -> bool:
        base = f"{self.root}/{generation}/{PURGED}/"
        for name in names:
            try:
                if os.stat(base + name).st_mtime_ns >= since_ns:
                    return True
            except FileNotFoundError:
                continue
        return False

    # --- writes ---------------------------------------------------------------------------

    def _write_atomic(self, directory: str, name: str, data: bytes, *,
                      identify: bool = False) -> tuple[int, int, int] | None:
        """Write *data* to ``directory/name`` through a temporary file and a rename; with
        ``identify``, give the file a unique identity (inode, size, mtime) and return it."""
        for _ in range(8):
            tmp = f"{directory}/.tmp-{os.getpid()}-{threading.get_ident()}-{next(_TMP_IDS)}"
            try:
                fd = os.open(tmp, _O_NEW, 0o644)
                break
            except FileExistsError:  # left by a dead process whose pid came round again
                continue
        else:
            raise FileExistsError(f"cannot create a temporary file in {directory}")
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, 0o644)  # whatever the umask: nginx must be able to read it
                ident = None
                if identify:
                    # Inode numbers are reused at once on ext4: the modification time (to the
                    # nanosecond, nginx's Last-Modified) makes the identity unique.
                    stamp = time.time_ns()
                    os.utime(fd, ns=(stamp, stamp))
                    st = os.fstat(fd)
                    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            finally:
                os.close(fd)
            os.replace(tmp, f"{directory}/{name}")
            tmp = ""
            return ident
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def put(self, host: str, path: str, body: bytes, *, query: str = "", status: int = 200,
            headers: Iterable[tuple[str, str]] = (), tags: Iterable[str] = (),
            ttl: int | None = None, ticket: FillTicket | None = None) -> bool:
        """Store a page. False (and nothing stored) when ``ticket`` shows that a purge or flush
        touching this key or its tags happened after the render began."""
        key = page_key(host, path, query)
        normal_host = _check_host(host)
        tags = tuple(dict.fromkeys(tags))
        marker_names = [_url_name(normal_host, path), *(_tag_name(t) for t in tags)]
        generation = self.generation()
        if ticket is not None and (
            ticket.generation != generation
            or self._purged_since(generation, marker_names, ticket.started_ns)
        ):
            self._counters.add("refused")
            return False
        gen_dir = f"{self.root}/{generation}"
        directory = f"{gen_dir}/{key}"
        data = bytes(body)
        created = False
        try:
            try:
                ident = self._write_atomic(directory, BODY, data, identify=True)
            except FileNotFoundError:
                os.makedirs(directory, exist_ok=True)
                created = True
                ident = self._write_atomic(directory, BODY, data, identify=True)
            assert ident is not None
            meta = {
                "status": int(status), "headers": [[str(k), str(v)] for k, v in headers],
                "tags": list(tags), "created": self.clock(),
                "ttl": self.ttl if ttl is None else int(ttl), "ident": list(ident),
                "host": normal_host, "path": path, "query": query,
            }
            self._write_atomic(directory, META, json.dumps(meta).encode())
            # purge_paths finds a path's own page without the index; its query variants
            # and every tagged page are found through it.
            for name in marker_names if query else marker_names[1:]:
                self._index(gen_dir, name, key)
        except FileNotFoundError:
            return False  # the generation was deleted under us by a flush: nothing to keep
        except OSError as exc:
            raise CacheError(f"page cache {self.root}: cannot store {key}: {exc}") from exc
        if not created:
            for stale in (STALE_BODY, STALE_META):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{directory}/{stale}")
        # A purge may have run between the check above and the write: its marker is set
        # before it moves pages, so looking again now catches it.
        if ticket is not None and (
            self.generation() != generation
            or self._purged_since(generation, marker_names, ticket.started_ns)
        ):
            self._move_stale(Path(directory), self.clock())
            self._changed()
            self._counters.add("refused")
            return False
        self._changed()
        self._counters.add("puts")
        if self.max_bytes is not None:
            self._account(len(data))
        return True

    def _index(self, gen_dir: str, name: str, key: str) -> None:
        index = f"{gen_dir}/{TAGS}/{name}"
        entry = f"{index}/{_hash(key)[:32]}"
        try:
            os.symlink(key, entry)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(index, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.symlink(key, entry)

    # --- purges ---------------------------------------------------------------------------

    def _mark(self, gen_dir: Path, name: str) -> None:
        marker = gen_dir / PURGED / name
        now = time.time_ns()
        try:
            fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644)
        except FileNotFoundError:
            marker.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        os.utime(marker, ns=(now, now))

    def _move_stale(self, directory: Path, now: float) -> bool:
        """Move a page out of nginx's way, keeping it as the stale copy."""
        try:
            os.replace(directory / BODY, directory / STALE_BODY)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            with open(directory / META, "rb") as f:
                meta = json.loads(f.read())
            meta["purged"] = now
            self._write_atomic(str(directory), STALE_META, json.dumps(meta).encode())
        except (OSError, ValueError):
            pass  # the stale copy is then unusable, which only means a miss
        return True

    def _purge_names(self, names: Iterable[str], own: Mapping[str, str] | None = None) -> int:
        """Mark each name purged, then move the pages its index lists (and ``own[name]``,
        a page key not in the index) out of the way."""
        generation = self.generation()
        gen_dir = self.root / generation
        now = self.clock()
        count = 0
        for name in names:
            try:
                self._mark(gen_dir, name)
            except FileNotFoundError:
                return count  # the generation is gone: a flush beat us to it
            if own is not None and name in own:
                count += self._move_stale(gen_dir / own[name], now)
            index = gen_dir / TAGS / name
            try:
                entries = list(os.scandir(index))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    key = os.readlink(entry.path)
                except OSError:
                    continue
                if key.startswith(("/", "..")) or "/../" in key:
                    continue  # not one of ours
                count += self._move_stale(gen_dir / key, now)
        if count:
            self._changed()
        self._counters.add("purged", count)
        return count

    def purge_tags(self, tags: Iterable[str]) -> int:
        """Purge every page carrying any of ``tags``; returns how many pages went stale."""
        return self._purge_names([_tag_name(t) for t in tags])

    def purge_paths(self, host: str | None, paths: Iterable[str]) -> int:
        """Purge these URL paths (with any query string) of ``host``, or of every host when
        ``host`` is None. Returns how many pages went stale."""
        paths = list(paths)
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise CacheError(f"page cache: path {path!r} must start with '/'")
        if host is None:
            gen_dir = self.root / self.generation()
            try:
                hosts = [e.name for e in os.scandir(gen_dir)
                         if not e.name.startswith(".") and _SAFE_HOST(e.name)]
            except FileNotFoundError:
                hosts = []
            # Hosts seen only in the query tree count too.
            with contextlib.suppress(FileNotFoundError):
                hosts += [e.name for e in os.scandir(gen_dir / QUERY_TREE) if _SAFE_HOST(e.name)]
        else:
            hosts = [_check_host(host)]
        # Each path's own page (no query) is not in the index: put() leaves it out.
        own = {_url_name(h, p): page_key(h, p) for h in dict.fromkeys(hosts) for p in paths}
        return self._purge_names(list(own), own)

    def flush(self) -> str:
        """Purge the whole site: a new empty generation becomes ``current``; the old one is
        kept as ``previous`` (served stale for ``stale_seconds``) and older ones are deleted in
        the background. Returns the new generation's name."""
        old = self.generation()
        new = self._new_generation()
        with contextlib.suppress(FileNotFoundError):
            self._write_atomic(str(self.root / old), FLUSHED, repr(self.clock()).encode())
        self._swap_link(self._previous, old)
        self._swap_current(new)
        self._changed(flushed=True)
        self._counters.add("flushes")
        self._meta_memo.clear()
        self.sweep(keep=(new, old))
        return new

    def sweep(self, keep: Iterable[str] | None = None) -> list[str]:
        """Delete, in a background thread, generations that are neither current nor (within
        its stale window) previous. Returns the names being deleted."""
        if keep is None:
            keep = {self.generation()}
            try:
                previous = os.readlink(self._previous)
                with open(os.path.join(self._previous, FLUSHED), "rb") as f:
                    if self.clock() < float(f.read()) + self.stale_seconds:
                        keep.add(previous)
            except (FileNotFoundError, ValueError):
                pass
        keep = set(keep)
        doomed = []
        for name in os.listdir(self.root):
            if re.fullmatch(r"g\d+", name) and name not in keep:
                trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.root / name, trash)
                    doomed.append(str(trash))
        if doomed:
            thread = threading.Thread(target=_delete_trees, args=(doomed,),
                                      name="tenantkit-cache-sweep", daemon=True)
            thread.start()
        return doomed

    # --- size -----------------------------------------------------------------------------

    def _account(self, size: int) -> None:
        assert self.max_bytes is not None
        with self._size_lock:
            self._bytes_since_check += size
            due = (self._bytes_since_check > self.max_bytes // 10
                   or time.monotonic() - self._last_size_check > 10)
            if not due:
                return
            self._bytes_since_check = 0
            self._last_size_check = time.monotonic()
        self.evict()

    def _scan(self) -> list[tuple[float, int, Path]]:
        """(created, bytes, page dir) of every page in the current generation."""
        gen_dir = self.root / self.generation()
        pages = []
        for dirpath, dirnames, filenames in os.walk(gen_dir):
            if dirpath == str(gen_dir):
                dirnames[:] = [d for d in dirnames if d not in (TAGS, PURGED)]
            size = 0
            created = None
            for name in filenames:
                if name in (BODY, STALE_BODY, META, STALE_META):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    size += st.st_size
                    if name in (BODY, STALE_BODY):
                        created = st.st_mtime if created is None else min(created, st.st_mtime)
            if created is not None:
                pages.append((created, size, Path(dirpath)))
        return pages

    def evict(self) -> int:
        """Remove the oldest pages until the current generation is under ``max_bytes``."""
        if self.max_bytes is None:
            return 0
        pages = self._scan()
        total = sum(size for _, size, _ in pages)
        evicted = 0
        for _, size, directory in sorted(pages, key=lambda p: p[0]):
            if total <= self.max_bytes:
                break
            for name in (BODY, STALE_BODY, META, STALE_META):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)
            total -= size
            evicted += 1
        if evicted:
            self._changed()
        self._counters.add("evicted", evicted)
        return evicted

    def stats(self) -> CacheStats:
        pages = self._scan()
        c = self._counters
        return CacheStats(
            generation=self.generation(), pages=len(pages), bytes=sum(p[1] for p in pages),
            hits=c.hits, stale_hits=c.stale_hits, misses=c.misses, puts=c.puts,
            refused=c.refused, purged=c.purged, flushes=c.flushes, evicted=c.evicted,
        )


def _map_stamp(path: Path) -> mmap.mmap | None:
    """The 16-byte change stamps at *path*, mapped shared (created when missing)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        log.warning("page cache: cannot open %s (%s): pages are re-read on every hit",
                    path, exc.strerror)
        return None
    try:
        if os.fstat(fd).st_size < 16:
            os.ftruncate(fd, 16)
        return mmap.mmap(fd, 16)
    except (OSError, ValueError) as exc:
        log.warning("page cache: cannot map %s (%s): pages are re-read on every hit", path, exc)
        return None
    finally:
        os.close(fd)


def _delete_trees(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


