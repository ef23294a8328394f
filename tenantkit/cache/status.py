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

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tenantkit import layout
from tenantkit.files import read_regular_file, write_atomic
from tenantkit.validate import is_number, is_whole_number

__all__ = ["INTERVAL", "MAX_NODES", "MAX_STATUS_BYTES", "STALE_AFTER", "InvalidatorStatus",
           "read_status", "read_statuses", "safe_name", "status_file", "write_status"]

log = logging.getLogger(__name__)

#: How often a running invalidator rewrites its file (seconds).
INTERVAL = 2.0
#: A file older than this means the invalidator is down (seconds).
STALE_AFTER = 15.0

#: A status file larger than this is unreadable (one is a few hundred bytes).
MAX_STATUS_BYTES = 64 * 1024
#: At most this many status files are read (by the metrics); more are left out, logged.
MAX_NODES = 256
#: Text fields (node, source, transport, error) longer than this are cut.
_MAX_TEXT = 500

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
#: (path, reason) of the unreadable status files already logged: once each.
_logged: set[tuple[str, str]] = set()


def _is_text(value: object) -> bool:
    """A str that can be sent as UTF-8 (no lone surrogates: the metrics would fail)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    #: Why the node's status file could not be read (never written: set by the reader).
    unreadable: str = ""

    @classmethod
    def parse(cls, raw: Any) -> InvalidatorStatus:
        """The status in *raw* (a status file's parsed JSON); ValueError naming the first
        field that is not what :func:`write_status` writes."""
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object but {type(raw).__name__}")
        node = raw.get("node")
        if not (isinstance(node, str) and _is_text(node) and _PRINTABLE.fullmatch(node)):
            raise ValueError("node: expected a name of 1 to 255 printable characters")
        values: dict[str, Any] = {"node": node}
        for key in ("source", "transport", "error"):
            if key in raw:
                if not _is_text(raw[key]):
                    raise ValueError(f"{key}: expected a string")
                values[key] = raw[key][:_MAX_TEXT]
        if "connected" in raw:
            if not isinstance(raw["connected"], bool):
                raise ValueError("connected: expected true or false")
            values["connected"] = raw["connected"]
        for key in ("last_event", "lag"):
            if raw.get(key) is not None:
                if not is_number(raw[key], minimum=0):
                    raise ValueError(f"{key}: expected a finite number >= 0 or null")
                values[key] = float(raw[key])
        for key in ("dead_letters", "handled", "pid"):
            if key in raw:
                if not is_whole_number(raw[key], minimum=0):
                    raise ValueError(f"{key}: expected a whole number >= 0")
                values[key] = raw[key]
        if not is_number(raw.get("updated"), minimum=0):
            raise ValueError("updated: expected a finite time")
        values["updated"] = float(raw["updated"])
        return cls(**values)

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.updated)

    def problem(self, now: float | None = None) -> str | None:
        """Why this node's purges may not be applied now (None: they are)."""
        if self.unreadable:
            return f"the invalidator of node {self.node}: {self.unreadable}"
        late = (time.time() if now is None else now) - self.updated
        if late < -STALE_AFTER:
            return (f"the invalidator of node {self.node} reported a time {-late:.0f}s in the "
                    "future: the clock went back, or it is not this node's file (restart "
                    "tenantkit invalidator)")
        age = self.age(now)
        if age > STALE_AFTER:
            return (f"the invalidator of node {self.node} (pid {self.pid}) last reported "
                    f"{age:.0f}s ago: it is down or stuck (restart tenantkit invalidator)")
        if not self.connected:
            return (f"the invalidator of node {self.node} is not connected: "
                    f"{self.error or 'unknown error'}")
        return None


def safe_name(node: str) -> str:
    """*node* as a file name: anything but letters, digits, ``.``, ``_`` and ``-`` replaced,
    cut short and told apart by a hash when it had to be changed."""
    safe = _UNSAFE.sub("_", node)
    if safe != node or len(node) > 100 or not node or node.startswith("."):
        digest = hashlib.sha256(node.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        safe = f"_{safe[:80]}-{digest}"
    return safe


def status_file(cache_dir: str | os.PathLike[str], node: str) -> Path:
    """The status file of *node* (named by :func:`safe_name`)."""
    return layout.invalidator_status(cache_dir, safe_name(node))


def write_status(cache_dir: str | os.PathLike[str], status: InvalidatorStatus) -> None:
    """Write ``status`` to its node's file, atomically; an OSError is logged, not raised (a
    status report must never stop purging)."""
    path = status_file(cache_dir, status.node)
    data = asdict(status)
    del data["unreadable"]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data).encode(), mode=0o644)
    except OSError as exc:
        log.warning("invalidator: cannot write its status file %s: %s", path, exc)


def _load(path: Path) -> InvalidatorStatus:
    """The status in *path*; OSError (FileNotFoundError: none) or ValueError saying why it
    cannot be read. Never blocks: a FIFO or device is refused, a symlink is not followed."""
    if path.is_symlink():
        raise ValueError("it is a symlink, not the file tenantkit invalidator writes")
    data = read_regular_file(path, MAX_STATUS_BYTES + 1)
    if len(data) > MAX_STATUS_BYTES:
        raise ValueError(f"it is larger than {MAX_STATUS_BYTES} bytes")
    if not data.strip():
        raise ValueError("it is empty")
    try:
        return InvalidatorStatus.parse(json.loads(data))
    except RecursionError:
        raise ValueError("its JSON is nested too deeply") from None


def _read(path: Path, node: str) -> InvalidatorStatus | None:
    """The status in *path*; None when there is none; when it cannot be read, a status of
    *node* whose :meth:`~InvalidatorStatus.problem` says why (logged once per reason)."""
    try:
        return _load(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        why = why[:200]
        if (str(path), why) not in _logged:
            if len(_logged) > 1024:
                _logged.clear()
            _logged.add((str(path), why))
            log.warning("invalidator status file %s is unreadable: %s", path, why)
        return InvalidatorStatus(
            node=node, connected=False, pid=0,
            unreadable=(f"its status file {path} is unreadable ({why}): a running tenantkit "
                        f"invalidator rewrites it every {INTERVAL:g} s (start one on this "
                        "node, or remove the file if none should run)"))


def read_status(cache_dir: str | os.PathLike[str], node: str) -> InvalidatorStatus | None:
    """*node*'s last report; None when it has none; an unreadable file is a status whose
    :meth:`~InvalidatorStatus.problem` says so."""
    return _read(status_file(cache_dir, node), node)


def read_statuses(cache_dir: str | os.PathLike[str]) -> list[InvalidatorStatus]:
    """Every node's last report under ``cache_dir`` (the first :data:`MAX_NODES` files); an
    unreadable file is a status named after the file whose problem says why."""
    directory = layout.invalidator_status(cache_dir)
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("invalidator status directory %s cannot be listed: %s", directory, exc)
        return []
    if len(names) > MAX_NODES and (str(directory), "many") not in _logged:
        _logged.add((str(directory), "many"))
        log.warning("invalidator status directory %s holds %d files: only the first %d are "
                    "read (remove the files of nodes that are gone)", directory, len(names),
                    MAX_NODES)
        names = names[:MAX_NODES]
    out = []
    for name in names:
        status = _read(Path(directory, name), name[:-len(".json")] or "_")
        if status is not None:
            out.append(status)
    return out
