"""Session state follows the routed session; failures leave no stale state and never hang.

Every test runs against the real MariaDB primary and read_only replica (``mariadb_pair``).
"Reopen" means the servers closed every connection of the application user (``KILL``, as a
restart or ``wait_timeout`` would): the router must open new legs and replay the session's
state on them, and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from tenantkit.db.router import Router
from tenantkit.errors import PrimaryUnavailable
from tenantkit.testing import USER, LoopbackProxy, MariaDBCluster, MariaDBServer

PRIMARY_ID, REPLICA_ID = 1, 2
SERVER_ID = text("SELECT @@server_id")


@pytest.fixture
def pair(mariadb_pair: MariaDBCluster) -> MariaDBCluster:
    mariadb_pair.primary.query(
        f"CREATE TABLE {mariadb_pair.database}.posts (id INT PRIMARY KEY, title VARCHAR(50))")
    mariadb_pair.wait_replicas()
    return mariadb_pair


@pytest.fixture
def make_router(pair: MariaDBCluster) -> Iterator[Callable[..., Router]]:
    routers: list[Router] = []

    def make(primary: str | None = None, replica: str | None = None, **kwargs: Any) -> Router:
        options: dict[str, Any] = {"gtid_wait_timeout": 0.3, "connect_timeout": 1.0,
                                   "dead_host_cooldown": 1.0, "health_interval": 0.2}
        options.update(kwargs)
        router = Router(primary or pair.primary_url, [replica or pair.replica_url], **options)
        routers.append(router)
        deadline = time.monotonic() + 10
        while router.health.state(0).status != "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        return router

    try:
        yield make
    finally:
        for router in routers:
            router.close()


def _server(conn: Connection) -> int:
    return int(conn.execute(SERVER_ID).scalar_one())


def _kill_legs(pair: MariaDBCluster) -> None:
    """Close, server side, every connection of the application user on both servers."""
    for server in (pair.primary, *pair.replicas):
        for (ident,) in server.query(
                "SELECT id FROM information_schema.processlist WHERE user = %s", (USER,)):
            with contextlib.suppress(pymysql.err.MySQLError):
                server.query(f"KILL CONNECTION {int(ident)}")
    time.sleep(0.1)  # let the FIN reach the client sockets


def _count(server: MariaDBServer, pair: MariaDBCluster, where: str = "1") -> int:
    return int(server.query(f"SELECT COUNT(*) FROM {pair.database}.posts WHERE {where}")[0][0])


# --- SET that is really a write -------------------------------------------------------------


def test_set_statement_for_insert_is_a_write_run_once(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID  # a replica leg is open
        conn.execute(text("SET /* c */ STATEMENT max_statement_time = 10 FOR "
                          "INSERT INTO posts VALUES (1, 'once')"))
        conn.commit()
    assert _count(pair.primary, pair) == 1
    _kill_legs(pair)
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID, "reads work: nothing replayed on the replica"
        conn.execute(text("INSERT INTO posts VALUES (2, 'next')"))
        conn.commit()
    assert _count(pair.primary, pair) == 2, "the INSERT was not replayed on the new primary leg"


def test_multi_statement_set_names_then_insert_is_a_write(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router(engine_options={
        "connect_args": {"client_flag": CLIENT.MULTI_STATEMENTS}})
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("SET NAMES utf8mb4; INSERT INTO posts VALUES (1, 'multi')"))
        conn.commit()
    _kill_legs(pair)
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("INSERT INTO posts VALUES (2, 'next')"))
        conn.commit()
    pair.wait_replicas()
    assert _count(pair.primary, pair) == 2
    assert _count(pair.replica, pair) == 2


def test_set_whose_value_takes_a_lock_runs_on_the_primary_only(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("SET SESSION lock_wait_timeout = GET_LOCK('tk_lock', 0) + 49"))
        holder = conn.execute(text("SELECT IS_USED_LOCK('tk_lock'), CONNECTION_ID()")).one()
        assert holder[0] == holder[1], "the lock is held by the primary leg"
        assert pair.replica.query("SELECT IS_USED_LOCK('tk_lock')")[0][0] is None
        conn.commit()
        _kill_legs(pair)
        assert _server(conn) in (PRIMARY_ID, REPLICA_ID)
        conn.execute(text("INSERT INTO posts VALUES (1, 'x')"))
        conn.commit()
        assert pair.primary.query("SELECT IS_USED_LOCK('tk_lock')")[0][0] is None, \
            "not replayed on the reopened primary leg"
        assert pair.replica.query("SELECT IS_USED_LOCK('tk_lock')")[0][0] is None


def test_a_failed_set_is_never_replayed(make_router: Callable[..., Router],
                                        pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        with pytest.raises(sa_exc.OperationalError, match="1193"):
            conn.execute(text("SET SESSION no_such_variable = 1"))
        conn.rollback()
        _kill_legs(pair)
        assert _server(conn) == REPLICA_ID
        conn.execute(text("INSERT INTO posts VALUES (1, 'x')"))
        conn.commit()


def test_set_transaction_is_for_the_next_transaction_only(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.commit()
        conn.execute(text("SET TRANSACTION READ ONLY"))
        with pytest.raises(sa_exc.OperationalError, match="1792"):
            conn.execute(text("INSERT INTO posts VALUES (1, 'refused')"))  # as on one server
        conn.rollback()
        _kill_legs(pair)  # new legs: the next transactions are not read only
        assert _server(conn) == REPLICA_ID
        conn.execute(text("INSERT INTO posts VALUES (2, 'later transaction')"))
        conn.commit()
    assert _count(pair.primary, pair) == 1


def test_replay_is_in_order_of_last_use_and_loses_nothing(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("SET NAMES latin1"))
        conn.execute(text("SET sql_mode = 'ANSI'"))
        conn.execute(text("SET sql_mode = 'TRADITIONAL'"))
        conn.execute(text("SET sql_mode = 'ANSI'"))  # used last: it wins on replay
        for i in range(40):  # more than any fixed cap
            conn.execute(text(f"SET SESSION max_sort_length = {1100 + i}"))
        conn.execute(text("SET time_zone = :tz"), {"tz": "+02:00"})  # parameters kept
        state = text("SELECT @@character_set_client, @@sql_mode, @@max_sort_length, "
                     "@@time_zone")
        want = conn.execute(state).one()
        assert want[0] == "latin1" and "ANSI" in want[1] and want[2] == 1139
        conn.commit()
        _kill_legs(pair)
        assert conn.execute(state).one() == want
        assert _server(conn) == REPLICA_ID
        conn.execute(text("INSERT INTO posts VALUES (1, 'x')"))
        assert conn.execute(state).one() == want
        assert _server(conn) == PRIMARY_ID
        conn.rollback()


def test_use_follows_the_session_to_every_leg(make_router: Callable[..., Router],
                                              pair: MariaDBCluster) -> None:
    pair.primary.query("DROP DATABASE IF EXISTS tk_other")
    pair.primary.query("CREATE DATABASE tk_other")
    pair.wait_replicas()
    router = make_router()
    where = text("SELECT DATABASE(), @@server_id")
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("USE tk_other"))
        conn.commit()
        assert conn.execute(where).one() == ("tk_other", REPLICA_ID)
        conn.execute(text("CREATE TABLE IF NOT EXISTS marker (id INT)"))
        assert conn.execute(where).one() == ("tk_other", PRIMARY_ID)
        conn.commit()
        _kill_legs(pair)
        assert conn.execute(where).one() == ("tk_other", REPLICA_ID)
        conn.execute(text("INSERT INTO marker VALUES (1)"))
        assert conn.execute(where).one() == ("tk_other", PRIMARY_ID)
        conn.commit()
    assert pair.primary.query("SELECT COUNT(*) FROM tk_other.marker")[0][0] == 1


def test_temporary_tables_keep_the_session_on_the_primary(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("CREATE TEMPORARY TABLE tk_tmp (id INT)"))
        conn.execute(text("INSERT INTO tk_tmp VALUES (1), (2)"))
        conn.commit()
        assert conn.execute(text("SELECT COUNT(*) FROM tk_tmp")).scalar_one() == 2
        assert _server(conn) == PRIMARY_ID
        conn.commit()
        assert conn.execute(text("SELECT COUNT(*) FROM tk_tmp")).scalar_one() == 2
        conn.execute(text("DROP TEMPORARY TABLE tk_tmp"))
        conn.commit()
        assert _server(conn) == REPLICA_ID
    assert router.stats()["read"]["temporary-table"] >= 2


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_start_transaction_read_only_refuses_writes(
        make_router: Callable[..., Router], pair: MariaDBCluster, autocommit: bool) -> None:
    router = make_router()
    with router.connect() as conn:
        if autocommit:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("START TRANSACTION READ ONLY"))
        assert _server(conn) == REPLICA_ID
        with pytest.raises(sa_exc.OperationalError, match="1792"):
            conn.execute(text("INSERT INTO posts VALUES (1, 'read only')"))
        conn.execute(text("COMMIT"))
        conn.commit()
    assert _count(pair.primary, pair) == 0, "never committed on the primary"


def test_begin_under_autocommit_keeps_its_transaction(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("BEGIN"))
        conn.execute(text("INSERT INTO posts VALUES (1, 'mine')"))
        assert conn.execute(text("SELECT COUNT(*) FROM posts")).scalar_one() == 1
        assert _server(conn) == PRIMARY_ID
        conn.execute(text("ROLLBACK"))
        assert _count(pair.primary, pair) == 0
        assert _server(conn) == REPLICA_ID


def test_set_on_a_leg_the_server_closed_reconnects(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("INSERT INTO posts VALUES (1, 'x')"))
        conn.commit()  # both legs open and idle
        _kill_legs(pair)
        conn.execute(text("SET NAMES latin1"))
        conn.execute(text("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"))
        state = text("SELECT @@character_set_client, @@tx_isolation, @@server_id")
        assert conn.execute(state).one() == ("latin1", "READ-COMMITTED", REPLICA_ID)
        conn.execute(text("INSERT INTO posts VALUES (2, 'y')"))
        assert conn.execute(state).one() == ("latin1", "READ-COMMITTED", PRIMARY_ID)
        conn.commit()


def test_session_state_never_leaks_to_another_connection(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router(engine_options={"pool_size": 1, "max_overflow": 0})
    with router.connect() as conn:
        conn.execute(text("SET NAMES latin1"))
        conn.execute(text("CREATE TEMPORARY TABLE tk_leak (id INT)"))
        conn.commit()
    router.routing_engine.dispose()  # the routing connection goes; its legs must not return
    with router.connect() as conn:
        assert conn.execute(text("SELECT @@character_set_client")).scalar_one() != "latin1"
        conn.execute(text("INSERT INTO posts VALUES (1, 'x')"))
        assert conn.execute(text("SELECT @@character_set_client")).scalar_one() != "latin1"
        with pytest.raises(sa_exc.ProgrammingError, match="1146"):
            conn.execute(text("SELECT * FROM tk_leak"))
        conn.rollback()


# --- failures -------------------------------------------------------------------------------


def test_a_failed_primary_commit_ends_the_replica_snapshot(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    pair.primary.query(f"INSERT INTO {pair.database}.posts VALUES (1, 'old')")
    pair.wait_replicas()
    router = make_router(engine_options={"pool_size": 1, "max_overflow": 0})
    read = text("SELECT title FROM posts WHERE id = 1")
    conn = router.connect()
    try:
        assert conn.execute(read).scalar_one() == "old"  # the replica's snapshot begins
        conn.execute(text("INSERT INTO posts VALUES (2, 'lost')"))
        ident = conn.execute(text("SELECT CONNECTION_ID()")).scalar_one()
        pair.primary.query(f"UPDATE {pair.database}.posts SET title = 'new' WHERE id = 1")
        pair.wait_replicas()
        pair.primary.query(f"KILL CONNECTION {int(ident)}")
        time.sleep(0.1)
        with pytest.raises((PrimaryUnavailable, sa_exc.OperationalError)):
            conn.commit()
        with contextlib.suppress(Exception):
            conn.rollback()
    finally:
        conn.close()
    router._primary_retry_at = 0.0  # the primary is fine; only that connection was killed
    with router.connect() as conn:  # the same pooled routing connection
        assert conn.execute(read).scalar_one() == "new", "no read from the old snapshot"
        assert _server(conn) == REPLICA_ID
    assert _count(pair.primary, pair, "id = 2") == 0


class HangingProxy(LoopbackProxy):
    """Relays until :meth:`hang`; then accepts and holds connections but forwards nothing,
    like a frozen host or a partition that drops packets."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.hung = threading.Event()
        super().__init__(upstream, tick=0.05)

    def hang(self) -> None:
        self.hung.set()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        self.spawn(self._pump, client, server)
        self.spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self._stop.is_set():
            if self.hung.is_set():
                time.sleep(self.tick)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if self.hung.is_set():
                continue  # dropped, as a partition drops packets
            try:
                sink.sendall(data)
            except OSError:
                return


def _bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """Run *fn* in a thread; fail (instead of hanging the suite) if it takes longer."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds:g}s: no read timeout"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _proxied(server: MariaDBServer, proxy: LoopbackProxy, database: str) -> str:
    return server.url(database).replace(f":{server.port}/", f":{proxy.port}/")


def test_a_hung_replica_is_marked_down_and_the_read_goes_elsewhere(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    with HangingProxy(("127.0.0.1", pair.replica.port)) as proxy:
        router = make_router(replica=_proxied(pair.replica, proxy, pair.database),
                             replica_read_timeout=1.0, read_timeout=5.0, health_interval=60)
        with router.connect() as conn:
            assert _server(conn) == REPLICA_ID  # a replica leg through the proxy is pooled
        proxy.hang()
        started = time.monotonic()

        def read() -> int:
            with router.connect() as conn:
                return _server(conn)

        assert _bounded(read, 8) == PRIMARY_ID
        assert time.monotonic() - started < 1.0 + 1.5
        assert router.health.state(0).status == "down"
        assert router.stats()["read"]["retried"] == 1
        started = time.monotonic()
        assert _bounded(read, 8) == PRIMARY_ID  # marked down: no second wait
        assert time.monotonic() - started < 0.5


def test_a_hung_primary_raises_primary_unavailable_for_writes(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    with HangingProxy(("127.0.0.1", pair.primary.port)) as proxy:
        router = make_router(primary=_proxied(pair.primary, proxy, pair.database),
                             read_timeout=1.0, replica_read_timeout=1.0, health_interval=60)
        with router.connect() as conn:
            conn.execute(text("INSERT INTO posts VALUES (1, 'before')"))
            conn.commit()  # a primary leg through the proxy is pooled
        proxy.hang()
        started = time.monotonic()

        def write() -> None:
            with router.connect() as conn:
                conn.execute(text("INSERT INTO posts VALUES (2, 'hung')"))
                conn.commit()

        with pytest.raises(PrimaryUnavailable):
            _bounded(write, 8)
        assert time.monotonic() - started < 1.0 + 1.5
        started = time.monotonic()
        with pytest.raises(PrimaryUnavailable, match="marked down"):
            _bounded(write, 8)
        assert time.monotonic() - started < 0.5

        def read() -> int:
            with router.connect() as conn:
                return _server(conn)

        assert _bounded(read, 8) == REPLICA_ID  # reads go on


def test_the_settings_give_every_server_read_and_write_timeouts(
        make_router: Callable[..., Router], pair: MariaDBCluster) -> None:
    router = make_router(read_timeout=7.0, replica_read_timeout=3.0, write_timeout=9.0)
    for server, want in ((router._primary, 7), (router._replicas[0], 3)):
        raw = server.engine.raw_connection()
        try:
            assert raw.dbapi_connection._read_timeout == want
            assert raw.dbapi_connection._write_timeout == 9
        finally:
            raw.close()
