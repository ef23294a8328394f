"""Real MariaDB and Redis servers for tests, as a pytest plugin.

Installed with tenantkit (entry point ``pytest11``), so your own tests can use::

    def test_reads_from_replica(mariadb_pair):
        engine = create_engine(mariadb_pair.primary_url)
        ...
        mariadb_pair.wait_replicas()          # the replica has everything the primary has

    def test_two_nodes(mariadb_cluster):
        cluster = mariadb_cluster(replicas=2)  # one primary, two replicas

    def test_events(redis_server):
        client = redis.Redis.from_url(redis_server.url)

Every server is a ``mariadbd`` or ``redis-server`` started from the installed binaries in a
temporary directory on a free loopback port, shared by the whole test session, reset between
tests (database dropped and recreated, stopped servers started, held replicas released) and
stopped at the end. The same classes work outside pytest (benchmarks, scripts)::

    with MariaDBCluster(replicas=1) as cluster:
        print(cluster.primary_url, cluster.replica_url)

A missing binary skips the tests that need it with a reason naming the package to install,
unless ``TENANTKIT_REQUIRE_SERVICES=1``, which turns the skip into a failure (CI sets it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pymysql
import pytest

__all__ = [
    "MariaDBCluster",
    "MariaDBServer",
    "RedisServer",
    "ServiceMissing",
    "find_binary",
    "free_port",
]

DATABASE = "tenantkit_test"
USER = "tenantkit"
PASSWORD = "tenantkit"
REPL_USER = "repl"
REPL_PASSWORD = "repl"
START_TIMEOUT = 30.0

# What the application user may do: everything an app needs, but not READ ONLY ADMIN or
# SUPER, so that read_only=1 on a replica refuses its writes loudly.
_APP_GRANTS = (
    "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, "
    "LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, "
    "TRIGGER, REFERENCES, PROCESS, FILE, RELOAD, BINLOG MONITOR, SLAVE MONITOR"
)


class ServiceMissing(RuntimeError):
    """A server binary the fixture needs is not installed."""


def find_binary(name: str, package: str) -> str:
    """Return the path of server binary *name*, looking in PATH and the sbin directories.

    ``TENANTKIT_<NAME>`` (e.g. ``TENANTKIT_MARIADBD``) overrides the search.
    Raises :class:`ServiceMissing` naming the Debian package to install.
    """
    override = os.environ.get("TENANTKIT_" + name.upper().replace("-", "_"))
    if override:
        return override
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin:/usr/libexec"
    found = shutil.which(name, path=path)
    if found is None:
        raise ServiceMissing(f"{name} not found: install it (apt-get install {package})")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None,
              log: Path | None = None) -> None:
    """Wait until something listens on 127.0.0.1:*port*; raise at once if *proc* exits
    (with the end of *log*), or TimeoutError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log is not None and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{text[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 (``.port``) to *upstream*, for tests and benchmarks that need
    something between a client and a server (delays, faults, byte counts)::

        class Counting(LoopbackProxy):
            def relay(self, client, server):
                self.spawn(self.pump, client, server)
                self.spawn(self.pump, server, client)

        with Counting(("127.0.0.1", cluster.primary.port)) as proxy:
            connect(port=proxy.port)

    Subclasses implement :meth:`relay` for each accepted connection and start its threads
    with :meth:`spawn`. Both sockets time out every *tick* seconds so that loops can look at
    ``self._stop``; :meth:`close` stops everything.
    """

    def __init__(self, upstream: tuple[str, int], *, tick: float = 0.1) -> None:
        self.upstream = upstream
        self.tick = tick
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(tick)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.spawn(self._accept)

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        """Run *target* in a daemon thread that :meth:`close` waits for."""
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        """Carry one accepted connection (*client*) to its upstream connection (*server*)."""
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(self.tick)
                self._sockets.append(sock)
            self.relay(client, server)

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self.listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.02)


class _Process:
    """A child server process with stop/start; subclasses say how to start and probe it."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server (no-op when running) and wait until it accepts connections."""
        if self.running:
            return
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            _wait_until(self._ready_or_dead, START_TIMEOUT, f"{self.name} start")
        except TimeoutError:
            self.stop(kill=True)
            raise
        if not self.running:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited at start; its log ends with:\n{tail}")

    def _ready_or_dead(self) -> bool:
        return not self.running or self.ready()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM and wait (SIGKILL with ``kill=True``, like a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MariaDBServer(_Process):
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


class MariaDBCluster:
    """A primary with ``replicas`` read-only replicas (GTID replication, slave_pos).

    Fault controls for tests: :meth:`stop_primary`, :meth:`start_primary`,
    :meth:`stop_replica`, :meth:`start_replica`, :meth:`hold_replica` (stop the SQL thread:
    new rows stay off it until :meth:`release_replica`) and :meth:`delay_replica`
    (``MASTER_DELAY``).
    """

    def __init__(self, replicas: int = 1, *, root: Path | None = None) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="tenantkit-mariadb-")) if root is None else root
        self.database = DATABASE
        self.primary = MariaDBServer(self.root / "primary", 1)
        self.replicas = [
            MariaDBServer(self.root / f"replica{i}", i + 2, read_only=True)
            for i in range(replicas)
        ]

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


class RedisServer(_Process):
    """An ephemeral ``redis-server`` on 127.0.0.1:<port> with no persistence."""

    name = "redis-server"

    def __init__(self, workdir: Path | None = None) -> None:
        self._own = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="tenantkit-redis-")) if workdir is None else workdir
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        self.binary = find_binary("redis-server", "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--daemonize", "no", "--protected-mode", "no"]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)

    def close(self) -> None:
        self.stop()
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- pytest fixtures ---------------------------------------------------------------------

def _missing(exc: ServiceMissing) -> None:
    if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{exc} (TENANTKIT_REQUIRE_SERVICES=1 makes this a failure)")
    pytest.skip(str(exc))


class _ClusterPool:
    def __init__(self) -> None:
        self.clusters: dict[int, MariaDBCluster] = {}

    def get(self, replicas: int) -> MariaDBCluster:
        cluster = self.clusters.get(replicas)
        if cluster is None:
            try:
                cluster = MariaDBCluster(replicas).start()
            except ServiceMissing as exc:
                _missing(exc)
                raise
            self.clusters[replicas] = cluster
        else:
            cluster.reset()
        return cluster

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


@pytest.fixture(scope="session")
def _tenantkit_cluster_pool() -> Iterator[_ClusterPool]:
    pool = _ClusterPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def mariadb_cluster(_tenantkit_cluster_pool: _ClusterPool) -> Callable[..., MariaDBCluster]:
    """A factory: ``mariadb_cluster(replicas=N)`` gives a reset :class:`MariaDBCluster`."""
    seen: dict[int, MariaDBCluster] = {}

    def factory(replicas: int = 1) -> MariaDBCluster:
        if replicas not in seen:
            seen[replicas] = _tenantkit_cluster_pool.get(replicas)
        return seen[replicas]

    return factory


@pytest.fixture
def mariadb_pair(mariadb_cluster: Callable[..., MariaDBCluster]) -> MariaDBCluster:
    """A MariaDB primary and one read-only replica, reset for this test."""
    return mariadb_cluster(replicas=1)


@pytest.fixture(scope="session")
def _tenantkit_redis() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except ServiceMissing as exc:
        _missing(exc)
        raise
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(_tenantkit_redis: RedisServer) -> RedisServer:
    """An ephemeral Redis, running and empty at the start of the test."""
    _tenantkit_redis.start()
    _tenantkit_redis.flushall()
    return _tenantkit_redis
