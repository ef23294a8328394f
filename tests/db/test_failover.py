"""Following a failover with real servers: a primary and two replicas (semi-sync), the
primary killed, a replica promoted, the other re-pointed; the Router follows with no
restart and no file change, and a split brain refuses writes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from tenantkit.config import DatabaseSettings, Settings
from tenantkit.db.failures import error_code
from tenantkit.db.primaries import READ_ONLY_ERRORS, PrimaryFinder
from tenantkit.db.router import Router
from tenantkit.db.tokens import ConsistencyToken
from tenantkit.errors import PrimaryUnavailable, SplitBrain
from tenantkit.testing import MariaDBCluster, MariaDBServer

TIMEOUT = 30.0  # generous upper bound against hangs


def wait_for(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def url(server: MariaDBServer) -> str:
    return server.url()


@pytest.fixture
def cluster(mariadb_failover_cluster: MariaDBCluster) -> MariaDBCluster:
    mariadb_failover_cluster.primary.query(
        "CREATE TABLE tenantkit_test.t (id INT AUTO_INCREMENT PRIMARY KEY, "
        "tag VARCHAR(40) NOT NULL)")
    mariadb_failover_cluster.wait_replicas()
    return mariadb_failover_cluster


def make_router(cluster: MariaDBCluster, interval: float = 0.5, **kwargs: object) -> Router:
    p, r1, r2 = cluster.primary, cluster.replicas[0], cluster.replicas[1]
    # A token's wait outlasts a failover on a loaded machine: a read that gives up waiting
    # while the primary is down is served stale, which the test would count as a miss.
    settings = Settings(database=DatabaseSettings(
        primaries=(url(p), url(r1), url(r2)), replicas=(url(r2), url(r1)),
        connect_timeout=1.0, dead_host_cooldown=1.0, gtid_wait_timeout=8.0,
        replica_read_timeout=15.0, **kwargs))  # type: ignore[arg-type]
    return Router.from_settings(settings, health_interval=0.2, primary_check_interval=interval)


@pytest.fixture
def router(cluster: MariaDBCluster) -> Iterator[Router]:
    router = make_router(cluster)
    try:
        yield router
    finally:
        router.close()


def write(router: Router, tag: str) -> ConsistencyToken | None:
    with router.with_token() as scope, router.session() as session:
        session.execute(text("INSERT INTO t (tag) VALUES (:tag)"), {"tag": tag})
        session.commit()
        return scope.produced


def count(router: Router, tag: str, token: ConsistencyToken | None) -> int:
    with router.with_token(token), router.session() as session:
        return int(session.execute(text("SELECT COUNT(*) FROM t WHERE tag = :tag"),
                                   {"tag": tag}).scalar_one())


@dataclass
class Traffic:
    """Writers that each insert a unique tag, then read it back with their token."""

    router: Router
    acked: list[str] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    ryw_failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            tag = f"{name}-{n}"
            try:
                token = write(self.router, tag)
            except Exception as exc:
                with self.lock:
                    self.errors.append(exc)
                self.stop.wait(0.01)
                continue
            with self.lock:
                self.acked.append(tag)
                self.acked_at.append(time.monotonic())
            try:
                if count(self.router, tag, token) != 1:
                    self.ryw_failures.append(tag)
            except PrimaryUnavailable:
                pass  # no replica had it and the primary went: not a wrong answer

    @contextlib.contextmanager
    def flowing(self, threads: int = 3) -> Iterator[Traffic]:
        workers = [threading.Thread(target=self.run, args=(f"w{i}",), daemon=True)
                   for i in range(threads)]
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self.stop.set()
            for worker in workers:
                worker.join(TIMEOUT)

    def acked_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for t in self.acked_at if t > moment)


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or getattr(seen, "orig", None)


def test_writes_follow_a_failover_exactly_once_with_read_your_writes(
        cluster: MariaDBCluster, router: Router) -> None:
    old = cluster.primary.server_id
    with Traffic(router).flowing() as traffic:
        wait_for(lambda: len(traffic.acked) >= 30, "writes before the failover")
        new = cluster.failover()
        promoted = time.monotonic()
        wait_for(lambda: traffic.acked_after(promoted) >= 30, "writes on the new primary")
    first = min(t for t in traffic.acked_at if t > promoted)
    assert first - promoted < 10.0, "writes resumed within seconds of the promotion"
    assert router.primary_state().primary is not None
    assert f":{new.port}/" in router.primary_state().primary

    rows = dict(new.query("SELECT tag, COUNT(*) FROM tenantkit_test.t GROUP BY tag"))
    missing = [tag for tag in traffic.acked if tag not in rows]
    assert not missing, f"acknowledged writes lost in the failover: {missing[:5]}"
    assert all(n == 1 for n in rows.values()), "a write was applied twice"
    assert not traffic.ryw_failures, "a read did not see its own write"
    refused = [e for e in traffic.errors for c in chain(e) if error_code(c) in READ_ONLY_ERRORS]
    assert not refused, f"a write was sent to a read-only server: {refused[0]}"
    assert all(isinstance(e, PrimaryUnavailable) for e in traffic.errors), traffic.errors[:3]
    # Writes after the promotion carry the new primary's server id in their GTIDs.
    assert f"-{new.server_id}-" in new.gtid_current_pos() or old != new.server_id


def test_a_token_from_before_the_failover_is_honoured_by_a_replica_of_the_new_primary(
        cluster: MariaDBCluster, router: Router) -> None:
    token = write(router, "before")
    assert token is not None and token.gtid is not None
    new = cluster.failover()
    other = next(r for r in cluster.replicas if r is not new)
    # The re-pointed replica has the row; a read with the old token is served by it (once the
    # health check sees it replicating again: it was briefly stopped for the re-pointing).
    wait_for(lambda: router.health.usable(0) and router.health.state(0).status == "ok"
             and router.health.state(0).error is None, "the re-pointed replica to be usable")
    before = router.stats().get("read", {}).get("replica", 0)
    assert count(router, "before", token) == 1
    assert router.stats()["read"]["replica"] == before + 1
    assert other.query("SELECT COUNT(*) FROM tenantkit_test.t WHERE tag = 'before'")[0][0] == 1
    # And a write on the new primary gives a token that the re-pointed replica honours.
    wait_for(lambda: _writes(router), "writes on the new primary")
    after = write(router, "after")
    assert after is not None and after.gtid is not None
    assert count(router, "after", after) == 1


def test_split_brain_refuses_writes_until_exactly_one_is_writable(
        cluster: MariaDBCluster, router: Router, caplog: pytest.LogCaptureFixture) -> None:
    write(router, "one")
    new = cluster.failover()
    wait_for(lambda: _writes(router), "writes on the new primary")
    caplog.set_level(logging.ERROR, logger="tenantkit.db.primaries")
    cluster.start_primary()  # the old primary comes back writable: two primaries
    wait_for(lambda: router.primary_state().split_brain, "the split brain to be seen")
    with pytest.raises(SplitBrain, match=f":{cluster.primary.port}/.* and .*:{new.port}/|"
                                         f":{new.port}/.* and .*:{cluster.primary.port}/"
                       ) as refused:
        write(router, "refused")
    assert len(refused.value.servers) == 2
    assert count(router, "one", None) == 1, "reads go on during a split brain"
    for _ in range(5):
        with pytest.raises(SplitBrain):
            write(router, "refused")
    assert sum("split brain" in r.getMessage() for r in caplog.records) == 1, "logged once"
    assert not new.query("SELECT 1 FROM tenantkit_test.t WHERE tag = 'refused'")
    assert not cluster.primary.query("SELECT 1 FROM tenantkit_test.t WHERE tag = 'refused'")
    cluster.primary.query("SET GLOBAL read_only = 1")
    wait_for(lambda: _writes(router), "writes to flow again")
    assert f":{new.port}/" in str(router.primary_state().primary)


def _writes(router: Router) -> bool:
    try:
        write(router, "probe")
    except PrimaryUnavailable:
        return False
    return True


def test_primary_down_fails_writes_within_connect_timeout_and_reports_an_outage(
        cluster: MariaDBCluster) -> None:
    router = make_router(cluster, on_primary_down="read_only")
    try:
        write(router, "one")
        assert not router.primary_outage()
        cluster.stop_primary(kill=True)
        started = time.monotonic()
        with pytest.raises(PrimaryUnavailable):
            write(router, "two")
        assert time.monotonic() - started < 1.0 + 1.5
        wait_for(router.primary_outage, "the outage to show")
        assert count(router, "one", None) == 1, "reads go on"
        cluster.promote(cluster.replicas[0])
        wait_for(lambda: _writes(router), "writes on the promoted replica")
        assert not router.primary_outage()
    finally:
        router.close()


def test_on_primary_down_error_reports_no_outage(cluster: MariaDBCluster,
                                                 router: Router) -> None:
    cluster.stop_primary(kill=True)
    with pytest.raises(PrimaryUnavailable):
        write(router, "x")
    wait_for(lambda: router.primary_state().index is None, "no primary")
    assert not router.primary_outage()


def test_one_candidate_is_never_probed(cluster: MariaDBCluster) -> None:
    finder = PrimaryFinder([url(cluster.replicas[0])])  # read-only, yet the one configured
    assert finder.single and finder.writable() == 0
    finder.start()
    assert finder._thread is None
    finder.close()


def test_a_switchover_the_router_has_not_seen_yet_refuses_the_write_and_moves_on(
        cluster: MariaDBCluster) -> None:
    # A planned switchover: the primary is made read-only, a replica promoted. The router's
    # verdict still names the old one until its next probe (none for a minute here).
    router = make_router(cluster, interval=60)
    try:
        _switchover(cluster, router)
    finally:
        router.close()


def _switchover(cluster: MariaDBCluster, router: Router) -> None:
    write(router, "before")
    cluster.primary.query("SET GLOBAL read_only = 1")
    cluster.drain(cluster.replicas[0])
    cluster.promote(cluster.replicas[0])
    outcomes = []
    for attempt in range(3):
        try:
            write(router, f"during{attempt}")
            outcomes.append("ok")
        except PrimaryUnavailable as exc:
            assert "read-only now" in str(exc)
            assert any(error_code(c) in READ_ONLY_ERRORS for c in chain(exc))
            outcomes.append("refused")
    assert "refused" not in outcomes[1:], "the first refusal is enough: the next write moves"
    wait_for(lambda: _writes(router), "writes on the promoted replica")
    new = cluster.replicas[0]
    assert f":{new.port}/" in str(router.primary_state().primary)
    assert not cluster.primary.query("SELECT 1 FROM tenantkit_test.t WHERE tag LIKE 'during%'"
                                     " AND id > 1")
