"""Replica health, measured off the request path.

The :class:`~tenantkit.db.router.Router` owns one :class:`ReplicaHealth`; it can be used on
its own too::

    health = ReplicaHealth(["mysql+pymysql://app:pw@127.0.0.1/app"], lag_threshold=5.0,
                           dead_host_cooldown=10.0, interval=1.0)
    health.start()                 # a daemon thread probes every replica every `interval`
    if health.usable(0): ...       # the request path only reads the last verdict
    health.mark_down(0, "connection refused")   # a request saw the replica fail
    health.close()                 # stops the thread, disposes the probe engines

A probe opens a short-lived connection (``connect_timeout``, ``read_timeout``) and reads
``SHOW REPLICA STATUS`` (MariaDB >= 10.5.1, MySQL >= 8.0.22; MySQL 8.4 has only this one),
falling back to ``SHOW SLAVE STATUS`` on a server that does not know it (remembered per
replica); MySQL's ``Replica_*``/``*_Source`` columns are read as their ``Slave_*``/
``*_Master`` names. A replica whose IO or SQL thread is not running, or whose
``Seconds_Behind_Master`` is NULL, is *stopped* (but one whose IO thread is only
*Connecting*, because the primary is down, stays usable: it is the freshest copy there is);
one behind by more than ``lag_threshold`` seconds is *lagging*; one that cannot be reached
is *down*. With ``heartbeat_table`` set (pt-heartbeat style: a ``ts`` column the primary
updates every second, in UTC), lag is ``UTC_TIMESTAMP(6) - MAX(ts)`` read on the replica
instead. Servers that are not MySQL or
MariaDB are only checked for connectivity.

A replica in any bad state is skipped until ``dead_host_cooldown`` seconds after it was last
seen bad; after that it is usable again as soon as a probe finds it well (so recovery shows
within the cooldown plus one probe interval). :meth:`ReplicaHealth.check` runs one probe
synchronously (tests, ``tenantkit check``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tenantkit.config import mask_url
from tenantkit.db.failures import error_code
from tenantkit.db.servers import connect_args

__all__ = ["STATUS_STATEMENTS", "ReplicaHealth", "ReplicaState", "Status", "replica_row"]

logger = logging.getLogger(__name__)

Status = Literal["ok", "lagging", "stopped", "down", "unknown"]
_TABLE_NAME = re.compile(r"[A-Za-z0-9_$]{1,64}(\.[A-Za-z0-9_$]{1,64})?")
_CONFIRMED_MAX = 256
_NO_PRIVILEGE = frozenset({1227, 1142, 1044})
_SYNTAX_ERROR = 1064
#: The replica-status statements, newest first (a server that rejects one gets the next).
STATUS_STATEMENTS = ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS")
# MySQL >= 8.0.22 names in SHOW REPLICA STATUS -> the names the verdict reads.
_MYSQL_COLUMNS = {"Replica_IO_Running": "Slave_IO_Running",
                  "Replica_SQL_Running": "Slave_SQL_Running",
                  "Seconds_Behind_Source": "Seconds_Behind_Master"}


def replica_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A replica-status row with MySQL's new column names read as the classic ones."""
    out = dict(row)
    for new, old in _MYSQL_COLUMNS.items():
        if new in out and old not in out:
            out[old] = out[new]
    return out


@dataclass(frozen=True)
class ReplicaState:
    """The last verdict on one replica. ``retry_at`` is on the ``time.monotonic`` clock."""

    name: str
    status: Status
    lag: float | None
    checked_at: float
    retry_at: float
    error: str | None = None


def masked(url: URL | str) -> str:
    """A URL for logs: the password replaced by ``********``."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    return mask_url(url)


class ReplicaHealth:
    """Lag and reachability of each replica, refreshed by a background thread."""

    def __init__(
        self,
        replicas: Sequence[str | URL | Engine],
        *,
        lag_threshold: float = 5.0,
        dead_host_cooldown: float = 10.0,
        interval: float = 1.0,
        connect_timeout: float = 2.0,
        heartbeat_table: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if heartbeat_table is not None and not _TABLE_NAME.fullmatch(heartbeat_table):
            raise ValueError(
                f"heartbeat_table {heartbeat_table!r}: expected a table name such as "
                '"heartbeat" or "percona.heartbeat" (letters, digits, _ and $)'
            )
        self.lag_threshold = lag_threshold
        self.dead_host_cooldown = dead_host_cooldown
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.heartbeat_table = heartbeat_table
        self._clock = clock
        self._urls = [r.url if isinstance(r, Engine) else make_url(r) for r in replicas]
        self.names = [masked(u) for u in self._urls]
        self._engines: list[Engine | None] = [None] * len(self._urls)
        self._status_sql = [0] * len(self._urls)  # index into STATUS_STATEMENTS
        now = clock()
        self._states = [ReplicaState(n, "unknown", None, now, 0.0) for n in self.names]
        self._confirmed: list[OrderedDict[str, None]] = [OrderedDict() for _ in self._urls]
        self._missed: list[OrderedDict[str, float]] = [OrderedDict() for _ in self._urls]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the request path: cheap reads of the last verdict --------------------------------

    def usable(self, index: int) -> bool:
        """May a read go to replica *index* now?"""
        # Bad verdicts push retry_at a cooldown ahead (the probe keeps pushing while the replica
        # stays bad); once it has passed, the replica is tried again.
        return self._states[index].retry_at <= self._clock()

    def state(self, index: int) -> ReplicaState:
        return self._states[index]

    def states(self) -> list[ReplicaState]:
        return list(self._states)

    def mark_down(self, index: int, error: str, status: Status = "down") -> None:
        """Skip replica *index* for ``dead_host_cooldown`` seconds (a request saw it fail)."""
        now = self._clock()
        with self._lock:
            old = self._states[index]
            self._states[index] = ReplicaState(
                old.name, status, old.lag, now, now + self.dead_host_cooldown, error
            )
        logger.warning("replica %s marked %s for %gs: %s", old.name, status,
                       self.dead_host_cooldown, error)

    def confirmed(self, index: int, gtid: str) -> bool:
        """Has replica *index* already been seen to have applied *gtid*?"""
        return gtid in self._confirmed[index]

    def missed(self, index: int, gtid: str) -> None:
        """A wait for *gtid* on replica *index* just timed out."""
        with self._lock:
            misses = self._missed[index]
            misses[gtid] = self._clock()
            if len(misses) > _CONFIRMED_MAX:
                misses.popitem(last=False)

    def recently_missed(self, index: int, gtid: str, within: float) -> bool:
        """Did a wait for *gtid* on replica *index* time out less than *within* seconds ago?
        (Then the next read goes to the primary at once instead of waiting again.)"""
        when = self._missed[index].get(gtid)
        return when is not None and self._clock() - when < within

    def confirm(self, index: int, gtid: str) -> None:
        with self._lock:
            seen = self._confirmed[index]
            seen[gtid] = None
            if len(seen) > _CONFIRMED_MAX:
                seen.popitem(last=False)

    # --- probes --------------------------------------------------------------------------

    def _engine(self, index: int) -> Engine:
        engine = self._engines[index]
        if engine is None:
            url = self._urls[index]
            args: dict[str, Any] = connect_args(url, self.connect_timeout)
            if args:
                args["read_timeout"] = args["connect_timeout"] * 2
            engine = create_engine(url, poolclass=NullPool, connect_args=args)
            self._engines[index] = engine
        return engine

    def _measure(self, index: int) -> tuple[Status, float | None, str | None]:
        engine = self._engine(index)
        try:
            with engine.connect() as conn:
                if engine.dialect.name not in ("mysql", "mariadb"):
                    conn.execute(text("SELECT 1"))
                    return "ok", None, None
                if self.heartbeat_table is not None:
                    value = conn.execute(
                        text(f"SELECT MAX(ts), UTC_TIMESTAMP(6) FROM {self.heartbeat_table}")
                    ).one()
                    return self._heartbeat_verdict(value[0], value[1])
                try:
                    row = self._replica_status(conn, index)
                except DBAPIError as exc:
                    if error_code(exc) not in _NO_PRIVILEGE:
                        raise
                    # Reachable but not allowed to look: usable, lag unknown.
                    return "ok", None, (
                        "cannot read the replica status (grant the user SLAVE MONITOR on "
                        "MariaDB or REPLICATION CLIENT on MySQL, or set heartbeat_table); "
                        "lag is not measured"
                    )
        except Exception as exc:
            return "down", None, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if row is None:
            return "stopped", None, "not replicating (the replica status is empty)"
        io, sql = row.get("Slave_IO_Running"), row.get("Slave_SQL_Running")
        if sql == "Yes" and io == "Connecting":
            # The primary is unreachable: the replica has applied all it could get, and is
            # the best copy there is while the primary is down.
            return "ok", None, "primary unreachable from the replica (IO thread connecting)"
        if io != "Yes" or sql != "Yes":
            return "stopped", None, (
                f"replication stopped (IO {io}, SQL {sql}): "
                f"{row.get('Last_Error') or 'no error'}"
            )
        lag = row.get("Seconds_Behind_Master")
        if lag is None:
            return "stopped", None, "Seconds_Behind_Master is NULL"
        return self._lag_verdict(float(lag))

    def _replica_status(self, conn: Any, index: int) -> dict[str, Any] | None:
        """The replica-status row: SHOW REPLICA STATUS, else SHOW SLAVE STATUS."""
        while True:
            statement = STATUS_STATEMENTS[self._status_sql[index]]
            try:
                row = conn.execute(text(statement)).mappings().first()
            except DBAPIError as exc:
                last = self._status_sql[index] + 1 >= len(STATUS_STATEMENTS)
                if error_code(exc) != _SYNTAX_ERROR or last:
                    raise
                self._status_sql[index] += 1  # an older server: use the older statement
                logger.info("replica %s does not know %s: using %s", self.names[index],
                            statement, STATUS_STATEMENTS[self._status_sql[index]])
                continue
            return replica_row(row) if row is not None else None

    def _heartbeat_verdict(self, ts: Any, now: Any) -> tuple[Status, float | None, str | None]:
        if ts is None:
            return "stopped", None, f"heartbeat table {self.heartbeat_table} is empty"
        try:
            if not isinstance(ts, dt.datetime):
                ts = dt.datetime.fromisoformat(str(ts).replace("T", " "))
            if not isinstance(now, dt.datetime):
                now = dt.datetime.fromisoformat(str(now))
        except ValueError:
            return "stopped", None, f"heartbeat ts {ts!r} is not a timestamp"
        return self._lag_verdict(max(0.0, (now - ts.replace(tzinfo=None)).total_seconds()))

    def _lag_verdict(self, lag: float) -> tuple[Status, float | None, str | None]:
        if lag > self.lag_threshold:
            return "lagging", lag, f"{lag:g}s behind (threshold {self.lag_threshold:g}s)"
        return "ok", lag, None

    def check(self, index: int) -> ReplicaState:
        """Probe replica *index* now and record the verdict."""
        status, lag, error = self._measure(index)
        now = self._clock()
        with self._lock:
            old = self._states[index]
            retry_at = old.retry_at
            if status != "ok":
                retry_at = now + self.dead_host_cooldown
            new = ReplicaState(old.name, status, lag, now, retry_at, error)
            self._states[index] = new
        if status != old.status or (error and error != old.error):
            log = logger.info if status == "ok" and not error else logger.warning
            log("replica %s: %s -> %s%s", old.name, old.status, status,
                f" ({error})" if error else "")
        return new

    def check_all(self) -> list[ReplicaState]:
        return [self.check(i) for i in range(len(self._urls))]

    # --- the background thread ------------------------------------------------------------

    def start(self) -> None:
        """Start the probing thread (idempotent; nothing to do without replicas)."""
        if self._thread is not None or not self._urls:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tenantkit-replica-health",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for index in range(len(self._urls)):
                if self._stop.is_set():
                    return
                try:
                    self.check(index)
                except Exception:  # never let the monitor die
                    logger.exception("replica %s: health probe failed", self.names[index])
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        """Stop the thread and dispose the probe engines."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.connect_timeout * 4 + 5)
        for engine in self._engines:
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.dispose()
        self._engines = [None] * len(self._urls)
