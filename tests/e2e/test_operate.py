"""Operating the real processes: logs through one configuration, Ctrl-C, a taken port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import urllib3
from tk_procs import TENANTKIT, Shim, shim_env, stop
from tk_web import Sites

from tenantkit.testing import free_port


def _json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_serve_logs_json_through_one_configuration_and_stops_on_ctrl_c(
        tmp_path: Path) -> None:
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install "
                                           "-e '.[server]')")
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir, TENANTKIT_LOG_FORMAT="json"),
                "--workers", "2")
    try:
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            for _ in range(3):
                assert http.request("GET", shim.url + "/p/",
                                    headers={"Host": "alpha.test"}).status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            access = [x for x in _json_lines(shim.output()) if x["logger"] == "tenantkit.access"]
            if len(access) >= 3:
                break
            time.sleep(0.05)
    finally:
        code = shim.stop(signal.SIGINT)
    output = shim.output()
    assert code == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    lines = _json_lines(output)
    # Every line is JSON: gunicorn's own, tenantkit's and the access log alike.
    assert len(lines) == len([x for x in output.splitlines() if x.strip()]), output[-4000:]
    assert any(x["logger"] == "gunicorn.error" for x in lines), output[-4000:]
    access = [x for x in lines if x["logger"] == "tenantkit.access"]
    assert len(access) == 3, output[-4000:]
    assert {x["site"] for x in access} == {"alpha"}
    assert sorted(str(x["cache"]) for x in access)[0] in ("HIT", "MISS")
    assert all(x["status"] == 200 and x["path"] == "/p/" for x in access)


def test_serve_text_logs_and_log_level(tmp_path: Path) -> None:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir, TENANTKIT_LOG_LEVEL="WARNING"),
                "--server", "werkzeug")
    try:
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            assert http.request("GET", shim.url + "/t/",
                                headers={"Host": "alpha.test"}).status == 200
        time.sleep(0.3)
    finally:
        code = shim.stop(signal.SIGINT)
    output = shim.output()
    assert code == 0 and "Traceback" not in output, output[-4000:]
    assert ' "GET /t/ HTTP/1.1" 200 ' in output and "site=alpha" in output, output
    assert "serving on" not in output  # an INFO line, below log_level = WARNING


def test_invalidator_stops_on_ctrl_c(tmp_path: Path) -> None:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"])
    log = tmp_path / "inv.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(TENANTKIT), "invalidator", "--transport", "files"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env=shim_env(sites.dir, sites.cache_dir))
    try:
        deadline = time.monotonic() + 15
        while "invalidator for" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        code = stop(proc, signal.SIGINT)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_demo_says_its_port_is_taken_and_which_to_use(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run([str(TENANTKIT), "demo", "--port", str(port), "--dir",
                                 str(tmp_path / "demo")], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "run tenantkit demo --port " in result.stderr
    assert "Traceback" not in result.stderr
