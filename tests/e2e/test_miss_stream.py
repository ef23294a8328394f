"""Issue 17 section 2: a miss streams the upstream's body to the visitor while the page is
written to the cache, and a body the upstream cut short is never stored.

``tenantkit serve`` (gunicorn) in front of a raw-socket upstream that sends the first part of
a large page, then waits for the test to say whether to finish it or to close mid-body.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from tk_procs import Shim, shim_env
from tk_upstream import TIMEOUT, RawUpstream, read_request
from tk_web import Sites, wait_stored

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")

HOST = "big.test"
FIRST = 200_000
REST = 100_000


class Halting:
    """Sends a page's head and its first FIRST bytes, then waits for ``go``: with ``cut``
    it closes the connection there, else it sends the last REST bytes."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.cut = False
        self.upstream = RawUpstream(self.script)

    def script(self, conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        for _ in range(100):
            request = read_request(reader)
            if request is None:
                return
            up.record(request)
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                    f"Content-Length: {FIRST + REST}\r\n\r\n").encode()
            conn.sendall(head + b"a" * FIRST)
            if not self.go.wait(TIMEOUT):
                return
            if self.cut:
                return  # closes mid-body
            conn.sendall(b"b" * REST)

    def close(self) -> None:
        self.go.set()
        self.upstream.close()


@pytest.fixture
def halting() -> Iterator[Halting]:
    one = Halting()
    yield one
    one.close()


def _request(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, size: int) -> bytes:
    """What *sock* sent, read until *size* bytes or EOF (a timeout fails the test)."""
    got = b""
    while len(got) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _body(reply: bytes) -> tuple[str, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    cache = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
             if line.lower().startswith(b"x-tenantkit-cache:")]
    return (cache[0] if cache else "-"), body


@pytest.mark.parametrize("cut", [pytest.param(False, id="finished"),
                                 pytest.param(True, id="closed mid-body")])
def test_a_miss_streams_the_body_and_stores_only_a_whole_one(
        tmp_path: Path, halting: Halting, cut: bool) -> None:
    sites = Sites(tmp_path)
    sites.add("big", [HOST], url=halting.upstream.url)
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir), "--workers", "1")
    try:
        halting.cut = cut
        sock = _request(shim.port, "/big/")
        with sock:
            # Before, the shim read the whole body before it sent a byte: the visitor
            # waited here until the upstream finished (or, cut, got a 502 after it).
            first = _read_until(sock, FIRST // 2)
            cache, body = _body(first)
            assert cache == "MISS" and body.startswith(b"a" * 1000), first[:300]
            assert len(body) >= FIRST // 2, "the first part did not arrive while the " \
                                            "upstream held the rest"
            halting.go.set()
            rest = _read_until(sock, FIRST + REST)  # until the shim closes
        whole = body + rest
        assert len(whole) == (FIRST if cut else FIRST + REST)
        halting.go.clear()
        if cut:
            halting.go.set()  # the second request is cut too: never stored either
        else:
            wait_stored(sites.cache_dir, "big", HOST, "/big/")
        sock = _request(shim.port, "/big/")
        with sock:
            again = _read_until(sock, 10 * (FIRST + REST))
        cache, body = _body(again)
        if cut:
            assert cache == "MISS", again[:300]  # the cut page was never stored
            assert len(halting.upstream.heads) == 2
        else:
            assert cache == "HIT", again[:300]
            assert body == b"a" * FIRST + b"b" * REST
            assert len(halting.upstream.heads) == 1
    finally:
        halting.go.set()
        assert shim.stop() == 0
    output = shim.output()
    assert "Traceback" not in output, output[-4000:]
    cut_lines = [line for line in output.splitlines() if "cut short" in line]
    assert len(cut_lines) == (2 if cut else 0), cut_lines
