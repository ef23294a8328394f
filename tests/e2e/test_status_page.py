"""The admin status page, rendered by headless Chromium."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from tk_procs import Shim, need, shim_env
from tk_web import TOKEN, Sites

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
    shim, _ = served
    import urllib3

    with urllib3.PoolManager(retries=False, timeout=10) as http:
        for _ in range(3):
            http.request("GET", shim.url + "/a/", headers={"Host": "alpha.test"})
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
