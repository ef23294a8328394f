"""WordPress's own "does the database work" checks pass with the drop-in: the installer's
``wp-admin/setup-config.php`` (step 2: connect with the form's credentials, then probe the
table prefix) and the Site Health screen's database tests; a wrong password gets
setup-config.php's own message and "Try Again" link, not a dead page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster

from .test_wordpress_e2e import ADMIN_PASSWORD, http, php_server
from .test_wp_db_router import WP, assert_clean
from .wordpress import make_tree


@pytest.fixture
def bare_tree(tmp_path: Path) -> Iterator[Path]:
    """A WordPress tree with the drop-in and no wp-config.php yet: what setup-config.php
    sees on a new site."""
    tree = make_tree(tmp_path / "wp", {})
    (tree / "wp-config.php").unlink()
    yield tree


def setup_form(pair: MariaDBCluster, password: str) -> dict[str, str]:
    return {"dbname": DATABASE, "uname": USER, "pwd": password,
            "dbhost": f"127.0.0.1:{pair.primary.port}", "prefix": "wp_", "language": "",
            "submit": "Submit"}


def test_setup_config_checks_the_database_through_the_drop_in(
        php: str, bare_tree: Path, mariadb_pair: MariaDBCluster, tmp_path: Path) -> None:
    log = tmp_path / "php.log"
    with php_server(php, bare_tree, log) as base:
        status, page, _ = http(f"{base}/wp-admin/setup-config.php?step=2",
                               setup_form(mariadb_pair, "wrong-password"))
        assert "Error establishing a database connection" in page, page[-3000:]
        assert "Try Again" in page, page[-3000:]  # setup-config.php's own page, not dead_db()
        assert not (bare_tree / "wp-config.php").exists()

        status, page, _ = http(f"{base}/wp-admin/setup-config.php?step=2",
                               setup_form(mariadb_pair, PASSWORD))
        assert status == 200, page[-3000:]
        assert "All right, sparky!" in page, page[-3000:]
        assert "Run the installation" in page
    assert (bare_tree / "wp-config.php").exists()  # it wrote the file: the checks passed
    fatal = [line for line in log.read_text(errors="replace").splitlines()
             if re.search(r"Fatal|wp-db-router\.php", line)]
    assert fatal == []


def test_site_health_database_checks_pass(php: str, wp_tree: Path,
                                          mariadb_pair: MariaDBCluster, tmp_path: Path) -> None:
    pair = mariadb_pair
    state = tmp_path / "state"
    state.mkdir()
    wp = WP(php, wp_tree, pair, state)  # the primary and the replica, through the drop-in
    log = tmp_path / "php.log"
    with php_server(php, wp_tree, log) as base:
        status, page, _ = http(f"{base}/wp-admin/install.php?step=2", {
            "weblog_title": "health", "user_name": "admin", "admin_password": ADMIN_PASSWORD,
            "admin_password2": ADMIN_PASSWORD, "pw_weak": "1",
            "admin_email": "admin@example.org", "blog_public": "0", "language": ""})
        assert status == 200 and "Success!" in page, page[-2000:]
    pair.wait_replicas()
    # The Site Health screen's database tests, as its page runs them (direct tests: PHP
    # methods), and its Info tab's database section.
    health = ("require_once ABSPATH . 'wp-admin/includes/admin.php'; "
              "require_once ABSPATH . 'wp-admin/includes/class-wp-site-health.php'; "
              "$h = WP_Site_Health::get_instance(); ")
    run = wp.run([
        ["php", health + "return $h->get_test_sql_server();"],
        ["php", health + "return $h->get_test_utf8mb4_support();"],
        ["php", "require_once ABSPATH . 'wp-admin/includes/admin.php'; "
                "require_once ABSPATH . 'wp-admin/includes/class-wp-debug-data.php'; "
                "return WP_Debug_Data::debug_data()['wp-database']['fields'];"],
    ], full=True)
    sql_server, utf8mb4, database = run.results
    assert sql_server["status"] == "good", sql_server
    assert utf8mb4["status"] == "good", utf8mb4
    assert database["extension"]["value"] == "mysqli", database
    assert database["server_version"]["value"], database
    assert_clean(run)
