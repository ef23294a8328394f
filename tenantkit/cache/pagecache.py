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
                      ticket=ticket)             # stored stale if a purge hit it meanwhile

    cache.purge_tags(["post:42"])                 # targeted
    cache.purge_paths("blog.example.org", ["/"])  # one URL (and its query variants)
    cache.flush()                                 # the whole site: a new generation

Layout under ``root`` (``cache_dir/<site>/pages``)::

    current -> g7                                  symlink, swapped atomically by flush()
    previous -> g6                                 the last generation; g6 and older flushed
                                                   ones (see generations) are served stale
    g7/<host>/<path>/index.html                    what nginx serves (paths ending in "/"),
                                                   only for pages nginx_serves() accepts
    g7/<host>/<path>/.page.body                    the body of every other page
    g7/<host>/<path>/.stale.html                   a purged page, or one rendered across a purge
    g7/<host>/<path>/.meta.json                    status, headers, tags, created, ttl, identity
                                                   (attached to the body instead where it can
                                                   be: see tenantkit.cache.pagefile)
    g7/.q/<host>/<ab>/<sha256>/index.html          every other key (query strings, odd paths)
    g7/.tags/<tag>/<key-hash> -> <page dir>        tag index (symlinks), per generation
    g7/.purged/<tag or url>                        purge markers (mtime = purge time)
    g6/.flushed                                    when g6 stopped being current
    .locks/<key-hash>                              per-key fill locks
    .changes                                       change stamp (see change_stamp())

nginx (``tenantkit nginx-config``) serves ``index.html`` for ``$uri`` ending in ``/``: only
pages :func:`~tenantkit.cache.pagefile.nginx_serves` accepts get that name; names starting
with a dot never come from a URL and are never served by nginx.

The parts live in their own modules: keys and index names in :mod:`~tenantkit.cache.keys`, a
page's files in :mod:`~tenantkit.cache.pagefile`, generations in
:mod:`~tenantkit.cache.generations`, the change stamp in :mod:`~tenantkit.cache.stamp`, fill
locks and the purge guard in :mod:`~tenantkit.cache.fill`. This module stores, finds, purges
and evicts. Every write is a temporary file in the target directory and an ``os.replace``
(:class:`tenantkit.files.AtomicWriter`, :func:`tenantkit.files.write_atomic`); nothing is
ever unlinked first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tenantkit import layout
from tenantkit.cache import generations, tagindex
from tenantkit.cache.fill import LOCKS, PURGED, FillTicket, mark_purged, purged_since, try_lock
from tenantkit.cache.keys import check_host, key_hash, page_key, tag_name, url_name
from tenantkit.cache.nodecounters import RENDERS
from tenantkit.cache.pagefile import (
    BODY,
    META,
    PAGE_FILES,
    PRIVATE_BODY,
    STALE_BODY,
    STALE_META,
    BodyWriter,
    CachedPage,
    PageFiles,
    SidecarMeta,
    file_mode,
    nginx_serves,
)
from tenantkit.cache.staleness import IF_ERROR, REVALIDATE, stale_horizon, stale_reason
from tenantkit.cache.stamp import ChangeStamp
from tenantkit.cache.stats import CacheStats, Counters
from tenantkit.errors import CacheError
from tenantkit.files import replace_symlink, write_atomic

__all__ = ["CacheStats", "CachedPage", "FillTicket", "PageCache", "PageRef", "PageWriter",
           "PurgedPages", "page_key"]

CHANGES = ".changes"


def _no_tally(kind: str) -> None:
    pass


#: A stored page's key as its request gave it: (host, path, query).
PageRef = tuple[str, str, str]


class PurgedPages:
    """The pages a purge made stale, as the (host, path, query) each was stored for: each
    once, in the order purged, at most *limit* of them (None: no limit). Pages past the limit
    are counted in ``left_out`` and their sidecars never read::

        report = PurgedPages(limit=1000)
        cache.purge_tags(["post:42"], purged=report)
        report.refs                 # {(host, path, query): None, ...}
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.refs: dict[PageRef, None] = {}
        #: Pages made stale but not reported (past the limit).
        self.left_out = 0

    def add(self, directory: str) -> None:
        """Report the purged page in *directory*, read from its stale sidecar (skipped when
        that cannot be read)."""
        if self.limit is not None and len(self.refs) >= self.limit:
            self.left_out += 1
            return
        meta = PageFiles.sidecar(directory, STALE_BODY, STALE_META)
        if meta is None or "host" not in meta or "path" not in meta:
            return
        self.refs[(str(meta["host"]), str(meta["path"]), str(meta.get("query") or ""))] = None


class PageCache:
    """The page cache of one site, rooted at ``cache_dir/<site>/pages``.

    ``ttl``: seconds a page is fresh; ``stale_seconds``: how long a purged or expired page may
    still be served while one caller re-renders it; ``stale_if_error``: how long such a page
    may be served when the backend fails (:meth:`get_if_error`); ``max_bytes``: the oldest
    previous generations, then the oldest pages, go when the cache grows past it;
    ``fill_timeout``: a fill lock older than this is taken over (its holder is presumed
    dead); ``clock``: wall-clock seconds
    (tests pass a fake); ``untagged``: the tag a page put without tags is stored under (a
    site's cache uses :data:`tenantkit.cache.tags.SITE`, which every purge of the site
    purges); ``tally``: called with :data:`~tenantkit.cache.nodecounters.RENDERS` for each
    render stored (fresh or stale) and, by the middleware, with
    :data:`~tenantkit.cache.nodecounters.STALE_SERVED` for each stale page served (a site's
    cache counts into its node's counters: :func:`tenantkit.cache.caches.site_page_cache`).

    After a purge or a flush a page is served stale (for ``stale_seconds``) from the newest
    copy left: the stale copy in ``current``, else the newest previous generation that has
    it. A render a purge overtook is stored as such a stale copy, never as fresh.
    """

    def __init__(self, root: str | os.PathLike[str], *, ttl: int = 300, stale_seconds: int = 30,
                 max_bytes: int | None = None, fill_timeout: float = 30.0,
                 clock: Callable[[], float] = time.time, untagged: str | None = None,
                 stale_if_error: int = 0, tally: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.tally: Callable[[str], None] = tally or _no_tally
        self.untagged = untagged
        self.ttl = ttl
        self.stale_seconds = stale_seconds
        self.stale_if_error = stale_if_error
        self.max_bytes = max_bytes
        self.fill_timeout = fill_timeout
        self.clock = clock
        self._current = str(self.root / layout.CURRENT)
        self._previous = str(self.root / generations.PREVIOUS)
        self._root = str(self.root)
        self._counters = Counters()
        self._files = PageFiles()
        self._bytes_since_check = 0
        self._last_size_check = 0.0
        self._size_lock = threading.Lock()
        self._stamp: ChangeStamp | None = None
        self._previous_memo: tuple[bytes, str, list[tuple[str, float]]] | None = None
        self._ensure_root()
        self._file_mode = file_mode(self.root)  # 0640 in a group-owned (setgid) tree

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
            replace_symlink(generations.new_generation(self.root), self._current)
        self._stamp = ChangeStamp.open(self.root / CHANGES)

    def change_stamp(self) -> bytes | None:
        """A value that changes whenever any process changes this cache (a put, purge, flush
        or eviction), read without a system call: while it stays the same, a page read before
        is still the page on disk. None when the stamp file cannot be mapped."""
        stamp = self._stamp
        return None if stamp is None else stamp.current()

    def _changed(self, *, flushed: bool = False) -> None:
        if self._stamp is not None:
            self._stamp.changed(flushed=flushed)

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

    def body_file(self, host: str, path: str, query: str = "", name: str = BODY) -> str:
        """The file a fresh page of this key is read from (through ``current``): *name* is
        the page's ``body_name``."""
        return f"{self._current}/{page_key(host, path, query)}/{name}"

    # --- reads ----------------------------------------------------------------------------

    def get(self, host: str, path: str, query: str = "") -> CachedPage | None:
        """The cached page, fresh or (``stale=True``) within its stale window, else None.

        A page stops being fresh when it expires or is purged (a flush purges every page),
        whichever comes first; it may be served stale for ``stale_seconds`` after that.
        """
        return self._lookup(host, path, query, if_error=False)

    def get_if_error(self, host: str, path: str, query: str = "") -> CachedPage | None:
        """The page to serve instead of the backend's error: fresh, or stale for either
        reason of :func:`~tenantkit.cache.staleness.stale_reason` (``stale_seconds``, or
        ``stale_if_error`` after the page was purged or expired); else None."""
        return self._lookup(host, path, query, if_error=True)

    def _lookup(self, host: str, path: str, query: str, *, if_error: bool) -> CachedPage | None:
        key = page_key(host, path, query)
        now = self.clock()
        directory = self._current + "/" + key
        read = self._files.read
        found = read(directory, BODY, META)
        if found is None:
            found = read(directory, STALE_BODY, STALE_META)
        if found is None:
            found = self._from_previous(key, if_error=if_error)
        counters = self._counters
        if found is None:
            if not if_error:
                counters.misses += 1
            return None
        body, meta = found
        end = meta.created + meta.ttl
        if meta.purged is not None and meta.purged < end:
            end = meta.purged
        if now < end:
            if not if_error:
                counters.hits += 1
            stale = False
            until = end
        else:
            reason = stale_reason(end, now, stale_seconds=self.stale_seconds,
                                  stale_if_error=self.stale_if_error)
            if reason is None or (reason == IF_ERROR and not if_error):
                if not if_error:
                    counters.misses += 1
                return None
            counters.stale_hits += 1
            stale = True
            until = end + (self.stale_seconds if reason == REVALIDATE else self.stale_if_error)
        return CachedPage(body, meta.status, meta.headers, meta.tags, meta.created, meta.ttl,
                          max(0.0, now - meta.created), stale, meta.ident, meta.body_name,
                          until)

    def _stale_horizon(self) -> float:
        return stale_horizon(stale_seconds=self.stale_seconds,
                             stale_if_error=self.stale_if_error)

    def _previous_generations(self) -> list[tuple[str, float]]:
        """The previous generations, newest first, with when each was flushed. Read again
        only after a flush (in any process) changed the flush stamp or ``current``: a flush
        swaps ``current`` a moment before it changes the stamp."""
        stamp = self._stamp
        seen = None if stamp is None else stamp.flushes()
        current = self.generation()
        memo = self._previous_memo
        if seen is not None and memo is not None and memo[0] == seen and memo[1] == current:
            return memo[2]
        found = generations.previous(self.root, current)
        if seen is not None:
            self._previous_memo = (seen, current, found)
        return found

    def _from_previous(self, key: str, *, if_error: bool = False
                       ) -> tuple[bytes, SidecarMeta] | None:
        """The key's page in the newest previous generation that has it (newest first: the
        newest copy), purged at that generation's flush if not before."""
        window = self._stale_horizon() if if_error else self.stale_seconds
        now = self.clock()
        read = self._files.read
        for name, flushed in self._previous_generations():
            if now >= flushed + window:
                return None  # this one and every older one: too long ago to serve
            directory = f"{self._root}/{name}/{key}"
            found = read(directory, STALE_BODY, STALE_META) or read(directory, BODY, META)
            if found is not None:
                body, meta = found
                purged = flushed if meta.purged is None else min(flushed, meta.purged)
                return body, dataclasses.replace(meta, purged=purged)
        return None

    # --- writes ---------------------------------------------------------------------------

    def begin_fill(self, host: str, path: str, query: str = "", *,
                   lock: bool = True) -> FillTicket:
        """Start a render of this key: records the time (so that :meth:`put` can refuse a page
        a purge has overtaken) and tries, without waiting, to take the key's fill lock.

        ``lock=False`` skips the lock (the ticket is never the leader): for a key with no page
        at all, when there is nothing stale to serve and every caller renders anyway."""
        key = page_key(host, path, query)
        started = time.time_ns()
        generation = self.generation()
        lock_path = f"{self._root}/{LOCKS}/{key_hash(key)[:40]}" if lock else None
        return FillTicket(self, key, check_host(host), path, generation, started, lock_path,
                          None if lock_path is None else try_lock(lock_path, self.fill_timeout))

    def _overtaken(self, ticket: FillTicket | None, generation: str, names: list[str]) -> bool:
        """True when a flush, or a purge of one of *names*, came after the render *ticket*
        stands for began."""
        return ticket is not None and (
            ticket.generation != generation
            or purged_since(f"{self._root}/{generation}", names, ticket.started_ns))

    def _keep_stale(self, directory: str, body: BodyWriter, meta: dict[str, Any]) -> bool:
        """Keep a render a purge overtook (*body*, written) as the key's stale copy, purged
        now: not fresh, but the newest copy there is, so the next callers are served it
        (STALE, for ``stale_seconds``) while one renders the page again. (Purged now rather
        than at the purge: a render slower than ``stale_seconds`` would otherwise be stored
        too old to serve, and leave nothing to serve.) Not when a page not yet purged is
        there, nor over a stale copy stored later. False when nothing was kept."""
        if any(os.path.exists(f"{directory}/{name}") for name in (BODY, PRIVATE_BODY)):
            return False
        held = PageFiles.sidecar(directory, STALE_BODY, STALE_META)
        created = meta["created"]
        if (held is not None and isinstance(held.get("created"), float)
                and isinstance(created, float) and held["created"] > created):
            return False
        meta["purged"] = created
        try:
            body.commit(meta, stale=True)
        except FileNotFoundError:
            return False  # the generation was deleted under us by a flush
        except OSError as exc:
            raise CacheError(f"page cache {self.root}: cannot store {directory}: {exc}"
                             ) from exc
        self._changed()
        return True

    def put(self, host: str, path: str, body: bytes, *, query: str = "", status: int = 200,
            headers: Iterable[tuple[str, str]] = (), tags: Iterable[str] = (),
            ttl: int | None = None, ticket: FillTicket | None = None) -> bool:
        """Store a page; True when it was stored fresh. False when ``ticket`` shows that a
        purge or flush touching this key or its tags happened after the render began: the
        page is then kept only as the key's stale copy, purged when stored (served STALE for
        ``stale_seconds`` while one caller renders it again)."""
        writer = self.writer(host, path, query=query, status=status, headers=headers,
                             tags=tags, ttl=ttl, ticket=ticket)
        try:
            writer.write(body)
            return writer.commit()
        finally:
            writer.abort()

    def writer(self, host: str, path: str, *, query: str = "", status: int = 200,
               headers: Iterable[tuple[str, str]] = (), tags: Iterable[str] = (),
               ttl: int | None = None, ticket: FillTicket | None = None) -> PageWriter:
        """:meth:`put` for a body that arrives in pieces: a :class:`PageWriter` to
        ``write()`` them to, then ``commit()`` (the page is stored, True, or kept stale as by
        :meth:`put`, False) or ``abort()`` (nothing is). The body is written once, to its
        file; nothing of it is kept in memory."""
        key = page_key(host, path, query)
        normal_host = check_host(host)
        tags = tuple(dict.fromkeys(tags))
        if not tags and self.untagged:
            tags = (self.untagged,)
        marker_names = [url_name(normal_host, path), *(tag_name(t) for t in tags)]
        generation = self.generation()
        headers = [(str(k), str(v)) for k, v in headers]
        meta = {
            "status": int(status), "headers": [[k, v] for k, v in headers],
            "tags": list(tags), "created": 0.0,
            "ttl": self.ttl if ttl is None else int(ttl),
            "host": normal_host, "path": path, "query": query,
        }
        return PageWriter(self, key, generation, meta, marker_names,
                          public=nginx_serves(int(status), headers), ticket=ticket)

    # --- purges ---------------------------------------------------------------------------

    def _purge_names(self, names: Iterable[str], own: Mapping[str, str] | None = None,
                     purged: PurgedPages | None = None) -> int:
        """Mark each name purged, then move the pages its index lists (and ``own[name]``,
        a page key not in the index) out of the way; each page moved is reported to *purged*
        when given."""
        generation = self.generation()
        gen_dir = f"{self.root}/{generation}"
        now = self.clock()
        count = 0
        move_stale = self._files.move_stale
        for name in names:
            try:
                mark_purged(gen_dir, name)
            except FileNotFoundError:
                return count  # the generation is gone: a flush beat us to it
            keys = list(tagindex.pages(gen_dir, name))
            if own is not None and name in own:
                keys.insert(0, own[name])
            for key in keys:
                if move_stale(f"{gen_dir}/{key}", now):
                    count += 1
                    if purged is not None:
                        purged.add(f"{gen_dir}/{key}")
        if count:
            self._changed()
        self._counters.add("purged", count)
        return count

    def purge_tags(self, tags: Iterable[str], *, purged: PurgedPages | None = None) -> int:
        """Purge every page carrying any of ``tags``; returns how many pages went stale
        (and reports each one to *purged*, a :class:`PurgedPages`, when given)."""
        return self._purge_names([tag_name(t) for t in tags], purged=purged)

    def purge_paths(self, host: str | None, paths: Iterable[str], *,
                    purged: PurgedPages | None = None) -> int:
        """Purge these URL paths (with any query string) of ``host``, or of every host when
        ``host`` is None. Returns how many pages went stale (see :meth:`purge_tags` for
        *purged*)."""
        paths = list(paths)
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise CacheError(f"page cache: path {path!r} must start with '/'")
        if host is None:
            hosts = generations.hosts(f"{self.root}/{self.generation()}")
        else:
            hosts = [check_host(host)]
        # Each path's own page (no query) is not in the index: put() leaves it out.
        own = {url_name(h, p): page_key(h, p) for h in dict.fromkeys(hosts) for p in paths}
        return self._purge_names(list(own), own, purged)

    def flush(self) -> str:
        """Purge the whole site: a new empty generation becomes ``current``; the old one and
        up to :data:`~tenantkit.cache.generations.MAX_PREVIOUS` older ones are kept (served
        stale for ``stale_seconds``, or ``stale_if_error``; see :meth:`sweep`). Returns the
        new generation's name."""
        old = self.generation()
        new = generations.new_generation(self.root)
        with contextlib.suppress(FileNotFoundError):
            write_atomic(self.root / old / generations.FLUSHED, repr(self.clock()).encode(),
                         mode=0o644)
        replace_symlink(old, self._previous)
        replace_symlink(new, self._current)
        self._changed(flushed=True)
        self._counters.add("flushes")
        self._files.clear()
        self.sweep()
        return new

    def sweep(self, keep: Iterable[str] | None = None) -> list[str]:
        """Delete, in a background thread, generations no reader needs: all but ``current``,
        the newest previous one and up to
        :data:`~tenantkit.cache.generations.MAX_PREVIOUS` previous ones that hold pages, each
        flushed within the stale horizon (or all but *keep* when given). Generations newer
        than ``current`` (another process's flush under way) are left alone. Returns the
        names being deleted."""
        current = self.generation()
        if keep is None:
            keep = {current}
            now = self.clock()
            horizon = self._stale_horizon()
            full = 0
            for i, (name, flushed) in enumerate(generations.previous(self.root, current,
                                                                     limit=None)):
                if now >= flushed + horizon or full >= generations.MAX_PREVIOUS:
                    break
                if generations.has_pages(f"{self._root}/{name}"):
                    keep.add(name)
                    full += 1
                elif i == 0:
                    keep.add(name)  # what ``previous`` names
        return generations.sweep(self.root, keep, below=current)

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

    def _scan(self, generation: str | None = None) -> list[tuple[float, int, str]]:
        """(created, bytes, page dir) of every page in *generation* (default: current)."""
        gen_dir = str(self.root / (generation or self.generation()))
        pages = []
        for dirpath, dirnames, filenames in os.walk(gen_dir):
            if dirpath == gen_dir:
                dirnames[:] = [d for d in dirnames if d not in (tagindex.TAGS, PURGED)]
            size = 0
            created = None
            for name in filenames:
                if name in PAGE_FILES:
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    size += st.st_size
                    if name in (BODY, PRIVATE_BODY, STALE_BODY):
                        created = st.st_mtime if created is None else min(created, st.st_mtime)
            if created is not None:
                pages.append((created, size, dirpath))
        return pages

    def evict(self) -> int:
        """Keep the whole cache under ``max_bytes``: the previous generations kept to serve
        stale get only the room the current one leaves (the oldest go first), then the
        oldest pages of the current generation go. Returns the number of pages removed."""
        if self.max_bytes is None:
            return 0
        current = self.generation()
        pages = self._scan(current)
        total = sum(size for _, size, _ in pages)
        evicted = self._trim_previous(current, self.max_bytes - total)
        for _, size, directory in sorted(pages, key=lambda p: p[0]):
            if total <= self.max_bytes:
                break
            self._files.remove(directory)
            total -= size
            evicted += 1
        if evicted:
            self._changed()
        self._counters.add("evicted", evicted)
        return evicted

    def _trim_previous(self, current: str, room: int) -> int:
        """Drop the previous generations, newest kept first, that do not fit in *room* bytes
        (and every older one); returns the number of pages they held."""
        keep = {current}
        dropped = 0
        for name, _ in generations.previous(self.root, current, limit=None):
            pages = self._scan(name)
            size = sum(p[1] for p in pages)
            if size > room:
                dropped += len(pages)
                room = -1  # nothing older fits either
            else:
                keep.add(name)
                room -= size
        if dropped:
            generations.sweep(self.root, keep, below=current)
        return dropped

    def stats(self) -> CacheStats:
        pages = self._scan()
        c = self._counters
        return CacheStats(
            generation=self.generation(), pages=len(pages), bytes=sum(p[1] for p in pages),
            hits=c.hits, stale_hits=c.stale_hits, misses=c.misses, puts=c.puts,
            refused=c.refused, purged=c.purged, flushes=c.flushes, evicted=c.evicted,
        )


class PageWriter:
    """A page being stored as its body arrives (see :meth:`PageCache.writer`)."""

    __slots__ = ("_body", "_cache", "_created", "_gen_dir", "_generation", "_gone", "_key",
                 "_names", "_ticket", "meta")

    def __init__(self, cache: PageCache, key: str, generation: str, meta: dict[str, Any],
                 names: list[str], *, public: bool, ticket: FillTicket | None) -> None:
        self._cache = cache
        self._key = key
        self._generation = generation
        self._gen_dir = gen_dir = f"{cache.root}/{generation}"
        self._names = names
        self._ticket = ticket
        #: The sidecar; ``meta["headers"]`` may still be changed until :meth:`commit`.
        self.meta = meta
        directory = f"{gen_dir}/{key}"
        self._created = False
        #: The generation was deleted under us by a flush: nothing to keep.
        self._gone = False
        self._body: BodyWriter | None = None
        try:
            try:
                self._body = BodyWriter(directory, public=public, mode=cache._file_mode)
            except FileNotFoundError:
                try:
                    os.mkdir(directory)  # most often only the page's own is missing
                except FileNotFoundError:
                    os.makedirs(directory, exist_ok=True)
                except FileExistsError:
                    pass
                self._created = True
                self._body = BodyWriter(directory, public=public, mode=cache._file_mode)
        except FileNotFoundError:
            self._gone = True
        except OSError as exc:
            raise CacheError(f"page cache {cache.root}: cannot store {key}: {exc}") from exc

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return 0 if self._body is None else self._body.size

    def write(self, data: bytes | memoryview) -> None:
        """Append to the body (CacheError when the file system refuses)."""
        if self._gone:
            return
        if self._body is None:
            raise CacheError(f"page cache {self._cache.root}: {self._key}: already done")
        try:
            self._body.write(data)
        except OSError as exc:
            self.abort()
            raise CacheError(f"page cache {self._cache.root}: cannot store {self._key}: "
                             f"{exc}") from exc

    def abort(self) -> None:
        """Drop what was written: nothing of this page is stored (a no-op after commit)."""
        body, self._body = self._body, None
        if body is not None:
            body.abort()

    def commit(self) -> bool:
        """Store the page; False when it was refused (see :meth:`PageCache.put`)."""
        body = self._body
        if self._gone:
            return False
        if body is None:
            raise CacheError(f"page cache {self._cache.root}: {self._key}: already done")
        cache, gen_dir, names, ticket = self._cache, self._gen_dir, self._names, self._ticket
        directory = f"{gen_dir}/{self._key}"
        self.meta["created"] = cache.clock()
        if cache._overtaken(ticket, self._generation, names):
            cache._counters.add("refused")
            try:
                if cache._keep_stale(directory, body, self.meta):
                    cache.tally(RENDERS)
            finally:
                self.abort()
            return False
        try:
            body.commit(self.meta, fresh=self._created)
            # purge_paths finds a path's own page without the index; its query variants
            # and every tagged page are found through it.
            for name in names if self.meta["query"] else names[1:]:
                tagindex.add(gen_dir, name, self._key)
        except FileNotFoundError:
            return False  # the generation was deleted under us by a flush: nothing to keep
        except OSError as exc:
            raise CacheError(f"page cache {cache.root}: cannot store {self._key}: "
                             f"{exc}") from exc
        finally:
            self.abort()
        if not self._created:
            cache._files.drop_stale(directory)
        # A purge may have run between the check above and the rename: its marker is set
        # before it moves pages, so looking again now catches it.
        if ticket is not None and cache._overtaken(ticket, cache.generation(), names):
            cache._files.move_stale(directory, cache.clock())
            cache._changed()
            cache._counters.add("refused")
            cache.tally(RENDERS)
            return False
        cache._changed()
        cache._counters.add("puts")
        cache.tally(RENDERS)
        if cache.max_bytes is not None:
            cache._account(body.size)
        return True
