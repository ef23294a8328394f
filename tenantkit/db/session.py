"""The routing DB-API connection that SQLAlchemy sees behind a Router.

SQLAlchemy's pool holds :class:`RoutingConnection` objects (the Router's routing Engine
creates them). Each holds up to two real connections, "legs" (:class:`Leg`), checked out of
the primary's and one replica's Engine, and routes every ``cursor.execute`` to one of them on
its SQL text; the :class:`~tenantkit.db.cursor.RoutingCursor` reads results from that leg.
The rules are the Router's module docstring; this module keeps the state of one connection:
the open legs, whether the transaction is pinned to the primary or wrote there, the session
state to carry to every leg (settings, ``USE``), what must stay on the primary (temporary
tables, a read-only transaction's promise), and autocommit.

Session state (what :func:`~tenantkit.db.effects.effect` finds in a statement):

- a session ``SET`` and ``USE`` run on every open leg and, once they have succeeded, are kept
  for legs opened later, in the order of their last use; a later ``SET`` of the same
  variables replaces an earlier one. A ``SET`` that failed is not kept; one that succeeded on
  a leg and failed on another closes the first (it reopens with the kept state). A leg whose
  connection the server closed is reopened, the state replayed, without an error.
- ``SET TRANSACTION`` (the next transaction only) reaches the legs of that transaction only.
- after ``CREATE TEMPORARY TABLE`` every statement goes to the primary until the tables are
  dropped or the primary connection is lost.
- inside ``START TRANSACTION READ ONLY`` a write first starts the same read-only transaction
  on the primary, so that the server refuses it (error 1792) as it would on one connection.
- a leg that carries session state is closed, not handed back to its server's pool, when
  this connection lets it go: no other connection inherits its settings or tables.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Dialect

from tenantkit.db.classify import statement_role
from tenantkit.db.cursor import RoutingCursor
from tenantkit.db.effects import Effect, effect
from tenantkit.db.failures import (
    NOT_SENT,
    describe,
    error_code,
    is_connection_error,
    socket_closed,
    timed_out,
)
from tenantkit.db.gtid import last_gtid_dbapi, wait_for_gtid_dbapi
from tenantkit.db.primaries import READ_ONLY_ERRORS
from tenantkit.errors import PrimaryUnavailable

if TYPE_CHECKING:
    from tenantkit.db.router import Router, _Server

__all__ = ["Leg", "RoutingConnection"]

logger = logging.getLogger(__name__)

_TX_CONTROL = re.compile(r"\s*(COMMIT|ROLLBACK)(?:\s+WORK)?\s*;?\s*\Z", re.IGNORECASE)


class Leg:
    """A checked-out connection of one server."""

    __slots__ = ("dbapi", "dialect", "fairy", "index", "server", "used")

    def __init__(self, fairy: Any, index: int, dialect: Dialect,
                 server: object = None) -> None:
        self.server = server  # the _Server it belongs to (which candidate, for a primary)
        self.fairy = fairy
        self.dbapi = fairy.dbapi_connection
        self.dialect = dialect  # its server's, to tell a dead connection from a bad statement
        self.index = index  # -1: the primary; else the replica's position
        self.used = False  # ran a statement in the current transaction


class _Setting:
    """A kept session statement: replayed, with its parameters, on every new leg."""

    __slots__ = ("dependent", "names", "parameters", "statement")

    def __init__(self, statement: str, parameters: Any, found: Effect) -> None:
        self.statement = statement
        self.parameters = parameters
        self.names = found.names
        self.dependent = found.dependent


class RoutingConnection:
    """The DB-API connection SQLAlchemy sees; routes each cursor's statements to a leg."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._primary: Leg | None = None
        self._replica: Leg | None = None
        self._settings: list[_Setting] = []  # session SETs and USE, in order of last use
        self._next_tx: list[tuple[str, Any]] = []  # SET TRANSACTION: this transaction's legs
        self._temporary: set[str] = set()  # temporary tables on the primary leg
        self._read_only: str | None = None  # the START TRANSACTION READ ONLY in force
        self._explicit = False  # a BEGIN under autocommit: the transaction goes on
        self._autocommit: bool | None = None
        self._pinned = False  # the rest of this transaction goes to the primary
        self._wrote = False  # a write ran on the primary in this transaction

    # --- DB-API surface ---

    def cursor(self, *args: Any, **kwargs: Any) -> RoutingCursor:
        return RoutingCursor(self, args, kwargs)

    def commit(self) -> None:
        primary, replica = self._primary, self._replica
        try:
            if primary is not None and primary.used:
                try:
                    primary.dbapi.commit()
                except Exception as exc:
                    # The unit of work failed: its reads' snapshot must not outlive it.
                    self._end_replica_transaction()
                    if is_connection_error(exc, primary.dialect):
                        self._drop("primary", invalidate=True)
                        raise self._router._primary_down(exc) from exc
                    raise
                if self._wrote:
                    self._after_write_commit(primary)
            if replica is not None and replica.used:
                try:
                    replica.dbapi.commit()
                except Exception as exc:
                    if not is_connection_error(exc, replica.dialect):
                        raise
                    self._drop("replica", invalidate=True)
        finally:
            self._end_transaction()

    def rollback(self) -> None:
        try:
            for which in ("primary", "replica"):
                leg = self._primary if which == "primary" else self._replica
                if leg is not None and leg.used:
                    try:
                        leg.dbapi.rollback()
                    except Exception as exc:
                        if not is_connection_error(exc, leg.dialect):
                            raise
                        self._drop(which, invalidate=True)
        finally:
            self._end_transaction()

    def close(self) -> None:
        self._drop("primary", invalidate=False)
        self._drop("replica", invalidate=False)

    def select_db(self, db: str) -> None:
        """The DB-API extension (PyMySQL, mysqlclient): ``USE db`` on every leg."""
        sql = "USE `" + db.replace("`", "``") + "`"
        self.execute(RoutingCursor(self, (), {}), "execute", sql, None)

    def _end_replica_transaction(self) -> None:
        replica = self._replica
        if replica is None or not replica.used:
            return
        try:
            replica.dbapi.rollback()
        except Exception:
            self._drop("replica", invalidate=True)

    def autocommit(self, value: bool) -> None:
        self._autocommit = bool(value)
        for leg in (self._primary, self._replica):
            if leg is not None:
                leg.dbapi.autocommit(self._autocommit)

    def get_autocommit(self) -> bool:
        return bool(self._autocommit)

    def ping(self, *args: Any) -> None:
        for leg in (self._primary, self._replica):
            if leg is not None:
                leg.dbapi.ping(*args)

    def __getattr__(self, name: str) -> Any:
        # Driver specifics the dialect asks for (get_server_info, character_set_name, ...):
        # from any open leg, else a read leg.
        leg = self._primary or self._replica or self._read_leg_for_info()
        return getattr(leg.dbapi, name)

    # --- routing ---

    def pin_primary(self) -> None:
        self._pinned = True

    def _end_transaction(self) -> None:
        self._pinned = False
        self._wrote = False
        self._read_only = None
        self._explicit = False
        self._next_tx.clear()
        for leg in (self._primary, self._replica):
            if leg is not None:
                leg.used = False

    def _after_write_commit(self, primary: Leg) -> None:
        router = self._router
        gtid = None
        if router._primary.mysql:
            try:
                gtid = last_gtid_dbapi(primary.dbapi, mariadb=router._primary.mariadb)
            except Exception as exc:  # the commit is done; a missing GTID means pinning
                logger.warning("could not read the commit's GTID on the primary: %s",
                               describe(exc))
        router._produced(gtid)

    def _drop(self, which: str, *, invalidate: bool) -> None:
        leg = self._primary if which == "primary" else self._replica
        if leg is None:
            return
        if which == "primary":
            self._primary = None
            self._temporary.clear()  # they lived on that connection
        else:
            self._replica = None
        # A connection with session state is not handed back to its server's pool, where
        # another routing connection would inherit it.
        invalidate = invalidate or bool(self._settings or self._next_tx) or (
            which == "primary" and bool(self._temporary))
        with contextlib.suppress(Exception):
            if invalidate:
                leg.fairy.invalidate()
            else:
                leg.fairy.close()

    def _open(self, server: _Server, index: int) -> Leg:
        fairy = server.engine.raw_connection()
        leg = Leg(fairy, index, server.engine.dialect, server)
        try:
            if self._autocommit is not None:
                leg.dbapi.autocommit(self._autocommit)
            if self._settings or self._next_tx:
                cursor = leg.dbapi.cursor()
                try:
                    for setting in self._settings:
                        cursor.execute(setting.statement, setting.parameters)
                    for sql, parameters in self._next_tx:
                        cursor.execute(sql, parameters)
                finally:
                    cursor.close()
        except BaseException:
            with contextlib.suppress(Exception):
                fairy.invalidate()
            raise
        return leg

    def _primary_leg(self) -> Leg:
        router = self._router
        server = router._writable_primary()  # SplitBrain / PrimaryUnavailable: no write
        leg = self._primary
        if leg is not None and not leg.used and (leg.server is not server
                                                 or socket_closed(leg.dbapi)):
            self._drop("primary", invalidate=True)  # closed, or a failover moved the primary
            leg = None
        if leg is None:
            if router._down_server is server and time.monotonic() < router._primary_retry_at:
                raise PrimaryUnavailable(
                    f"primary {server.name} is marked down after a failure "
                    f"(tried again {router._primary_retry_at - time.monotonic():.1f}s from "
                    "now; reads still go to the replicas)"
                )
            try:
                leg = self._open(server, -1)
            except Exception as exc:
                if is_connection_error(exc, server.engine.dialect):
                    raise router._primary_down(exc, server) from exc
                raise
            self._primary = leg
        return leg

    def _replica_leg(self, exclude: int | None = None, *,
                     ignore_health: bool = False) -> Leg | None:
        """The replica leg for a read, or None when no replica is usable."""
        router = self._router
        health = router.health
        leg = self._replica
        if leg is not None:
            if leg.used:
                return leg  # stay on it for the rest of the transaction
            if (leg.index != exclude and (ignore_health or health.usable(leg.index))
                    and not socket_closed(leg.dbapi)):
                return leg
            self._drop("replica", invalidate=socket_closed(leg.dbapi))
        for index, server in enumerate(router._replicas):
            if index == exclude or not (ignore_health or health.usable(index)):
                continue
            try:
                self._replica = self._open(server, index)
            except Exception as exc:
                if not is_connection_error(exc, server.engine.dialect):
                    raise
                router.health.mark_down(index, describe(exc))
                continue
            return self._replica
        return None

    def _read_leg_for_info(self) -> Leg:
        leg = self._replica_leg()
        return leg if leg is not None else self._primary_leg()

    def _choose_read(self) -> tuple[Leg, str]:
        """Where a read goes when the transaction is not pinned to the primary."""
        router = self._router
        scope = router._scope.get()
        token = scope.effective if scope is not None else None
        if token is not None and router.read_your_writes != "off":
            mode = router.read_your_writes if token.gtid else "pin"
            if mode == "pin" and time.time() - token.time < router.pin_seconds:
                self._pinned = True
                return self._primary_or_stale("pinned")
        leg = self._replica_leg()
        if leg is None:
            try:
                return self._primary_leg(), "no-replica"
            except PrimaryUnavailable:
                leg = self._replica_leg(ignore_health=True)  # stale beats nothing
                if leg is None:
                    raise
                return leg, "stale-primary-down"
        if (token is not None and token.gtid and router.read_your_writes == "gtid"
                and not router.health.confirmed(leg.index, token.gtid)):
            if leg.used:
                return self._primary_or_stale("token-mid-transaction")
            if router.health.recently_missed(leg.index, token.gtid,
                                             router.gtid_wait_timeout):
                self._pinned = True
                return self._primary_or_stale("gtid-behind")
            server = router._replicas[leg.index]
            try:
                reached = wait_for_gtid_dbapi(leg.dbapi, token.gtid, router.gtid_wait_timeout,
                                              mariadb=server.mariadb)
            except Exception as exc:
                if not is_connection_error(exc, leg.dialect):
                    raise
                router.health.mark_down(leg.index, describe(exc))
                self._drop("replica", invalidate=True)
                return self._choose_read()
            if not reached:
                router.health.missed(leg.index, token.gtid)
                self._pinned = True  # the rest of this transaction reads where the write is
                return self._primary_or_stale("gtid-timeout")
            router.health.confirm(leg.index, token.gtid)
        return leg, "replica"

    def _primary_or_stale(self, reason: str) -> tuple[Leg, str]:
        try:
            return self._primary_leg(), reason
        except PrimaryUnavailable:
            leg = self._replica_leg() or self._replica_leg(ignore_health=True)
            if leg is None:
                raise
            return leg, "stale-primary-down"

    def execute(self, rc: RoutingCursor, method: str, statement: str, parameters: Any) -> Any:
        router = self._router
        role = statement_role(statement)
        found = effect(statement) if method == "execute" else None
        if found is not None and found.kind in ("session", "next-transaction", "use"):
            return self._setting(rc, statement, parameters, found)
        if role == "write":
            control = _TX_CONTROL.match(statement)
            if control is not None:  # e.g. the dialect's COMMIT after an isolation change
                rc.cursor = None
                router._count("write", "transaction-control", "every used leg", statement)
                return self.commit() if control.group(1).upper() == "COMMIT" \
                    else self.rollback()
        if role == "write":
            reason = "primary"
        elif self._temporary:
            reason = "temporary-table"
        elif self._pinned:
            reason = "after-write"
        elif router._force.get():
            reason = "forced"
        else:
            reason = ""
        explicit = self._explicit
        if found is not None and found.kind in ("read-only-start", "begin"):
            # Under autocommit, BEGIN opens a transaction that goes on after the statement.
            self._explicit = bool(self._autocommit)
        try:
            if reason:
                leg = self._primary_leg()
                if role == "write" or reason == "forced":
                    self._pinned = True
                if role == "write" and self._read_only is not None and not leg.used:
                    self._start_read_only(leg)
                result = self._run(rc, leg, role, reason, method, statement, parameters)
            else:
                leg, reason = self._choose_read()
                result = self._run(rc, leg, role, reason, method, statement, parameters)
        except BaseException:
            self._explicit = explicit
            raise
        if found is not None:
            self._took_effect(found, statement)
        return result

    def _took_effect(self, found: Effect, statement: str) -> None:
        """*statement* (of effect *found*) succeeded: note what it did to the session."""
        kind = found.kind
        if kind == "create-temporary":
            self._temporary |= found.names
        elif kind == "drop-table":
            self._temporary -= found.names
        elif kind == "read-only-start":
            self._read_only = statement

    def _start_read_only(self, leg: Leg) -> None:
        """A write inside START TRANSACTION READ ONLY: the primary joins the read-only
        transaction first, so that the server refuses the write (1792)."""
        assert self._read_only is not None
        cursor = leg.dbapi.cursor()
        try:
            cursor.execute(self._read_only)
        except Exception as exc:
            if is_connection_error(exc, leg.dialect):
                self._drop("primary", invalidate=True)
                raise self._router._primary_down(exc) from exc
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        leg.used = True

    def _run(self, rc: RoutingCursor, leg: Leg, role: str, reason: str, method: str,
             statement: str, parameters: Any, retried: bool = False) -> Any:
        router = self._router
        first = not leg.used
        cursor = leg.dbapi.cursor(*rc.args, **rc.kwargs)
        try:
            result = getattr(cursor, method)(statement, parameters)
        except Exception as exc:
            with contextlib.suppress(Exception):
                cursor.close()
            if not is_connection_error(exc, leg.dialect):
                if leg.index < 0 and self._lost_primary(exc):
                    self._drop("primary", invalidate=True)
                    raise router._read_only_primary(exc, leg.server) from exc
                leg.used = True
                raise
            if leg.index >= 0:  # a replica failed
                router.health.mark_down(leg.index, describe(exc))
                self._drop("replica", invalidate=True)
                if first and not retried and role == "read":
                    other = self._replica_leg(exclude=leg.index)
                    if other is None:
                        other = self._primary_leg()
                    return self._run(rc, other, role, "retried", method, statement,
                                     parameters, retried=True)
                raise
            self._drop("primary", invalidate=True)
            if timed_out(exc):  # a hung primary: no second wait on it
                down = router._primary_down(exc)
                if first and not retried and role == "read" and not self._temporary:
                    other = self._replica_leg() or self._replica_leg(ignore_health=True)
                    if other is not None:
                        return self._run(rc, other, role, "stale-primary-down", method,
                                         statement, parameters, retried=True)
                raise down from exc
            if first and not retried and (role == "read" or error_code(exc) in NOT_SENT):
                return self._run(rc, self._primary_leg(), role, reason, method, statement,
                                 parameters, retried=True)
            raise router._primary_down(exc) from exc
        leg.used = True
        if leg.index < 0 and role == "write":
            self._wrote = True
            if self._autocommit and not self._explicit:
                self._after_write_commit(leg)
                self._end_transaction()
        rc.cursor = cursor
        router._count(role, reason, "primary" if leg.index < 0 else
                      router._replicas[leg.index].name, statement)
        return result

    def _lost_primary(self, exc: BaseException) -> bool:
        """With primary candidates: did the primary refuse a statement because it is
        read-only now (a failover demoted it)?"""
        return not self._router.finder.single and error_code(exc) in READ_ONLY_ERRORS

    def _setting(self, rc: RoutingCursor, statement: str, parameters: Any,
                 found: Effect) -> Any:
        """A session setting or ``USE``: run on every open leg (at least one), then kept for
        legs opened later; ``SET TRANSACTION``: the same for this transaction's legs."""
        ran: list[Leg] = []
        result: Any = None
        for which in ("replica", "primary"):
            leg = self._replica if which == "replica" else self._primary
            if leg is None:
                continue
            if not leg.used and socket_closed(leg.dbapi):
                self._drop(which, invalidate=True)  # reopened, state replayed, when needed
                continue
            try:
                result = self._run_on(rc, leg, statement, parameters)
            except Exception as exc:
                lost = is_connection_error(exc, leg.dialect)
                if lost:
                    if leg.index >= 0:
                        self._router.health.mark_down(leg.index, describe(exc))
                    self._drop(which, invalidate=True)
                    if not leg.used:
                        continue  # nothing of the transaction lived there: reopen later
                self._undo(ran)
                if lost and leg.index < 0:
                    raise self._router._primary_down(exc) from exc
                raise
            ran.append(leg)
        if not ran:  # no leg open: run it on the read leg, so a bad one fails now
            leg = self._read_leg_for_info()
            try:
                result = self._run_on(rc, leg, statement, parameters)
            except Exception as exc:
                if is_connection_error(exc, leg.dialect):
                    self._drop("primary" if leg.index < 0 else "replica", invalidate=True)
                raise
        self._keep(statement, parameters, found)
        self._router._count("write", "session-setting", "every leg", statement)
        return result

    def _run_on(self, rc: RoutingCursor, leg: Leg, statement: str, parameters: Any) -> Any:
        cursor = leg.dbapi.cursor(*rc.args, **rc.kwargs)
        try:
            result = cursor.execute(statement, parameters)
        except BaseException:
            with contextlib.suppress(Exception):
                cursor.close()
            raise
        rc.cursor = cursor
        return result

    def _undo(self, ran: list[Leg]) -> None:
        """A setting failed on one leg after it succeeded on *ran*: close those that hold no
        transaction (they reopen with the kept state); a used one keeps it, logged."""
        for leg in ran:
            if leg.used:
                logger.warning("a session setting failed on one server after it succeeded "
                               "on another, inside a transaction: they differ until it ends")
                continue
            self._drop("primary" if leg.index < 0 else "replica", invalidate=True)

    def _keep(self, statement: str, parameters: Any, found: Effect) -> None:
        if found.kind == "next-transaction":
            self._next_tx.append((statement, parameters))
            return
        setting = _Setting(statement, parameters, found)
        if not found.dependent:  # it decides its variables alone: earlier ones are moot
            self._settings = [s for s in self._settings if not s.names <= found.names]
        self._settings.append(setting)
