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
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from click.testing import CliRunner

from tenantkit.cache.pagecache import PageCache
from tenantkit.cli import cli
from tenantkit.testing import MariaDBCluster, RedisServer, free_port, wait_port

from .punbb_support import DIFF, EVENTS_HELPER, Browser, Response, location_id, php_server

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


# --- behind `tenantkit serve` (issue 20) --------------------------------------------------------

SERVED = {"forum-a": "fa_", "forum-b": "fb_"}
SEARCH_ACTIONS = ("search", "show_new", "show_recent", "show_user_posts", "show_user_topics",
                  "show_subscriptions", "show_forum_subscriptions", "show_unanswered")
CACHE = "X-Tenantkit-Cache"


#: What PHP prints into a page under display_errors (the served forum's php -S runs with it on,
#: as a careless php.ini would): the patch logs deprecations and displays none of them.
PHP_MESSAGES = re.compile(r"\b(Deprecated|Warning|Notice|Fatal error|Parse error)\b(</b>)?:")
#: PunBB's own installer warns once about a null $forum_user while it indexes the first post
#: (include/functions.php, validate_search_word; untouched by the patch): the installing
#: admin's page, not a visitor's. Deprecations are refused there too.
INSTALLER = ("/admin/install.php", re.compile(r"\b(Deprecated|Fatal error|Parse error)\b"))


class CheckedBrowser(Browser):
    """A Browser that fails on any PHP message shown in any page it gets."""

    def request(self, method: str, url: str, data: Any = None) -> Response:
        response = super().request(method, url, data)
        pattern = INSTALLER[1] if url.split("?")[0].endswith(INSTALLER[0]) else PHP_MESSAGES
        found = pattern.search(response.text)
        assert found is None, (method, url, response.text[max(0, found.start() - 300):
                                                         found.end() + 500] if found else "")
        return response


@dataclass
class Served:
    root: Path
    punbb: Path
    port: int          # the shim's
    php_log: Path
    shim_log: Path

    def browser(self, host: str) -> Browser:
        return CheckedBrowser(self.port, host)


def _tenantkit(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def served(punbb_src: Path, php: str, mariadb_pair: MariaDBCluster, redis_server: RedisServer,
           tmp_path: Path) -> Iterator[Served]:
    """Two forums on one database behind `tenantkit serve` (gunicorn; its workers run the
    invalidator on the Redis bus):
    forum-a has a configured base URL (http://a.test, the port the visitor used is the
    default one as behind nginx), forum-b none (from the shim's X-Forwarded-* headers)."""
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")
    punbb = tmp_path / "punbb"
    shutil.copytree(punbb_src, punbb, ignore=shutil.ignore_patterns(".git"))
    proc = subprocess.run(["git", "apply", str(DIFF)], cwd=punbb, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    shutil.copy(EVENTS_HELPER, punbb / "include" / "tenantkit-events.php")
    config = tmp_path / "tenantkit.toml"
    config.write_text(
        f'sites_dir = "{tmp_path}/sites"\ncache_dir = "{tmp_path}/cache"\n'
        f'[database]\nprimary = "{mariadb_pair.primary_url}"\n'
        f'replicas = ["{mariadb_pair.replica_url}"]\n'
        f'[bus]\ntransport = "redis"\nredis_url = "{redis_server.url}"\n'
        '[cache]\npolicy = "targeted"\nttl = 600\n'
        # as behind nginx: the visitor's address comes in X-Forwarded-For
        '[web]\ntrusted_proxies = 1\n')
    php_log = tmp_path / "php.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    env["TENANTKIT_CONFIG"] = str(config)
    with php_server(php, punbb, php_log, display_errors=True) as php_port:
        upstream = f"http://127.0.0.1:{php_port}"
        _tenantkit(config, "provision", "forum-a", "--host", "a.test", "--host", "*.a.test",
                   "--upstream", upstream, "--table-prefix", "fa_",
                   "--base-url", "http://a.test", "--print-punbb-config")
        _tenantkit(config, "provision", "forum-b", "--host", "b.test", "--upstream", upstream,
                   "--table-prefix", "fb_", "--print-punbb-config")
        _tenantkit(config, "punbb-config", "--create-dirs",
                   "--output", str(punbb / "tenantkit_forums.php"))
        port = free_port()
        shim_log = tmp_path / "shim.log"
        tenantkit_bin = Path(sys.executable).parent / "tenantkit"
        with shim_log.open("wb") as out:
            shim = subprocess.Popen([str(tenantkit_bin), "serve", "--bind", f"127.0.0.1:{port}",
                                     "--workers", "2", "--server", "gunicorn"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            wait_port(port, proc=shim, log=shim_log)
            yield Served(tmp_path, punbb, port, php_log, shim_log)
        finally:
            shim.terminate()
            try:
                shim.wait(timeout=15)
            except subprocess.TimeoutExpired:
                shim.kill()
                shim.wait(timeout=5)


def _until(check: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def _guest_get(served: Served, host: str, url: str) -> Response:
    response = served.browser(host).get(url)  # a fresh guest: no cookie at all
    assert response.status == 200, (url, response.status, response.text[-2000:])
    assert "Set-Cookie" not in response.headers, (url, response.headers)
    return response


def _served_flow(served: Served, name: str, host: str) -> dict[str, int]:
    """Install, register, log in, post, reply, edit and search on one forum via the shim."""
    install = _install(served.browser(host))
    assert "successfully installed" in install, install[-3000:]

    member = served.browser(host)
    member.headers["X-Forwarded-For"] = "192.0.2.7"  # not the installer's address
    response = member.submit("/register.php", {
        "req_username": f"member-{name}", "req_email1": f"member@{name}.test",
        "req_password1": "member-pass-123", "req_password2": "member-pass-123",
    }, action="register.php", button="register")
    assert response.status in (200, 302), response.text[-3000:]
    assert "Unable to confirm security token" not in response.text, response.text[-3000:]
    assert "error-box" not in response.text, response.text[-3000:]

    admin = served.browser(host)
    _login(admin)
    response = admin.submit("/post.php?fid=1", {
        "req_subject": f"Served topic of {name}", "req_message": f"First post in {name}",
    }, action="post.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]
    topic = re.search(r"viewtopic\.php\?id=(\d+)",
                      admin.get(f"/viewtopic.php?pid={location_id(response, 'pid')}").text)
    assert topic is not None
    tid = int(topic.group(1))
    response = admin.submit(f"/post.php?tid={tid}", {"req_message": f"A served reply in {name}"},
                            action="post.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]
    reply = location_id(response, "pid")
    response = admin.submit(f"/edit.php?id={reply}",
                            {"req_message": f"An edited served reply in {name}"},
                            action="edit.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]
    assert f"An edited served reply in {name}" in admin.get(f"/viewtopic.php?id={tid}").text
    # A second topic with no reply, for show_unanswered.
    response = admin.submit("/post.php?fid=1", {
        "req_subject": f"Unanswered of {name}", "req_message": "nobody answers"},
        action="post.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]

    for action in SEARCH_ACTIONS:
        url = {"search": "/search.php?action=search&keywords=served&search_in=0",
               "show_user_posts": "/search.php?action=show_user_posts&user_id=2",
               "show_user_topics": "/search.php?action=show_user_topics&user_id=2"
               }.get(action, f"/search.php?action={action}")
        page = admin.get(url)
        if page.status == 302:  # a keyword search is stored, then shown by its search_id
            page = admin.get(page.headers["Location"])
        assert page.status == 200, (action, page.status, page.text[-2000:])
        assert "Fatal error" not in page.text and "already closed" not in page.text, (
            action, page.text[-2000:])
        assert "Deprecated" not in page.text and "Warning" not in page.text, (
            action, page.text[-2000:])
        if action in ("search", "show_recent", "show_user_posts", "show_user_topics"):
            assert f"Served topic of {name}" in page.text, (action, page.text[-2000:])
        if action == "show_unanswered":
            assert f"Unanswered of {name}" in page.text, page.text[-2000:]
            assert f"Served topic of {name}" not in page.text
    return {"tid": tid}


def _stored_tags(served: Served, site: str, host: str, url: str) -> set[str]:
    path, _, query = url.partition("?")
    page = PageCache(served.root / "cache" / site / "pages").get(host, path, query)
    assert page is not None, (site, url)
    return set(page.tags)


def test_two_forums_behind_tenantkit_serve(served: Served, mariadb_pair: MariaDBCluster,
                                            redis_server: RedisServer) -> None:
    hosts = {"forum-a": "a.test", "forum-b": f"b.test:{served.port}"}
    topics = {name: _served_flow(served, name, host)["tid"] for name, host in hosts.items()}
    # A second forum in forum-a (straight into the database, before any page is cached).
    with pymysql.connect(**mariadb_pair.primary.connect_args(), autocommit=True) as conn, \
            conn.cursor() as cur:
        cur.execute("INSERT INTO fa_forums (forum_name, disp_position, cat_id) "
                    "VALUES ('Second forum', 2, 1)")
        second_forum = cur.lastrowid
    mariadb_pair.wait_replicas()

    for name, host in hosts.items():
        # A guest's pages are stored and served from the cache (and no cookie is set).
        for url in ("/index.php", "/viewforum.php?id=1", f"/viewtopic.php?id={topics[name]}"):
            first = _guest_get(served, host, url)
            assert first.headers.get(CACHE) in ("MISS", "HIT"), first.headers
            # Stored once its last byte went out: a request sent the instant the visitor
            # has it may still be a miss.
            again = _until(lambda host=host, url=url: (
                lambda r: r if r.headers.get(CACHE) == "HIT" else None)(
                _guest_get(served, host, url)), f"{url} cached")
            assert again.text == first.text
            assert f"of {name}" in again.text or "index" in url
        # A logged-in user is never served from the cache.
        admin = served.browser(host)
        _login(admin)
        page = admin.get("/index.php")
        assert page.headers.get(CACHE) == "BYPASS", page.headers
        assert "Logout" in page.text or "logout" in page.text

    # A guest searches too (the actions a guest may use), and gets pages fit to keep.
    for action in ("show_recent", "show_unanswered", "show_user_posts&user_id=2",
                   "show_user_topics&user_id=2"):
        page = _guest_get(served, hosts["forum-a"], f"/search.php?action={action}")
        assert "Served topic of forum-a" in page.text or "Unanswered of forum-a" in page.text, (
            action, page.text[-2000:])
        for bad in ("Fatal error", "already closed", "Deprecated", "Warning"):
            assert bad not in page.text, (action, page.text[-2000:])

    # Pages carry the tag vocabulary: topic:N, forum:N, index.
    other_topic = f"/viewtopic.php?id={topics['forum-a'] + 1}"  # "Unanswered of forum-a"
    second = f"/viewforum.php?id={second_forum}"
    for url in (other_topic, second):
        _guest_get(served, hosts["forum-a"], url)
        _until(lambda url=url: _guest_get(served, hosts["forum-a"], url).headers.get(CACHE)
               == "HIT", f"{url} cached")
    assert "Unanswered of forum-a" in _guest_get(served, hosts["forum-a"], other_topic).text
    tid = topics["forum-a"]
    assert _stored_tags(served, "forum-a", "a.test", f"/viewtopic.php?id={tid}") == {
        f"topic:{tid}"}
    assert _stored_tags(served, "forum-a", "a.test", "/viewforum.php?id=1") == {"forum:1"}
    assert _stored_tags(served, "forum-a", "a.test", second) == {f"forum:{second_forum}"}
    assert _stored_tags(served, "forum-a", "a.test", "/index.php") == {"index"}

    # A reply purges its topic, its forum and the index; the other topic, the other forum
    # and forum-b's pages stay.
    admin = served.browser(hosts["forum-a"])
    _login(admin)
    response = admin.submit(f"/post.php?tid={topics['forum-a']}", {"req_message": "Purge me in"},
                            action="post.php", button="submit_button")
    assert response.status == 302, response.text[-3000:]
    for url in ("/index.php", "/viewforum.php?id=1", f"/viewtopic.php?id={topics['forum-a']}"):
        _until(lambda url=url: _guest_get(served, hosts["forum-a"], url).headers.get(CACHE)
               != "HIT", f"{url} purged after a reply")
        # Served stale while it is rendered again in the background, then a hit:
        page = _until(lambda url=url: (lambda r: r if r.headers.get(CACHE) == "HIT" else None)(
            _guest_get(served, hosts["forum-a"], url)), f"{url} rendered again")
        if "viewtopic" in url:
            assert "Purge me in" in page.text
    other = _guest_get(served, hosts["forum-b"], f"/viewtopic.php?id={topics['forum-b']}")
    assert other.headers.get(CACHE) == "HIT"
    for url in (other_topic, second):
        assert _guest_get(served, hosts["forum-a"], url).headers.get(CACHE) == "HIT", url
    events = [e for e in _events(redis_server.url) if e["type"] == "comment_posted"
              and e["site"] == "forum-a"]
    assert events and events[-1]["terms"] == [1], events

    php_log = served.php_log.read_text(errors="replace")
    for bad in ("Fatal error", "Parse error", "Uncaught", "already closed"):
        assert bad not in php_log, php_log[-5000:]
    # What PunBB's own code says went to the log (the pages showed none of it: CheckedBrowser).
    assert "PHP Warning:  Undefined variable $tpl_main" in php_log, php_log[-5000:]
    shim_log = served.shim_log.read_text(errors="replace")
    assert "Traceback" not in shim_log, shim_log[-5000:]
