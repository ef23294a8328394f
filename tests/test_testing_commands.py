"""The child-process helpers of tenantkit.testing: tenantkit commands (``commands``) and the
WordPress side (``wordpress``: php -S paused and resumed, Debian's wp-config.php)."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from tenantkit.testing.commands import Command
from tenantkit.testing.wordpress import (
    WORDPRESS,
    PhpServer,
    debian_site_config,
    http,
    wordpress_missing,
    write_debian_config,
)


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sites").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    env.update({"TENANTKIT_SITES_DIR": str(tmp_path / "sites"),
                "TENANTKIT_CACHE_DIR": str(tmp_path / "cache")})
    return env


def test_command_waits_for_its_ready_line_and_restarts(tmp_path: Path) -> None:
    inv = Command(tmp_path, _env(tmp_path), "invalidator", "--transport", "files",
                  ready="invalidator for")
    try:
        first = inv.proc.pid
        assert inv.proc.poll() is None
        assert inv.restart() == 0  # SIGTERM: a clean stop
        assert inv.proc.pid != first and inv.proc.poll() is None
        assert inv.output().count("invalidator for") == 2
    finally:
        assert inv.stop() == 0
    assert "Traceback" not in inv.output()


def test_command_that_exits_before_ready_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 2"):
        Command(tmp_path, _env(tmp_path), "invalidator", "--transport", "nonsense",
                ready="invalidator for")


def test_php_server_pause_holds_requests_until_resume(tmp_path: Path) -> None:
    if shutil.which("php") is None:
        pytest.skip("php not found: install it (apt-get install php-cli)")
    (tmp_path / "index.php").write_text("<?php echo 'hello from php';")
    with PhpServer(tmp_path, tmp_path / "php.log") as php:
        assert http(php.url + "/")[:2] == (200, "hello from php")
        php.pause()
        try:
            with pytest.raises((TimeoutError, socket.timeout, OSError)):
                urllib.request.urlopen(php.url + "/", timeout=0.5).read()
        finally:
            php.resume()
        assert http(php.url + "/")[:2] == (200, "hello from php")
    # Stopped while paused: the whole group goes, nothing is left listening.
    paused = PhpServer(tmp_path, tmp_path / "php2.log")
    paused.start()
    paused.pause()
    paused.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", paused.port), timeout=0.5)


def test_debian_wp_config_reads_our_directory(tmp_path: Path) -> None:
    if wordpress_missing():
        pytest.skip(str(wordpress_missing()))
    etc = tmp_path / "etc"
    write_debian_config(tmp_path, etc)
    text = (tmp_path / "wp-config.php").read_text()
    assert "/etc/wordpress/" not in text and "/usr/share/wordpress/" not in text
    assert f"'{etc}/config-'" in text and f"'{tmp_path}/'" in text
    assert (WORDPRESS / "wp-config.php").read_text().count("/etc/wordpress/") == \
        text.count(f"{etc}/")
    printed = "<?php\n// printed by provision\ndefine('DB_NAME', 'blog');\n"
    config = debian_site_config(printed, {"WP_DEBUG": False, "DB_NAME": "other"})
    assert config.startswith(printed)
    # Ours never override what was printed: each is defined only when it is not yet.
    assert "if (!defined('DB_NAME')) { define('DB_NAME', 'other'); }" in config
    assert "define('AUTH_KEY'," in config
