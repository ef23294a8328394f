"""Behind ``tenantkit serve``: WordPress visitors with a personal cookie are never served a
cached page and never cause one to be stored -- a commenter (``comment_author_*``, set by
wp-comments-post.php) and a visitor who opened a password-protected post
(``wp-postpass_*``, set by wp-login.php?action=postpass), next to a logged-in user.

Debian's WordPress under ``php -S`` is the upstream, on the MariaDB pair through the drop-in.
Requests reach the shim with the upstream's own Host (as in the targeted-purges test), so
WordPress's canonical URLs stay valid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.config import Settings
from tenantkit.export.wordpress import render_wp_config
from tenantkit.registry import Registry
from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster, free_port, wait_port

from .test_wordpress_e2e import (
    ADMIN_PASSWORD,
    HOST,
    http,
    php_server,
    primary_query,
    rest_as_admin,
)
from .wordpress import write_config

CACHE = "X-Tenantkit-Cache"
SECRET = "Only for those who know the password"


@dataclass
class Response:
    status: int
    text: str
    headers: dict[str, str]
    cookies: dict[str, str]


@dataclass
class Served:
    shim: str    # http://127.0.0.1:<shim port>
    host: str    # the Host header: the upstream's, 127.0.0.1:<php port>
    php: str     # the upstream itself, for the admin's set-up

    def request(self, path: str, *, cookies: dict[str, str] | None = None,
                data: dict[str, str] | None = None) -> Response:
        headers = {"Host": self.host}
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.shim + path, data=body, headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=60) as resp:
                return _response(resp.status, resp.read(), resp.headers)
        except urllib.error.HTTPError as exc:
            with exc:
                return _response(exc.code, exc.read(), exc.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _response(status: int, body: bytes, headers: object) -> Response:
    jar: SimpleCookie = SimpleCookie()
    for value in headers.get_all("Set-Cookie") or []:  # type: ignore[attr-defined]
        jar.load(value)
    return Response(status, body.decode(errors="replace"), dict(headers),  # type: ignore[arg-type]
                    {k: m.value for k, m in jar.items()})


@pytest.fixture
def served(php: str, wp_tree: Path, mariadb_pair: MariaDBCluster,
           tmp_path: Path) -> Iterator[Served]:
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")
    pair = mariadb_pair
    config = tmp_path / "tenantkit.toml"
    config.write_text(
        f'sites_dir = "{tmp_path}/sites"\ncache_dir = "{tmp_path}/cache"\n'
        f'[database]\nprimary = "{pair.primary_url}"\nreplicas = ["{pair.replica_url}"]\n'
        "[cache]\nttl = 600\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    env["TENANTKIT_CONFIG"] = str(config)
    with php_server(php, wp_tree, tmp_path / "php.log") as base:
        result = CliRunner().invoke(cli, ["--config", str(config), "provision", "blog",
                                          "--host", HOST, "--upstream", base])
        assert result.exit_code == 0, result.output
        settings = Settings.load(config)
        site = Registry.load(settings).sites["blog"]
        write_config(wp_tree, {"DB_NAME": DATABASE, "DB_USER": USER, "DB_PASSWORD": PASSWORD,
                               "DB_HOST": f"127.0.0.1:{pair.primary.port}",
                               "TENANTKIT_STATE_DIR": str(tmp_path)},
                     extra_php=render_wp_config(site, settings))
        status, page, _ = http(f"{base}/wp-admin/install.php?step=2", {
            "weblog_title": "cookies", "user_name": "admin", "admin_password": ADMIN_PASSWORD,
            "admin_password2": ADMIN_PASSWORD, "pw_weak": "1",
            "admin_email": "admin@example.org", "blog_public": "0", "language": ""})
        assert status == 200 and "Success!" in page, page[-2000:]
        primary_query(pair, "UPDATE wp_options SET option_value = '0' "
                            "WHERE option_name = 'comment_previously_approved'")
        primary_query(pair, "UPDATE wp_options SET option_value = '' "
                            "WHERE option_name = 'permalink_structure'")
        pair.wait_replicas()
        port = free_port()
        log = tmp_path / "shim.log"
        with log.open("wb") as out:
            shim = subprocess.Popen(
                [str(Path(sys.executable).parent / "tenantkit"), "serve", "--bind",
                 f"127.0.0.1:{port}", "--workers", "2", "--server", "gunicorn"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            wait_port(port, proc=shim, log=log)
            yield Served(f"http://127.0.0.1:{port}", base.removeprefix("http://"), base)
        finally:
            shim.terminate()
            try:
                shim.wait(timeout=15)
            except subprocess.TimeoutExpired:
                shim.kill()
                shim.wait(timeout=5)


def cached_for_guests(served: Served, path: str, timeout: float = 10.0) -> str:
    """Visit *path* as a guest until it is a HIT (a MISS is stored as its response ends); the
    cached page."""
    deadline = time.monotonic() + timeout
    while True:
        response = served.request(path)
        assert response.status == 200, (path, response.status, response.text[-1500:])
        assert response.headers.get(CACHE) in ("MISS", "HIT"), response.headers
        if response.headers.get(CACHE) == "HIT":
            return response.text
        assert time.monotonic() < deadline, f"{path} was not cached within {timeout}s"
        time.sleep(0.05)


def never_cached_for(served: Served, cookies: dict[str, str], primed: str, fresh: str,
                     mine: str) -> None:
    """With *cookies*: *primed* (a page guests have cached) is not served from the cache;
    *fresh* (never visited) is not stored by their visit; *mine* (what only they see) never
    reaches a guest."""
    response = served.request(primed, cookies=cookies)
    assert response.status == 200
    assert response.headers.get(CACHE) == "BYPASS", response.headers
    assert mine in response.text, response.text[-2000:]
    response = served.request(fresh, cookies=cookies)
    assert response.headers.get(CACHE) == "BYPASS", response.headers
    assert mine in response.text
    guest = served.request(fresh)
    assert guest.headers.get(CACHE) == "MISS", guest.headers  # their page was not stored
    assert mine not in guest.text


def test_commenter_and_password_visitor_are_never_cached(served: Served) -> None:
    cached_for_guests(served, "/?p=1")

    # A commenter: wp-comments-post.php sets comment_author_* (with the consent box ticked).
    posted = served.request("/wp-comments-post.php", data={
        "comment_post_ID": "1", "author": "Ada Lovelace", "email": "ada@example.org",
        "url": "", "comment": "Hello from a commenter", "wp-comment-cookies-consent": "yes",
        "submit": "Post Comment"})
    assert posted.status == 302, (posted.status, posted.text[-2000:])
    commenter = {k: v for k, v in posted.cookies.items() if k.startswith("comment_author_")}
    assert any(k.startswith("comment_author_email_") for k in commenter), posted.cookies
    # Only the comment cookies: the drop-in's tenantkit_wp_pin (also a bypass cookie) is left
    # out, so what is tested is comment_author_* alone.
    assert not any(k.startswith("tenantkit_wp_pin") for k in commenter)
    cached_for_guests(served, "/?p=1&tk=primed-for-commenter")
    # WordPress fills the comment form in from the cookie: the commenter's own page.
    never_cached_for(served, commenter, "/?p=1&tk=primed-for-commenter",
                     "/?p=1&tk=fresh-for-commenter", 'value="Ada Lovelace"')

    # A password-protected post, opened by a visitor who knows the password.
    post = rest_as_admin(served.php, "posts", {"title": "Protected", "content": SECRET,
                                                "status": "publish", "password": "open-sesame"})
    path = f"/?p={post['id']}"
    form = cached_for_guests(served, path)  # guests get the password form, from the cache
    assert "post_password" in form and SECRET not in form
    opened = served.request("/wp-login.php?action=postpass",
                            data={"post_password": "open-sesame", "Submit": "Enter"})
    assert opened.status in (200, 302), (opened.status, opened.text[-2000:])
    visitor = {k: v for k, v in opened.cookies.items() if k.startswith("wp-postpass_")}
    assert visitor, opened.cookies
    never_cached_for(served, visitor, path, f"{path}&tk=fresh-for-visitor", SECRET)
    assert SECRET not in served.request(path).text  # (a HIT, unless the new post's event
    # flushed the site meanwhile)
