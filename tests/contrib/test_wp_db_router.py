"""contrib/wp-db-router.php against the real MariaDB pair, through php-cli and WordPress.

WordPress is loaded with SHORTINIT from a throwaway tree (see ``wordpress.py``), so ``$wpdb``
is the drop-in's ``Tenantkit_DB`` exactly as in a real request; the servers' own
``SHOW GLOBAL STATUS`` counters say where each statement ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster

from .wordpress import write_config

DRIVER = Path(__file__).resolve().parent / "wp_driver.php"


@dataclass
class Run:
    results: list[Any]
    notices: list[str]
    stdout: str
    stderr: str
    seconds: float


class WP:
    """A WordPress tree wired to the pair; ``run(ops)`` is one request."""

    def __init__(self, php: str, tree: Path, pair: MariaDBCluster, state: Path) -> None:
        self.php = php
        self.tree = tree
        self.pair = pair
        self.state = state
        self.constants: dict[str, Any] = {}
        self.configure()

    def configure(self, **overrides: Any) -> None:
        pair = self.pair
        self.constants = {
            "DB_NAME": DATABASE, "DB_USER": USER, "DB_PASSWORD": PASSWORD,
            "DB_HOST": f"127.0.0.1:{pair.primary.port}",
            "TENANTKIT_SITE": "blog",
            "TENANTKIT_DB_PRIMARY": f"mysql://{USER}:{PASSWORD}@127.0.0.1:{pair.primary.port}/{DATABASE}",
            "TENANTKIT_DB_REPLICAS": [
                f"mysql://{USER}:{PASSWORD}@127.0.0.1:{pair.replica.port}/{DATABASE}"],
            "TENANTKIT_COMPRESS": True,
            "TENANTKIT_CONNECT_TIMEOUT": 2,
            "TENANTKIT_STATE_DIR": str(self.state),
            "TENANTKIT_DEAD_HOST_COOLDOWN": 10,
            "TENANTKIT_LAG_THRESHOLD": 5,
            "TENANTKIT_GTID_WAIT_TIMEOUT": 1,
            "TENANTKIT_PIN_SECONDS": 5,
            **overrides,
        }
        self.constants = {k: v for k, v in self.constants.items() if v is not None}
        write_config(self.tree, self.constants)

    def run(self, ops: list[list[Any]], *, cookie: str | None = None, method: str = "GET",
            full: bool = False, installing: bool = False, expect_results: bool = True) -> Run:
        env = {**os.environ, "TK_METHOD": method, "TK_FULL": "1" if full else "0",
               "TK_INSTALLING": "1" if installing else "0"}
        if cookie is not None:
            env["TK_COOKIE"] = cookie
        start = time.monotonic()
        proc = subprocess.run(
            [self.php, "-d", "error_reporting=-1", "-d", "display_errors=stderr",
             "-d", "log_errors=0", "-d", "error_log=", str(DRIVER), str(self.tree)],
            input=json.dumps(ops).encode(), capture_output=True, timeout=60, check=False, env=env,
        )
        seconds = time.monotonic() - start
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        head, _, tail = stdout.rpartition("\n@@TK@@")
        if not _ and expect_results:
            raise AssertionError(f"driver printed no results:\n{stdout}\n{stderr}")
        data = json.loads(tail) if _ else {"results": [], "notices": []}
        return Run(data["results"], data["notices"], head, stderr, seconds)


@pytest.fixture
def wp(php: str, wp_tree: Path, mariadb_pair: MariaDBCluster, tmp_path: Path) -> WP:
    state = tmp_path / "state"
    state.mkdir()
    return WP(php, wp_tree, mariadb_pair, state)


@contextlib.contextmanager
def counting(pair: MariaDBCluster, *names: str) -> Iterator[dict[str, int]]:
    """Deltas of SHOW GLOBAL STATUS counters on both servers over the block."""
    servers = {"primary": pair.primary, "replica": pair.replica}

    def read() -> dict[str, int]:
        return {f"{role}.{name}": server.status(name) if server.running else 0
                for role, server in servers.items() for name in names}

    before = read()
    delta: dict[str, int] = {}
    yield delta
    after = read()
    delta.update({k: after[k] - before[k] for k in before})


def primary_sql(pair: MariaDBCluster, *statements: str) -> None:
    with pymysql.connect(**pair.primary.connect_args(), autocommit=True) as conn, \
            conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
    pair.wait_replicas()


def make_table(pair: MariaDBCluster, rows: int = 0) -> None:
    primary_sql(pair, "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))",
                *[f"INSERT INTO t (v) VALUES ('row{i}')" for i in range(rows)])


def assert_clean(run: Run) -> None:
    ours = [n for n in run.notices if "contrib" in n or "wp-db-router" in n or "tenantkit" in n]
    assert ours == [], ours


# --- where statements go ------------------------------------------------------------------

def test_read_from_replica_write_to_primary_then_read_your_write(wp: WP) -> None:
    make_table(wp.pair, rows=2)
    with counting(wp.pair, "Com_select", "Com_insert") as delta:
        run = wp.run([
            ["get_var", "SELECT COUNT(*) FROM t"],
            ["primary_connected"],
            ["query", "INSERT INTO t (v) VALUES ('new')"],
            ["get_var", "SELECT v FROM t WHERE id = LAST_INSERT_ID()"],
            ["get_var", "SELECT COUNT(*) FROM t"],
            ["counts"],
        ])
    assert_clean(run)
    assert run.results[0] == "2"
    assert run.results[1] is False  # a read-only request never touches the primary
    assert run.results[2]["value"] == 1 and run.results[2]["insert_id"] == 3
    assert run.results[3] == "new"
    assert run.results[4] == "3"
    assert run.results[5] == {"primary": 3, "replica": 1}
    assert delta["replica.Com_select"] >= 1
    assert delta["primary.Com_insert"] == 1
    assert delta["primary.Com_select"] >= 2


def test_insert_then_select_sees_the_row_while_the_replica_is_behind(wp: WP) -> None:
    make_table(wp.pair)
    wp.configure(TENANTKIT_LAG_THRESHOLD=0)  # the held replica must stay in use
    with wp.pair.replica_held():
        run = wp.run([
            ["query", "INSERT INTO t (v) VALUES ('mine')"],
            ["get_var", "SELECT v FROM t WHERE v = 'mine'"],
        ])
    assert run.results[1] == "mine"


def test_compressed_primary_link(wp: WP) -> None:
    make_table(wp.pair)
    run = wp.run([["query", "INSERT INTO t (v) VALUES ('x')"],
                  ["primary_status", "Compression"]])
    assert run.results[1] == "ON"
    wp.configure(TENANTKIT_COMPRESS=False)
    run = wp.run([["query", "INSERT INTO t (v) VALUES ('y')"],
                  ["primary_status", "Compression"]])
    assert run.results[1] == "OFF"


def test_calc_found_rows_and_found_rows_run_on_the_same_server(wp: WP) -> None:
    make_table(wp.pair, rows=5)
    with counting(wp.pair, "Com_select") as delta:
        run = wp.run([
            ["get_col", "SELECT SQL_CALC_FOUND_ROWS id FROM t ORDER BY id LIMIT 2"],
            ["get_var", "SELECT FOUND_ROWS()"],
            ["primary_connected"],
        ])
    assert run.results[:3] == [["1", "2"], "5", False]
    # (the replica's extra SELECT is wpdb's own SELECT @@SESSION.sql_mode at connect)
    assert delta["replica.Com_select"] >= 2 and delta["primary.Com_select"] == 0
    # After a write both go to the primary, and FOUND_ROWS() still answers for its query.
    run = wp.run([
        ["query", "INSERT INTO t (v) VALUES ('six')"],
        ["get_col", "SELECT SQL_CALC_FOUND_ROWS id FROM t ORDER BY id LIMIT 1"],
        ["get_var", "SELECT FOUND_ROWS()"],
        ["counts"],
    ])
    assert run.results[1:] == [["1"], "6", {"primary": 3, "replica": 0}]


def test_locking_read_goes_to_the_primary(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    with counting(wp.pair, "Com_select") as delta:
        run = wp.run([["get_var", "SELECT v FROM t WHERE id = 1 FOR UPDATE"], ["counts"]])
    assert run.results == ["row0", {"primary": 1, "replica": 0}]
    # Connecting runs wpdb's SELECT @@SESSION.sql_mode on each link; the FOR UPDATE itself
    # must be on the primary.
    assert delta["primary.Com_select"] >= 2 and delta["replica.Com_select"] <= 1


# --- failover ---------------------------------------------------------------------------------

def test_replica_down_reads_go_to_the_primary_and_it_is_retried_after_the_cooldown(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    wp.configure(TENANTKIT_DEAD_HOST_COOLDOWN=1)
    wp.pair.stop_replica()
    run = wp.run([["get_var", "SELECT v FROM t"], ["counts"]])
    assert run.results == ["row0", {"primary": 1, "replica": 0}]
    assert "cannot connect to replica 127.0.0.1:" in run.stderr
    assert "reads go elsewhere for 1s" in run.stderr
    # Within the cooldown the dead replica is not even tried.
    run = wp.run([["get_var", "SELECT v FROM t"]])
    assert run.results == ["row0"] and "cannot connect" not in run.stderr
    wp.pair.start_replica()
    wp.pair.wait_replicas()
    time.sleep(1.1)
    with counting(wp.pair, "Com_select") as delta:
        run = wp.run([["get_var", "SELECT v FROM t"], ["counts"], ["primary_connected"]])
    assert run.results == ["row0", {"primary": 0, "replica": 1}, False]
    assert delta["replica.Com_select"] >= 1


def test_replica_with_replication_stopped_is_skipped(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    with wp.pair.replica_held():
        run = wp.run([["get_var", "SELECT v FROM t"], ["counts"]])
    assert run.results == ["row0", {"primary": 1, "replica": 0}]
    assert "has replication stopped" in run.stderr


def test_replica_dying_mid_request_is_replaced_for_reads(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    run = wp.run([
        ["get_var", "SELECT v FROM t"],
        ["php", "global $wpdb; $id = mysqli_thread_id($wpdb->tk_read_link); "
                f"$k = mysqli_connect('127.0.0.1', 'root', '', '', {wp.pair.replica.port}); "
                "mysqli_query($k, \"KILL $id\"); mysqli_close($k); return $id;"],
        ["get_var", "SELECT v FROM t"],
        ["counts"],
    ])
    assert run.results[2] == "row0"
    assert run.results[3] == {"primary": 1, "replica": 1}
    assert "went away" in run.stderr


def test_primary_down_reads_still_work_and_a_write_gives_dead_db_promptly(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    wp.pair.stop_primary()
    run = wp.run([["get_var", "SELECT v FROM t"], ["primary_connected"]])
    assert run.results == ["row0", False], (run.stdout, run.stderr)
    with counting(wp.pair, "Com_insert") as delta:
        run = wp.run([["query", "INSERT INTO t (v) VALUES ('lost')"]], expect_results=False)
    assert "Error establishing a database connection" in run.stdout
    assert run.seconds < 15  # bounded by the connect timeout, not WordPress's 5 retries
    assert run.results == []  # the request stopped there
    assert delta["replica.Com_insert"] == 0
    assert "cannot connect to primary" in run.stderr


def test_everything_down_gives_dead_db(wp: WP) -> None:
    wp.pair.stop_primary()
    wp.pair.stop_replica()
    run = wp.run([["get_var", "SELECT 1"]], expect_results=False)
    assert "Error establishing a database connection" in run.stdout
    assert run.seconds < 15


# --- read-your-writes across requests -------------------------------------------------------

def test_gtid_cookie_makes_the_replica_wait_or_the_primary_answer(wp: WP) -> None:
    make_table(wp.pair)
    wp.configure(TENANTKIT_LAG_THRESHOLD=0, TENANTKIT_GTID_WAIT_TIMEOUT=0.3)
    with wp.pair.replica_held():
        run = wp.run([["query", "INSERT INTO t (v) VALUES ('posted')"], ["cookie"]], method="POST")
        cookie = run.results[1]
        assert cookie is not None and ":0-1-" in cookie
        # The next request from that browser: the replica does not have the row yet, so the
        # wait times out and the read is answered by the primary.
        run = wp.run([["get_var", "SELECT COUNT(*) FROM t"], ["counts"]], cookie=cookie)
        assert run.results == ["1", {"primary": 1, "replica": 0}]
        # Without the cookie: the (stale) replica answers.
        run = wp.run([["get_var", "SELECT COUNT(*) FROM t"], ["counts"]])
        assert run.results == ["0", {"primary": 0, "replica": 1}]
    wp.pair.wait_replicas()
    run = wp.run([["get_var", "SELECT COUNT(*) FROM t"], ["counts"], ["primary_connected"]],
                 cookie=cookie)
    assert run.results == ["1", {"primary": 0, "replica": 1}, False]


def test_pin_mode_cookie_sends_reads_to_the_primary(wp: WP) -> None:
    make_table(wp.pair)
    wp.configure(TENANTKIT_READ_YOUR_WRITES="pin")
    run = wp.run([["query", "INSERT INTO t (v) VALUES ('x')"], ["cookie"]], method="POST")
    cookie = run.results[1]
    assert cookie is not None and cookie.isdigit()
    run = wp.run([["get_var", "SELECT COUNT(*) FROM t"], ["counts"]], cookie=cookie)
    assert run.results == ["1", {"primary": 1, "replica": 0}]


def test_get_requests_that_write_pin_no_one(wp: WP) -> None:
    make_table(wp.pair)
    run = wp.run([["query", "INSERT INTO t (v) VALUES ('x')"], ["cookie"]], method="GET")
    assert run.results[1] is None


@pytest.mark.parametrize("cookie", [
    pytest.param("garbage", id="garbage"),
    pytest.param(str(int(time.time()) + 10**6), id="far future"),
    pytest.param("1", id="expired"),
    pytest.param("9999999999:0-1-1');DROP TABLE t;--", id="sql injection"),
    pytest.param("9999999999:" + ",".join(["0-1-1"] * 40), id="too many gtids"),
    pytest.param("x" * 5000, id="huge"),
])
def test_hostile_cookies_are_ignored(wp: WP, cookie: str) -> None:
    make_table(wp.pair, rows=1)
    run = wp.run([["get_var", "SELECT COUNT(*) FROM t"], ["counts"]], cookie=cookie)
    assert run.results == ["1", {"primary": 0, "replica": 1}]
    assert_clean(run)


# --- configuration mistakes ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    pytest.param({"TENANTKIT_DB_PRIMARY": "postgres://x@h/db"}, "cannot read postgres://",
                 id="wrong scheme"),
    pytest.param({"TENANTKIT_DB_PRIMARY": "mysql://u:hunter2@h:99999/db"}, "cannot read",
                 id="bad port"),
    pytest.param({"TENANTKIT_DB_REPLICAS": 7}, "TENANTKIT_DB_REPLICAS must be a list",
                 id="replicas not a list"),
    pytest.param({"TENANTKIT_READ_YOUR_WRITES": "always"}, "must be \"gtid\", \"pin\" or \"off\"",
                 id="bad mode"),
    pytest.param({"TENANTKIT_PIN_SECONDS": "soon"}, "TENANTKIT_PIN_SECONDS must be a number",
                 id="bad seconds"),
])
def test_configuration_errors_say_what_to_fix(wp: WP, overrides: dict[str, Any],
                                              message: str) -> None:
    wp.configure(**overrides)
    run = wp.run([["get_var", "SELECT 1"]], expect_results=False)
    assert message in run.stderr
    assert "hunter2" not in run.stderr + run.stdout
    assert run.results == []


# --- events from WordPress's own hooks ------------------------------------------------------

INSTALL = ("require_once ABSPATH . 'wp-admin/includes/upgrade.php';"
           " $r = wp_install('events', 'admin', 'admin@example.org', false, '', 'pw-Secret-1');"
           " return $r['user_id'];")


def new_comment(approved: str, text: str) -> list[Any]:
    # A new author and IP each time: WordPress refuses a second comment within 15 seconds
    # from the same email or IP (comment flood).
    who = zlib.crc32(text.encode()) % 250 + 1
    return ["php", (
        f"add_filter('pre_comment_approved', fn() => {approved!r}, 99);"
        " return wp_new_comment(['comment_post_ID' => 1, 'comment_author' => 'Bob',"
        f" 'comment_author_email' => 'bob{who}@example.org', 'comment_author_url' => '',"
        f" 'comment_content' => {text!r}, 'comment_type' => 'comment', 'user_id' => 0,"
        f" 'comment_author_IP' => '10.0.0.{who}', 'comment_agent' => 'test'], true);"
    )]


def test_hooks_publish_what_shows_and_nothing_else(wp: WP, tmp_path: Path) -> None:
    purge = tmp_path / "blog" / ".purge"
    wp.configure(TENANTKIT_BUS=str(purge), TENANTKIT_LAG_THRESHOLD=0)
    assert wp.run([["php", INSTALL]], full=True, installing=True).results[0] >= 1
    wp.pair.wait_replicas()

    # Held and spam comments: nothing.
    run = wp.run([new_comment("0", "held one"), new_comment("spam", "buy now"),
                  ["flush_events"]], full=True)
    held_id = run.results[0]
    assert isinstance(held_id, int) and held_id > 0
    assert run.results[2] == {"sent": 0, "published": []}
    assert not purge.exists() or list(purge.iterdir()) == []
    assert_clean(run)

    # Approving the held comment shows it: one comment_changed for post 1, with the GTID.
    run = wp.run([["php", f"return wp_set_comment_status({held_id}, 'approve');"],
                  ["flush_events"]], full=True)
    assert run.results[0] is True
    [event] = run.results[1]["published"]
    assert (event["type"], event["site"], event["post_id"], event["approved"]) \
        == ("comment_changed", "blog", 1, True)
    assert event["gtid"] == wp.pair.primary.query("SELECT @@gtid_binlog_pos")[0][0]
    [on_disk] = [json.loads(p.read_text()) for p in purge.glob("*.json")]
    assert on_disk["id"] == event["id"] and on_disk["origin"] == "php"

    # An approved comment, a draft (nothing), trashing the published post, a theme switch.
    run = wp.run([
        new_comment("1", "approved one"),
        ["php", "return wp_insert_post(['post_title' => 'draft', 'post_status' => 'draft']);"],
        ["flush_events"],
        ["php", "return (bool) wp_trash_post(1);"],
        ["php", "switch_theme('twentytwentythree'); return true;"],
        ["flush_events"],
    ], full=True)
    assert isinstance(run.results[0], int), run.results[0]
    assert [e["type"] for e in run.results[2]["published"]] == ["comment_posted"]
    assert sorted(e["type"] for e in run.results[5]["published"]) \
        == ["post_deleted", "site_changed"]
    assert_clean(run)

    # Options: only with TENANTKIT_PUBLISH_OPTIONS, and not for transients.
    ops = [["php", "set_transient('tk', 'x'); update_option('blogname', 'Renamed');"
                   " return true;"], ["flush_events"]]
    assert wp.run(ops, full=True).results[1]["sent"] == 0
    wp.configure(TENANTKIT_BUS=str(purge), TENANTKIT_LAG_THRESHOLD=0,
                 TENANTKIT_PUBLISH_OPTIONS=True)
    ops = [["php", "set_transient('tk2', 'y'); return true;"], ["flush_events"],
           ["php", "update_option('blogname', 'Renamed again'); return true;"], ["flush_events"]]
    run = wp.run(ops, full=True)
    assert run.results[1]["sent"] == 0
    assert [e["type"] for e in run.results[3]["published"]] == ["site_changed"]


def test_bus_down_falls_back_to_the_purge_dir(wp: WP, tmp_path: Path) -> None:
    purge = tmp_path / "blog" / ".purge"
    wp.configure(TENANTKIT_BUS="redis://127.0.0.1:1/0?timeout=0.2", TENANTKIT_PURGE_DIR=str(purge))
    wp.run([["php", INSTALL]], full=True, installing=True)
    run = wp.run([new_comment("1", "hello"), ["flush_events"]], full=True)
    assert run.results[1]["sent"] == 1
    assert "not published to redis://127.0.0.1:1/0" in run.stderr
    [event] = [json.loads(p.read_text()) for p in purge.glob("*.json")]
    assert event["type"] == "comment_posted" and event["post_id"] == 1


def test_lagging_replica_is_skipped(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    wp.configure(TENANTKIT_LAG_THRESHOLD=1)
    wp.pair.delay_replica(30)
    primary_sql_nowait(wp.pair, "INSERT INTO t (v) VALUES ('late')")
    deadline = time.monotonic() + 15
    while True:  # until the replica reports more than a second of lag
        lag = wp.pair.replica_status().get("Seconds_Behind_Master")
        if lag is not None and int(lag) > 1:
            break
        assert time.monotonic() < deadline, f"replica lag stayed at {lag}"
        time.sleep(0.2)
    run = wp.run([["get_var", "SELECT COUNT(*) FROM t"], ["counts"]])
    assert run.results == ["2", {"primary": 1, "replica": 0}]
    assert "lags" in run.stderr and "threshold 1s" in run.stderr


def primary_sql_nowait(pair: MariaDBCluster, sql: str) -> None:
    with pymysql.connect(**pair.primary.connect_args(), autocommit=True) as conn, \
            conn.cursor() as cur:
        cur.execute(sql)


def test_a_hung_replica_costs_the_read_timeout_not_the_request(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    wp.configure(TENANTKIT_READ_TIMEOUT=1)
    proc = wp.pair.replica.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # accepts connections (backlog), answers nothing
    try:
        run = wp.run([["get_var", "SELECT v FROM t"], ["counts"]])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert run.results == ["row0", {"primary": 1, "replica": 0}]
    assert run.seconds < 15
    assert "cannot connect to replica" in run.stderr


# --- session state ------------------------------------------------------------------------


def _primary_count(pair: MariaDBCluster, table: str = "t") -> int:
    with pymysql.connect(**pair.primary.connect_args()) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cur.fetchone()[0])


def test_start_transaction_read_only_refuses_writes(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    run = wp.run([
        ["query", "/* ro */ START TRANSACTION READ ONLY"],
        ["get_var", "SELECT COUNT(*) FROM t"],
        ["query", "INSERT INTO t (v) VALUES ('read only')"],
        ["query", "COMMIT"],
        ["get_var", "SELECT COUNT(*) FROM t"],
    ], method="POST")
    assert run.results[1] == "1"
    assert run.results[2]["value"] is False
    assert "READ ONLY" in run.results[2]["error"]
    assert run.results[4] == "1"
    assert _primary_count(wp.pair) == 1, "never committed on the primary"


def test_select_db_follows_the_session_to_every_link(wp: WP) -> None:
    primary_sql(wp.pair, "DROP DATABASE IF EXISTS tk_other", "CREATE DATABASE tk_other",
                "CREATE TABLE tk_other.marker (id INT)")
    run = wp.run([
        ["get_var", "SELECT DATABASE()"],  # the replica link is open
        ["php", "global $wpdb; $wpdb->select('tk_other'); return $wpdb->ready;"],
        ["get_var", "SELECT CONCAT(DATABASE(), ' ', @@server_id)"],
        ["query", "INSERT INTO marker VALUES (1)"],
        ["get_var", "SELECT CONCAT(DATABASE(), ' ', @@server_id)"],
    ], method="POST")
    assert run.results[0] == DATABASE
    assert run.results[2] == "tk_other 2"
    assert run.results[3]["value"] == 1, run.results[3]
    assert run.results[4] == "tk_other 1"
    assert _primary_count(wp.pair, "tk_other.marker") == 1


def test_use_reaches_the_link_opened_later(wp: WP) -> None:
    primary_sql(wp.pair, "DROP DATABASE IF EXISTS tk_other", "CREATE DATABASE tk_other",
                "CREATE TABLE tk_other.marker (id INT)")
    run = wp.run([
        ["php", "global $wpdb; $wpdb->select('tk_other'); return null;"],  # replica only
        ["query", "INSERT INTO marker VALUES (1)"],  # the primary link opens now
        ["get_var", "SELECT CONCAT(DATABASE(), ' ', @@server_id)"],
    ], method="POST")
    assert run.results[1]["value"] == 1, run.results[1]
    assert run.results[2] == "tk_other 1"


def test_temporary_tables_stay_on_the_primary(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    run = wp.run([
        ["get_var", "SELECT COUNT(*) FROM t"],
        ["query", "CREATE TEMPORARY TABLE tk_tmp (id INT)"],
        ["query", "INSERT INTO tk_tmp VALUES (1), (2)"],
        ["get_var", "SELECT COUNT(*) FROM tk_tmp"],
        ["counts"],
    ])
    assert run.results[3] == "2"
    assert run.results[4] == {"primary": 3, "replica": 1}


def test_a_hung_primary_costs_the_read_timeout_not_the_request(wp: WP) -> None:
    make_table(wp.pair, rows=1)
    wp.configure(TENANTKIT_READ_TIMEOUT=1)
    proc = wp.pair.primary.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        insert = "global $wpdb; return $wpdb->query(\"INSERT INTO t (v) VALUES ('x')\");"
        run = wp.run([["get_var", "SELECT v FROM t"], ["php", insert]], expect_results=False)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert run.seconds < 15
    assert run.results[:1] in ([], ["row0"])
    assert _primary_count(wp.pair) == 1
