"""contrib/wp-db-router.php when a connection is lost: a real fault, from a TCP proxy
(``mysqlfault.py``) between the drop-in and the real MariaDB, driven through php-cli.

Like the Python router (:data:`tenantkit.db.failures.CONNECTION_LOST`, of which the drop-in
carries a generated copy): a read whose connection was lost is retried once on a new
connection; a write is never re-run (it may have run) and fails with a clear error, and the
next statement gets a new connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkit.db.failures import CONNECTION_LOST
from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster

from .mysqlfault import FaultProxy
from .test_wp_db_router import WP, _primary_count, make_table

MARK = "tk_fault"


@pytest.fixture
def proxy(mariadb_pair: MariaDBCluster) -> Iterator[FaultProxy]:
    with FaultProxy(mariadb_pair.primary.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def wp(php: str, wp_tree: Path, mariadb_pair: MariaDBCluster, tmp_path: Path,
       proxy: FaultProxy) -> WP:
    """The drop-in with the primary behind the proxy, no replica, uncompressed (the proxy
    must see the statement)."""
    state = tmp_path / "state"
    state.mkdir()
    site = WP(php, wp_tree, mariadb_pair, state)
    site.configure(
        TENANTKIT_DB_PRIMARY=f"mysql://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}/{DATABASE}",
        TENANTKIT_DB_REPLICAS=[], TENANTKIT_COMPRESS=False,
    )
    return site


def arm(proxy: FaultProxy, how: str, times: int = 1) -> None:
    proxy.arm(MARK.encode(), error=None if how == "cut" else int(how), times=times)


WAYS = ["cut", *sorted(str(code) for code in CONNECTION_LOST)]


@pytest.mark.parametrize("how", WAYS)
def test_a_read_whose_connection_is_lost_is_retried_once_on_a_new_connection(
        wp: WP, proxy: FaultProxy, how: str) -> None:
    make_table(wp.pair, rows=1)
    arm(proxy, how)
    run = wp.run([["get_var", f"SELECT v FROM t /* {MARK} */"], ["get_var", "SELECT 2"]])
    assert proxy.faults == 1
    assert run.results == ["row0", "2"], (run.stdout, run.stderr)
    assert proxy.connections == 2  # the lost one, and one new


@pytest.mark.parametrize("how", ["cut", "4031"])
def test_a_read_lost_twice_fails_instead_of_looping(wp: WP, proxy: FaultProxy,
                                                    how: str) -> None:
    make_table(wp.pair, rows=1)
    arm(proxy, how, times=3)
    run = wp.run([["get_var", f"SELECT v FROM t /* {MARK} */"], ["get_var", "SELECT 2"]])
    assert proxy.faults == 2  # the statement and one retry, never a third
    assert run.results == [None, "2"], (run.stdout, run.stderr)


@pytest.mark.parametrize("how", WAYS)
def test_a_write_whose_connection_is_lost_fails_clearly_and_is_not_rerun(
        wp: WP, proxy: FaultProxy, how: str) -> None:
    make_table(wp.pair)
    arm(proxy, how)
    run = wp.run([
        ["query", f"INSERT INTO t (v) VALUES ('lost') /* {MARK} */"],
        ["query", "INSERT INTO t (v) VALUES ('next')"],
    ])
    assert proxy.faults == 1
    lost, following = run.results
    assert lost["value"] is False
    assert "was lost during a write" in lost["error"] and "not retried" in lost["error"], lost
    assert following["value"] == 1 and following["error"] == ""  # a new connection
    assert _primary_count(wp.pair) == 1  # 'next' only: the lost write was not re-run
    logged = [line for line in run.stderr.splitlines() if "was lost during a write" in line]
    assert len(logged) == 1, run.stderr


def test_a_read_inside_a_transaction_is_not_retried(wp: WP, proxy: FaultProxy) -> None:
    make_table(wp.pair, rows=1)
    arm(proxy, "cut")
    run = wp.run([
        ["query", "START TRANSACTION"],
        ["query", "INSERT INTO t (v) VALUES ('in tx')"],
        ["query", f"SELECT v FROM t /* {MARK} */"],
        ["get_var", "SELECT COUNT(*) FROM t"],
    ])
    assert run.results[2]["value"] is False
    assert "was lost during a transaction" in run.results[2]["error"]
    assert run.results[3] == "1"  # the transaction went with the connection
