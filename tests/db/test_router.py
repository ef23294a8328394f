"""The Router on SQLite (one server) and on the real MariaDB pair (routing and faults)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Integer, String, create_engine, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantkit.config import DatabaseSettings, Settings
from tenantkit.db.router import Router
from tenantkit.db.tokens import ConsistencyToken
from tenantkit.errors import ConfigError, InvalidToken, PrimaryUnavailable
from tenantkit.sites import Backend, Site, SiteDatabase
from tenantkit.testing import MariaDBCluster

PRIMARY_ID, REPLICA_ID = 1, 2
SERVER_ID = text("SELECT @@server_id")


class Base(DeclarativeBase):
    pass


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(50))


# --- tokens ------------------------------------------------------------------------------


@given(
    st.one_of(
        st.none(),
        st.lists(st.tuples(st.integers(0, 99), st.integers(1, 2**32 - 1),
                           st.integers(1, 2**63)), min_size=1, max_size=3).map(
            lambda parts: ",".join(f"{d}-{s}-{n}" for d, s, n in parts)),
        st.just("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5,3E11FA47-71CA-11E1-9E33-C80AA9429563:7"),
    ),
    st.floats(0, 4e9),
)
def test_token_round_trips(gtid: str | None, when: float) -> None:
    token = ConsistencyToken(gtid, when)
    text_form = token.dumps()
    assert len(text_form) < 120
    assert not set(text_form) & set(' ;,"\\')  # cookie-safe
    back = ConsistencyToken.loads(text_form)
    assert back.gtid == gtid
    assert abs(back.time - when) < 0.002


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param("", id="empty"),
        pytest.param("hello", id="word"),
        pytest.param("2.18c.0-1-5", id="unknown version"),
        pytest.param("1.zz.0-1-5", id="bad time"),
        pytest.param("1.18c.0-1-5; DROP", id="injection"),
        pytest.param("1.18c.0-1", id="short gtid"),
        pytest.param("1.18c.abc", id="not a gtid"),
        pytest.param("1.18c." + "0-1-5_" * 400 + "0-1-5", id="huge"),
        pytest.param(b"\xff\xfe", id="binary"),
        pytest.param("1.18c.0-1-5\x00", id="nul"),
    ],
)
def test_token_loads_rejects_garbage_clearly(garbage: str | bytes) -> None:
    with pytest.raises(InvalidToken, match="drop"):
        ConsistencyToken.loads(garbage)


def test_invalid_token_is_a_value_error() -> None:
    assert issubclass(InvalidToken, ValueError)


# --- one server (SQLite) -------------------------------------------------------------------


@pytest.fixture
def sqlite_router(tmp_path: Path) -> Iterator[Router]:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    router = Router(url)
    try:
        yield router
    finally:
        router.close()


def test_one_server_every_api_works(sqlite_router: Router) -> None:
    router = sqlite_router
    assert router.engine("read") is router.engine("write")
    assert router.last_token() is None
    with router.session() as session:
        session.add(Post(id=1, title="hello"))
        session.commit()
        token = router.last_token()
        assert token is not None and token.gtid is None
        assert session.get(Post, 1) is not None
    with router.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM posts")).scalar() == 1
    with router.primary(), router.session() as session:
        assert session.scalars(select(Post.title)).all() == ["hello"]
    with router.with_token(token.dumps()) as scope:
        with router.session() as session:
            assert session.get(Post, 1) is not None
            session.add(Post(id=2, title="again"))
            session.commit()
        assert scope.given == ConsistencyToken.loads(token.dumps())
        assert scope.produced is not None and scope.produced.time >= token.time
    stats = router.stats()
    assert stats["write"]["one-server"] >= 2
    assert stats["read"]["one-server"] >= 3
    with router.sessionmaker(expire_on_commit=False)() as session:
        assert session.get(Post, 2) is not None


def test_one_server_rollback_produces_no_token(sqlite_router: Router) -> None:
    def work() -> ConsistencyToken | None:
        with sqlite_router.session() as session:
            session.add(Post(id=9, title="x"))
            session.flush()
            session.rollback()
        return sqlite_router.last_token()

    result: list[ConsistencyToken | None] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join(10)
    assert result == [None]


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match='"gtid", "pin" or "off"'):
        Router("sqlite://", read_your_writes="always")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"replicas=\[url\]"):
        Router("sqlite://", "sqlite://")  # type: ignore[arg-type]
    router = Router("sqlite://")
    try:
        with pytest.raises(ValueError, match='"read" or "write"'):
            router.engine("both")  # type: ignore[arg-type]
        with pytest.raises(InvalidToken), router.with_token("garbage"):
            pass
    finally:
        router.close()


def test_from_settings_and_site(tmp_path: Path) -> None:
    primary = f"sqlite:///{tmp_path / 'global.db'}"
    settings = Settings(database=DatabaseSettings(primary=primary, pin_seconds=1.5,
                                                  read_your_writes="pin"))
    with Router.from_settings(settings) as router:
        assert router.engine().url.render_as_string() == primary
        assert router.read_your_writes == "pin" and router.pin_seconds == 1.5
    site = Site(name="blog", hosts=("blog.example",), backend=Backend(type="wsgi", app="a:b"))
    with Router.from_site(site, settings) as router:
        assert router.engine().url.render_as_string() == primary
    own = f"sqlite:///{tmp_path / 'own.db'}"
    site2 = Site(name="shop", hosts=("shop.example",), backend=Backend(type="wsgi", app="a:b"),
                 database=SiteDatabase(primary=own))
    with Router.from_site(site2, settings) as router:
        assert router.engine().url.render_as_string() == own
        assert router.pin_seconds == 1.5
    with Router.from_site(site2) as router:
        assert router.read_your_writes == "gtid"


def test_passwords_are_masked_in_repr_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    router = Router("mysql+pymysql://app:s3cret@127.0.0.1:1/db",
                    ["mysql+pymysql://app:s3cret@127.0.0.1:2/db"], health_interval=30,
                    connect_timeout=0.5)
    try:
        assert "s3cret" not in repr(router)
        assert "********" in repr(router)
        with caplog.at_level(logging.DEBUG, logger="tenantkit"):
            router.health.check(0)
            with pytest.raises(PrimaryUnavailable) as info, router.connect() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
        assert "s3cret" not in str(info.value)
        assert "s3cret" not in caplog.text
        assert "********" in caplog.text
    finally:
        router.close()


# --- the real pair ----------------------------------------------------------------------


@pytest.fixture
def make_router(mariadb_pair: MariaDBCluster) -> Iterator[Callable[..., Router]]:
    routers: list[Router] = []
    engine = create_engine(mariadb_pair.primary_url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    mariadb_pair.wait_replicas()

    def make(**kwargs: Any) -> Router:
        options: dict[str, Any] = {"gtid_wait_timeout": 0.3, "connect_timeout": 1.0,
                                   "dead_host_cooldown": 1.0, "health_interval": 0.2}
        options.update(kwargs)
        router = Router(mariadb_pair.primary_url, [mariadb_pair.replica_url], **options)
        routers.append(router)
        if not kwargs.get("heartbeat_table"):  # let the first probe land before any fault
            _wait_for(lambda: router.health.state(0).status == "ok", 10)
        return router

    try:
        yield make
    finally:
        for router in routers:
            router.close()


def _server(conn: Any) -> int:
    return int(conn.execute(SERVER_ID).scalar())


def test_reads_go_to_the_replica_and_writes_to_the_primary(
        make_router: Callable[..., Router]) -> None:
    router = make_router()
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        conn.execute(text("INSERT INTO posts VALUES (1, 'a')"))
        assert _server(conn) == PRIMARY_ID, "after the first write the transaction stays"
        assert conn.execute(text("SELECT title FROM posts WHERE id = 1")).scalar() == "a"
        conn.commit()
        assert _server(conn) == REPLICA_ID
        assert conn.execute(text("SELECT @@server_id FROM posts FOR UPDATE")).scalar() \
            == PRIMARY_ID
        conn.rollback()
        assert _server(conn) == REPLICA_ID
    stats = router.stats()
    assert stats["write"]["primary"] == 2  # the INSERT and the FOR UPDATE
    assert stats["read"]["after-write"] == 2
    assert stats["read"]["replica"] >= 3


def test_orm_flush_and_primary_block(make_router: Callable[..., Router],
                                     mariadb_pair: MariaDBCluster) -> None:
    router = make_router()
    with router.session() as session:
        assert session.scalar(SERVER_ID) == REPLICA_ID
        session.add(Post(id=1, title="flushed"))
        session.flush()
        assert session.scalar(SERVER_ID) == PRIMARY_ID
        session.commit()
        assert session.get(Post, 1) is not None
        assert session.scalar(SERVER_ID) == REPLICA_ID
    with router.session() as session:
        with router.primary():
            assert session.scalar(SERVER_ID) == PRIMARY_ID
        assert session.scalar(SERVER_ID) == PRIMARY_ID, "a transaction begun under primary()"
        session.commit()
        assert session.scalar(SERVER_ID) == REPLICA_ID
    assert router.engine("read").url.port == mariadb_pair.replica.port
    assert router.engine("write").url.port == mariadb_pair.primary.port


def test_a_misrouted_write_would_fail_loudly(make_router: Callable[..., Router],
                                             mariadb_pair: MariaDBCluster) -> None:
    router = make_router()
    with pytest.raises(sa_exc.OperationalError, match="1290"), \
            router.engine("read").begin() as conn:
        conn.execute(text("INSERT INTO posts VALUES (5, 'no')"))
    with router.connect() as conn:
        conn.execute(text("INSERT INTO posts VALUES (5, 'yes')"))
        conn.commit()


def test_session_settings_reach_every_leg(make_router: Callable[..., Router]) -> None:
    router = make_router()
    with router.connect() as plain:
        default = plain.execute(text("SELECT @@tx_isolation")).scalar()
    assert default == "REPEATABLE-READ"
    with router.connect().execution_options(isolation_level="READ COMMITTED") as conn:
        assert conn.execute(text("SELECT @@tx_isolation")).scalar() == "READ-COMMITTED"
        assert "primary" not in router.stats().get("write", {}), "no primary just to set it"
        assert router.stats()["write"]["transaction-control"] >= 1
        conn.execute(text("INSERT INTO posts VALUES (7, 'x')"))
        assert conn.execute(text("SELECT @@tx_isolation, @@server_id")).one() == (
            "READ-COMMITTED", PRIMARY_ID)
        conn.rollback()


def test_held_replica_still_reads_own_write(make_router: Callable[..., Router],
                                            mariadb_pair: MariaDBCluster) -> None:
    router = make_router(health_interval=60)  # the GTID wait, not the monitor, must save us
    with mariadb_pair.replica_held():
        with router.session() as session:
            session.add(Post(id=1, title="mine"))
            session.commit()
            token = router.last_token()
            assert token is not None and token.gtid is not None
            start = time.monotonic()
            assert session.get(Post, 1) is not None
            assert session.scalar(SERVER_ID) == PRIMARY_ID  # no second wait in this transaction
            assert time.monotonic() - start < 5
        reads = router.stats()["read"]
        assert reads["gtid-timeout"] == 1
        assert reads["after-write"] >= 1
        serialised = token.dumps()

        # Another request on another thread, with the token from the cookie.
        seen: list[object] = []

        def other_request() -> None:
            with router.with_token(serialised), router.session() as s:
                seen.append(s.get(Post, 1))
                seen.append(s.scalar(SERVER_ID))
            with router.session() as s:  # no token: may read stale from the replica
                seen.append(s.get(Post, 1))

        thread = threading.Thread(target=other_request)
        thread.start()
        thread.join(20)
        assert seen[0] is not None and seen[1] == PRIMARY_ID
        assert seen[2] is None, "without the token, the held replica does not have the row"
    mariadb_pair.wait_replicas()

    def from_replica_with_token() -> bool:
        # Right after a timed-out wait the router goes to the primary without waiting again
        # (for gtid_wait_timeout); then the caught-up replica serves the token's reads.
        with router.with_token(serialised), router.session() as session:
            assert session.get(Post, 1) is not None
            return session.scalar(SERVER_ID) == REPLICA_ID

    _wait_for(from_replica_with_token, 5)


def test_pin_mode_reads_own_write_from_the_primary(make_router: Callable[..., Router],
                                                   mariadb_pair: MariaDBCluster) -> None:
    router = make_router(read_your_writes="pin", pin_seconds=0.5, health_interval=60)
    with mariadb_pair.replica_held():
        with router.session() as session:
            session.add(Post(id=1, title="pinned"))
            session.commit()
            assert session.get(Post, 1) is not None
            assert session.scalar(SERVER_ID) == PRIMARY_ID
        assert router.stats()["read"]["pinned"] >= 1
        time.sleep(0.6)
        with router.session() as session:
            assert session.scalar(SERVER_ID) == REPLICA_ID


def test_off_mode_does_not_wait(make_router: Callable[..., Router],
                                mariadb_pair: MariaDBCluster) -> None:
    router = make_router(read_your_writes="off", health_interval=60)
    with mariadb_pair.replica_held(), router.session() as session:
        session.add(Post(id=1, title="x"))
        session.commit()
        assert session.get(Post, 1) is None
        assert session.scalar(SERVER_ID) == REPLICA_ID


def test_lagging_replica_is_skipped(make_router: Callable[..., Router],
                                    mariadb_pair: MariaDBCluster) -> None:
    mariadb_pair.primary.query(
        f"CREATE TABLE {mariadb_pair.database}.heartbeat (ts VARCHAR(26) NOT NULL, "
        "server_id INT UNSIGNED PRIMARY KEY)")
    mariadb_pair.primary.query(
        f"INSERT INTO {mariadb_pair.database}.heartbeat VALUES "
        "(DATE_FORMAT(UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, '%Y-%m-%dT%H:%i:%s.%f'), 1)")
    mariadb_pair.wait_replicas()
    router = make_router(heartbeat_table="heartbeat", lag_threshold=5.0, health_interval=60)
    state = router.health.check(0)
    assert state.status == "lagging" and state.lag is not None and state.lag >= 59
    with router.connect() as conn:
        assert _server(conn) == PRIMARY_ID
    assert router.stats()["read"]["no-replica"] >= 1
    mariadb_pair.primary.query(
        f"UPDATE {mariadb_pair.database}.heartbeat SET "
        "ts = DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f')")
    mariadb_pair.wait_replicas()
    assert router.health.check(0).status == "ok"


def test_stopped_replication_is_skipped(make_router: Callable[..., Router],
                                        mariadb_pair: MariaDBCluster) -> None:
    router = make_router(health_interval=60)
    mariadb_pair.hold_replica()
    state = router.health.check(0)
    assert state.status == "stopped" and "SQL No" in (state.error or "")
    with router.connect() as conn:
        assert _server(conn) == PRIMARY_ID


def _wait_for(check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def test_replica_stopped_then_back(make_router: Callable[..., Router],
                                   mariadb_pair: MariaDBCluster) -> None:
    router = make_router()
    with router.session() as session:
        session.add(Post(id=1, title="kept"))
        session.commit()
    mariadb_pair.wait_replicas()
    with router.connect() as conn:  # a replica leg is now pooled
        assert _server(conn) == REPLICA_ID
    mariadb_pair.stop_replica()
    with router.connect() as conn:
        assert conn.execute(text("SELECT title FROM posts WHERE id = 1")).scalar() == "kept"
        assert _server(conn) == PRIMARY_ID
    reasons = router.stats()["read"]
    assert reasons.get("retried", 0) + reasons.get("no-replica", 0) >= 1
    mariadb_pair.start_replica()
    mariadb_pair.wait_replicas()
    started = time.monotonic()

    def back() -> bool:
        with router.connect() as conn:
            return _server(conn) == REPLICA_ID

    _wait_for(back, router.dead_host_cooldown + 5.0)
    assert time.monotonic() - started <= router.dead_host_cooldown + 1.0


def test_primary_stopped_then_back(make_router: Callable[..., Router],
                                   mariadb_pair: MariaDBCluster) -> None:
    router = make_router()
    with router.session() as session:
        session.add(Post(id=1, title="before"))
        session.commit()
    mariadb_pair.wait_replicas()
    with router.connect() as conn:  # a primary leg is pooled
        conn.execute(text("UPDATE posts SET title = 'before' WHERE id = 1"))
        conn.commit()
    mariadb_pair.stop_primary()
    for attempt in range(2):
        start = time.monotonic()
        with pytest.raises(PrimaryUnavailable, match=r"cannot be reached|marked down"), \
                router.session() as session:
            session.add(Post(id=2 + attempt, title="lost"))
            session.commit()
        assert time.monotonic() - start < router.connect_timeout + 1.0
    with router.session() as session:  # reads keep working from the replica
        assert session.get(Post, 1) is not None
        assert session.scalar(SERVER_ID) == REPLICA_ID
    assert mariadb_pair.replica.query(
        f"SELECT COUNT(*) FROM {mariadb_pair.database}.posts")[0][0] == 1
    mariadb_pair.start_primary()
    started = time.monotonic()

    def writable() -> bool:
        with router.session() as session:
            session.add(Post(id=10, title="after"))
            session.commit()
        return True

    _wait_for(writable, router.dead_host_cooldown + 5.0)
    assert time.monotonic() - started <= router.dead_host_cooldown + 1.0
    token = router.last_token()
    assert token is not None
    with router.session() as session:
        assert session.get(Post, 10) is not None


def test_both_restarted_recover(make_router: Callable[..., Router],
                                mariadb_pair: MariaDBCluster) -> None:
    router = make_router()
    with router.connect() as conn:
        conn.execute(text("INSERT INTO posts VALUES (1, 'a')"))
        conn.commit()
        assert _server(conn) in (PRIMARY_ID, REPLICA_ID)
    mariadb_pair.stop_replica()
    mariadb_pair.stop_primary()
    with pytest.raises((PrimaryUnavailable, sa_exc.OperationalError)), \
            router.connect() as conn:
        conn.execute(SERVER_ID)
    mariadb_pair.start_primary()
    mariadb_pair.start_replica()
    mariadb_pair.wait_replicas()
    started = time.monotonic()

    def healthy() -> bool:
        with router.connect() as conn:
            conn.execute(text("INSERT INTO posts VALUES (2, 'b')"))
            conn.commit()
        return True

    def reads_replica() -> bool:
        with router.connect() as conn:
            return _server(conn) == REPLICA_ID

    _wait_for(healthy, router.dead_host_cooldown + 5.0)
    _wait_for(reads_replica, router.dead_host_cooldown + 5.0)
    assert time.monotonic() - started <= router.dead_host_cooldown + 1.0


def test_debug_log_per_decision(make_router: Callable[..., Router],
                                caplog: pytest.LogCaptureFixture) -> None:
    router = make_router()
    with caplog.at_level(logging.DEBUG, logger="tenantkit.db.router"), \
            router.connect() as conn:
        conn.execute(text("SELECT 42"))
    lines = [r.getMessage() for r in caplog.records if "SELECT 42" in r.getMessage()]
    assert lines and "(replica)" in lines[0]
    assert "tenantkit:tenantkit@" not in caplog.text


def test_a_read_failing_on_a_dead_replica_connection_is_retried_once_elsewhere(
        make_router: Callable[..., Router], mariadb_pair: MariaDBCluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    router = make_router(health_interval=60)
    with router.connect() as conn:  # a replica leg is now pooled
        assert _server(conn) == REPLICA_ID
    # The fault: the router does not notice the dead connection before using it (its idle
    # socket check is switched off), so the read itself fails on the replica.
    monkeypatch.setattr("tenantkit.db.session.socket_closed", lambda dbapi: False)
    mariadb_pair.stop_replica()
    with router.connect() as conn:
        assert _server(conn) == PRIMARY_ID
    assert router.stats()["read"]["retried"] == 1
    assert router.health.state(0).status == "down"
    with router.connect() as conn:  # marked down: straight to the primary, no retry
        assert _server(conn) == PRIMARY_ID
    assert router.stats()["read"]["retried"] == 1
    assert router.stats()["read"]["no-replica"] >= 1


def test_a_read_failing_inside_a_transaction_is_not_retried(
        make_router: Callable[..., Router], mariadb_pair: MariaDBCluster) -> None:
    router = make_router(health_interval=60)
    with router.connect() as conn:
        assert _server(conn) == REPLICA_ID
        mariadb_pair.stop_replica()
        with pytest.raises(sa_exc.OperationalError):
            conn.execute(SERVER_ID)  # its snapshot is gone: no silent switch of server
    assert "retried" not in router.stats()["read"]
    assert router.health.state(0).status == "down"
    with router.connect() as conn:
        assert _server(conn) == PRIMARY_ID


def test_a_replica_user_without_monitor_privilege_stays_usable(
        mariadb_pair: MariaDBCluster, caplog: pytest.LogCaptureFixture) -> None:
    replica = mariadb_pair.replica
    replica.query("CREATE USER IF NOT EXISTS 'plain'@'%' IDENTIFIED BY 'plain'")
    replica.query(f"GRANT SELECT ON `{mariadb_pair.database}`.* TO 'plain'@'%'")
    url = replica.url(mariadb_pair.database, user="plain", password="plain")
    router = Router(mariadb_pair.primary_url, [url], health_interval=60)
    try:
        with caplog.at_level(logging.WARNING, logger="tenantkit.db.health"):
            state = router.health.check(0)
        assert state.status == "ok" and state.lag is None
        assert "SLAVE MONITOR" in (state.error or "") and "SLAVE MONITOR" in caplog.text
        with router.connect() as conn:
            assert _server(conn) == REPLICA_ID
    finally:
        router.close()
