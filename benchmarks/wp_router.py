"""The WordPress drop-in (contrib/wp-db-router.php): classifier cost and the cost of a read.

Classifier, in PHP: statements per second on the WordPress-like corpus of
``benchmarks/router.py``, for the drop-in's ``Tenantkit_SQL_Classifier`` uncached (``explain``)
and cached (``role``), against a HyperDB-style prefix regex (``preg_match`` of
``^\\s*(SELECT|SHOW|DESCRIBE|DESC|EXPLAIN)\\b``). Routing: ``$wpdb->get_var("SELECT ... WHERE
id = N")`` through the drop-in (routed to the replica) against WordPress's own ``wpdb``
connected straight to the replica, on a real MariaDB pair, WordPress loaded with SHORTINIT.
Every contender runs in the same php-cli process, alternating round by round.

    python -m benchmarks.wp_router [--quick]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pymysql

from benchmarks.harness import Report, main
from benchmarks.router import corpus
from tenantkit.testing import DATABASE, PASSWORD, USER, MariaDBCluster

_SCRIPT = r"""<?php
error_reporting(E_ALL);
$in = json_decode(stream_get_contents(STDIN), true);
define('SHORTINIT', true);
$_SERVER['HTTP_HOST'] = '127.0.0.1'; $_SERVER['REQUEST_URI'] = '/';
require $in['tree'] . '/wp-load.php';
global $wpdb;
$corpus = $in['corpus'];
$rounds = $in['rounds'];
$prefix = static fn (string $q): string =>
    preg_match('/^\s*(?:SELECT|SHOW|DESCRIBE|DESC|EXPLAIN)\b/i', $q) === 1 ? 'read' : 'write';
$classify = [
    'tenantkit uncached' => static fn (string $q): string =>
        Tenantkit_SQL_Classifier::explain($q)[0],
    'tenantkit cached' => static fn (string $q): string => Tenantkit_SQL_Classifier::role($q),
    'prefix regex (HyperDB style)' => $prefix,
];
// The cache lives for one request and holds 1024 statements: the cached contender repeats
// 1000 distinct statements (a page sends far fewer), the same number of calls in all.
$hot = array_slice($corpus, 0, 1000);
$inputs = [
    'tenantkit uncached' => $corpus,
    'tenantkit cached' => array_slice(array_merge(...array_fill(0,
        intdiv(count($corpus), count($hot)) + 1, $hot)), 0, count($corpus)),
    'prefix regex (HyperDB style)' => $corpus,
];
foreach ($hot as $q) { Tenantkit_SQL_Classifier::role($q); }   // fill the cache
$out = ['classify' => [], 'read' => []];
for ($r = 0; $r < $rounds; $r++) {
    foreach ($classify as $name => $fn) {
        $t = hrtime(true);
        foreach ($inputs[$name] as $q) { $fn($q); }
        $out['classify'][$name][] = (hrtime(true) - $t) / 1e9;
    }
}
$plain = new wpdb($in['user'], $in['password'], $in['database'], $in['replica']);
$reads = [
    'tenantkit drop-in' => $wpdb,
    'wpdb on the replica' => $plain,
];
$n = $in['reads'];
for ($r = 0; $r < $rounds; $r++) {
    // Alternate which one goes first, so neither always runs on a colder cache.
    foreach ($r % 2 === 0 ? $reads : array_reverse($reads, true) as $name => $db) {
        $t = hrtime(true);
        for ($i = 1; $i <= $n; $i++) {
            $db->get_var('SELECT v FROM bench WHERE id = ' . (($i % 100) + 1));
        }
        $out['read'][$name][] = (hrtime(true) - $t) / 1e9;
    }
}
$out['counts'] = $wpdb->tk_counts;
echo json_encode($out);
"""


def _tree(root: Path, pair: MariaDBCluster) -> Path:
    from tenantkit.testing.wordpress import make_tree

    url = f"mysql://{USER}:{PASSWORD}@127.0.0.1:{{}}/{DATABASE}"
    return make_tree(root / "wp", {
        "DB_NAME": DATABASE, "DB_USER": USER, "DB_PASSWORD": PASSWORD,
        "DB_HOST": f"127.0.0.1:{pair.primary.port}", "WP_DEBUG": False,
        "TENANTKIT_DB_PRIMARY": url.format(pair.primary.port),
        "TENANTKIT_DB_REPLICAS": [url.format(pair.replica.port)],
        "TENANTKIT_STATE_DIR": str(root),
    })


def run(quick: bool = False) -> Report:
    php = shutil.which("php")
    if php is None:
        raise RuntimeError("php not found: apt-get install php-cli php-mysql")
    if not Path("/usr/share/wordpress/wp-includes/class-wpdb.php").is_file():
        raise RuntimeError("WordPress not found: apt-get install wordpress")
    statements = corpus(2_000 if quick else 10_000)
    rounds = 5 if quick else 15
    reads = 200 if quick else 1_000
    report = Report("wp_router", "WordPress drop-in: PHP classifier, reads through the drop-in")
    with MariaDBCluster(replicas=1) as pair, tempfile.TemporaryDirectory() as tmp:
        with pymysql.connect(**pair.primary.connect_args(), autocommit=True) as conn, \
                conn.cursor() as cur:
            cur.execute("CREATE TABLE bench (id INT PRIMARY KEY, v VARCHAR(40))")
            cur.executemany("INSERT INTO bench VALUES (%s, %s)",
                            [(i, f"value {i}") for i in range(1, 101)])
        pair.wait_replicas()
        tree = _tree(Path(tmp), pair)
        payload = {
            "tree": str(tree), "corpus": statements, "rounds": rounds, "reads": reads,
            "user": USER, "password": PASSWORD, "database": DATABASE,
            "replica": f"127.0.0.1:{pair.replica.port}",
        }
        script = Path(tmp) / "bench.php"
        script.write_text(_SCRIPT)
        proc = subprocess.run([php, str(script)], input=json.dumps(payload).encode(),
                              capture_output=True, check=False, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace")[-3000:])
        data = json.loads(proc.stdout)
    report.add_group("classify (per statement)", data["classify"], unit="us",
                     per_call=len(statements), baseline="tenantkit uncached")
    report.add_group("read: get_var by primary key", data["read"], unit="us", per_call=reads,
                     baseline="wpdb on the replica")
    uncached = len(statements) / min(data["classify"]["tenantkit uncached"])
    report.add_value("classify throughput", "tenantkit uncached", uncached, "statements/s")
    ratio = report.median("read: get_var by primary key", "tenantkit drop-in") / report.median(
        "read: get_var by primary key", "wpdb on the replica")
    report.target("routed read / plain wpdb on the replica <= 1.15", ratio <= 1.15)
    report.target("uncached PHP classification >= 50 000 statements/s", uncached >= 50_000)
    report.target("every benchmark read went to the replica",
                  data["counts"]["primary"] == 0 and data["counts"]["replica"] >= reads)
    report.notes.append(f"drop-in statement counts: {data['counts']}")
    return report


if __name__ == "__main__":
    main(run)
