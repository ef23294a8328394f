"""`tenantkit demo` as a subprocess: two blogs, a comment purges only its own blog's page."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import urllib3
from tk_procs import TENANTKIT, stop, wait_port

from tenantkit.testing import free_port

ONE = {"Host": "blog-one.localhost"}
TWO = {"Host": "blog-two.localhost"}


def test_demo(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(TENANTKIT), "demo", "--port", str(port), "--dir",
                                 str(tmp_path / "demo")], stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        wait_port(port, proc=proc, log=log)
        base = f"http://127.0.0.1:{port}"
        printed = log.read_text()
        assert f"curl -si -H 'Host: blog-one.localhost' {base}/post/2/" in printed
        token = re.search(r"http://admin:([^@]+)@127\.0\.0\.1", printed)
        assert token is not None, printed
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            def cache(headers: dict[str, str]) -> str:
                r = http.request("GET", f"{base}/post/2/", headers=headers)
                assert r.status == 200, r.data[:300]
                return str(r.headers["X-Tenantkit-Cache"])

            assert [cache(ONE), cache(ONE)] == ["MISS", "HIT"]
            assert [cache(TWO), cache(TWO)] == ["MISS", "HIT"]
            posted = http.request("POST", f"{base}/post/2/comment", headers=ONE,
                                  fields={"author": "tester", "body": "a <b>fine</b> post"},
                                  encode_multipart=False, redirect=False)
            assert posted.status == 303
            cookie = posted.headers["Set-Cookie"]
            assert cookie.startswith("tenantkit_rw=") and "HttpOnly" in cookie
            # This browser reads its own write at once, past the cache:
            mine = http.request("GET", f"{base}/post/2/",
                                headers={**ONE, "Cookie": cookie.split(";")[0]})
            assert mine.headers["X-Tenantkit-Cache"] == "BYPASS"
            assert b"a &lt;b&gt;fine&lt;/b&gt; post" in mine.data
            # Everyone else gets blog one's page re-rendered once the purge has run:
            # (the re-rendered page is stored just after its visitor has it: until then the
            # old one may still be served stale)
            deadline = time.monotonic() + 10
            while (b"tester" not in http.request("GET", f"{base}/post/2/", headers=ONE).data
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            page = http.request("GET", f"{base}/post/2/", headers=ONE)
            assert b"tester" in page.data
            assert cache(TWO) == "HIT"  # blog two's page was left alone
            assert b"tester" not in http.request("GET", f"{base}/post/2/", headers=TWO).data
            status = http.request("GET", f"{base}/_tenantkit/", headers={
                "Host": "127.0.0.1", "Authorization": f"Bearer {token.group(1)}"})
            assert status.status == 200 and b"blog-one.localhost" in status.data
            metrics = http.request("GET", f"{base}/_tenantkit/metrics", headers={
                "Host": "127.0.0.1", "Authorization": f"Bearer {token.group(1)}"}).data
            assert re.search(rb'tenantkit_routing_decisions_total\{reason="[^"]+",role="write"\} '
                             rb"[1-9]", metrics), metrics[-2000:]
            assert b'tenantkit_cache_total{result="HIT",site="two"}' in metrics
            bad = http.request("POST", f"{base}/post/2/comment", headers=ONE,
                               fields={"author": ""}, encode_multipart=False)
            assert bad.status == 400
    finally:
        code = stop(proc, signal.SIGINT)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "tenantkit demo: stopped" in output
    assert "Traceback" not in output, output[-3000:]
