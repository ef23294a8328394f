"""A throwaway WordPress from Debian's package, with the tenantkit drop-in, served by ``php -S``,
for tests and benchmarks::

    tree = make_tree(tmp / "wp", {"DB_NAME": DATABASE, ...})   # our own wp-config.php
    with PhpServer(tree, tmp / "php.log") as php:             # php -S on a free port
        status, body, headers = http(f"{php.url}/wp-admin/install.php?step=2", {...})
        php.pause(); php.resume()                             # SIGSTOP / SIGCONT, a fault

``make_tree(dest, config)`` copies what must sit next to ``wp-load.php`` (the top-level PHP
files and ``wp-admin``, whose files find ``wp-load.php`` through ``__DIR__``), links
``wp-includes`` and the themes, installs ``contrib/wp-db-router.php`` as
``wp-content/db.php`` and ``contrib/tenantkit-tags.php`` as a must-use plugin, and writes our
own ``wp-config.php``: no file under /etc/wordpress or /usr/share/wordpress is touched.
:func:`write_debian_config` replaces that ``wp-config.php`` with Debian's own, reading the
``config-<host>.php`` files that ``tenantkit provision --print-wp-config --debian`` prints
from a directory of ours instead of /etc/wordpress: one tree then serves several sites by Host.

:func:`wordpress_missing` says what to install when the package (or its default theme) is
absent; the tests turn that into a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from tenantkit.testing.net import free_port
from tenantkit.testing.process import find_binary

__all__ = [
    "ADMIN_PASSWORD", "CONTRIB", "WORDPRESS", "PhpServer", "http", "install", "make_tree",
    "php_literal", "php_server", "wordpress_missing", "write_config", "write_debian_config",
]

WORDPRESS = Path(os.environ.get("TENANTKIT_WORDPRESS", "/usr/share/wordpress"))
CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
ADMIN_PASSWORD = "Tk-e2e-Secret-42!"
HOST = "127.0.0.1"


def wordpress_missing() -> str | None:
    """Why Debian's WordPress cannot be used here (what to install), or None."""
    if not (WORDPRESS / "wp-includes" / "class-wpdb.php").is_file():
        return f"WordPress not found in {WORDPRESS}: install it (apt-get install wordpress)"
    if not (WORDPRESS / "wp-content" / "themes" / "twentytwentythree").is_dir():
        # Debian only recommends the default theme; without one every page is empty.
        return ("WordPress's default theme is missing: install it "
                "(apt-get install wordpress-theme-twentytwentythree)")
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def php_literal(value: Any) -> str:
    """A PHP literal for a str/int/float/bool/None/list value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(php_literal(v) for v in value) + "]"
    raise TypeError(f"no PHP literal for {value!r}")


def make_tree(dest: Path, constants: dict[str, Any]) -> Path:
    """A WordPress tree in *dest* (see the module docstring); RuntimeError when the package
    is missing."""
    missing = wordpress_missing()
    if missing:
        raise RuntimeError(missing)
    source = WORDPRESS
    dest.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_file() and entry.suffix == ".php" and entry.name != "wp-config.php":
            shutil.copy2(entry, dest / entry.name)
    shutil.copytree(source / "wp-admin", dest / "wp-admin", copy_function=_link_or_copy)
    (dest / "wp-includes").symlink_to(source / "wp-includes")
    content = dest / "wp-content"
    (content / "plugins").mkdir(parents=True)
    (content / "uploads").mkdir()
    (content / "themes").symlink_to(source / "wp-content" / "themes")
    (content / "db.php").symlink_to(CONTRIB / "wp-db-router.php")
    # As `tenantkit provision --print-wp-config` says: the cache tags as a must-use plugin.
    (content / "mu-plugins").mkdir()
    (content / "mu-plugins" / "tenantkit-tags.php").symlink_to(CONTRIB / "tenantkit-tags.php")
    write_config(dest, constants)
    return dest


def _base_constants() -> dict[str, Any]:
    base: dict[str, Any] = {
        "DB_CHARSET": "utf8mb4", "DB_COLLATE": "",
        "WP_DEBUG": True, "WP_DEBUG_DISPLAY": False, "WP_DEBUG_LOG": False,
        "DISABLE_WP_CRON": True, "AUTOMATIC_UPDATER_DISABLED": True,
        "WP_AUTO_UPDATE_CORE": False, "WP_HTTP_BLOCK_EXTERNAL": True,
    }
    for name in ("AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY", "AUTH_SALT",
                 "SECURE_AUTH_SALT", "LOGGED_IN_SALT", "NONCE_SALT"):
        base[name] = secrets.token_hex(16)
    return base


def write_config(tree: Path, constants: dict[str, Any], extra_php: str = "") -> None:
    """Write the tree's own ``wp-config.php``: our defaults, *constants*, then *extra_php*
    (e.g. ``render_wp_config(site, settings)``)."""
    base = _base_constants()
    base.update(constants)
    lines = ["<?php"]
    lines += [f"define({php_literal(k)}, {php_literal(v)});" for k, v in base.items()]
    lines += [line for line in extra_php.splitlines() if line.strip() != "<?php"]
    lines += ["$table_prefix = 'wp_';",
              "if (!defined('ABSPATH')) { define('ABSPATH', __DIR__ . '/'); }",
              "require_once ABSPATH . 'wp-settings.php';", ""]
    (tree / "wp-config.php").write_text("\n".join(lines))


def write_debian_config(tree: Path, etc: Path) -> None:
    """Install Debian's own ``wp-config.php`` in *tree*, reading ``config-<host>.php`` from
    *etc* instead of /etc/wordpress (and this tree, not /usr/share/wordpress, as ABSPATH)."""
    text = (WORDPRESS / "wp-config.php").read_text()
    text = text.replace("/etc/wordpress/", f"{etc}/")
    text = text.replace("'/usr/share/wordpress/'", f"'{tree}/'")
    text = text.replace("'/var/lib/wordpress/wp-content'", f"'{tree}/wp-content'")
    (tree / "wp-config.php").write_text(text)


def debian_site_config(printed: str, constants: dict[str, Any]) -> str:
    """A ``config-<host>.php``: what ``provision --print-wp-config --debian`` printed, then
    our test defaults (keys and salts, no cron, no updates) and *constants*."""
    extra = _base_constants()
    extra.update(constants)
    lines = [printed.rstrip("\n")]
    lines += [f"if (!defined({php_literal(k)})) {{ define({php_literal(k)}, {php_literal(v)}); }}"
              for k, v in extra.items()]
    return "\n".join(lines) + "\n"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http(url: str, data: dict[str, str] | None = None, timeout: float = 60,
         headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """GET (or POST *data*, form-encoded) without following redirects:
    ``(status, text, headers)``, for any status."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)


def install(base: str, title: str, *, host: str | None = None) -> None:
    """Run WordPress's own installer over HTTP at *base* (as *host*, the site's Host header,
    when given): user ``admin`` with :data:`ADMIN_PASSWORD`. RuntimeError when it fails."""
    status, page, _ = http(f"{base}/wp-admin/install.php?step=2", {
        "weblog_title": title, "user_name": "admin",
        "admin_password": ADMIN_PASSWORD, "admin_password2": ADMIN_PASSWORD,
        "pw_weak": "1", "admin_email": "admin@example.org", "blog_public": "0",
        "language": "",
    }, headers={"Host": host} if host else None)
    if status != 200 or "Success!" not in page:
        raise RuntimeError(f"WordPress install at {base} ({host}) failed: {status} "
                           f"{page[-2000:]}")


class PhpServer:
    """``php -S`` (``PHP_CLI_SERVER_WORKERS`` workers, its children: one process group) on a
    free loopback port serving *tree*; ``.url``. :meth:`pause` / :meth:`resume` stop and
    continue the whole group (a hung upstream)."""

    def __init__(self, tree: Path, log: Path, *, php: str | None = None,
                 workers: int = 4) -> None:
        self.tree = tree
        self.log = log
        self.php = php or find_binary("php", "php-cli php-mysql")
        self.workers = workers
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PHP_CLI_SERVER_WORKERS": str(self.workers)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.php, "-d", "error_reporting=-1", "-d", "display_errors=0",
                 "-d", "log_errors=1",
                 "-S", f"{HOST}:{self.port}", "-t", str(self.tree)],
                cwd=self.tree, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,  # its workers are children: one group
            )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"php -S did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)  # a paused group would not act on SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        # The workers are the group leader's children, not ours to wait for: one may still
        # hold the listening socket after the leader is gone.
        self._signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), 0.2).close()
            except OSError:
                break
            time.sleep(0.02)
        self.proc = None

    def __enter__(self) -> PhpServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def php_server(php: str, tree: Path, log: Path) -> Iterator[str]:
    """``with php_server(php, tree, log) as base_url:`` a :class:`PhpServer` for the block."""
    with PhpServer(tree, log, php=php) as server:
        yield server.url
