"""The admin status page, rendered by headless Chromium."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from tk_procs import Shim, need, shim_env
from tk_web import TOKEN, Sites, wait_stored

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Shim, Sites]]:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test", "*.alpha.test"])
    sites.add("beta", ["beta.test"])
    (sites.dir / "broken.toml").write_text("hosts = 42\n")
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir,
                                   TENANTKIT_WEB_ADMIN_HOSTS="admin.test",
                                   TENANTKIT_WEB_ADMIN_TOKEN=TOKEN), "--workers", "1")
    try:
        yield shim, sites
    finally:
        shim.stop()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    binary = need("chromium", "chromium", "/usr/bin/chromium")
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}",
         "--host-resolver-rules=MAP admin.test 127.0.0.1, MAP alpha.test 127.0.0.1",
         *args], capture_output=True, timeout=90, check=False)


def test_status_page_renders_in_chromium(served: tuple[Shim, Sites], tmp_path: Path) -> None:
    shim, sites = served
    import urllib3

    with urllib3.PoolManager(retries=False, timeout=10) as http:
        for i in range(3):
            http.request("GET", shim.url + "/a/", headers={"Host": "alpha.test"})
            if i == 0:  # a miss's page is stored just after its visitor has it
                wait_stored(sites.cache_dir, "alpha", "alpha.test", "/a/")
    url = f"http://admin:{TOKEN}@admin.test:{shim.port}/_tenantkit/"
    dom = chromium(tmp_path, "--dump-dom", url)
    html = dom.stdout.decode(errors="replace")
    assert "tenantkit" in html, dom.stderr.decode(errors="replace")[-2000:]
    assert "alpha.test" in html and "*.alpha.test" in html and "beta.test" in html
    assert "broken.toml" in html
    assert "66.7%" in html  # 2 hits of 3 requests for alpha

    shot = tmp_path / "status.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,800", url)
    assert shot.exists(), result.stderr.decode(errors="replace")[-2000:]
    with Image.open(shot) as image:
        grey = image.convert("L")
        stat = ImageStat.Stat(grey)
        lo, hi = grey.getextrema()
        assert image.size == (1000, 800)
        assert hi - lo > 100  # text and the dark table headers on a light page
        assert stat.stddev[0] > 10  # not one flat colour
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20


def test_status_page_refuses_chromium_without_the_token(served: tuple[Shim, Sites],
                                                       tmp_path: Path) -> None:
    shim, _ = served
    dom = chromium(tmp_path, "--dump-dom", f"http://admin.test:{shim.port}/_tenantkit/")
    html = dom.stdout.decode(errors="replace")
    assert dom.returncode == 0
    assert "alpha.test" not in html and "broken.toml" not in html


def _requests_cell(html: str, site: str) -> int:
    import re

    match = re.search(rf'data-site="{site}".*?<td class="n requests">(\d+)</td>', html, re.S)
    assert match is not None, html[-3000:]
    return int(match.group(1))


def test_status_page_adds_up_every_worker_in_chromium(tmp_path: Path) -> None:
    """Under four workers the page shows all of them: 40 requests over fresh connections
    (spread over the workers) read 40, and the number moves after more traffic."""
    import urllib3

    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir,
                                   TENANTKIT_WEB_ADMIN_HOSTS="admin.test",
                                   TENANTKIT_WEB_ADMIN_TOKEN=TOKEN, TENANTKIT_BUS_NODE="web-1"),
                "--workers", "4")
    try:
        def traffic(count: int) -> None:
            with urllib3.PoolManager(retries=False, timeout=10) as http:
                for i in range(count):
                    assert http.request("GET", f"{shim.url}/p/{i % 5}/", headers={
                        "Host": "alpha.test", "Connection": "close"}).status == 200

        url = f"http://admin:{TOKEN}@admin.test:{shim.port}/_tenantkit/?refresh=0"
        traffic(40)
        first = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
        html = first.stdout.decode(errors="replace")
        assert "web-1" in html and "every worker" in html, html[-3000:]
        assert _requests_cell(html, "alpha") == 40
        console = [line for line in first.stderr.decode(errors="replace").splitlines()
                   if "CONSOLE" in line or "Uncaught" in line]
        assert console == [], console
        traffic(10)
        again = chromium(tmp_path, "--dump-dom", url).stdout.decode(errors="replace")
        assert _requests_cell(again, "alpha") == 50
    finally:
        code = shim.stop()
    assert code == 0 and "Traceback" not in shim.output(), shim.output()[-3000:]


def test_four_workers_flush_once_and_the_page_shows_the_node_counters(tmp_path: Path) -> None:
    """Under ``tenantkit serve --workers 4`` one worker is the node's invalidation actor:
    three trigger files dropped at once are one flush, counted for the node in /metrics and
    on the status page; the other workers stand by, healthy, naming the actor."""
    import json
    import os
    import time

    import urllib3

    from tenantkit.cache.events import Purge
    from tenantkit.cache.transports import TriggerFileTransport

    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir,
                                   TENANTKIT_WEB_ADMIN_HOSTS="admin.test",
                                   TENANTKIT_WEB_ADMIN_TOKEN=TOKEN, TENANTKIT_BUS_NODE="web-1"),
                "--workers", "4")
    admin = {"Host": "admin.test", "Authorization": f"Bearer {TOKEN}", "Connection": "close"}
    current = sites.cache_dir / "alpha" / "pages" / "current"
    lock = sites.cache_dir / "_node" / "invalidator-web-1.lock"

    def poll(check: object, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return True
            time.sleep(0.05)
        return False

    try:
        with urllib3.PoolManager(retries=False, timeout=10) as http:
            assert http.request("GET", f"{shim.url}/p/1/", headers={
                "Host": "alpha.test"}).status == 200
            assert poll(lambda: current.is_symlink() and lock.read_text().strip().isdigit())
            before = int(os.readlink(current)[1:])
            actor = int(lock.read_text())
            files = TriggerFileTransport(sites.cache_dir)
            for _ in range(3):
                files.publish(Purge("alpha", all=True))
            assert poll(lambda: not list((sites.cache_dir / "alpha" / ".purge").glob("*.json")))

            def metrics() -> str:
                response = http.request("GET", f"{shim.url}/_tenantkit/metrics", headers=admin)
                assert response.status == 200
                return str(response.data.decode())

            assert poll(lambda: 'tenantkit_node_coalesced_total{site="alpha"} 2.0' in metrics())
            text = metrics()
            assert 'tenantkit_node_flushes_total{site="alpha"} 1.0' in text
            assert "# TYPE tenantkit_node_renders_total counter" in text
            assert "# TYPE tenantkit_node_stale_served_total counter" in text
            assert int(os.readlink(current)[1:]) == before + 1
            states = set()
            for _ in range(12):  # fresh connections: spread over the workers
                response = http.request("GET", f"{shim.url}/_tenantkit/health", headers=admin)
                assert response.status == 200, response.data[:2000]
                states.add(json.loads(response.data)["checks"]["bus"]["invalidator"])
            assert states <= {"running", f"standby: node actor is pid {actor}"}, states
        url = f"http://admin:{TOKEN}@admin.test:{shim.port}/_tenantkit/?refresh=0"
        html = chromium(tmp_path, "--dump-dom", url).stdout.decode(errors="replace")
        import re

        row = re.search(r'<tr data-site="alpha">.*?</tr>', html.split('id="node-counters"')[1],
                        re.S)
        assert row is not None, html[-3000:]
        assert '<td class="n flushes">1</td>' in row.group(0)
        assert '<td class="n coalesced">2</td>' in row.group(0)
    finally:
        code = shim.stop()
    assert code == 0 and "Traceback" not in shim.output(), shim.output()[-3000:]
    assert shim.output().count("invalidator: standing by on node web-1") == 3, \
        shim.output()[-3000:]
