"""The real-server fixtures themselves."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pymysql
import pytest

from tenantkit.testing import MariaDBCluster, RedisServer


def connect(cluster: MariaDBCluster, which: str) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    server = cluster.primary if which == "primary" else cluster.replica
    return pymysql.connect(**server.connect_args(), autocommit=True, connect_timeout=3)


def test_row_written_on_primary_reaches_replica(mariadb_pair: MariaDBCluster) -> None:
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
        cur.execute("INSERT INTO t VALUES (1, 'hello')")
    mariadb_pair.wait_replicas()
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM t WHERE id = 1")
        assert cur.fetchone() == ("hello",)


def test_write_on_replica_fails_read_only(mariadb_pair: MariaDBCluster) -> None:
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    mariadb_pair.wait_replicas()
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute("INSERT INTO t VALUES (1)")
        assert info.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT (read-only)


def test_schema_is_reset_between_tests(mariadb_pair: MariaDBCluster) -> None:
    # The previous tests created table t; this one must start from an empty database.
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert cur.fetchall() == ()


def test_gtid_replication_with_slave_pos(mariadb_pair: MariaDBCluster) -> None:
    status = mariadb_pair.replica_status()
    assert status["Using_Gtid"] == "Slave_Pos"
    assert mariadb_pair.replica.query("SELECT @@read_only")[0][0] == 1
    assert mariadb_pair.primary.query("SELECT @@log_bin")[0][0] == 1


def test_held_replica_keeps_new_row_off_until_released(mariadb_pair: MariaDBCluster) -> None:
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    mariadb_pair.wait_replicas()
    mariadb_pair.hold_replica()
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (7)")
    time.sleep(0.3)
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone() == (0,)
    mariadb_pair.release_replica()
    mariadb_pair.wait_replicas(timeout=10)
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone() == (1,)


def test_delay_replica_is_undone_by_reset(mariadb_cluster: Callable[..., MariaDBCluster]) -> None:
    cluster = mariadb_cluster(replicas=1)
    cluster.delay_replica(30)
    assert int(cluster.replica_status()["SQL_Delay"]) == 30
    cluster.reset()
    assert int(cluster.replica_status()["SQL_Delay"]) == 0


def test_stop_and_start_primary(mariadb_pair: MariaDBCluster) -> None:
    mariadb_pair.stop_primary()
    with pytest.raises(pymysql.err.OperationalError):
        connect(mariadb_pair, "primary")
    # Reads keep working on the replica while the primary is down.
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    mariadb_pair.start_primary()
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE after_restart (id INT)")
        cur.execute("INSERT INTO after_restart VALUES (1)")
    mariadb_pair.wait_replicas(timeout=15)
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM after_restart")
        assert cur.fetchone() == (1,)


def test_stop_and_start_replica(mariadb_pair: MariaDBCluster) -> None:
    mariadb_pair.stop_replica()
    with pytest.raises(pymysql.err.OperationalError):
        connect(mariadb_pair, "replica")
    with connect(mariadb_pair, "primary") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE while_down (id INT)")
    mariadb_pair.start_replica()
    mariadb_pair.wait_replicas(timeout=15)
    with connect(mariadb_pair, "replica") as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'while_down'")
        assert cur.fetchone() == ("while_down",)


def test_cluster_with_two_replicas(mariadb_cluster: Callable[..., MariaDBCluster]) -> None:
    cluster = mariadb_cluster(replicas=2)
    assert len(cluster.replica_urls) == 2
    assert len({cluster.primary.port, *(r.port for r in cluster.replicas)}) == 3
    cluster.primary.query(f"CREATE TABLE {cluster.database}.t (id INT)")
    cluster.primary.query(f"INSERT INTO {cluster.database}.t VALUES (1), (2)")
    cluster.wait_replicas()
    for replica in cluster.replicas:
        assert replica.query(f"SELECT COUNT(*) FROM {cluster.database}.t") == [(2,)]


def test_redis_server_stop_and_start(redis_server: RedisServer) -> None:
    def ping() -> bytes:
        with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
            sock.sendall(b"SET k v\r\nGET k\r\n")
            time.sleep(0.05)
            return sock.recv(64)

    assert b"$1\r\nv" in ping()
    redis_server.stop()
    with pytest.raises(OSError):
        ping()
    redis_server.start()
    assert b"+OK" in ping()


def test_redis_is_empty_at_the_start_of_a_test(redis_server: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
        sock.sendall(b"DBSIZE\r\n")
        assert sock.recv(16) == b":0\r\n"


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenantkit.testing import ServiceMissing, find_binary

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServiceMissing, match=r"apt-get install some-package"):
        find_binary("no-such-server-binary", "some-package")


def test_missing_service_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenantkit.testing import ServiceMissing
    from tenantkit.testing.plugin import service_missing as _missing

    monkeypatch.delenv("TENANTKIT_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install x"):
        _missing(ServiceMissing("x not found: install x"))
    monkeypatch.setenv("TENANTKIT_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="TENANTKIT_REQUIRE_SERVICES=1"):
        _missing(ServiceMissing("x not found: install x"))


def test_server_classes_import_without_pytest() -> None:
    # pytest made unimportable: the server classes must not need it (only the plugin does).
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"
        "import tenantkit.testing as t\n"
        "from tenantkit.testing import (LoopbackProxy, MariaDBCluster, RedisServer, free_port,\n"
        "                               wait_port)\n"
        "assert 'pytest' not in {m for m, v in sys.modules.items() if v is not None}\n"
        "try:\n"
        "    import tenantkit.testing.plugin\n"
        "except ImportError:\n"
        "    print('plugin needs pytest')\n"
        "print(free_port() > 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plugin", "needs", "pytest", "True"]


def test_plugin_registers_the_fixtures(request: pytest.FixtureRequest,
                                       tmp_path: Path) -> None:
    import tenantkit.testing.plugin

    entry = [ep for ep in entry_points(group="pytest11") if ep.name == "tenantkit"]
    assert [ep.value for ep in entry] == ["tenantkit.testing.plugin"]
    assert request.config.pluginmanager.get_plugin("tenantkit") is tenantkit.testing.plugin
    # A fresh pytest run in an empty directory (no conftest) sees the fixtures.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"mariadb_pair", "mariadb_cluster", "redis_server"} <= listed, result.stdout


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    # A port picked now and bound later by a MariaDB or Redis must not be one the kernel may
    # hand meanwhile to an outgoing connection as its own (before: "mariadbd exited at start").
    from tenantkit.testing.net import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(port < low for port in ports), sorted(ports)
    assert len(ports) > 1  # picked at random: two processes rarely pick the same one
