"""What the processes of one node did to its page caches, counted across processes.

Every process on a node (each gunicorn worker, the standalone invalidator) counts into its
own file under ``cache_dir/_node/counters/``; readers (the metrics, the status page) add the
files up::

    counters = NodeCounters.for_dir(settings.cache_dir)   # one per process and cache_dir
    counters.add(FLUSHES, "blog")          # cheap: a dict update; the file is written at
    counters.add(RENDERS, "blog", 2)       # most once per WRITE_INTERVAL, by a thread of its
                                           # own (a count never waits on the disk), and on
                                           # save()
    counters.save()
    totals = read_node_counters(settings.cache_dir)
    totals[FLUSHES]["blog"]                # every process of the node, ever (since the
                                           # counter files were made)

A counter file is input like any other: one that is corrupt, huge or not a regular file is
skipped with one log line, never an error on the status page.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import ClassVar

from tenantkit import layout
from tenantkit.files import NotARegularFile, read_regular_file, write_atomic

__all__ = [
    "COALESCED", "FLUSHES", "KINDS", "PURGES", "RENDERS", "STALE_SERVED", "NodeCounters",
    "read_node_counters",
]

log = logging.getLogger(__name__)

#: Whole-site flushes carried out on the node.
FLUSHES = "flushes"
#: Targeted purges carried out on the node (after coalescing).
PURGES = "purges"
#: Purges and flushes that were merged into another one instead of being carried out.
COALESCED = "coalesced"
#: Pages rendered by a backend and stored (a miss, or a revalidation after a purge).
RENDERS = "renders"
#: Responses served from a stale page (``X-Cache: STALE``).
STALE_SERVED = "stale_served"
KINDS = (FLUSHES, PURGES, COALESCED, RENDERS, STALE_SERVED)

#: Seconds between two writes of a process's counter file.
WRITE_INTERVAL = 1.0
#: A counter file larger than this is not read.
MAX_FILE = 1 << 20

_warned: set[str] = set()


class NodeCounters:
    """This process's counts for one ``cache_dir``; see the module docstring."""

    _instances: ClassVar[dict[str, NodeCounters]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.path = layout.node_counters(cache_dir, f"{os.getpid()}-{secrets.token_hex(4)}")
        self._counts: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._dirty = False
        self._written = 0.0
        self._saving = False

    @classmethod
    def for_dir(cls, cache_dir: str | os.PathLike[str]) -> NodeCounters:
        """The process's one NodeCounters for *cache_dir* (a new one after a fork). Cheap
        enough for every count: two spellings of one directory only make two files, which
        readers add up anyway."""
        key = f"{os.getpid()}:{os.fspath(cache_dir)}"
        with cls._instances_lock:
            counters = cls._instances.get(key)
            if counters is None:
                counters = cls._instances[key] = cls(cache_dir)
            return counters

    def add(self, kind: str, site: str, n: int = 1) -> None:
        """Count *n* of *kind* (one of :data:`KINDS`) for *site*."""
        with self._lock:
            per_site = self._counts[kind]
            per_site[site] = per_site.get(site, 0) + n
            self._dirty = True
            due = not self._saving and time.monotonic() - self._written >= WRITE_INTERVAL
            if due:
                self._saving = True
        if due:  # counted by a request's thread, perhaps: the write is not its to wait for
            threading.Thread(target=self._save_now, name="tenantkit-node-counters",
                             daemon=True).start()

    def _save_now(self) -> None:
        try:
            self.save()
        finally:
            self._saving = False

    def counts(self) -> dict[str, dict[str, int]]:
        """This process's counts (a copy)."""
        with self._lock:
            return {kind: dict(per_site) for kind, per_site in self._counts.items()}

    def save(self) -> None:
        """Write this process's counter file now, if anything changed (when it returns, the
        file has every count made before). Never raises: a failure is logged once."""
        with self._save_lock:  # one write at a time, in the order the counts were taken
            with self._lock:
                if not self._dirty:
                    return
                data = json.dumps(self._counts).encode()
                self._dirty = False
                self._written = time.monotonic()
            try:
                try:
                    write_atomic(self.path, data, mode=0o644)
                except FileNotFoundError:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(self.path, data, mode=0o644)
            except OSError as exc:
                _warn_once(str(self.path), f"node counters: cannot write {self.path}: {exc}")


def read_node_counters(cache_dir: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Every process's counts under *cache_dir*, added up: ``{kind: {site: count}}`` (every
    kind of :data:`KINDS` present, possibly empty)."""
    totals: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    directory = layout.node_counters(cache_dir)
    try:
        entries = [e for e in os.scandir(directory) if e.name.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return totals
    for entry in entries:
        counts = _read(Path(entry.path))
        for kind, per_site in counts.items():
            for site, n in per_site.items():
                totals[kind][site] = totals[kind].get(site, 0) + n
    return totals


def _read(path: Path) -> dict[str, dict[str, int]]:
    """One counter file's valid part: unknown kinds, non-string sites and non-integer counts
    are left out; an unreadable file counts as empty (logged once)."""
    try:
        data = json.loads(read_regular_file(path, MAX_FILE))
    except FileNotFoundError:
        return {}
    except (OSError, NotARegularFile, ValueError, RecursionError) as exc:
        _warn_once(str(path), f"node counters: {path} is unreadable ({exc}); skipped "
                   "(remove it)")
        return {}
    if not isinstance(data, dict):
        _warn_once(str(path), f"node counters: {path} is not a JSON object; skipped "
                   "(remove it)")
        return {}
    out: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        per_site = data.get(kind)
        if isinstance(per_site, dict):
            out[kind] = {site: n for site, n in per_site.items()
                         if isinstance(site, str) and type(n) is int and n >= 0}
    return out


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def _save_all() -> None:
    for counters in list(NodeCounters._instances.values()):
        counters.save()


atexit.register(_save_all)  # what a worker counted since its last write is not lost
