"""Issue 17 section 1: one site cannot take the others down.

``tenantkit serve`` (gunicorn, 2 workers of 8 threads) in front of raw-socket upstreams: one
that accepts and never answers (a stuck PHP-FPM pool), one that answers.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest
import urllib3
from tk_procs import Shim, shim_env
from tk_upstream import TIMEOUT, RawUpstream, read_request, response
from tk_web import Sites, wait_stored

from tenantkit.web.server import GUNICORN_DEFAULTS

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")

WORKERS = 2
THREADS = int(GUNICORN_DEFAULTS["threads"])
STUCK = "stuck.test"
GOOD = "good.test"


def answers(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
    for _ in range(1000):
        request = read_request(reader)
        if request is None:
            return
        up.record(request)
        conn.sendall(response("200 OK", f"<p>page {request.target}</p>".encode()))


class Stuck:
    """An upstream that reads each request and never answers until released."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.upstream = RawUpstream(self.script)

    def script(self, conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        request = read_request(reader)
        if request is not None:
            up.record(request)
        self.released.wait(TIMEOUT)

    def close(self) -> None:
        self.released.set()
        self.upstream.close()


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    one = Stuck()
    yield one
    one.close()


@pytest.fixture
def good() -> Iterator[RawUpstream]:
    up = RawUpstream(answers)
    yield up
    up.close()


def _serve(tmp_path: Path, stuck: Stuck, good: RawUpstream, stuck_extra: str = "") -> Shim:
    sites = Sites(tmp_path)
    sites.add("stuck", [STUCK], url=stuck.upstream.url,
              extra=stuck_extra or "read_timeout = 30\n")
    sites.add("good", [GOOD], url=good.url)
    # Broken site files are that one site each: the server starts and serves the others.
    os.mkfifo(sites.dir / "fifo.toml")
    (sites.dir / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    return Shim(tmp_path, shim_env(sites.dir, sites.cache_dir), "--workers", str(WORKERS))


def _get(url: str, host: str, timeout: float = TIMEOUT) -> tuple[float, urllib3.BaseHTTPResponse]:
    """One request on a connection of its own: (seconds to the whole response, response)."""
    with urllib3.PoolManager(retries=False, timeout=timeout) as http:
        started = time.monotonic()
        reply = http.request("GET", url, headers={"Host": host})
        return time.monotonic() - started, reply


def _poll(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hung_upstream_does_not_stall_a_cached_page_of_another_site(
        tmp_path: Path, stuck: Stuck, good: RawUpstream) -> None:
    shim = _serve(tmp_path, stuck, good)
    n = THREADS * WORKERS
    pool = ThreadPoolExecutor(n)
    try:
        assert _get(shim.url + "/", GOOD)[1].headers["X-Tenantkit-Cache"] == "MISS"
        wait_stored(tmp_path / "cache", "good", GOOD, "/")  # stored just after its visitor
        assert _get(shim.url + "/", GOOD)[1].headers["X-Tenantkit-Cache"] == "HIT"
        futures: list[Future[tuple[float, urllib3.BaseHTTPResponse]]] = [
            pool.submit(_get, shim.url + f"/slow/{i}", STUCK, 60.0) for i in range(n)]

        def settled() -> bool:
            refused = sum(1 for f in futures if f.done())
            return refused + len(stuck.upstream.heads) == n

        # Every request is either held by the hung upstream or already refused.
        _poll(settled, "every request to the stuck site to be forwarded or refused")
        refused = [f.result() for f in futures if f.done()]
        assert refused, "no request over the limit was refused"
        for seconds, reply in refused:
            assert reply.status == 503
            assert reply.headers["Retry-After"].isdigit()
            assert seconds < 2.0, seconds
        assert 4 <= len(stuck.upstream.heads) <= 4 * WORKERS  # max_concurrency per worker
        for _ in range(2 * WORKERS):
            seconds, reply = _get(shim.url + "/", GOOD)
            assert reply.status == 200
            assert reply.headers["X-Tenantkit-Cache"] == "HIT"
            assert seconds < 0.1, f"a cached page took {seconds:.3f}s behind a hung site"
        # Another site's misses still reach its upstream too.
        seconds, reply = _get(shim.url + "/other/", GOOD)
        assert reply.headers["X-Tenantkit-Cache"] == "MISS"
        assert seconds < 1.0, seconds
    finally:
        stuck.released.set()
        pool.shutdown(wait=True)
        assert shim.stop() == 0
    output = shim.output()
    assert "Traceback" not in output, output[-6000:]
    assert "site stuck: backend busy" in output


def test_the_site_read_timeout_answers_504(tmp_path: Path, stuck: Stuck,
                                           good: RawUpstream) -> None:
    shim = _serve(tmp_path, stuck, good, stuck_extra="read_timeout = 0.5\n")
    try:
        seconds, reply = _get(shim.url + "/", STUCK)
        assert reply.status == 504
        assert seconds < 5.0, seconds
    finally:
        stuck.released.set()
        assert shim.stop() == 0
    assert "Traceback" not in shim.output()


# -- serve stale on error ----------------------------------------------------------------------

ADMIN = {"Host": "admin.test", "Authorization": "Bearer t0ken"}


class Flaky:
    """An upstream answering 200, 500 or nothing at all, as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.released = threading.Event()
        self.upstream = RawUpstream(self.script)

    def script(self, conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
        for _ in range(1000):
            request = read_request(reader)
            if request is None:
                return
            up.record(request)
            if self.mode == "hang":
                self.released.wait(TIMEOUT)
                return
            if self.mode == "500":
                conn.sendall(response("500 Internal Server Error", b"<p>fatal error</p>"))
                continue
            body = f"<p>page {request.target} n={len(up.heads)}</p>".encode()
            conn.sendall(response("200 OK", body))

    def close(self) -> None:
        self.released.set()
        self.upstream.close()


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    one = Flaky()
    yield one
    one.close()


def _admin_env(sites: Sites, **extra: str) -> dict[str, str]:
    return shim_env(sites.dir, sites.cache_dir, TENANTKIT_WEB_ADMIN_HOSTS="admin.test",
                    TENANTKIT_WEB_ADMIN_TOKEN="t0ken", **extra)


def _purge(shim: Shim, site: str, *paths: str) -> None:
    with urllib3.PoolManager(retries=False, timeout=TIMEOUT) as http:
        reply = http.request("POST", shim.url + "/_tenantkit/purge", headers=ADMIN,
                             json={"site": site, "host": GOOD, "path": list(paths)})
    assert reply.status == 200, reply.data


def test_an_upstream_failure_serves_the_purged_page_marked_stale(
        tmp_path: Path, flaky: Flaky) -> None:
    sites = Sites(tmp_path)
    # stale_seconds = 0: a purged page is never served while it is rendered again, only
    # when rendering it fails.
    sites.add("good", [GOOD], url=flaky.upstream.url,
              extra="read_timeout = 1\n[cache]\nstale_seconds = 0\nstale_if_error = 300\n")
    shim = Shim(tmp_path, _admin_env(sites), "--workers", "1")
    try:
        first = _get(shim.url + "/a/", GOOD)[1]
        assert first.headers["X-Tenantkit-Cache"] == "MISS"
        wait_stored(sites.cache_dir, "good", GOOD, "/a/")  # just after its visitor has it
        _purge(shim, "good", "/a/")
        failures = {"500": "an error", "hang": "a timeout"}
        for mode in failures:
            flaky.mode = mode
            seconds, reply = _get(shim.url + "/a/", GOOD)
            assert reply.status == 200, (mode, reply.status, reply.data)
            assert reply.headers["X-Tenantkit-Cache"] == "STALE", mode
            assert reply.data == first.data, mode
            assert seconds < 5.0, (mode, seconds)
        flaky.mode = "500"
        never_stored = _get(shim.url + "/b/", GOOD)[1]
        assert never_stored.status == 500  # nothing to serve instead
        flaky.close()  # refused from now on
        reply = _get(shim.url + "/a/", GOOD)[1]
        assert (reply.status, reply.headers["X-Tenantkit-Cache"]) == (200, "STALE")
        assert reply.data == first.data
    finally:
        assert shim.stop() == 0
    output = shim.output()
    assert "Traceback" not in output, output[-6000:]
    assert "served the stored page (stale_if_error)" in output


# -- re-warm after purge ---------------------------------------------------------------------


def test_after_a_targeted_purge_the_next_visitor_gets_a_hit(
        tmp_path: Path, good: RawUpstream) -> None:
    sites = Sites(tmp_path)
    sites.add("good", [GOOD], url=good.url, extra='[cache]\npolicy = "targeted"\nrewarm = true\n')
    shim = Shim(tmp_path, _admin_env(sites), "--workers", "1")
    try:
        for target in ("/a/", "/a/?p=2"):
            assert _get(shim.url + target, GOOD)[1].headers["X-Tenantkit-Cache"] == "MISS"
        # Each is stored just after its visitor has it (a request meanwhile renders again).
        wait_stored(sites.cache_dir, "good", GOOD, "/a/")
        wait_stored(sites.cache_dir, "good", GOOD, "/a/", query="p=2")
        _purge(shim, "good", "/a/")
        # Both pages are fetched again, once each, by the shim itself.
        _poll(lambda: len(good.heads) == 4, "the purged pages to be fetched again")
        assert sorted(good.lines()[2:]) == ["GET /a/", "GET /a/?p=2"]
        assert all(r.headers["host"] == GOOD for r in good.heads)
        for target in ("/a/", "/a/?p=2"):
            # While the re-warm holds the page's fill lock a visitor gets the stale page
            # (never a fetch of its own); once it is stored, a hit.
            _poll(lambda target=target: _get(shim.url + target, GOOD)[1]
                  .headers["X-Tenantkit-Cache"] == "HIT", f"a hit on {target}")
            reply = _get(shim.url + target, GOOD)[1]
            assert reply.headers["X-Tenantkit-Cache"] == "HIT", target
            assert f"<p>page {target}</p>".encode() == reply.data
        # No visitor rendered a page again:
        assert len(good.heads) == 4, (good.lines(), shim.output()[-3000:])
    finally:
        assert shim.stop() == 0
    assert "Traceback" not in shim.output()


def test_without_rewarm_a_purge_fetches_nothing(tmp_path: Path, good: RawUpstream) -> None:
    sites = Sites(tmp_path)
    sites.add("good", [GOOD], url=good.url, extra='[cache]\npolicy = "targeted"\n')
    shim = Shim(tmp_path, _admin_env(sites), "--workers", "1")
    try:
        _get(shim.url + "/a/", GOOD)
        _purge(shim, "good", "/a/")
        reply = _get(shim.url + "/a/", GOOD)[1]
        assert reply.headers["X-Tenantkit-Cache"] in ("STALE", "MISS")
    finally:
        assert shim.stop() == 0
