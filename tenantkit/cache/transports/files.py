"""``[bus] transport = "files"``: trigger files, ``cache_dir/<site>/.purge/*.json``.

Every Invalidator watches these whatever the transport (watchdog, plus a periodic scan), so
a PHP app with nothing else can drop one in; the local transport writes one when no
Invalidator runs in the process, and a failed Redis publish falls back to one::

    TriggerFileTransport(settings.cache_dir).publish(Purge("blog", all=True))
    event = read_trigger_file(path)
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from tenantkit import layout
from tenantkit.cache.events import MAX_EVENT_BYTES, Event, from_json, to_json
from tenantkit.cache.transports.base import Consumer, Message
from tenantkit.errors import BusError
from tenantkit.files import write_atomic

__all__ = ["TriggerFileTransport", "read_trigger_file"]


class TriggerFileTransport:
    """Writes each event as ``cache_dir/<site>/.purge/<id>.json`` (temporary name, then a
    rename, so a watcher never reads half a file). Consumed by every Invalidator's watcher."""

    name = "files"

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def publish(self, event: Event) -> None:
        directory = layout.purge_dir(layout.site_root(self.cache_dir, event.site))
        safe_id = re.sub(r"[^A-Za-z0-9_-]", "", event.id)[:32]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(directory / f"{time.time_ns()}-{safe_id}.json",
                         to_json(event).encode())
        except OSError as exc:
            raise BusError(f"cannot write a trigger file in {directory}: {exc.strerror} "
                           "(check that cache_dir is writable)") from exc

    def consumer(self, node: str) -> Consumer:
        return _NullConsumer()

    def close(self) -> None:
        pass


class _NullConsumer:
    """The watcher does the work for trigger files; this only paces the loop."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def poll(self, timeout: float) -> list[Message]:
        self._stop.wait(timeout)
        return []

    def close(self) -> None:
        self._stop.set()


def read_trigger_file(path: Path) -> Event:
    """Read one trigger file; :class:`MalformedEvent` when it is not a valid event."""
    with open(path, "rb") as f:
        raw = f.read(MAX_EVENT_BYTES + 1)
    return from_json(raw)
