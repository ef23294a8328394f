"""The drop-in reads replica status with SHOW REPLICA STATUS, and falls back to SHOW SLAVE
STATUS on a server that does not know it (the fallback driven by a statement the real server
rejects with a syntax error, as an old one rejects SHOW REPLICA STATUS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster

from .phpcli import run_php_calls
from .wordpress import require_wordpress

HELPER = """<?php
// wpdb outside WordPress: the one WordPress function its constructor needs.
function apply_filters($tag, $value, ...$args) { return $value; }
function tk_test_reader(string $url, array $statements, string $state, array $login): array {
    define('TENANTKIT_DB_REPLICAS', [$url]);
    define('TENANTKIT_DB_PRIMARY', $url);
    define('TENANTKIT_STATE_DIR', $state);
    define('WP_DEBUG', false);
    Tenantkit_DB::$tk_status_statements = $statements;
    $db = new Tenantkit_DB(...$login);
    return [$db->tk_read_label];
}
"""


@pytest.mark.parametrize(("statements", "skipped"), [
    pytest.param(["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"], True, id="the new statement"),
    pytest.param(["SHOW NEWFANGLED STATUS", "SHOW SLAVE STATUS"], True, id="fallback"),
    pytest.param(["SHOW NEWFANGLED STATUS"], False, id="no status: lag not measured"),
])
def test_a_stopped_replica_is_seen_through_either_statement(
        php: str, tmp_path: Path, mariadb_pair: MariaDBCluster, statements: list[str],
        skipped: bool) -> None:
    wordpress = require_wordpress()
    helper = tmp_path / "helper.php"
    helper.write_text(HELPER)
    port = mariadb_pair.replica.port
    url = f"mysql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    login = [USER, PASSWORD, DATABASE, f"127.0.0.1:{port}"]
    with mariadb_pair.replica_held():  # replication stopped: a replica to skip
        result = run_php_calls(php, [str(wordpress / "wp-includes" / "class-wpdb.php"),
                                     "wp-db-router.php", str(helper)],
                               [("tk_test_reader", [url, statements, str(tmp_path), login])])
    label = result.results[0][0]
    if skipped:
        assert label is None and "has replication stopped" in result.stderr
    else:
        assert label == f"127.0.0.1:{port}" and "cannot measure replica lag" in result.stderr
