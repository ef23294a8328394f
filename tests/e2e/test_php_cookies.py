"""Issue 24, case 3: the page cache sees cookie names as PHP reads them.

The upstream is PHP's own server (``php -S``) running a page that, like WordPress, shows a
commenter's pending comment or a protected post's content when ``$_COOKIE`` holds the
cookie: whatever spelling of the name PHP reads as that cookie must bypass the cache.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from tk_procs import Shim, need, shim_env, stop
from tk_web import Sites

from tenantkit.config import DEFAULT_BYPASS_COOKIES
from tenantkit.testing import free_port, wait_port
from tenantkit.web.cookies import php_cookie_name

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")

PAGE = """<?php
$prefixes = json_decode('%s');
$personal = [];
foreach ($_COOKIE as $name => $value) {
    foreach ($prefixes as $prefix) {
        if (strncmp($name, $prefix, strlen($prefix)) === 0) {
            $personal[] = "PERSONAL for $name";
        }
    }
}
if ($_SERVER['REQUEST_URI'] === '/names') {
    header('Content-Type: application/json');
    echo json_encode(array_keys($_COOKIE));
    return;
}
// A whole HTML page: php -S does not frame it, and only its </html> shows it is whole.
echo "<html><body>page " . $_SERVER['REQUEST_URI'] . "\\n" . implode("\\n", $personal)
    . "</body></html>";
"""


@pytest.fixture
def php_site(tmp_path: Path) -> Iterator[tuple[Shim, str]]:
    php = need("php", "php-cli")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.php").write_text(PAGE % json.dumps(DEFAULT_BYPASS_COOKIES))
    port = free_port()
    log = tmp_path / "php.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([php, "-S", f"127.0.0.1:{port}", "-t", "."],
                                cwd=tmp_path / "www", stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc, log=log)
        sites = Sites(tmp_path)
        sites.add("wp", ["wp.test"], url=f"http://127.0.0.1:{port}")
        shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir), "--workers", "1")
        try:
            yield shim, f"http://127.0.0.1:{port}"
        finally:
            assert shim.stop() == 0, shim.output()[-6000:]
            assert "Traceback" not in shim.output()
    finally:
        stop(proc)


SPELLINGS = [
    "comment.author.5f3=Eve+says+buy+pills",
    "comment author 5f3=Eve",
    "a=1; comment[author_5f3=Eve",
    "a=1;\t wp-postpass.5f3=%24P%24hash",
    'x="q; wp-postpass.5f3=h; y="',
    "wordpress.logged.in_5f3=admin",
    "forum.cookie.x=1",
    "punbb.cookie=1",
    "tenantkit.wp.pin=1",
    "comment_author_5f3[x]=Eve",
]


@pytest.mark.parametrize("cookie", SPELLINGS)
def test_a_cookie_php_reads_as_a_bypass_cookie_bypasses_the_cache(
        php_site: tuple[Shim, str], cookie: str, tmp_path: Path) -> None:
    shim, _ = php_site
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        def get(**headers: str) -> urllib3.BaseHTTPResponse:
            return http.request("GET", shim.url + "/post/7/",
                                headers={"Host": "wp.test", **headers})

        personal = get(Cookie=cookie)
        assert b"PERSONAL" in personal.data  # PHP did read it as a bypass cookie
        assert personal.headers["X-Tenantkit-Cache"] == "BYPASS"
        deadline = time.monotonic() + 10  # stored once its last byte went out: poll
        while True:
            anonymous = get()
            assert b"PERSONAL" not in anonymous.data, anonymous.data
            if anonymous.headers["X-Tenantkit-Cache"] == "HIT":
                break
            assert time.monotonic() < deadline, "the anonymous page was never stored"
            time.sleep(0.05)


def test_php_cookie_name_is_what_php_reads(php_site: tuple[Shim, str]) -> None:
    _, php = php_site  # asked directly: the reference for tenantkit.web.cookies
    names = ["comment.author.h", "comment author h", " wp-postpass.h", "comment[author_h",
             "a[b.c", "comment_author_h[x]", "comment%2Eauthor_h", "\ttab.x", "x.y[z",
             "a[b]c.d", "wp-postpass_h[", ".x", "a.b]", "comment+author_h", "[x]"]
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        for name in names:
            seen = json.loads(http.request("GET", php + "/names", headers={
                "Cookie": f"{name}=1"}).data)
            expected = php_cookie_name(name)
            assert seen == ([expected] if expected else []), name
