"""Issue 24: no visitor can receive another visitor's response or poison a cached page.

Every test runs ``tenantkit serve`` (gunicorn, one worker so that upstream connections are
shared by the visitors of the test) in front of a raw-socket upstream that behaves as real
upstreams do in production: answers before reading the body, sends interim responses.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO

import pytest
import urllib3
from tk_procs import Shim, shim_env
from tk_upstream import (
    TIMEOUT,
    RawUpstream,
    Request,
    Script,
    exchange,
    read_request,
    response,
    status_of,
)
from tk_web import Sites

from tenantkit import layout
from tenantkit.cache.pagecache import PageCache

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


def _get(shim: Shim, path: str, **headers: str) -> urllib3.BaseHTTPResponse:
    with urllib3.PoolManager(retries=False, timeout=TIMEOUT) as http:
        return http.request("GET", shim.url + path, headers={"Host": HOST, **headers})


def _until_hit(shim: Shim, path: str) -> urllib3.BaseHTTPResponse:
    """GET *path* until it is a HIT: a miss is stored once its last byte went out, so a
    request sent the instant the body arrived may be a miss (or, after a purge, stale)."""
    deadline = time.monotonic() + TIMEOUT
    while (reply := _get(shim, path)).headers["X-Tenantkit-Cache"] != "HIT":
        assert reply.headers["X-Tenantkit-Cache"] in ("MISS", "STALE"), reply.headers
        assert time.monotonic() < deadline, f"{path} was never stored"
        time.sleep(0.05)
    return reply


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
        again = _until_hit(shim, "/b/")
        assert again.data == b"page /b/"
        assert upstream.lines().count("GET /a/") == 1
    finally:
        script.close()


# -- 3. response framing -----------------------------------------------------------------------

HOPS = ("Connection: X-Hop\r\nX-Hop: only for the shim\r\nKeep-Alive: timeout=5\r\n"
        "Trailer: X-Sum\r\nProxy-Authenticate: Basic\r\n")


def chunked_with_a_length(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
    """Answers with a chunked body that also claims a (wrong) Content-Length, and
    hop-by-hop fields, one of them named by its Connection field."""
    for _ in range(100):
        request = read_request(reader)
        if request is None:
            return
        up.record(request)
        conn.sendall(("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 3\r\n"
                      f"Transfer-Encoding: chunked\r\n{HOPS}\r\n").encode()
                     + b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n")


def test_a_chunked_body_is_forwarded_whole_without_its_length(serve: Serve) -> None:
    upstream = RawUpstream(chunked_with_a_length)
    shim = serve(upstream)
    # Before, the upstream's Content-Length went out with the body: the visitor got "hel".
    miss = _get(shim, "/both/")
    assert miss.headers["X-Tenantkit-Cache"] == "MISS"
    for reply in (miss, _until_hit(shim, "/both/")):
        assert reply.data == b"hello world", reply.data
        assert reply.headers.get("Content-Length", "11") == "11"
        for name in ("X-Hop", "Keep-Alive", "Trailer", "Proxy-Authenticate", "X-Sum"):
            assert name not in reply.headers, (name, reply.headers)
    rendered = upstream.lines()  # a miss sent while the page was being stored renders too
    assert _get(shim, "/both/").headers["X-Tenantkit-Cache"] == "HIT"
    assert upstream.lines() == rendered == ["GET /both/"] * len(rendered)


@pytest.mark.parametrize("coding", [
    pytest.param("Transfer-Encoding: gzip, chunked\r\n", id="coded chunked"),
    pytest.param("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", id="twice"),
    pytest.param("Transfer-Encoding: identity\r\n", id="identity"),
])
def test_a_response_coding_the_proxy_cannot_frame_is_502(serve: Serve, coding: str) -> None:
    def script(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        request = read_request(reader)
        if request is not None:
            up.record(request)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n{coding}\r\n".encode()
                         + b"5\r\nhello\r\n0\r\n\r\n")

    shim = serve(RawUpstream(script))
    reply = _get(shim, "/coded/")
    # Before: framed by its Content-Length, "5\r\n" went out (and was stored) as the page.
    assert reply.status == 502 and b"5\r\n" not in reply.data
    assert _get(shim, "/coded/").headers["X-Tenantkit-Cache"] == "MISS"


def until_close(body: bytes, content_type: str = "text/html; charset=utf-8") -> Script:
    """Answers *body* without Content-Length or chunked framing (HTTP/1.0 style, as ``php
    -S`` does), then closes: the close looks the same whether the page was finished or its
    worker died half-way through it."""
    def script(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        request = read_request(reader)
        if request is not None:
            up.record(request)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                         "Connection: keep-alive\r\n\r\n".encode() + body)
    return script


@pytest.mark.parametrize("size", [pytest.param(20, id="small"),
                                  pytest.param(200_000, id="streamed")])
def test_an_html_page_cut_at_the_close_is_passed_on_never_stored(serve: Serve, size: int
                                                                 ) -> None:
    page = b"<html><body>" + b"x" * size  # no </html>: the worker died half-way
    upstream = RawUpstream(until_close(page))
    shim = serve(upstream)
    for _ in range(3):
        reply = _get(shim, "/half/")
        assert (reply.status, reply.data, reply.headers["X-Tenantkit-Cache"]) == (
            200, page, "MISS")  # as it came: a fragment (admin-ajax.php) has no </html>
        time.sleep(0.2)  # not a race: a page stored meanwhile would be a HIT
    # Before: stored as complete, and every later visitor got half a page from the cache.
    assert upstream.lines() == ["GET /half/"] * 3
    assert upstream.connections == 3  # a connection that ended at the close: never reused
    shim.stop()
    told = [line for line in shim.output().splitlines() if "</html>" in line]
    assert len(told) == 1 and "site blog" in told[0], told  # once per upstream


@pytest.mark.parametrize("body,content_type", [
    pytest.param(b"<!DOCTYPE html><html><body>whole</body></html>\n<!-- 0.1s -->\n",
                 "text/html; charset=utf-8", id="html"),
    pytest.param(b'{"posts": []}', "application/json", id="json")])
def test_a_whole_page_that_ends_at_the_close_is_stored(serve: Serve, body: bytes,
                                                       content_type: str) -> None:
    upstream = RawUpstream(until_close(body, content_type))
    shim = serve(upstream)
    first = _get(shim, "/whole/")
    assert (first.status, first.data, first.headers["X-Tenantkit-Cache"]) == (200, body, "MISS")
    # What php -S sends: stored as nginx and Varnish store it (before the </html> check:
    # never stored at all, so no php -S site was ever cached).
    assert _until_hit(shim, "/whole/").data == body
    assert upstream.connections == len(upstream.lines())  # never reused


# -- 4. a stored page's validators -------------------------------------------------------------


class Versions:
    """Serves /v/ (a page of *size* bytes, no validators of its own) from ``body``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.body = b""
        self.set("one")
        self.upstream = RawUpstream(self.script)

    def set(self, text: str) -> None:
        self.body = (text.encode() * self.size)[:self.size]

    def script(self, conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        for _ in range(100):
            request = read_request(reader)
            if request is None:
                return
            up.record(request)
            conn.sendall(response("200 OK", self.body))


@pytest.mark.parametrize("size", [pytest.param(100, id="small page"),
                                  pytest.param(300_000, id="streamed page")])
def test_a_rerender_of_the_same_bytes_keeps_its_etag(
        serve: Serve, tmp_path: Path, size: int) -> None:
    versions = Versions(size)
    shim = serve(versions.upstream)
    pages = PageCache(layout.pages_dir(tmp_path / "cache" / "blog"))  # serve()'s site

    def rerender() -> urllib3.BaseHTTPResponse:
        renders = versions.upstream.lines().count("GET /v/")
        pages.purge_paths(HOST, ["/v/"])
        deadline = time.monotonic() + TIMEOUT
        while versions.upstream.lines().count("GET /v/") == renders:
            assert time.monotonic() < deadline, "never rendered again"
            _get(shim, "/v/")
        return _until_hit(shim, "/v/")

    miss = _get(shim, "/v/")
    hit = _until_hit(shim, "/v/")
    etag, modified = hit.headers["ETag"], hit.headers["Last-Modified"]
    assert etag.startswith('"') and hit.data == versions.body
    if size < 65536:  # the whole page was in hand before the status line: same validator
        assert miss.headers["ETag"] == etag
    else:
        assert "ETag" not in miss.headers
    assert _get(shim, "/v/", **{"If-None-Match": etag}).status == 304

    # Before, every store made a new ETag: 200 and the whole page again.
    same = rerender()
    assert same.headers["ETag"] == etag and same.data == versions.body
    assert _get(shim, "/v/", **{"If-None-Match": etag}).status == 304
    assert _get(shim, "/v/", **{"If-None-Match": f"W/{etag}"}).status == 304

    versions.set("two")
    changed = rerender()
    assert changed.data == versions.body and changed.headers["ETag"] != etag
    assert _get(shim, "/v/", **{"If-None-Match": etag}).status == 200
    # Last-Modified still says when the page was stored; the validators a client sends
    # are compared as before (If-None-Match first, else If-Modified-Since).
    now = changed.headers["Last-Modified"]
    assert _get(shim, "/v/", **{"If-Modified-Since": now}).status == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert _get(shim, "/v/", **{"If-Modified-Since": old}).status == 200
    assert _get(shim, "/v/", **{"If-None-Match": etag, "If-Modified-Since": now}).status == 200
    assert parsedate_to_datetime(now) >= parsedate_to_datetime(modified)
