"""What a page cache reports: counters of this process and the size on disk."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["CacheStats", "Counters"]


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


@dataclass
class Counters:
    """What one PageCache did in this process."""

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
