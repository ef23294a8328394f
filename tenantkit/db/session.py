"""The routing DB-API connection that SQLAlchemy sees behind a Router.

SQLAlchemy's pool holds :class:`RoutingConnection` objects (the Router's routing Engine
creates them). Each holds up to two real connections, "legs" (:class:`Leg`), checked out of
the primary's and one replica's Engine, and routes every ``cursor.execute`` to one of them on
its SQL text; the :class:`~tenantkit.db.cursor.RoutingCursor` reads results from that leg.
The rules are the Router's module docstring; this module keeps the state of one connection:
the open legs, whether the transaction is pinned to the primary or wrote there, the session
settings to replay on a new leg, and autocommit.
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
from tenantkit.db.failures import (
    NOT_SENT,
    describe,
    error_code,
    is_connection_error,
    socket_closed,
)
from tenantkit.db.gtid import last_gtid_dbapi, wait_for_gtid_dbapi
from tenantkit.errors import PrimaryUnavailable

if TYPE_CHECKING:
    from tenantkit.db.router import Router, _Server

__all__ = ["Leg", "RoutingConnection"]

logger = logging.getLogger(__name__)

_SESSION_SET = re.compile(
    r"\s*SET\s+(?!GLOBAL\b|@@GLOBAL\.|PASSWORD\b|ROLE\b|DEFAULT\s+ROLE\b|STATEMENT\b"
    r"|PERSIST|@(?!@))",
    re.IGNORECASE,
)
_MAX_SETTINGS = 32
_TX_CONTROL = re.compile(r"\s*(COMMIT|ROLLBACK)(?:\s+WORK)?\s*;?\s*\Z", re.IGNORECASE)


class Leg:
    """A checked-out connection of one server."""

    __slots__ = ("dbapi", "dialect", "fairy", "index", "used")

    def __init__(self, fairy: Any, index: int, dialect: Dialect) -> None:
        self.fairy = fairy
        self.dbapi = fairy.dbapi_connection
        self.dialect = dialect  # its server's, to tell a dead connection from a bad statement
        self.index = index  # -1: the primary; else the replica's position
        self.used = False  # ran a statement in the current transaction


class RoutingConnection:
    """The DB-API connection SQLAlchemy sees; routes each cursor's statements to a leg."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._primary: Leg | None = None
        self._replica: Leg | None = None
        self._settings: list[str] = []
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
        else:
            self._replica = None
        with contextlib.suppress(Exception):
            if invalidate:
                leg.fairy.invalidate()
            else:
                leg.fairy.close()

    def _open(self, server: _Server, index: int) -> Leg:
        fairy = server.engine.raw_connection()
        leg = Leg(fairy, index, server.engine.dialect)
        try:
            if self._autocommit is not None:
                leg.dbapi.autocommit(self._autocommit)
            if self._settings:
                cursor = leg.dbapi.cursor()
                try:
                    for sql in self._settings:
                        cursor.execute(sql)
                finally:
                    cursor.close()
        except BaseException:
            with contextlib.suppress(Exception):
                fairy.invalidate()
            raise
        return leg

    def _primary_leg(self) -> Leg:
        router = self._router
        leg = self._primary
        if leg is not None and not leg.used and socket_closed(leg.dbapi):
            self._drop("primary", invalidate=True)
            leg = None
        if leg is None:
            if time.monotonic() < router._primary_retry_at:
                raise PrimaryUnavailable(
                    f"primary {router._primary.name} is marked down after a failure "
                    f"(tried again {router._primary_retry_at - time.monotonic():.1f}s from "
                    "now; reads still go to the replicas)"
                )
            try:
                leg = self._open(router._primary, -1)
            except Exception as exc:
                if is_connection_error(exc, router._primary.engine.dialect):
                    raise router._primary_down(exc) from exc
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
        if role == "write":
            if _SESSION_SET.match(statement):
                return self._setting(rc, method, statement, parameters)
            control = _TX_CONTROL.match(statement)
            if control is not None:  # e.g. the dialect's COMMIT after an isolation change
                rc.cursor = None
                router._count("write", "transaction-control", "every used leg", statement)
                return self.commit() if control.group(1).upper() == "COMMIT" \
                    else self.rollback()
        if role == "write":
            reason = "primary"
        elif self._pinned:
            reason = "after-write"
        elif router._force.get():
            reason = "forced"
        else:
            reason = ""
        if reason:
            leg = self._primary_leg()
            if role == "write" or reason == "forced":
                self._pinned = True
            return self._run(rc, leg, role, reason, method, statement, parameters)
        leg, reason = self._choose_read()
        return self._run(rc, leg, role, reason, method, statement, parameters)

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
            if first and not retried and (role == "read" or error_code(exc) in NOT_SENT):
                return self._run(rc, self._primary_leg(), role, reason, method, statement,
                                 parameters, retried=True)
            raise router._primary_down(exc) from exc
        leg.used = True
        if leg.index < 0 and role == "write":
            self._wrote = True
            if self._autocommit:
                self._after_write_commit(leg)
                self._end_transaction()
        rc.cursor = cursor
        router._count(role, reason, "primary" if leg.index < 0 else
                      router._replicas[leg.index].name, statement)
        return result

    def _setting(self, rc: RoutingCursor, method: str, statement: str,
                 parameters: Any) -> Any:
        """A session setting: run on every open leg, replayed on legs opened later."""
        if statement not in self._settings:
            self._settings.append(statement)
            del self._settings[:-_MAX_SETTINGS]
        result: Any = None
        for leg in (self._replica, self._primary):
            if leg is None:
                continue
            cursor = leg.dbapi.cursor(*rc.args, **rc.kwargs)
            result = getattr(cursor, method)(statement, parameters)
            rc.cursor = cursor
        self._router._count("write", "session-setting", "every leg", statement)
        return result
