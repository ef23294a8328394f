"""MariaDB servers for tests and benchmarks: :class:`MariaDBServer` (one ``mariadbd`` in its own
datadir) and :class:`MariaDBCluster` (a primary and read-only replicas, GTID replication)::

    with MariaDBCluster(replicas=1) as cluster:
        print(cluster.primary_url, cluster.replica_url)

Failover drills (a cluster of its own: the topology changes)::

    with MariaDBCluster(replicas=2, semi_sync=True) as cluster:
        new = cluster.failover()          # kill the primary, promote, re-point the others
        # or step by step:
        cluster.stop_primary(kill=True)
        cluster.promote(cluster.replicas[0])              # STOP SLAVE; RESET SLAVE ALL;
                                                          # SET GLOBAL read_only = 0
        cluster.repoint(cluster.replicas[1], cluster.replicas[0])   # MASTER_USE_GTID

With ``semi_sync=True`` a commit is acknowledged to the client only once a replica has
received it (MariaDB's built-in semi-synchronous replication, AFTER_SYNC): asynchronous
replication can lose acknowledged writes when the primary is killed, semi-sync cannot as
long as the most advanced replica is the one promoted (what :meth:`MariaDBCluster.failover`
does, as failover tools do).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pymysql

from tenantkit.testing.process import Process, find_binary

__all__ = ["DATABASE", "PASSWORD", "USER", "MariaDBCluster", "MariaDBServer",
           "binlog_source_args"]

DATABASE = "tenantkit_test"
USER = "tenantkit"
PASSWORD = "tenantkit"
REPL_USER = "repl"
REPL_PASSWORD = "repl"

# What the application user may do: everything an app needs, but not READ ONLY ADMIN or
# SUPER, so that read_only=1 on a replica refuses its writes loudly.
_APP_GRANTS = (
    "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, "
    "LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, "
    "TRIGGER, REFERENCES, PROCESS, FILE, RELOAD, BINLOG MONITOR, SLAVE MONITOR"
)



# Semi-synchronous replication (built into MariaDB >= 10.3): a commit returns once a replica
# has the transaction (AFTER_SYNC); no wait while no replica is connected (a promoted
# primary before its replicas are re-pointed); a long timeout, so that it does not quietly
# fall back to asynchronous under a loaded test machine.
_SEMI_SYNC_ARGS = (
    "--rpl-semi-sync-master-enabled=ON", "--rpl-semi-sync-slave-enabled=ON",
    "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    "--rpl-semi-sync-master-wait-no-slave=OFF", "--rpl-semi-sync-master-timeout=30000",
)


class MariaDBServer(Process):
    """One ``mariadbd`` in its own datadir on 127.0.0.1:<port>.

    ``url()`` gives a SQLAlchemy URL for the application user (no SUPER, no READ ONLY ADMIN);
    ``admin()`` a root connection over the Unix socket for the fixture's own housekeeping.
    """

    name = "mariadbd"

    def __init__(self, workdir: Path, server_id: int, *, read_only: bool = False,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir)
        self.server_id = server_id
        self.read_only = read_only
        self.extra_args = extra_args
        self.datadir = workdir / "data"
        # A private tmpdir: a mariadbd starting up removes the #sql* temporary files it finds
        # in its tmpdir, so servers sharing /tmp break each other's installs and queries.
        self.tmpdir = workdir / "tmp"
        self.socket = workdir / "mysqld.sock"
        self.binary = find_binary("mariadbd", "mariadb-server")
        self._install()

    def _install(self) -> None:
        installer = find_binary("mariadb-install-db", "mariadb-server")
        self.datadir.mkdir(parents=True)
        self.tmpdir.mkdir(exist_ok=True)
        result = subprocess.run(
            [installer, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             f"--tmpdir={self.tmpdir}",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--innodb-log-file-size=8M"],
            capture_output=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed: {result.stderr.decode(errors='replace')[-2000:]}"
            )

    def command(self) -> list[str]:
        return [
            self.binary, "--no-defaults", "--user=root",
            f"--datadir={self.datadir}", f"--socket={self.socket}", f"--port={self.port}",
            f"--tmpdir={self.tmpdir}",
            "--bind-address=127.0.0.1", f"--pid-file={self.workdir / 'mysqld.pid'}",
            f"--log-error={self.log_file}", f"--server-id={self.server_id}",
            "--log-bin=mysql-bin", "--binlog-format=MIXED", "--log-slave-updates=1",
            "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=8M", "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0", "--performance-schema=OFF", "--max-connections=500",
            "--max-allowed-packet=256M", "--local-infile=1", "--slave-net-timeout=5",
            f"--read-only={1 if self.read_only else 0}",
            *self.extra_args,
        ]

    def ready(self) -> bool:
        # A raw probe: the server is ready once its socket answers with a handshake packet.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                header = sock.recv(5)
        except OSError:
            return False
        return len(header) == 5 and header[4] == 10  # protocol version 10

    def start(self) -> None:
        super().start()
        self._ensure_users()

    def admin(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A root connection over the Unix socket, autocommit on."""
        return pymysql.connect(
            unix_socket=str(self.socket), user="root", password="", autocommit=True,
            connect_timeout=2, **kwargs,
        )

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run *sql* as root and return all rows (empty for statements without a result)."""
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def _ensure_users(self) -> None:
        statements = [
            "SET SESSION sql_log_bin = 0",
            f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'",
            f"GRANT {_APP_GRANTS} ON *.* TO '{USER}'@'%'",
            f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'",
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
        ]
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)

    def url(self, database: str = DATABASE, *, driver: str = "pymysql", user: str = USER,
            password: str = PASSWORD, query: str = "") -> str:
        """SQLAlchemy URL, e.g. ``mysql+pymysql://tenantkit:tenantkit@127.0.0.1:PORT/db``."""
        auth = f"{user}:{password}" if password else user
        tail = f"?{query}" if query else ""
        return f"mysql+{driver}://{auth}@127.0.0.1:{self.port}/{database}{tail}"

    def connect_args(self, database: str = DATABASE) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` as the application user."""
        return {"host": "127.0.0.1", "port": self.port, "user": USER, "password": PASSWORD,
                "database": database}

    def status(self, variable: str) -> int:
        """A counter from ``SHOW GLOBAL STATUS`` (``Com_select``, ``Com_insert``, ...)."""
        rows = self.query("SHOW GLOBAL STATUS LIKE %s", (variable,))
        return int(rows[0][1]) if rows else 0

    def gtid_current_pos(self) -> str:
        return str(self.query("SELECT @@GLOBAL.gtid_current_pos")[0][0])

    def purge_binary_logs(self, timeout: float = 10.0) -> str:
        """Rotate the binlog and purge every older file (``PURGE BINARY LOGS``), as an
        operator's ``expire_logs_days`` would; returns the file left.

        The server keeps a file until its binlog checkpoint (the engine's log flush, about a
        second with ``innodb_flush_log_at_trx_commit=2``) and says nothing, so this repeats
        the purge until the older files are gone."""
        self.query("FLUSH BINARY LOGS")
        last = str(self.query("SHOW BINARY LOGS")[-1][0])
        deadline = time.monotonic() + timeout
        while True:
            self.query(f"PURGE BINARY LOGS TO '{last}'")
            logs = [str(row[0]) for row in self.query("SHOW BINARY LOGS")]
            if logs == [last]:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"binlogs {logs[:-1]} still there after {timeout:g}s")
            time.sleep(0.05)


def binlog_source_args() -> tuple[str, ...]:
    """``mariadbd`` options that give a replica what the binlog source needs
    (:data:`tenantkit.cache.sources.binlog.REPLICA_NEEDS`; ``log_bin`` is always on here)."""
    from tenantkit.cache.sources.binlog import REPLICA_NEEDS

    return tuple(f"--{name.replace('_', '-')}={value}" for name, value in REPLICA_NEEDS.items()
                 if name != "log_bin")


class MariaDBCluster:
    """A primary with ``replicas`` read-only replicas (GTID replication, slave_pos);
    ``binlog_source=True`` starts the replicas as the binlog source needs them
    (``log_slave_updates``, ``binlog_format=ROW``, ``binlog_row_metadata=FULL``).

    Fault controls for tests: :meth:`stop_primary`, :meth:`start_primary`,
    :meth:`stop_replica`, :meth:`start_replica`, :meth:`hold_replica` (stop the SQL thread:
    new rows stay off it until :meth:`release_replica`) and :meth:`delay_replica`
    (``MASTER_DELAY``). Failover: :meth:`promote`, :meth:`repoint`, :meth:`failover`
    (they change the topology: use a cluster of your own, not the shared fixture's).
    """

    def __init__(self, replicas: int = 1, *, root: Path | None = None,
                 binlog_source: bool = False, semi_sync: bool = False) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="tenantkit-mariadb-")) if root is None else root
        self.database = DATABASE
        self.semi_sync = semi_sync
        extra = _SEMI_SYNC_ARGS if semi_sync else ()
        self.primary = MariaDBServer(self.root / "primary", 1, extra_args=extra)
        self.replicas = [
            MariaDBServer(self.root / f"replica{i}", i + 2, read_only=True,
                          extra_args=(*extra,
                                      *(binlog_source_args() if binlog_source else ())))
            for i in range(replicas)
        ]

    def binlog_url(self, index: int = 0) -> str:
        """A URL for the binlog source to read replica ``index`` with: a user with
        REPLICATION SLAVE and SELECT (for WordPress's term tables)."""
        return f"mysql+pymysql://root@127.0.0.1:{self.replicas[index].port}/"

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> MariaDBCluster:
        """Start every server and replication; create the test database."""
        try:
            for server in (self.primary, *self.replicas):
                server.start()
            for index in range(len(self.replicas)):
                self._configure_replication(index)
            self.reset()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in (*self.replicas, self.primary):
            server.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MariaDBCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _configure_replication(self, index: int) -> None:
        replica = self.replicas[index]
        replica.query("STOP SLAVE")
        replica.query(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_DELAY=0",
            (self.primary.port,),
        )
        replica.query("START SLAVE")

    def reset(self) -> None:
        """Bring every server back up, release held replicas, recreate an empty database."""
        self.primary.start()
        for index, replica in enumerate(self.replicas):
            replica.start()
            status = self.replica_status(index)
            if (status.get("Slave_IO_Running") != "Yes"
                    or status.get("Slave_SQL_Running") != "Yes"
                    or str(status.get("SQL_Delay", "0")) != "0"):
                self._configure_replication(index)
        self.primary.query(f"DROP DATABASE IF EXISTS `{self.database}`")
        self.primary.query(f"CREATE DATABASE `{self.database}`")
        self.wait_replicas()

    # --- URLs ----------------------------------------------------------------------

    @property
    def primary_url(self) -> str:
        return self.primary.url(self.database)

    @property
    def replica(self) -> MariaDBServer:
        return self.replicas[0]

    @property
    def replica_url(self) -> str:
        return self.replicas[0].url(self.database)

    @property
    def replica_urls(self) -> list[str]:
        return [r.url(self.database) for r in self.replicas]

    # --- replication control ------------------------------------------------------------

    def replica_status(self, index: int = 0) -> dict[str, Any]:
        with contextlib.closing(self.replicas[index].admin(
                cursorclass=pymysql.cursors.DictCursor)) as conn, conn.cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            return dict(row) if row else {}

    def wait_replicas(self, timeout: float = 10.0) -> None:
        """Wait until every running replica has applied everything the primary wrote."""
        pos = self.primary.gtid_current_pos()
        for index, replica in enumerate(self.replicas):
            if not replica.running:
                continue
            rows = replica.query("SELECT MASTER_GTID_WAIT(%s, %s)", (pos, timeout))
            if rows[0][0] != 0:
                raise TimeoutError(
                    f"replica {index} did not reach GTID {pos} within {timeout:g}s: "
                    f"{self.replica_status(index).get('Last_Error', '')}"
                )

    def hold_replica(self, index: int = 0) -> None:
        """Stop the replica's SQL thread: it keeps receiving but applies nothing new."""
        self.replicas[index].query("STOP SLAVE SQL_THREAD")

    def release_replica(self, index: int = 0) -> None:
        self.replicas[index].query("START SLAVE SQL_THREAD")

    @contextlib.contextmanager
    def replica_held(self, index: int = 0) -> Iterator[None]:
        """``with cluster.replica_held(): ...`` holds the replica back for the block."""
        self.hold_replica(index)
        try:
            yield
        finally:
            self.release_replica(index)

    def delay_replica(self, seconds: int, index: int = 0) -> None:
        """Make the replica apply events ``seconds`` after the primary (``MASTER_DELAY``)."""
        replica = self.replicas[index]
        replica.query("STOP SLAVE")
        replica.query("CHANGE MASTER TO MASTER_DELAY=%s", (seconds,))
        replica.query("START SLAVE")

    def stop_primary(self, *, kill: bool = False) -> None:
        self.primary.stop(kill=kill)

    def start_primary(self) -> None:
        self.primary.start()

    def stop_replica(self, index: int = 0, *, kill: bool = False) -> None:
        self.replicas[index].stop(kill=kill)

    def start_replica(self, index: int = 0) -> None:
        self.replicas[index].start()

    # --- failover -------------------------------------------------------------------------

    def drain(self, replica: MariaDBServer, timeout: float = 10.0) -> str:
        """Wait until *replica* has applied everything it received (its relay log), e.g.
        after the primary died; return its ``gtid_slave_pos``."""
        with contextlib.closing(replica.admin(cursorclass=pymysql.cursors.DictCursor)) as conn, \
                conn.cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone() or {}
        received = str(row.get("Gtid_IO_Pos") or "")
        if received:
            rows = replica.query("SELECT MASTER_GTID_WAIT(%s, %s)", (received, timeout))
            if rows[0][0] != 0:
                raise TimeoutError(f"replica {replica.server_id} did not apply its relay log "
                                   f"({received}) within {timeout:g}s")
        return str(replica.query("SELECT @@GLOBAL.gtid_slave_pos")[0][0])

    def promote(self, replica: MariaDBServer) -> None:
        """Make *replica* a primary: ``STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only =
        0`` (it stays writable when restarted)."""
        replica.query("STOP SLAVE")
        replica.query("RESET SLAVE ALL")
        replica.query("SET GLOBAL read_only = 0")
        replica.read_only = False

    def repoint(self, replica: MariaDBServer, primary: MariaDBServer) -> None:
        """Make *replica* replicate from *primary*, from where it is (``MASTER_USE_GTID``)."""
        replica.query("STOP SLAVE")
        replica.query(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_DELAY=0",
            (primary.port,),
        )
        replica.query("START SLAVE")

    def failover(self, *, kill: bool = True) -> MariaDBServer:
        """Kill (or stop) the primary, promote the most advanced replica (the first of equals)
        and re-point the others to it; return the new primary. ``self.primary`` stays the
        old one (down)."""
        self.stop_primary(kill=kill)
        running = [r for r in self.replicas if r.running]
        if not running:
            raise RuntimeError("no running replica to promote")
        applied = {r.server_id: _seq(self.drain(r)) for r in running}
        new = max(running, key=lambda r: (applied[r.server_id], -self.replicas.index(r)))
        self.promote(new)
        for replica in running:
            if replica is not new:
                self.repoint(replica, new)
        return new


def _seq(gtid_pos: str) -> int:
    """The highest sequence number of domain 0 in a GTID position ("0-1-57" -> 57)."""
    best = 0
    for part in gtid_pos.split(","):
        fields = part.strip().split("-")
        if len(fields) == 3 and fields[0] == "0":
            best = max(best, int(fields[2]))
    return best
