"""CompressedConnection against the real MariaDB of the fixtures: everything PyMySQL does."""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import hashlib
import os
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pymysql.connections
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymysql.constants import CLIENT

from tenantkit.db.compress import CompressedConnection, WireStats
from tenantkit.testing import MariaDBCluster, MariaDBServer

MIB16 = 2**24
# The connection fixture is shared by all examples on purpose: each example opens no new one.
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def server(mariadb_cluster: Callable[..., MariaDBCluster]) -> MariaDBServer:
    return mariadb_cluster(replicas=0).primary


@pytest.fixture
def connect(server: MariaDBServer) -> Iterator[Callable[..., CompressedConnection]]:
    opened: list[CompressedConnection] = []

    def factory(**kwargs: Any) -> CompressedConnection:
        options: dict[str, Any] = {"compress": True, **server.connect_args(), **kwargs}
        conn = CompressedConnection(**options)
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        if conn.open:
            conn.close()


def _status(conn: pymysql.connections.Connection[Any], name: str) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE %s", (name,))
        return str(cur.fetchone()[1])


def test_negotiates_compression_and_the_server_agrees(connect: Any) -> None:
    conn = connect()
    assert conn.compressed
    assert conn.client_flag & CLIENT.COMPRESS
    assert _status(conn, "Compression") == "ON"


def test_compress_false_is_plain_pymysql(connect: Any, server: MariaDBServer) -> None:
    conn = connect(compress=False)
    assert not conn.compressed
    assert not conn.client_flag & CLIENT.COMPRESS
    assert _status(conn, "Compression") == "OFF"
    stats = conn.wire_stats()
    assert stats.sent == stats.sent_payload > 0
    assert stats.received == stats.received_payload > 0
    assert stats.frames_sent == stats.frames_received == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"compress": "yes"}, "compress must be True or False", id="compress str"),
        pytest.param({"compress_level": 10}, "compress_level", id="level too high"),
        pytest.param({"compress_level": "6"}, "compress_level", id="level str"),
        pytest.param({"compress_min_length": -1}, "compress_min_length", id="negative min"),
        pytest.param({"compress_min_length": True}, "compress_min_length", id="min bool"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        CompressedConnection(host="127.0.0.1", port=1, defer_connect=True, **kwargs)


_WORKLOAD = [
    ("CREATE TABLE w (id INT PRIMARY KEY AUTO_INCREMENT, n BIGINT, f DOUBLE, d DECIMAL(20,6),"
     " t DATETIME(6), s VARCHAR(200) CHARACTER SET utf8mb4, b BLOB, j JSON, z TEXT)", None),
    ("INSERT INTO w (n, f, d, t, s, b, j, z) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
     [(-2**63, 1.5, decimal.Decimal("12345.678901"), datetime.datetime(2024, 2, 29, 1, 2, 3, 4),
       "héllo wörld ☃ 🐍", bytes(range(256)), '{"a": [1, 2, {"b": null}]}', "x" * 5000),
      (2**63 - 1, -0.0, decimal.Decimal("-0.000001"), None, "", b"", "[]", None),
      (None, None, None, None, None, None, None, "lorem ipsum " * 900)]),
    ("SELECT * FROM w ORDER BY id", None),
    ("SELECT seq, CONCAT('row-', seq), REPEAT(CHAR(65 + seq % 26), seq % 300) "
     "FROM seq_1_to_3000", None),
    ("UPDATE w SET n = n WHERE id > 0", None),
    ("SELECT COUNT(*), SUM(LENGTH(z)) FROM w", None),
    ("SELECT * FROM w WHERE id < 0", None),
]


def _run_workload(conn: pymysql.connections.Connection[Any]) -> list[Any]:
    out: list[Any] = []
    with conn.cursor() as cur:
        for sql, args in _WORKLOAD:
            if isinstance(args, list):
                out.append(cur.executemany(sql, args))
            else:
                out.append(cur.execute(sql, args))
            out.append((cur.description, cur.fetchall(), cur.lastrowid))
    conn.commit()
    return out


def test_results_equal_compressed_and_plain(
    connect: Any, mariadb_cluster: Callable[..., MariaDBCluster],
) -> None:
    plain = pymysql.connect(**mariadb_cluster(replicas=0).primary.connect_args())
    try:
        expected = _run_workload(plain)
    finally:
        plain.close()
    mariadb_cluster(replicas=0).reset()
    conn = connect()
    assert _run_workload(conn) == expected
    stats = conn.wire_stats()
    assert stats.frames_received > 0 and stats.frames_sent > 0
    assert stats.received < stats.received_payload / 2  # the repetitive rows shrink a lot
    assert stats.ratio < 0.7


@pytest.mark.parametrize("min_length", [0, 50, 10**6], ids=["always", "default", "never"])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_levels_and_thresholds_round_trip(connect: Any, level: int, min_length: int) -> None:
    conn = connect(compress_level=level, compress_min_length=min_length)
    payload = "ab" * 40_000
    with conn.cursor() as cur:
        cur.execute("SELECT %s, MD5(%s)", (payload, payload))
        got, digest = cur.fetchone()
    assert got == payload
    assert digest == hashlib.md5(payload.encode()).hexdigest()
    stats = conn.wire_stats()
    if min_length > 10**5 or level == 0:
        assert stats.sent >= stats.sent_payload  # nothing sent shrank
    else:
        assert stats.sent < stats.sent_payload / 10


def test_multi_statements_and_multiple_result_sets(connect: Any) -> None:
    conn = connect(client_flag=CLIENT.MULTI_STATEMENTS)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE m (id INT PRIMARY KEY, v TEXT); "
            "INSERT INTO m VALUES (1, REPEAT('a', 3000)), (2, 'b'); "
            "SELECT id, v FROM m ORDER BY id; "
            "UPDATE m SET v = 'c' WHERE id = 2; "
            "SELECT COUNT(*) FROM m WHERE v = 'c'; "
            "SELECT seq FROM seq_1_to_500"
        )
        results: list[Any] = []
        while True:
            results.append((cur.rowcount, cur.fetchall()))
            if not cur.nextset():
                break
    assert [r[0] for r in results] == [0, 2, 2, 1, 1, 500]
    assert results[2][1] == ((1, "a" * 3000), (2, "b"))
    assert results[4][1] == ((1,),)
    assert results[5][1] == tuple((i,) for i in range(1, 501))
    with conn.cursor() as cur:  # the connection is still in step afterwards
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)


def test_warnings(connect: Any) -> None:
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE n (v TINYINT)")
        cur.execute("INSERT IGNORE INTO n VALUES (1000), (-1000), ('x')")
        assert cur.warning_count == 3
    shown = conn.show_warnings()
    assert [row[1] for row in shown] == [1264, 1264, 1366]


def test_unicode_and_binary(connect: Any) -> None:
    conn = connect(charset="utf8mb4")
    text = "Grüße, 世界, 🐍🚀, \u0000 and \\ and ' and \""
    blob = bytes(range(256)) * 64 + os.urandom(4096)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE u (s TEXT CHARACTER SET utf8mb4, b LONGBLOB)")
        cur.execute("INSERT INTO u VALUES (%s, %s)", (text * 50, blob))
        cur.execute("SELECT s, b, CHAR_LENGTH(s) FROM u")
        assert cur.fetchone() == (text * 50, blob, len(text) * 50)


@pytest.mark.slow
def test_blobs_over_16_mib(connect: Any) -> None:
    conn = connect()
    repetitive = b"wp_options " * (17 * 2**20 // 11)
    random_blob = os.urandom(MIB16 + 1234)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
        cur.execute("INSERT INTO big VALUES (1, %s), (2, %s)", (repetitive, random_blob))
        cur.execute("SELECT b FROM big ORDER BY id")
        rows = cur.fetchall()
    assert rows[0][0] == repetitive
    assert rows[1][0] == random_blob
    stats = conn.wire_stats()
    assert stats.frames_received >= 3  # one row alone spans frames


def test_load_data_local_infile(connect: Any, tmp_path: Path) -> None:
    conn = connect(local_infile=True)
    data = tmp_path / "rows.tsv"
    # 6 MB in 16 KB packets: the inner packet number wraps past 255 several times.
    lines = [f"{i}\tpost title {i} {'lorem ipsum ' * (i % 20)}\n" for i in range(60_000)]
    data.write_text("".join(lines))
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE l (id INT PRIMARY KEY, title TEXT)")
        cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE l")
        assert cur.rowcount == 60_000
        cur.execute("SELECT COUNT(*), SUM(LENGTH(title)) FROM l")
        expected = sum(len(line.split("\t")[1]) - 1 for line in lines)
        assert cur.fetchone() == (60_000, expected)
    assert conn.wire_stats().sent < data.stat().st_size / 4


def test_load_data_of_a_missing_file_fails_cleanly(connect: Any, tmp_path: Path) -> None:
    conn = connect(local_infile=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE l (id INT)")
        with pytest.raises(pymysql.err.OperationalError, match="Can't open file"):
            cur.execute(f"LOAD DATA LOCAL INFILE '{tmp_path / 'nope.tsv'}' INTO TABLE l")
        cur.execute("SELECT COUNT(*) FROM l")
        assert cur.fetchone() == (0,)


def test_server_side_cursor(connect: Any) -> None:
    conn = connect()
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute("SELECT seq, REPEAT('r', seq % 100) FROM seq_1_to_20000")
        count = 0
        for seq, text in cur:
            count += 1
            assert text == "r" * (seq % 100)
        assert count == 20000
    # Leaving one unfinished: PyMySQL drains it (with its warning) before the next command.
    cur = conn.cursor(pymysql.cursors.SSCursor)
    cur.execute("SELECT seq FROM seq_1_to_50000")
    assert cur.fetchone() == (1,)
    with pytest.warns(UserWarning, match="unbuffered result was left incomplete"):
        conn.ping()
    with conn.cursor() as cur2:
        cur2.execute("SELECT 7")
        assert cur2.fetchone() == (7,)


def _kill(server: MariaDBServer, thread_id: int, what: str = "") -> None:
    server.query(f"KILL {what} {thread_id:d}")


def test_ping_reconnect_renegotiates(connect: Any, server: MariaDBServer) -> None:
    conn = connect()
    with conn.cursor() as cur:  # some frames so the sequence is not at its start
        cur.execute("SELECT REPEAT('x', 10000)")
    before = conn.thread_id()
    _kill(server, before)
    time.sleep(0.1)
    with pytest.warns(DeprecationWarning, match="reconnect"):
        conn.ping(reconnect=True)
    assert conn.thread_id() != before
    assert conn.compressed
    assert _status(conn, "Compression") == "ON"
    with conn.cursor() as cur:
        cur.execute("SELECT REPEAT('y', 10000)")
        assert cur.fetchone() == ("y" * 10000,)


def test_kill_query_and_kill_connection(connect: Any, server: MariaDBServer) -> None:
    conn = connect()
    result: list[Any] = []

    def sleeper() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(20)")
                result.append(cur.fetchone())
        except pymysql.err.OperationalError as exc:
            result.append(exc.args[0])

    thread = threading.Thread(target=sleeper)
    start = time.monotonic()
    thread.start()
    time.sleep(0.5)
    _kill(server, conn.thread_id(), "QUERY")
    thread.join(timeout=15)
    assert not thread.is_alive()
    # MariaDB ends the statement with "Query execution was interrupted"; MySQL's SLEEP()
    # returns 1. Either way the answer arrives in compressed frames and the link stays usable.
    assert result in ([1317], [(1,)])
    assert time.monotonic() - start < 15
    with conn.cursor() as cur:
        cur.execute("SELECT 'still usable'")
        assert cur.fetchone() == ("still usable",)
    _kill(server, conn.thread_id())
    with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert not conn.open


def test_read_timeout_closes_the_connection(connect: Any) -> None:
    conn = connect(read_timeout=1)
    start = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError, match="timed out"), conn.cursor() as cur:
        cur.execute("SELECT SLEEP(5)")
    assert time.monotonic() - start < 4.5
    assert not conn.open


def test_auth_switch_then_compression(connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Claiming caching_sha2_password makes MariaDB answer with an auth switch request to
    # mysql_native_password: compression must start only after the final OK.
    monkeypatch.setattr(pymysql.connections, "_DEFAULT_AUTH_PLUGIN", "caching_sha2_password")
    conn = connect()
    assert conn.compressed
    with conn.cursor() as cur:
        cur.execute("SELECT REPEAT('s', 4000), CURRENT_USER()")
        text, user = cur.fetchone()
    assert text == "s" * 4000 and user.startswith("tenantkit@")


def test_wire_stats_count_both_directions(connect: Any) -> None:
    conn = connect()
    first = conn.wire_stats()
    with conn.cursor() as cur:
        cur.execute("SELECT %s", ("q" * 100_000,))
        cur.fetchall()
    after = conn.wire_stats()
    assert isinstance(after, WireStats)
    assert after.sent_payload - first.sent_payload > 100_000
    assert after.received_payload - first.received_payload > 100_000
    assert after.sent - first.sent < 2_000
    assert after.received - first.received < 2_000


# --- exact sizes around the frame and packet boundaries -------------------------------------

def _echo(conn: CompressedConnection, size: int, random_text: bool) -> None:
    """A COM_QUERY whose packet payload is exactly ``size`` bytes, echoed back in a row."""
    prefix, suffix = "SELECT '", "'"
    body_len = size - 1 - len(prefix) - len(suffix)  # 1 byte for the command
    if random_text:
        body = base64.b64encode(os.urandom(body_len))[:body_len].decode()
    else:
        body = "a" * body_len
    sql = prefix + body + suffix
    assert 1 + len(sql) == size
    with conn.cursor() as cur:
        cur.execute(sql)
        (got,) = cur.fetchone()
    assert got == body


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(size=st.integers(min_value=20, max_value=120), random_text=st.booleans())
def test_sizes_around_the_compression_threshold(
    connect: Any, size: int, random_text: bool,
) -> None:
    _echo(_shared(connect), size, random_text)


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(
    size=st.sampled_from([MIB16 - 1, MIB16]) | st.integers(MIB16 - 8, MIB16 + 8),
    random_text=st.booleans(),
)
def test_sizes_around_16_mib(connect: Any, size: int, random_text: bool) -> None:
    _echo(_shared(connect), size, random_text)


_SHARED: dict[int, CompressedConnection] = {}


def _shared(connect: Any) -> CompressedConnection:
    """One connection per test function's fixture instance, reused across examples."""
    key = id(connect)
    conn = _SHARED.get(key)
    if conn is None or not conn.open:
        _SHARED.clear()
        conn = _SHARED[key] = connect()
    return conn


def test_frames_are_built_exactly() -> None:
    conn = CompressedConnection(host="127.0.0.1", port=1, defer_connect=True, compress=True)
    sent: list[bytes] = []
    conn._compressing = True
    conn._sock = object()
    conn._command_starts = True
    original = pymysql.connections.Connection._write_bytes
    try:
        pymysql.connections.Connection._write_bytes = lambda self, data: sent.append(data)
        conn._write_bytes(b"\x05\x00\x00\x00\x03SELE")  # short: raw
        conn._write_bytes(b"z" * 1000)  # compressible
        conn._write_bytes(os.urandom(200))  # incompressible: raw
    finally:
        pymysql.connections.Connection._write_bytes = original
        conn._sock = None
    raw, packed, noise = sent
    assert raw[:7] == bytes([9, 0, 0, 0, 0, 0, 0]) and raw[7:] == b"\x05\x00\x00\x00\x03SELE"
    length = int.from_bytes(packed[:3], "little")
    assert packed[3] == 1 and int.from_bytes(packed[4:7], "little") == 1000
    assert zlib.decompress(packed[7:]) == b"z" * 1000 and len(packed) == 7 + length
    assert noise[3] == 2 and noise[4:7] == b"\x00\x00\x00" and len(noise) == 207


# --- TLS together with compression ------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MariaDBServer, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: install it (apt-get install openssl)")
    root = tmp_path_factory.mktemp("tls")
    certs = root / "certs"
    certs.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=certs, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tk-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (certs / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    try:
        server = MariaDBServer(root / "server", 90, extra_args=(
            f"--ssl-cert={certs / 'server.pem'}", f"--ssl-key={certs / 'server.key'}",
            f"--ssl-ca={certs / 'ca.pem'}",
        ))
    except Exception as exc:  # ServiceMissing and friends: same rule as the fixtures
        from tenantkit.testing import ServiceMissing
        from tenantkit.testing.plugin import service_missing as _missing
        if isinstance(exc, ServiceMissing):
            _missing(exc)
        raise
    server.start()
    try:
        server.query("CREATE DATABASE IF NOT EXISTS tenantkit_test")
        yield server, certs / "ca.pem"
    finally:
        server.stop()


def test_tls_and_compression_together(tls_server: tuple[MariaDBServer, Path]) -> None:
    server, ca = tls_server
    with contextlib.closing(CompressedConnection(
        compress=True, ssl_ca=str(ca), ssl_verify_cert=True, ssl_verify_identity=True,
        **server.connect_args("tenantkit_test"),
    )) as conn:
        assert conn.compressed
        assert _status(conn, "Ssl_cipher") != ""
        assert _status(conn, "Compression") == "ON"
        with conn.cursor() as cur:
            cur.execute("SELECT %s", ("tls " * 20_000,))
            assert cur.fetchone() == ("tls " * 20_000,)
        stats = conn.wire_stats()
        assert stats.received < stats.received_payload / 5


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40_000) | st.text(max_size=20_000).map(str.encode),
       level=st.integers(-1, 9))
def test_deflate_is_one_standard_zlib_stream(data: bytes, level: int) -> None:
    from tenantkit.db.compress import _deflate

    packed = _deflate(data, level)
    inflater = zlib.decompressobj()
    assert inflater.decompress(packed) == data
    assert inflater.eof and not inflater.unused_data
