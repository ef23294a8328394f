"""`tenantkit serve` under a real gunicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from tk_procs import Shim, shim_env
from tk_web import TOKEN, Sites

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Shim, Sites]]:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir,
                                   TENANTKIT_WEB_ADMIN_HOSTS="admin.test",
                                   TENANTKIT_WEB_ADMIN_TOKEN=TOKEN),
                "--workers", "2")
    try:
        yield shim, sites
    finally:
        code = shim.stop()
        assert code == 0, shim.output()[-12000:]
        assert "Traceback" not in shim.output(), shim.output()[-3000:]


def _wait_for(http: urllib3.PoolManager, url: str, host: str, status: int,
              timeout: float = 10.0) -> None:
    """Until *status* comes back several times in a row (every worker has reloaded)."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        got = http.request("GET", url + "/", headers={"Host": host}).status
        streak = streak + 1 if got == status else 0
        if streak >= 8:
            return
        time.sleep(0.02)
    raise AssertionError(f"{host} did not answer {status} within {timeout}s")


def test_sites_come_and_go_while_another_site_is_under_load(
        served: tuple[Shim, Sites]) -> None:
    shim, sites = served
    failures: list[str] = []
    done = threading.Event()
    counts = [0] * 4

    def load(n: int) -> None:
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            for i in range(5000):  # bounded
                if done.is_set():
                    return
                try:
                    r = http.request("GET", f"{shim.url}/p/{i % 25}/",
                                     headers={"Host": "alpha.test"})
                    if r.status != 200 or b"hello from a tenantkit" not in r.data:
                        failures.append(f"{r.status} {r.data[:100]!r}")
                except Exception as exc:  # a failed request is what this test looks for
                    failures.append(repr(exc))
                counts[n] += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            for round_ in range(3):
                path = sites.add(f"new{round_}", [f"new{round_}.test"])
                _wait_for(http, shim.url, f"new{round_}.test", 200)
                path.unlink()
                _wait_for(http, shim.url, f"new{round_}.test", 421)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert sum(counts) > 50


def test_hostile_requests_on_the_wire(served: tuple[Shim, Sites]) -> None:
    shim, _ = served

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", shim.port), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    huge = b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw(huge).split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"431")
    bad_host = b"GET / HTTP/1.1\r\nHost: a..b\r\nConnection: close\r\n\r\n"
    assert raw(bad_host).startswith(b"HTTP/1.1 400")
    unknown = b"GET / HTTP/1.1\r\nHost: zzz.test\r\nConnection: close\r\n\r\n"
    assert raw(unknown).startswith(b"HTTP/1.1 421")
    method = b"BREW / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n"
    assert raw(method).startswith(b"HTTP/1.1 200")
    xff = (b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Forwarded-Host: admin.test\r\n"
           b"X-Forwarded-For: 1.2.3.4, <script>\r\nX-Forwarded-Proto: gopher\r\n"
           b"Connection: close\r\n\r\n")
    assert b"hello from a tenantkit" in raw(xff)  # forwarded headers not trusted by default
    nul = b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Forwarded-For: \x00\r\n\r\n"
    assert raw(nul).startswith(b"HTTP/1.1 400")
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        for _ in range(2):
            assert http.request("GET", shim.url + "/", headers={"Host": "alpha.test"}).status == 200


def test_metrics_add_up_every_worker(served: tuple[Shim, Sites]) -> None:
    shim, _ = served
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        for _ in range(20):
            assert http.request("GET", shim.url + "/m/", headers={"Host": "alpha.test",
                                                                  "Connection": "close"}
                                ).status == 200
        text = http.request("GET", shim.url + "/_tenantkit/metrics", headers={
            "Host": "admin.test", "Authorization": f"Bearer {TOKEN}"}).data.decode()
    line = next(x for x in text.splitlines()
                if x.startswith('tenantkit_requests_total{site="alpha",status="200"}'))
    assert float(line.split()[-1]) == 20.0


def test_each_request_is_logged_once_and_access_false_turns_it_off(tmp_path: Path) -> None:
    # gunicorn logs its own access line whenever it is handed a logging config, and builds
    # it even when nothing prints it: tenantkit.access is the one line (issue 17 section 2).
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    for access, lines in (("true", 1), ("false", 0)):
        shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir,
                                       TENANTKIT_LOG_ACCESS=access), "--workers", "1")
        try:
            with urllib3.PoolManager(retries=False, timeout=10) as http:
                assert http.request("GET", f"{shim.url}/once-{access}/",
                                    headers={"Host": "alpha.test"}).status == 200
        finally:
            assert shim.stop() == 0, shim.output()[-3000:]
        output = shim.output()
        logged = [line for line in output.splitlines() if f"/once-{access}/" in line]
        assert len(logged) == lines, output[-3000:]
        assert all("tenantkit.access" in line for line in logged), logged
        assert "gunicorn.access" not in output
