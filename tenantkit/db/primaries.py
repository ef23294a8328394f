"""Which primary candidate takes writes now: found off the request path, never two.

A site (or ``[database]``) may list ``primaries = [url, url, ...]``; the writable one is the
candidate with ``@@read_only = 0``. The :class:`~tenantkit.db.router.Router` owns one
:class:`PrimaryFinder`; it can be used on its own too::

    finder = PrimaryFinder(["mysql+pymysql://app:pw@db1/app", "mysql+pymysql://app:pw@db2/app"],
                           connect_timeout=2.0, interval=2.0)
    finder.start()               # probes now, then every `interval` seconds in a thread
    index = finder.writable()    # the request path: the last verdict (SplitBrain or
                                 # PrimaryUnavailable when there is not exactly one)
    finder.suspect()             # a write failed (connection lost): the thread probes at once
    finder.recheck(failed_at)    # a write was refused as read-only: probe now, on this thread
    finder.state()               # PrimaryState: primary, writable, changed_at, error
    finder.close()

The rules:

- exactly one candidate writable: it is the primary;
- none writable (the primary died, the replica is not promoted yet): writes fail with
  :class:`~tenantkit.errors.PrimaryUnavailable` and the candidates are probed every
  ``outage_interval`` seconds until one is;
- more than one writable: :class:`~tenantkit.errors.SplitBrain`, naming them; writes are
  refused until exactly one is (tenantkit never guesses, and never promotes anything);
- one candidate configured: it is the primary, never probed (today's behaviour exactly).

Each change of verdict is logged once (not once per request). The first call of
:meth:`PrimaryFinder.writable` before any probe probes synchronously (the "on connect" check).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from tenantkit.config import mask_url
from tenantkit.db.servers import connect_args
from tenantkit.errors import PrimaryUnavailable, SplitBrain

__all__ = ["READ_ONLY_ERRORS", "PrimaryFinder", "PrimaryState"]

logger = logging.getLogger(__name__)

#: Server errors that mean "this server is read-only now": 1290 (ER_OPTION_PREVENTS_STATEMENT,
#: --read-only) and 1836 (ER_READ_ONLY_MODE).
READ_ONLY_ERRORS = frozenset({1290, 1836})


@dataclass(frozen=True)
class PrimaryState:
    """The last verdict. ``primary`` is the masked name of the one writable candidate (else
    None); ``writable`` names every writable one; ``changed_at`` (``time.time()``) is when the
    verdict last changed; ``errors`` maps a masked candidate name to why it is not writable."""

    primary: str | None
    index: int | None
    writable: tuple[str, ...]
    checked_at: float
    changed_at: float
    errors: dict[str, str] = field(default_factory=dict)
    known: bool = True

    @property
    def split_brain(self) -> bool:
        return len(self.writable) > 1

    def as_dict(self) -> dict[str, Any]:
        """For health reports and ``--json``."""
        return {"primary": self.primary, "writable": list(self.writable),
                "split_brain": self.split_brain, "changed_at": self.changed_at,
                "checked_at": self.checked_at, "errors": dict(self.errors)}


def _name(source: str | URL | Engine) -> str:
    url = source.url if isinstance(source, Engine) else make_url(source)
    return mask_url(url.render_as_string(hide_password=False))


class PrimaryFinder:
    """Finds the one writable candidate; see the module docstring."""

    def __init__(self, candidates: Sequence[str | URL | Engine], *,
                 connect_timeout: float = 2.0, interval: float = 2.0,
                 outage_interval: float = 0.2) -> None:
        if not candidates:
            raise ValueError("at least one primary candidate is needed")
        self._sources = list(candidates)
        self.names = [_name(c) for c in candidates]
        self.connect_timeout = connect_timeout
        self.interval = interval
        self.outage_interval = outage_interval
        self._engines: list[Engine | None] = [None] * len(candidates)
        now = time.time()
        single = len(candidates) == 1
        self._state = PrimaryState(self.names[0] if single else None, 0 if single else None,
                                   (self.names[0],) if single else (), now, now,
                                   known=single)
        self._lock = threading.Lock()  # one probe at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def single(self) -> bool:
        """One candidate: never probed, always the primary."""
        return len(self._sources) == 1

    # --- the request path ----------------------------------------------------------------

    def state(self) -> PrimaryState:
        return self._state

    def writable(self) -> int:
        """The index of the one writable candidate, from the last verdict (probing now if
        there has been none yet). Raises :class:`SplitBrain` or :class:`PrimaryUnavailable`."""
        state = self._state
        if not state.known:
            state = self.check()
        if state.index is not None:
            return state.index
        if state.split_brain:
            error = SplitBrain(self._split_brain_message(state))
            error.servers = state.writable
            raise error
        reasons = "; ".join(f"{n}: {e}" for n, e in state.errors.items()) or "none checked"
        raise PrimaryUnavailable(
            f"no primary candidate is writable ({reasons}); writes stop until one is "
            "(promote a replica: SET GLOBAL read_only = 0); reads still go to the replicas"
        )

    def suspect(self) -> None:
        """A write failed on the primary (connection lost): the thread probes at once."""
        if not self.single:
            self._wake.set()

    def recheck(self, failed_at: float) -> PrimaryState:
        """The primary refused a write as read-only at *failed_at* (``time.time()``): probe
        now, on this thread (once for every request that failed at about the same time), so
        that the next write goes to the new primary."""
        return self.check(newer_than=failed_at)

    # --- probes --------------------------------------------------------------------------

    def _engine(self, index: int) -> Engine:
        source = self._sources[index]
        if isinstance(source, Engine):
            return source
        engine = self._engines[index]
        if engine is None:
            url = make_url(source)
            args = connect_args(url, self.connect_timeout, read_timeout=self.connect_timeout,
                                write_timeout=self.connect_timeout)
            engine = create_engine(url, poolclass=NullPool, connect_args=args)
            self._engines[index] = engine
        return engine

    def _probe(self, index: int) -> str | None:
        """None when candidate *index* takes writes, else why not."""
        engine = self._engine(index)
        try:
            with engine.connect() as conn:
                if engine.dialect.name not in ("mysql", "mariadb"):
                    conn.execute(text("SELECT 1"))
                    return None
                read_only = conn.execute(text("SELECT @@GLOBAL.read_only")).scalar()
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        return "read-only" if int(read_only or 0) else None

    def check(self, *, newer_than: float | None = None) -> PrimaryState:
        """Probe every candidate now and record the verdict (logged when it changes). With
        *newer_than* (a ``time.time()``), a verdict from a probe that started after it is
        kept instead: many requests that failed at once probe once."""
        if self.single:
            return self._state
        with self._lock:
            old = self._state
            if newer_than is not None and old.known and old.checked_at >= newer_than:
                return old
            started = time.time()
            errors: dict[str, str] = {}
            writable: list[int] = []
            for position, name in enumerate(self.names):
                error = self._probe(position)
                if error is None:
                    writable.append(position)
                else:
                    errors[name] = error
            index = writable[0] if len(writable) == 1 else None
            names = tuple(self.names[i] for i in writable)
            changed = not old.known or names != old.writable
            new = PrimaryState(self.names[index] if index is not None else None, index, names,
                               started, time.time() if changed else old.changed_at, errors)
            if changed:  # logged before it is seen: whoever sees the change has its line
                self._log_change(new)
            self._state = new
        return new

    def _log_change(self, new: PrimaryState) -> None:
        if new.index is not None:
            logger.warning("primary is now %s (the one writable candidate of %d)",
                           new.primary, len(self.names))
        elif new.split_brain:
            logger.error("%s", self._split_brain_message(new))
        else:
            logger.error("no primary candidate is writable: writes stop until one is (%s)",
                         "; ".join(f"{n}: {e}" for n, e in new.errors.items()))

    @staticmethod
    def _split_brain_message(state: PrimaryState) -> str:
        return (f"split brain: {' and '.join(state.writable)} are all writable "
                "(@@read_only = 0); writes are refused until exactly one is (set the "
                "others read-only: SET GLOBAL read_only = 1); reads still go to the replicas")

    # --- the background thread -------------------------------------------------------------

    def start(self) -> None:
        """Start probing in a daemon thread (nothing to do with one candidate)."""
        if self.single or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tenantkit-primary-finder",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                state = self.check()
            except Exception:  # never let the finder die
                logger.exception("primary probe failed")
                state = self._state
            wait = self.interval if state.index is not None else self.outage_interval
            self._wake.wait(wait)
            self._wake.clear()
            self._stop.wait(0.02)  # many failing requests suspecting at once: one probe

    def close(self) -> None:
        """Stop the thread and dispose the probe engines."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.connect_timeout * 3 * len(self._sources) + 5)
        for engine in self._engines:
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.dispose()
        self._engines = [None] * len(self._sources)
