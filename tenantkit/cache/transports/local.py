"""``[bus] transport = "local"``: in-process queues, the embedded default.

Every Invalidator of this process on the same ``cache_dir`` gets every event; with none
running, an event becomes a trigger file (:mod:`~tenantkit.cache.transports.files`), so an
``invalidator`` process on the same host sees it::

    transport = LocalTransport(settings.cache_dir)
    transport.publish(CommentPosted("blog", 42, True))
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

from tenantkit.cache.events import Event
from tenantkit.cache.transports.base import Consumer, Message
from tenantkit.cache.transports.files import TriggerFileTransport

__all__ = ["LocalTransport"]


class _Hub:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, list[queue.Queue[Event]]] = {}


_HUB = _Hub()


class LocalTransport:
    """In-process delivery to every Invalidator of this process with the same ``cache_dir``;
    with none running, the event becomes a trigger file (see :class:`TriggerFileTransport`)."""

    name = "local"

    def __init__(self, cache_dir: Path) -> None:
        self.scope = str(Path(cache_dir).resolve())
        self.files = TriggerFileTransport(cache_dir)

    def publish(self, event: Event) -> None:
        with _HUB.lock:
            targets = list(_HUB.queues.get(self.scope, ()))
        for target in targets:
            target.put(event)
        if not targets:
            self.files.publish(event)

    def consumer(self, node: str) -> Consumer:
        return _LocalConsumer(self.scope)

    def close(self) -> None:
        pass


class _LocalConsumer:
    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.queue: queue.Queue[Event] = queue.Queue()
        with _HUB.lock:
            _HUB.queues.setdefault(scope, []).append(self.queue)

    def poll(self, timeout: float) -> list[Message]:
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        events = [first]
        with contextlib.suppress(queue.Empty):
            while len(events) < 100:
                events.append(self.queue.get_nowait())
        return [Message(event=e) for e in events]

    def close(self) -> None:
        with _HUB.lock:
            queues = _HUB.queues.get(self.scope, [])
            if self.queue in queues:
                queues.remove(self.queue)
