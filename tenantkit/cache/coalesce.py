"""Purges of one site that arrive close together become one purge.

The node's invalidator hands every purge it is asked for (a bus event, a trigger file, a
flush after a gap, the replica-safe second purge) to a :class:`Coalescer`; what arrives for
the same site within ``window`` seconds of the first is merged, and carried out once when
the window closes::

    coalescer = Coalescer(window=0.25)
    coalescer.add("blog", PurgeAction(tags=("post:1",)), done=ack_one)
    coalescer.add("blog", PurgeAction(tags=("post:2",)), done=ack_two)
    for merged in coalescer.take_due():        # after 0.25 s
        merged.actions()    # [PurgeAction(tags=("post:1", "post:2"))]
        merged.requests     # both: acknowledge each once the merged purge is done

A flush subsumes everything else for its site; tags are united; paths are kept per host (a
path of every host, ``host=None``, covers the same path of any one host). ``window = 0``
merges nothing: every request is carried out on its own, at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tenantkit.cache.events import Event, PurgeAction

__all__ = ["Coalescer", "Merged", "Request"]

#: Called once the request's purge was carried out (``None``) or failed (the exception).
Done = Callable[[BaseException | None], None]


@dataclass
class Request:
    """One purge asked for: what, for which event (None: a flush or a second purge), and
    whom to tell when it was carried out."""

    site: str
    action: PurgeAction
    event: Event | None = None
    done: Done | None = None


@dataclass
class Merged:
    """The requests of one site merged into one purge, due at ``due`` (monotonic)."""

    site: str
    due: float
    requests: list[Request] = field(default_factory=list)
    flush: bool = False
    tags: dict[str, None] = field(default_factory=dict)
    #: host (None: every host) -> paths, in arrival order
    paths: dict[str | None, dict[str, None]] = field(default_factory=dict)

    def add(self, request: Request) -> None:
        self.requests.append(request)
        action = request.action
        if self.flush:
            return
        if action.flush:
            self.flush = True
            self.tags.clear()
            self.paths.clear()
            return
        self.tags.update(dict.fromkeys(action.tags))
        if action.paths:
            self.paths.setdefault(action.host, {}).update(dict.fromkeys(action.paths))

    def actions(self) -> list[PurgeAction]:
        """The purge to carry out: one action per host its paths name (the tags with the
        first), or one flush."""
        if self.flush:
            return [PurgeAction(flush=True)]
        every = self.paths.get(None, {})
        groups = [(host, tuple(p for p in paths if host is None or p not in every))
                  for host, paths in self.paths.items()]
        groups = [(host, paths) for host, paths in groups if paths]
        if not groups:
            return [PurgeAction(tags=tuple(self.tags))] if self.tags else []
        out = [PurgeAction(paths=paths, host=host) for host, paths in groups]
        out[0] = PurgeAction(tags=tuple(self.tags), paths=out[0].paths, host=out[0].host)
        return out

    @property
    def event(self) -> Event | None:
        """The event merged, when exactly one of the requests came with one."""
        events = [r.event for r in self.requests if r.event is not None]
        return events[0] if len(events) == 1 else None


class Coalescer:
    """Merges the purges of each site asked for within ``window`` seconds (thread-safe)."""

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._pending: list[Merged] = []
        self._cond = threading.Condition()
        self._woken = False

    def add(self, site: str, action: PurgeAction, *, event: Event | None = None,
            done: Done | None = None) -> None:
        """Ask for ``action`` on ``site``: merged into the site's open window, or opening
        one."""
        request = Request(site, action, event, done)
        with self._cond:
            if self.window > 0:
                for merged in self._pending:
                    if merged.site == site:
                        merged.add(request)
                        return
            merged = Merged(site, self.clock() + self.window)
            merged.add(request)
            self._pending.append(merged)
            self._woken = True
            self._cond.notify_all()

    def take_due(self, *, everything: bool = False) -> list[Merged]:
        """The merged purges whose window has closed (with ``everything``: all of them),
        oldest first (removed)."""
        now = float("inf") if everything else self.clock()
        with self._cond:
            due = [m for m in self._pending if m.due <= now]
            if due:
                self._pending = [m for m in self._pending if m.due > now]
            return due

    def next_due(self) -> float | None:
        """When the next window closes (monotonic), None when nothing waits."""
        with self._cond:
            return min((m.due for m in self._pending), default=None)

    def wait(self, timeout: float) -> None:
        """Sleep until a window closes, a new one opens or :meth:`wake` is called (also
        just before), at most ``timeout`` seconds."""
        with self._cond:
            until = min((m.due for m in self._pending), default=None)
            if until is not None:
                timeout = min(timeout, until - self.clock())
            if timeout > 0 and not self._woken:
                self._cond.wait(timeout)
            self._woken = False

    def wake(self) -> None:
        """End the current (or the next) :meth:`wait` now."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(m.requests) for m in self._pending)
