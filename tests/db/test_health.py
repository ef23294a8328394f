"""Replica status: SHOW REPLICA STATUS where the server has it, SHOW SLAVE STATUS otherwise."""

from __future__ import annotations

import logging

import pytest

from tenantkit.db import health
from tenantkit.db.health import ReplicaHealth, replica_row
from tenantkit.testing import MariaDBCluster


def test_reads_show_replica_status_first(mariadb_pair: MariaDBCluster) -> None:
    monitor = ReplicaHealth([mariadb_pair.replica_url])
    try:
        before = mariadb_pair.replica.status("Com_show_slave_status")
        assert monitor.check(0).status == "ok"
        assert monitor._status_sql == [0]  # SHOW REPLICA STATUS worked (MariaDB >= 10.5.1)
        assert mariadb_pair.replica.status("Com_show_slave_status") == before + 1
    finally:
        monitor.close()


def test_falls_back_to_show_slave_status_on_a_server_that_does_not_know_the_first(
        mariadb_pair: MariaDBCluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # An older server's answer to an unknown statement: a real syntax error (1064).
    monkeypatch.setattr(health, "STATUS_STATEMENTS",
                        ("SHOW NEWFANGLED REPLICA STATUS", "SHOW SLAVE STATUS"))
    monitor = ReplicaHealth([mariadb_pair.replica_url])
    try:
        with caplog.at_level(logging.INFO, logger="tenantkit.db.health"):
            assert monitor.check(0).status == "ok"
            assert monitor.check(0).status == "ok"
        assert monitor._status_sql == [1]
        assert sum("does not know" in r.getMessage() for r in caplog.records) == 1
    finally:
        monitor.close()


@pytest.mark.parametrize("row, expected", [
    pytest.param({"Replica_IO_Running": "Yes", "Replica_SQL_Running": "No",
                  "Seconds_Behind_Source": 3},
                 {"Slave_IO_Running": "Yes", "Slave_SQL_Running": "No",
                  "Seconds_Behind_Master": 3}, id="mysql 8 names"),
    pytest.param({"Slave_IO_Running": "Yes", "Seconds_Behind_Master": None},
                 {"Slave_IO_Running": "Yes", "Seconds_Behind_Master": None}, id="classic"),
])
def test_replica_row_reads_mysql_names_as_the_classic_ones(
        row: dict[str, object], expected: dict[str, object]) -> None:
    assert {k: v for k, v in replica_row(row).items() if k in expected} == expected
