"""Issue 24: no visitor can receive another visitor's response or poison a cached page.

Every test runs ``tenantkit serve`` (gunicorn, one worker so that upstream connections are
shared by the visitors of the test) in front of a raw-socket upstream that behaves as real
upstreams do in production: answers before reading the body, sends interim responses.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import urllib3
from tk_procs import Shim, shim_env
from tk_upstream import (
    TIMEOUT,
    RawUpstream,
    Request,
    exchange,
    read_request,
    response,
    status_of,
)
from tk_web import Sites, wait_stored

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")

HOST = "blog.test"
SMUGGLED = (b"GET /secret/ HTTP/1.1\r\nHost: blog.test\r\nX-Forwarded-For: 10.0.0.1\r\n"
            b"\r\n")
SECRET = b"SECRET: the intranet page only 10.0.0.1 may see"

Serve = Callable[[RawUpstream], Shim]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[tuple[Shim, RawUpstream]] = []

    def start(upstream: RawUpstream) -> Shim:
        sites = Sites(tmp_path)
        sites.add("blog", [HOST], url=upstream.url)
        shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir), "--workers", "1")
        started.append((shim, upstream))
        return shim

    yield start
    for shim, upstream in started:
        code = shim.stop()
        upstream.close()
        assert code == 0, shim.output()[-6000:]
        assert "Traceback" not in shim.output(), shim.output()[-6000:]
        assert upstream.errors == []


def _page(request: Request) -> bytes:
    if request.target == "/secret/":
        return response("200 OK", SECRET)
    return response("200 OK", f"page {request.target}".encode())


def _get(shim: Shim, path: str) -> urllib3.BaseHTTPResponse:
    with urllib3.PoolManager(retries=False, timeout=TIMEOUT) as http:
        return http.request("GET", shim.url + path, headers={"Host": HOST})


# -- 1. request framing ------------------------------------------------------------------------


def answers_then_discards(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
    """A correct upstream that answers a POST before reading its body (Apache's redirects,
    nginx's ``return``, PHP error paths), then reads and discards Content-Length bytes --
    wherever they come from."""
    for _ in range(100):
        request = read_request(reader)
        if request is None:
            return
        up.record(request)
        if request.method == "POST":
            conn.sendall(response("303 See Other", b"", "Location: /thanks/"))
        else:
            conn.sendall(_page(request))
        reader.read(request.length())


def test_a_short_body_is_never_forwarded_and_cannot_poison_the_cache(serve: Serve) -> None:
    upstream = RawUpstream(answers_then_discards)
    shim = serve(upstream)

    def get_with_body(path: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(SMUGGLED)}\r\n"
                "Connection: close\r\n\r\n").encode() + SMUGGLED

    # The attacker measures the header block the shim sends for its next request (same
    # shape, another path of the same length, so that /home/ is not cached yet) ...
    assert status_of(exchange(shim.port, get_with_body("/hom2/"))) == 200
    head = len(upstream.heads[-1].raw)
    # ... declares a body that long, sends 5 bytes and half-closes ...
    short = (f"POST /wp-comments-post.php HTTP/1.1\r\nHost: {HOST}\r\n"
             f"Content-Length: {5 + head}\r\n\r\nhello").encode()
    assert status_of(exchange(shim.port, short)) == 400
    # ... and sends /home/ with the smuggled request as its body.
    exchange(shim.port, get_with_body("/home/"))

    for _ in range(2):
        victim = _get(shim, "/home/")
        assert victim.status == 200
        assert victim.data == b"page /home/", victim.data
    assert "POST /wp-comments-post.php" not in upstream.lines()  # never sent on
    assert "GET /secret/" not in upstream.lines()


def reads_body_as_next_request(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
    """A sloppy upstream that answers a POST before reading the body and never reads it:
    the body is parsed as the next request. /secret/ is a slow page: it is answered once
    the next bytes are on the connection, as a busy upstream would."""
    for _ in range(100):
        request = read_request(reader)
        if request is None:
            return
        up.record(request)
        if request.method == "POST":
            conn.sendall(response("303 See Other", b"", "Location: /thanks/"))
            continue
        if request.target == "/secret/":
            select.select([conn], [], [], TIMEOUT)
        conn.sendall(_page(request))


def test_a_body_the_upstream_did_not_read_never_reaches_another_visitor(
        serve: Serve) -> None:
    upstream = RawUpstream(reads_body_as_next_request)
    shim = serve(upstream)
    with urllib3.PoolManager(retries=False, timeout=TIMEOUT) as http:
        post = http.request("POST", shim.url + "/wp-comments-post.php", body=SMUGGLED,
                            headers={"Host": HOST, "Content-Type": "text/plain"})
    assert post.status == 303
    for _ in range(2):
        victim = _get(shim, "/home/")
        assert victim.data == b"page /home/", victim.data


def test_chunked_bodies_are_forwarded_whole_or_not_at_all(serve: Serve) -> None:
    upstream = RawUpstream(answers_then_discards)
    shim = serve(upstream)
    start = (f"POST /form/ HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n"
             "\r\n").encode()
    truncated = exchange(shim.port, start + b"5\r\nhello\r\n")
    assert status_of(truncated) == 400
    assert "POST /form/" not in upstream.lines()

    whole = exchange(shim.port, start + b"5\r\nhello\r\n0\r\n\r\n")
    assert status_of(whole) == 303
    sent = upstream.heads[-1]
    assert sent.line == "POST /form/"
    assert "transfer-encoding" not in sent.headers  # re-framed with a length
    assert sent.headers["content-length"] == "5"
    assert sent.headers["connection"] == "close"  # a request body: the connection is not reused


@pytest.mark.parametrize("framing", [
    pytest.param("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="CL and TE"),
    pytest.param("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="TE and CL"),
    pytest.param("Content-Length: 5\r\nContent-Length: 6\r\n", id="two lengths"),
    pytest.param("Content-Length: +5\r\n", id="signed length"),
    pytest.param("Transfer-Encoding: gzip, chunked\r\n", id="coded chunked"),
])
def test_ambiguous_framing_is_refused(serve: Serve, framing: str) -> None:
    upstream = RawUpstream(answers_then_discards)
    shim = serve(upstream)
    request = (f"POST /form/ HTTP/1.1\r\nHost: {HOST}\r\n{framing}\r\n"
               "5\r\nhello\r\n0\r\n\r\n").encode()
    assert status_of(exchange(shim.port, request)) in (400, 501)
    assert _get(shim, "/x/").data == b"page /x/"
    assert upstream.lines() == ["GET /x/"]


# -- 2. interim responses ----------------------------------------------------------------------

INTERIMS = {
    "103": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    "100 unasked": b"HTTP/1.1 100 Continue\r\n\r\n",
    "102 then 103": (b"HTTP/1.1 102 Processing\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nSet-Cookie: early=1\r\n\r\n"),
}


class Interim:
    """Answers /a/ with interim responses first, and with the final page only once another
    request has reached the upstream (on this connection or any other)."""

    def __init__(self, interim: bytes) -> None:
        self.interim = interim
        self.interim_sent = threading.Event()
        self.wake_r, self.wake_w = socket.socketpair()

    def __call__(self, conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        for _ in range(100):
            request = read_request(reader)
            if request is None:
                return
            up.record(request)
            if request.target == "/a/":
                conn.sendall(self.interim)
                self.interim_sent.set()
                select.select([conn, self.wake_r], [], [], TIMEOUT)
                conn.sendall(response("200 OK", b"page /a/",
                                      "Set-Cookie: session=alice; HttpOnly"))
            else:
                self.wake_w.send(b"x")
                conn.sendall(_page(request))

    def close(self) -> None:
        self.wake_r.close()
        self.wake_w.close()


@pytest.mark.parametrize("interim", list(INTERIMS.values()), ids=list(INTERIMS))
def test_interim_responses_are_consumed_and_never_taken_as_final(
        serve: Serve, interim: bytes, tmp_path: Path) -> None:
    script = Interim(interim)
    upstream = RawUpstream(script)
    shim = serve(upstream)
    first: list[bytes] = []
    visitor = threading.Thread(target=lambda: first.append(exchange(
        shim.port, f"GET /a/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())))
    visitor.start()
    try:
        assert script.interim_sent.wait(TIMEOUT)
        # A shim that took the interim as final has answered by now and put the connection
        # back in its pool; a correct one is still waiting for the final response.
        visitor.join(0.5)
        second = _get(shim, "/b/")
        visitor.join(TIMEOUT)
        assert second.status == 200
        assert second.data == b"page /b/", second.data
        assert "Set-Cookie" not in second.headers
        assert status_of(first[0]) == 200
        assert first[0].endswith(b"page /a/")
        assert b"session=alice" in first[0]
        assert b"early=1" not in first[0]
        assert b"103" not in first[0].split(b"\r\n", 1)[0]
        wait_stored(tmp_path / "cache", "blog", HOST, "/b/")
        again = _get(shim, "/b/")
        assert again.data == b"page /b/"
        assert again.headers["X-Tenantkit-Cache"] == "HIT"
        assert upstream.lines().count("GET /a/") == 1
    finally:
        script.close()
