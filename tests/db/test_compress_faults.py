"""Broken compressed frames, through a fault-injecting loopback proxy in front of real MariaDB.

The proxy relays both directions and follows the server's side of the protocol: plain
packets until authentication ends with OK, then compressed frames. A test arms one fault for
the next server frame: corrupt it, truncate it and drop the connection, delay it, or re-split
it into several TCP writes. Every fault must end in PyMySQL's ``OperationalError`` saying what
was wrong, with the connection closed, quickly, and never with wrong rows.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from tenantkit.db.compress import CompressedConnection, CompressionUnavailableWarning
from tenantkit.testing import LoopbackProxy, MariaDBCluster, MariaDBServer

# What a fault does with one frame: bytes are sent, a float sleeps that long, None drops
# the connection.
Action = bytes | float | None
Fault = Callable[[bytes], list[Action]]

_TICK = 0.05


class FaultProxy(LoopbackProxy):
    """A loopback TCP proxy to ``upstream`` that can break server frames on request."""

    def __init__(self, upstream: tuple[str, int], *, strip_compress: bool = False) -> None:
        self.strip_compress = strip_compress
        self._fault: Fault | None = None
        self._lock = threading.Lock()
        self.frames_seen = 0
        super().__init__(upstream, tick=_TICK)

    def arm(self, fault: Fault) -> None:
        """Apply ``fault`` to the next frame the server sends."""
        with self._lock:
            self._fault = fault

    def _take_fault(self) -> Fault | None:
        with self._lock:
            fault, self._fault = self._fault, None
            return fault

    # --- relaying ------------------------------------------------------------------

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        state: dict[str, bool] = {"compress": False}
        self.spawn(self._client_to_server, client, server, state)
        self.spawn(self._server_to_client, server, client, state)

    def _recv(self, sock: socket.socket) -> bytes | None:
        """Some bytes, b"" at end of stream, None when the proxy stops."""
        while not self._stop.is_set():
            try:
                return sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return None

    def _client_to_server(self, client: socket.socket, server: socket.socket,
                          state: dict[str, bool]) -> None:
        first = True
        buf = b""
        while True:
            data = self._recv(client)
            if not data:
                break
            if first:
                buf += data
                if len(buf) >= 8:  # the handshake response (or SSL request) flags
                    state["compress"] = bool(int.from_bytes(buf[4:8], "little") & 32)
                    first = False
            try:
                server.sendall(data)
            except OSError:
                break
        _shut(server)

    def _server_to_client(self, server: socket.socket, client: socket.socket,
                          state: dict[str, bool]) -> None:
        buf = b""
        greeting_seen = False
        framed = False
        while True:
            data = self._recv(server)
            if not data:
                break
            buf += data
            out: list[Action] = []
            while True:
                if not framed:
                    if len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:3], "little"):
                        break
                    size = 4 + int.from_bytes(buf[:3], "little")
                    packet, buf = buf[:size], buf[size:]
                    if not greeting_seen:
                        greeting_seen = True
                        if self.strip_compress:
                            packet = _strip_compress(packet)
                    elif packet[4] == 0x00 and state["compress"]:
                        framed = True  # authentication ended with OK: frames from now on
                    out.append(packet)
                else:
                    if len(buf) < 7 or len(buf) < 7 + int.from_bytes(buf[:3], "little"):
                        break
                    size = 7 + int.from_bytes(buf[:3], "little")
                    frame, buf = buf[:size], buf[size:]
                    self.frames_seen += 1
                    fault = self._take_fault()
                    out.extend(fault(frame) if fault else [frame])
            for action in out:
                if action is None:
                    _shut(client)
                    _shut(server)
                    return
                if isinstance(action, float):
                    if self._stop.wait(action):
                        return
                    continue
                try:
                    client.sendall(action)
                except OSError:
                    return
        _shut(client)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _strip_compress(greeting: bytes) -> bytes:
    payload = bytearray(greeting[4:])
    caps_at = payload.index(0, 1) + 1 + 4 + 8 + 1  # version\0, thread id, scramble, filler
    caps = int.from_bytes(payload[caps_at:caps_at + 2], "little") & ~32
    payload[caps_at:caps_at + 2] = caps.to_bytes(2, "little")
    return greeting[:4] + bytes(payload)


@pytest.fixture
def server(mariadb_cluster: Callable[..., MariaDBCluster]) -> MariaDBServer:
    return mariadb_cluster(replicas=0).primary


@pytest.fixture
def proxy(server: MariaDBServer) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", server.port)) as p:
        yield p


def _connect(server: MariaDBServer, port: int, **kwargs: Any) -> CompressedConnection:
    args = {**server.connect_args(), "port": port, "compress": True, "read_timeout": 2,
            "connect_timeout": 5, **kwargs}
    return CompressedConnection(**args)


QUERY = "SELECT seq, REPEAT(CHAR(97 + seq % 26 USING utf8mb4), 40) FROM seq_1_to_12"
EXPECTED = tuple((i, chr(97 + i % 26) * 40) for i in range(1, 13))


def _frame(payload: bytes, seq: int, uncompressed: int) -> bytes:
    return (len(payload) | seq << 24).to_bytes(4, "little") + uncompressed.to_bytes(3, "little") \
        + payload


def _with_payload(frame: bytes, payload: bytes) -> bytes:
    return _frame(payload, frame[3], int.from_bytes(frame[4:7], "little"))


def _flip(frame: bytes) -> list[Action]:
    body = bytearray(frame[7:])
    body[len(body) // 2] ^= 0x5A
    return [frame[:7] + bytes(body)]


FAULTS = [
    pytest.param(_flip, "bad zlib data|inflates to", id="flipped byte in zlib data"),
    pytest.param(lambda f: [f[:3] + bytes([(f[3] + 1) & 0xFF]) + f[4:]],
                 "sequence id 2, expected 1", id="sequence id skips ahead"),
    pytest.param(lambda f: [f[:3] + bytes([0]) + f[4:]],
                 "sequence id 0, expected 1", id="sequence id repeats"),
    pytest.param(lambda f: [f[:4] + (int.from_bytes(f[4:7], "little") + 1).to_bytes(3, "little")
                            + f[7:]], "its header says", id="uncompressed length too big"),
    pytest.param(lambda f: [f[:4] + (int.from_bytes(f[4:7], "little") - 1).to_bytes(3, "little")
                            + f[7:]], "more than", id="uncompressed length too small"),
    pytest.param(lambda f: [_with_payload(f, f[7:-3])], "cut off|bad zlib data",
                 id="zlib stream cut short"),
    pytest.param(lambda f: [_with_payload(f, f[7:] + b"junk")], "after its zlib stream",
                 id="junk after the zlib stream"),
    pytest.param(lambda f: [_frame(b"not zlib at all" * 4, f[3], 1000)], "bad zlib data",
                 id="garbage instead of zlib"),
    pytest.param(lambda f: [_frame(zlib.compress(b"\x05\x00\x00\x01\xfe" + b"x" * 95), f[3],
                                   0)], "Packet sequence|Lost connection|Commands",
                 id="compressed data flagged as raw"),
    pytest.param(lambda f: [f[:7]], "timed out", id="header only then nothing"),
    pytest.param(lambda f: [(0).to_bytes(3, "little") + f[3:7]], "is empty",
                 id="empty frame"),
    pytest.param(lambda f: [f[: len(f) // 2], None], "ended", id="connection dropped mid-frame"),
    pytest.param(lambda f: [3.0, f], "timed out", id="delayed past the read timeout"),
    pytest.param(lambda f: [(int.from_bytes(f[:3], "little") + 50).to_bytes(3, "little")
                            + f[3:]], "timed out|ended", id="length longer than the data"),
]


def _assert_broken(conn: CompressedConnection, match: str, query: str = QUERY) -> None:
    start = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as info, conn.cursor() as cur:
        cur.execute(query)
        rows = cur.fetchall()
        pytest.fail(f"a broken stream returned rows: {rows!r}")  # pragma: no cover
    assert time.monotonic() - start < 8  # the read timeout (2 s) bounds every wait
    assert info.value.args[0] == 2013
    message = str(info.value.args[1])
    assert message.startswith("Lost connection to MySQL server during query")
    if match:
        assert re.search(match, message), message
    assert not conn.open
    with pytest.raises(pymysql.err.InterfaceError):  # no half-usable connection
        conn.query("SELECT 1")


@pytest.mark.parametrize(("fault", "match"), FAULTS)
def test_each_fault_raises_and_closes(
    server: MariaDBServer, proxy: FaultProxy, fault: Fault, match: str,
) -> None:
    conn = _connect(server, proxy.port)
    assert conn.compressed
    proxy.arm(fault)
    _assert_broken(conn, match)


def test_the_proxy_passes_a_clean_exchange(server: MariaDBServer, proxy: FaultProxy) -> None:
    with _connect(server, proxy.port) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        assert cur.fetchall() == EXPECTED
    assert proxy.frames_seen >= 2


SMALL = "SELECT REPEAT('ab', 40)"


def test_truncated_at_every_byte(server: MariaDBServer, proxy: FaultProxy) -> None:
    frames: list[bytes] = []
    with _connect(server, proxy.port) as conn, conn.cursor() as cur:
        proxy.arm(lambda f: (frames.append(f), [f])[1])
        cur.execute(SMALL)
        assert cur.fetchall() == (("ab" * 40,),)
    (frame,) = frames  # the whole answer is one compressed frame
    assert int.from_bytes(frame[4:7], "little") > len(frame)
    for cut in range(len(frame)):
        conn = _connect(server, proxy.port)
        proxy.arm(lambda f, cut=cut: [f[:cut], None])
        _assert_broken(conn, "ended", SMALL)


def test_resplit_at_every_byte_still_reads_right(server: MariaDBServer, proxy: FaultProxy) -> None:
    frames: list[bytes] = []
    with _connect(server, proxy.port) as conn:
        proxy.arm(lambda f: (frames.append(f), [f])[1])
        with conn.cursor() as cur:
            cur.execute(QUERY)
            assert cur.fetchall() == EXPECTED
        size = len(frames[0])
        assert size > 100 and int.from_bytes(frames[0][4:7], "little") > size  # compressed
        for cut in range(1, size):
            proxy.arm(lambda f, cut=cut: [f[:cut], 0.002, f[cut:]])
            with conn.cursor() as cur:
                cur.execute(QUERY)
                assert cur.fetchall() == EXPECTED, cut
        # One byte per TCP write.
        proxy.arm(lambda f: [b for i in range(len(f)) for b in (f[i:i + 1], 0.0005)])
        with conn.cursor() as cur:
            cur.execute(QUERY)
            assert cur.fetchall() == EXPECTED


def test_a_delay_within_the_timeout_is_harmless(server: MariaDBServer, proxy: FaultProxy) -> None:
    with _connect(server, proxy.port) as conn, conn.cursor() as cur:
        proxy.arm(lambda f: [0.5, f])
        cur.execute(QUERY)
        assert cur.fetchall() == EXPECTED


def test_server_without_compression_falls_back_with_a_warning(server: MariaDBServer) -> None:
    with FaultProxy(("127.0.0.1", server.port), strip_compress=True) as proxy:
        with pytest.warns(CompressionUnavailableWarning, match="does not offer compression"):
            conn = _connect(server, proxy.port)
        with conn, conn.cursor() as cur:
            assert not conn.compressed
            cur.execute(QUERY)
            assert cur.fetchall() == EXPECTED
            cur.execute("SHOW SESSION STATUS LIKE 'Compression'")
            assert cur.fetchone()[1] == "OFF"


def test_sqlalchemy_pool_drops_a_connection_after_a_broken_frame(
    server: MariaDBServer, proxy: FaultProxy,
) -> None:
    from sqlalchemy import create_engine, exc, text

    engine = create_engine(
        server.url(query="compress=true&read_timeout=2", driver="tenantkit")
        .replace(f":{server.port}/", f":{proxy.port}/")
    )
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            proxy.arm(_flip)
            with pytest.raises(exc.OperationalError, match="bad compressed frame") as info:
                conn.execute(text(QUERY)).all()
            assert info.value.connection_invalidated
        with engine.connect() as conn:  # a fresh connection, compressed, right rows
            assert tuple(tuple(row) for row in conn.execute(text(QUERY))) == EXPECTED
    finally:
        engine.dispose()
