"""contrib/punbb.diff on a real PunBB (PUNBB_SRC, else the vendored v1.4.4), PHP 8.2, MariaDB.

Two forums, one database, two table prefixes, one PunBB copy behind ``php -S``: each is
installed through its own host with PunBB's installer over HTTP, gets a topic, a reply, an
edit, a moderation and a deletion, and must keep its cache files in its own directory, see
only its own posts, and publish its events to Redis. Then, without the map, the same copy
installs and serves a single forum from config.php as before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.testing import MariaDBCluster, RedisServer

from .punbb_support import DIFF, EVENTS_HELPER, Browser, location_id, php_server

pytestmark = pytest.mark.slow

FORUMS = {"forum-a": ("a.test", "fa_"), "forum-b": ("b.test", "fb_")}
ADMIN = ("admin", "admin-pass-123")


#: The PunBB release the diff is based on, kept beside the checkout (tag v1.4.4, commit 4730166).
VENDORED = Path(__file__).resolve().parents[3] / "shared" / "vendor" / "punbb-v1.4.4.tar.gz"


@pytest.fixture(scope="session")
def punbb_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PunBB source: PUNBB_SRC, else the vendored v1.4.4 tarball unpacked once."""
    raw = os.environ.get("PUNBB_SRC")
    if raw:
        src = Path(raw)
    elif VENDORED.is_file():
        root = tmp_path_factory.mktemp("punbb-src")
        with tarfile.open(VENDORED) as archive:
            archive.extractall(root, filter="data")
        src = root / "punbb"
    else:
        reason = (f"no PunBB source: set PUNBB_SRC to a checkout of github.com/punbb/punbb at "
                  f"v1.4.4, or put the release tarball at {VENDORED}")
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (TENANTKIT_REQUIRE_SERVICES=1 makes this a failure)")
        pytest.skip(reason)
    if not (src / "include" / "essentials.php").is_file():
        pytest.fail(f"{src} is not a PunBB source tree (no include/essentials.php)")
    return src


@dataclass
class Setup:
    root: Path
    punbb: Path
    cache: Path
    port: int
    log: Path


def _install(browser: Browser, *, db_host: str = "ignored", prefix: str = "ignored_",
             expect: int = 200) -> str:
    response = browser.submit("/admin/install.php", {
        "req_db_type": "mysqli_innodb", "req_db_host": db_host, "req_db_name": "tenantkit_test",
        "db_username": "tenantkit", "db_password": "tenantkit", "db_prefix": prefix,
        "req_email": "admin@example.test", "req_username": ADMIN[0],
        "req_password1": ADMIN[1], "req_base_url": f"http://{browser.host}",
        "req_language": "English",
    }, action="install.php")
    assert response.status == expect, response.text[-3000:]
    return response.text


def _login(browser: Browser) -> None:
    response = browser.submit("/login.php", {"req_username": ADMIN[0], "req_password": ADMIN[1]},
                              action="login.php", button="login")
    assert response.status == 302, response.text[-3000:]


@pytest.fixture
def forums(punbb_src: Path, php: str, mariadb_pair: MariaDBCluster, redis_server: RedisServer,
           tmp_path: Path) -> Iterator[Setup]:
    src = punbb_src
    punbb = tmp_path / "punbb"
    shutil.copytree(src, punbb, ignore=shutil.ignore_patterns(".git"))
    for args in (["--check"], []):
        proc = subprocess.run(["git", "apply", *args, str(DIFF)], cwd=punbb,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"git apply {args}: {proc.stderr}"
    shutil.copy(EVENTS_HELPER, punbb / "include" / "tenantkit-events.php")

    sites = tmp_path / "sites"
    sites.mkdir()
    log = tmp_path / "php.log"
    with php_server(php, punbb, log) as port:
        for name, (host, prefix) in FORUMS.items():
            (sites / f"{name}.toml").write_text(
                f'hosts = ["{host}", "*.{host}"]\n'
                f'[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:{port}"\n'
                f'[database]\ntable_prefix = "{prefix}"\n'
                f'[meta]\napp = "punbb"\nbase_url = "http://{host}:{port}"\n')
        (sites / "blog.toml").write_text(
            'hosts = ["blog.a.test"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:1"\n')
        (tmp_path / "tenantkit.toml").write_text(
            f'sites_dir = "sites"\ncache_dir = "cache"\n'
            f'[database]\nprimary = "{mariadb_pair.primary_url}"\n'
            f'[bus]\ntransport = "redis"\nredis_url = "{redis_server.url}"\n')
        result = CliRunner().invoke(cli, [
            "--config", str(tmp_path / "tenantkit.toml"), "punbb-config", "--create-dirs",
            "--output", str(punbb / "tenantkit_forums.php")])
        assert result.exit_code == 0, result.output
        yield Setup(tmp_path, punbb, tmp_path / "cache", port, log)


def _events(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(fields[b"event"]) for _, fields in
                client.xrange("tenantkit:events")]
    finally:
        client.close()


def _forum_flow(setup: Setup, name: str) -> dict[str, int]:
    host = f"{FORUMS[name][0]}:{setup.port}"
    page = _install(Browser(setup.port, host))
    assert "successfully installed" in page, page[-3000:]
    again = _install(Browser(setup.port, host), expect=503)
    assert f'A table called "{FORUMS[name][1]}users" is already present' in again

    admin = Browser(setup.port, host)
    _login(admin)
    subject = f"Topic of {name}"
    response = admin.submit("/post.php?fid=1", {
        "req_subject": subject,
        "req_message": f"[b]Hello[/b] from {name}. [quote=x]q[/quote] [list][*]one[/list] "
                       "http://example.com/",
    }, action="post.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]
    first_pid = location_id(response, "pid")
    topic = re.search(r"viewtopic\.php\?id=(\d+)", admin.get(f"/viewtopic.php?pid={first_pid}")
                      .text)
    assert topic is not None
    tid = int(topic.group(1))
    response = admin.submit(f"/post.php?tid={tid}", {"req_message": f"A reply in {name}"},
                            action="post.php", button="submit_button")
    reply = location_id(response, "pid")
    response = admin.submit(f"/edit.php?id={reply}", {"req_message": f"An edited reply in {name}"},
                            action="edit.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]
    view = admin.get(f"/viewtopic.php?id={tid}")
    assert f"An edited reply in {name}" in view.text
    stick = re.search(r'href="([^"]*moderate\.php\?fid=1&amp;stick=\d+[^"]*)"', view.text)
    assert stick is not None, "no stick link for the admin"
    assert admin.get(stick.group(1).replace("&amp;", "&")).status == 302
    response = admin.submit(f"/delete.php?id={reply}", {"req_confirm": "1"},
                            action="delete.php", button="delete")
    assert response.status == 302, response.text[-3000:]
    assert f"An edited reply in {name}" not in admin.get(f"/viewtopic.php?id={tid}").text

    response = admin.submit("/admin/settings.php?section=setup",
                            {"form[board_title]": f"Board of {name}"},
                            action="settings.php", button="save")
    assert response.status == 302, response.text[-3000:]

    visitor = Browser(setup.port, host)
    response = visitor.submit("/register.php", {
        "req_username": f"user-{name}", "req_email1": f"user@{FORUMS[name][0]}",
        "req_password1": "user-pass-123", "req_password2": "user-pass-123",
    }, action="register.php", button="register")
    assert response.status in (200, 302), response.text[-3000:]
    assert "error-box" not in response.text or "same IP address" in response.text
    return {"tid": tid}


def test_two_forums_one_copy(forums: Setup, redis_server: RedisServer) -> None:
    topics = {name: _forum_flow(forums, name)["tid"] for name in FORUMS}

    for name, (host, _) in FORUMS.items():
        other = next(n for n in FORUMS if n != name)
        listing = Browser(forums.port, f"{host}:{forums.port}").get("/viewforum.php?id=1").text
        assert f"Topic of {name}" in listing
        assert f"Topic of {other}" not in listing
        assert f"Board of {name}" in listing and f"Board of {other}" not in listing
        sub = Browser(forums.port, f"www.{host}:{forums.port}").get("/viewforum.php?id=1").text
        assert f"Topic of {name}" in sub

    # Cache files: each forum's in its own app/ directory, none in PunBB's cache/.
    assert sorted(p.name for p in (forums.punbb / "cache").iterdir()) == [".htaccess",
                                                                           "index.html"]
    for name in FORUMS:
        app = forums.cache / name / "app"
        files = sorted(p.name for p in app.iterdir())
        assert {"cache_config.php", "cache_hooks.php", "cache_bans.php"} <= set(files), files
        config = (app / "cache_config.php").read_text()
        assert f"'o_avatars_dir' => 'img/avatars/{name}'" in config
        assert (forums.punbb / "img" / "avatars" / name).is_dir()
    assert sorted(p.name for p in forums.cache.iterdir()) == sorted(FORUMS)
    assert not (forums.punbb / "config.php").exists()

    events = _events(redis_server.url)
    for name in FORUMS:
        mine = [e for e in events if e["site"] == name]
        kinds = [e["type"] for e in mine]
        assert kinds.count("comment_posted") == 1, kinds
        assert "post_edited" in kinds and "comment_changed" in kinds, kinds
        assert kinds.count("site_changed") == 1, kinds
        assert all(e["post_id"] == topics[name] for e in mine if e["type"] != "site_changed")
        assert [e["post_id"] for e in mine if e["type"] == "site_changed"] == [None]
        assert all(e["origin"] == "php" and e["v"] == 1 for e in mine)
        assert all(re.fullmatch(r"\d+-\d+-\d+", e["gtid"] or "") for e in mine), mine
    assert {e["site"] for e in events} == set(FORUMS)

    for host in ("c.test", "blog.a.test", "a.test.evil.com", "a..test"):
        response = Browser(forums.port, host).get("/index.php")
        assert response.status == 421, (host, response.text[:300])

    # Redis down: the event is not lost, it lands in the forum's .purge/ as a trigger file.
    purge = forums.cache / "forum-a" / ".purge"
    admin = Browser(forums.port, f"a.test:{forums.port}")
    _login(admin)
    redis_server.stop()
    response = admin.submit(f"/post.php?tid={topics['forum-a']}", {"req_message": "no redis"},
                            action="post.php", button="submit_button")
    assert response.status == 302
    redis_server.start()
    dropped = [json.loads(p.read_text()) for p in purge.glob("*.json")]
    assert [(e["type"], e["site"], e["post_id"]) for e in dropped] == [
        ("comment_posted", "forum-a", topics["forum-a"])]
    assert not list((forums.cache / "forum-b" / ".purge").iterdir())

    # [bus] transport = "files": PunBB writes trigger files straight away.
    config = forums.root / "tenantkit.toml"
    config.write_text(config.read_text().replace('transport = "redis"', 'transport = "files"'))
    result = CliRunner().invoke(cli, ["--config", str(config), "punbb-config",
                                      "--output", str(forums.punbb / "tenantkit_forums.php")])
    assert result.exit_code == 0, result.output
    response = admin.submit(f"/post.php?tid={topics['forum-a']}", {"req_message": "as a file"},
                            action="post.php", button="submit_button")
    assert response.status == 302
    assert len(list(purge.glob("*.json"))) == 2

    text = forums.log.read_text(errors="replace")
    assert "Fatal error" not in text and "Parse error" not in text, text[-5000:]


def test_without_a_map_one_forum_from_config_php(forums: Setup,
                                                 mariadb_pair: MariaDBCluster) -> None:
    (forums.punbb / "tenantkit_forums.php").unlink()
    browser = Browser(forums.port, f"single.test:{forums.port}")
    assert "config.php" in browser.get("/index.php").text
    db_host = f"127.0.0.1:{mariadb_pair.primary.port}"
    page = _install(browser, db_host=db_host, prefix="single_")
    assert "successfully installed" in page, page[-3000:]
    config = (forums.punbb / "config.php").read_text()
    assert "$db_prefix = 'single_';" in config
    assert "$base_url = 'http://single.test:" in config
    assert browser.get("/index.php").status == 200
    _login(browser)
    assert "cache_config.php" in {p.name for p in (forums.punbb / "cache").iterdir()}
    assert not forums.cache.exists() or not any(forums.cache.glob("*/app/cache_*.php"))
