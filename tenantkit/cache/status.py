"""Invalidator status files: what each node's invalidator last reported, for the health check,
the status page and the metrics of any process on the node (the shim's workers do not run the
invalidator of ``tenantkit invalidator``, so they read its file)::

    status = InvalidatorStatus(node="web1", source="bus+binlog", transport="redis",
                               connected=True, last_event=time.time(), lag=0.01,
                               dead_letters=0, handled=12)
    write_status(settings.cache_dir, status)        # the invalidator, every INTERVAL seconds
    for status in read_statuses(settings.cache_dir):
        reason = status.problem()                   # None, or why purges may not be applied

The file is ``cache_dir/_status/<node>.json`` (:func:`tenantkit.layout.invalidator_status`),
written atomically. The rule of when an invalidator counts as down lives here only
(:meth:`InvalidatorStatus.problem`): its file is older than :data:`STALE_AFTER` seconds (the
process died or hangs), or it is not connected to what feeds it (Redis, the replica's binlog).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tenantkit import layout
from tenantkit.files import write_atomic

__all__ = ["INTERVAL", "STALE_AFTER", "InvalidatorStatus", "read_statuses", "write_status"]

log = logging.getLogger(__name__)

#: How often a running invalidator rewrites its file (seconds).
INTERVAL = 2.0
#: A file older than this means the invalidator is down (seconds).
STALE_AFTER = 15.0

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class InvalidatorStatus:
    """One node's invalidator, as it last reported.

    ``source``: ``bus`` or ``bus+binlog``; ``connected``: the bus and every binlog reader are
    connected; ``last_event``: Unix time of the last purge; ``lag``: seconds the binlog
    reader is behind (0 when it has read everything; None without one); ``updated``: Unix
    time of the report; ``error``: what is not connected, and why.
    """

    node: str
    source: str = "bus"
    transport: str = ""
    connected: bool = True
    last_event: float | None = None
    lag: float | None = None
    dead_letters: int = 0
    handled: int = 0
    pid: int = field(default_factory=os.getpid)
    updated: float = field(default_factory=time.time)
    error: str = ""

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.updated)

    def problem(self, now: float | None = None) -> str | None:
        """Why this node's purges may not be applied now (None: they are)."""
        age = self.age(now)
        if age > STALE_AFTER:
            return (f"the invalidator of node {self.node} (pid {self.pid}) last reported "
                    f"{age:.0f}s ago: it is down or stuck (restart tenantkit invalidator)")
        if not self.connected:
            return (f"the invalidator of node {self.node} is not connected: "
                    f"{self.error or 'unknown error'}")
        return None


def write_status(cache_dir: str | os.PathLike[str], status: InvalidatorStatus) -> None:
    """Write ``status`` to its node's file, atomically; an OSError is logged, not raised (a
    status report must never stop purging)."""
    path = layout.invalidator_status(cache_dir, _UNSAFE.sub("_", status.node) or "_")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(status)).encode(), mode=0o644)
    except OSError as exc:
        log.warning("invalidator: cannot write its status file %s: %s", path, exc)


def read_statuses(cache_dir: str | os.PathLike[str]) -> list[InvalidatorStatus]:
    """Every node's last report under ``cache_dir`` (unreadable files are skipped)."""
    directory = layout.invalidator_status(cache_dir)
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    known = {f.name for f in fields(InvalidatorStatus)}
    out = []
    for name in names:
        try:
            data: dict[str, Any] = json.loads(Path(directory, name).read_bytes())
            out.append(InvalidatorStatus(**{k: v for k, v in data.items() if k in known}))
        except (OSError, ValueError, TypeError) as exc:
            log.debug("status file %s skipped: %s", name, exc)
    return out
