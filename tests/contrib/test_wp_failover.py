"""contrib/wp-db-router.php follows a failover (TENANTKIT_DB_PRIMARIES) through php-cli and
WordPress: the writable candidate is found, a split brain refuses writes, and a small state
file spares each request from probing every candidate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster, MariaDBServer

from .test_wp_db_router import WP

TIMEOUT = 60.0  # generous upper bound against hangs


def wait_for(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def php_url(server: MariaDBServer) -> str:
    return f"mysql://{USER}:{PASSWORD}@127.0.0.1:{server.port}/{DATABASE}"


@pytest.fixture
def wp(php: str, wp_tree: Path, mariadb_failover_cluster: MariaDBCluster,
       tmp_path: Path) -> WP:
    cluster = mariadb_failover_cluster
    cluster.primary.query(f"CREATE TABLE {DATABASE}.t (id INT AUTO_INCREMENT PRIMARY KEY, "
                          "v VARCHAR(40) NOT NULL)")
    cluster.wait_replicas()
    state = tmp_path / "state"
    state.mkdir()
    wp = WP(php, wp_tree, cluster, state)
    configure(wp, 1)
    return wp


def configure(wp: WP, interval: float, **overrides: Any) -> None:
    cluster = wp.pair
    p, r1, r2 = cluster.primary, cluster.replicas[0], cluster.replicas[1]
    wp.configure(TENANTKIT_DB_PRIMARY=None,
                 TENANTKIT_DB_PRIMARIES=[php_url(p), php_url(r1), php_url(r2)],
                 TENANTKIT_DB_REPLICAS=[php_url(r2), php_url(r1)],
                 TENANTKIT_CONNECT_TIMEOUT=1, TENANTKIT_DEAD_HOST_COOLDOWN=1,
                 TENANTKIT_PRIMARY_CHECK_INTERVAL=interval, **overrides)


def insert(wp: WP, tag: str, *, pause: str = "return 1;") -> dict[str, Any]:
    """One request: insert a row, run the PHP *pause*, then read the row back twice
    (read-your-writes inside the request). ``reads``: [(count, last_error)] of the reads."""
    # Once the page has started (template_redirect) a failed query returns false with the
    # reason in last_error, instead of WordPress's dead_db() page.
    read = ["get_var", f"SELECT COUNT(*) FROM t WHERE v = '{tag}'"]
    error = ["php", "return $GLOBALS['wpdb']->last_error;"]
    run = wp.run([["php", "$GLOBALS['wp_actions']['template_redirect'] = 1; return 1;"],
                  ["query", f"INSERT INTO t (v) VALUES ('{tag}')"], ["php", pause],
                  read, error, read, error], method="POST")
    if len(run.results) < 7:  # the request ended early (a fatal error, dead_db())
        return {"value": False, "error": f"ended early: {run.stdout[-500:]} {run.stderr}",
                "reads": [], "stderr": run.stderr}
    result: dict[str, Any] = run.results[1]
    result["reads"] = [tuple(run.results[3:5]), tuple(run.results[5:7])]
    result["stderr"] = run.stderr
    return result


def test_the_drop_in_follows_a_failover_exactly_once(wp: WP) -> None:
    cluster = wp.pair
    acked: list[str] = []
    errors: list[str] = []
    ryw: list[str] = []
    after: list[float] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(name: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tag = f"{name}-{n}"
            result = insert(wp, tag)
            with lock:
                if result["value"] == 1:
                    acked.append(tag)
                    after.append(time.monotonic())
                    # The primary may die between the write and a read: then the read fails
                    # (with the reason); it must never answer from a server that lacks the row.
                    if any(seen != "1" and not (seen is None and error)
                           for seen, error in result["reads"]):
                        ryw.append(f"{tag}: {result['reads']}")
                else:
                    errors.append(str(result["error"]))

    threads = [threading.Thread(target=writer, args=(f"p{i}",), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acked) >= 6, "writes before the failover")
        new = cluster.failover()
        promoted = time.monotonic()
        wait_for(lambda: sum(t > promoted for t in after) >= 6, "writes on the new primary")
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
    first = min(t for t in after if t > promoted)
    assert first - promoted < 10.0
    rows = dict(new.query(f"SELECT v, COUNT(*) FROM {DATABASE}.t GROUP BY v"))
    assert [tag for tag in acked if tag not in rows] == [], "acknowledged writes lost"
    assert all(n == 1 for n in rows.values()), "a write applied twice"
    assert ryw == [], "a read after the request's own write missed it"
    # A write sent to a read-only server fails with 1290: "... running with the --read-only
    # option so it cannot execute this statement".
    assert not [e for e in errors if "--read-only" in e], "a write reached a read-only server"


def test_reads_after_a_write_never_fall_back_to_a_replica_when_the_primary_dies(
        wp: WP, tmp_path: Path) -> None:
    cluster = wp.pair
    configure(wp, 1, TENANTKIT_LAG_THRESHOLD=0)  # the held replica still serves reads
    cluster.hold_replica(1)  # the replica reads use (r2) applies nothing from now on
    gate = tmp_path / "gate"
    pause = (f"$until = microtime(true) + {TIMEOUT}; while (!file_exists('{gate}')"
             " && microtime(true) < $until) { usleep(10000); } return 1;")
    done: list[dict[str, Any]] = []
    request = threading.Thread(target=lambda: done.append(insert(wp, "mine", pause=pause)))
    request.start()
    try:  # the request has written; its primary dies before it reads
        wait_for(lambda: bool(cluster.primary.query(
            f"SELECT 1 FROM {DATABASE}.t WHERE v = 'mine'")), "the request's write")
        cluster.stop_primary(kill=True)
    finally:
        gate.touch()
        request.join(TIMEOUT)
    result = done[0]
    assert result["value"] == 1
    # No primary: both reads fail with the reason; neither answers from the stale replica.
    assert [seen for seen, _ in result["reads"]] == [None, None], result
    (_, lost), (_, refused) = result["reads"]
    assert lost, "the read that lost its link says why"
    assert "no primary candidate is writable" in refused


def test_a_verdict_spares_later_requests_from_probing_every_candidate(wp: WP) -> None:
    configure(wp, 30)
    r1 = wp.pair.replicas[0]  # a candidate, and a replica after the one reads use
    start = r1.status("Connections")  # (each status() is a connection of its own: +1)
    assert insert(wp, "first")["value"] == 1
    before = r1.status("Connections")
    assert before == start + 2, "the first request probes every candidate"
    for i in range(3):
        assert insert(wp, f"more{i}")["value"] == 1
    assert r1.status("Connections") == before + 1, "a later request probed the candidates"


def test_split_brain_refuses_writes_until_exactly_one_is_writable(wp: WP) -> None:
    cluster = wp.pair
    assert insert(wp, "one")["value"] == 1
    new = cluster.failover()
    wait_for(lambda: insert(wp, "probe")["value"] == 1, "writes on the new primary")
    cluster.start_primary()  # the old primary is back, writable: a split brain
    old_label, new_label = f"127.0.0.1:{cluster.primary.port}", f"127.0.0.1:{new.port}"

    def refused() -> bool:  # until the verdict expires, writes still go to the new one
        result = insert(wp, "until-seen")
        return result["value"] is False and "split brain" in str(result["error"])

    wait_for(refused, "the split brain to be refused")
    result = insert(wp, "refused")
    assert old_label in result["error"] and new_label in result["error"]
    run = wp.run([["get_var", "SELECT COUNT(*) FROM t WHERE v = 'one'"]])
    assert run.results == ["1"], "reads go on during a split brain"
    for server in (new, cluster.primary):
        assert not server.query(f"SELECT 1 FROM {DATABASE}.t WHERE v = 'refused'")
    cluster.primary.query("SET GLOBAL read_only = 1")
    wait_for(lambda: insert(wp, "again")["value"] == 1, "writes to flow again")
    assert new.query(f"SELECT COUNT(*) FROM {DATABASE}.t WHERE v = 'again'")[0][0] >= 1
