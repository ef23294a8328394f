"""The compressed MySQL protocol: tenantkit's CompressedConnection against plain PyMySQL and
mysqlclient's ``compress=True`` (the C client), in the same run.

(a) bytes on the wire and (b) wall time of a WordPress-like write workload -- a 20 KB post
INSERT, the 200-row autoloaded ``wp_options`` SELECT, five comment INSERTs -- through a
loopback proxy throttled to 1 Mbit/s each way with 30 ms round trips; (c) CPU time
(``time.process_time``) for small queries on plain loopback.

    python -m benchmarks.compress [--quick]
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql

from benchmarks.harness import Report, alternate, main
from tenantkit.db.compress import CompressedConnection
from tenantkit.testing import LoopbackProxy, MariaDBCluster

RATE = 1_000_000 / 8  # bytes per second, each direction
ONE_WAY = 0.015  # seconds: 30 ms round trips
PIECE = 4096  # the proxy paces and delays in pieces of this size

try:
    import MySQLdb
except ImportError:  # pragma: no cover - mysqlclient is in the bench extra
    MySQLdb = None


# --- a throttling loopback proxy -------------------------------------------------------------

class ThrottleProxy(LoopbackProxy):
    """127.0.0.1:port -> upstream, each direction limited to RATE with ONE_WAY latency.

    Counts every byte relayed (both directions) in ``bytes``.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.bytes = 0
        self._lock = threading.Lock()
        super().__init__(upstream)

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        for src, dst in ((client, server), (server, client)):
            pipe: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            self.spawn(self._read, src, pipe)
            self.spawn(self._write, dst, pipe)

    def _read(self, src: socket.socket, pipe: queue.Queue[tuple[float, bytes] | None]) -> None:
        link_free = 0.0
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                self.bytes += len(data)
            now = time.monotonic()
            for start in range(0, len(data), PIECE):
                piece = data[start:start + PIECE]
                link_free = max(now, link_free) + len(piece) / RATE
                pipe.put((link_free + ONE_WAY, piece))
        pipe.put(None)

    def _write(self, dst: socket.socket, pipe: queue.Queue[tuple[float, bytes] | None]) -> None:
        while True:
            item = pipe.get()
            if item is None:
                break
            due, piece = item
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                dst.sendall(piece)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# --- WordPress-like data -----------------------------------------------------------------------

_WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their",
    "has", "would", "when", "if", "so", "no", "what", "up", "out", "who", "them", "some",
    "could", "him", "into", "its", "then", "two", "more", "these", "want", "way", "look",
    "first", "also", "new", "because", "day", "use", "man", "find", "here", "thing", "give",
    "many", "well", "only", "those", "tell", "very", "even", "back", "any", "good", "woman",
    "through", "life", "child", "work", "down", "may", "after", "should", "call", "world",
    "over", "school", "still", "try", "last", "ask", "need", "too", "feel", "three", "state",
    "never", "become", "between", "high", "really", "something", "most", "another", "family",
    "own", "leave", "put", "old", "while", "mean", "keep", "student", "why", "let", "great",
    "same", "big", "group", "begin", "seem", "country", "help", "talk", "where", "turn",
    "problem", "every", "start", "hand", "might", "garden", "recipe", "travel", "photo",
    "coffee", "morning", "weekend", "project", "server", "database", "cache", "update"]


def _prose(rng: random.Random, size: int) -> str:
    """HTML paragraphs of Zipf-ish English-like words, about ``size`` characters."""
    weights = [1 / (rank + 1) for rank in range(len(_WORDS))]
    out: list[str] = []
    length = 0
    while length < size:
        words = rng.choices(_WORDS, weights, k=rng.randint(40, 90))
        words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.insert(rng.randint(1, len(words) - 1),
                         f'<a href="https://example.com/{rng.randint(1, 99999)}/">link</a>')
        para = f"<!-- wp:paragraph -->\n<p>{' '.join(words)}.</p>\n<!-- /wp:paragraph -->\n"
        out.append(para)
        length += len(para)
    return "".join(out)[:size]


def _php_array(rng: random.Random, items: int) -> str:
    parts = []
    for i in range(items):
        key = rng.choice(["title", "number", "show_date", "text", "filter", "count",
                          "dropdown", "sortby", "exclude", f"widget_{i}"])
        text = "".join(rng.choices("abcdefghij ", k=rng.randint(0, 40)))
        value = rng.choice([f"i:{rng.randint(0, 500)};", "b:1;", "b:0;",
                            f's:{len(text)}:"{text}";'])
        parts.append(f's:{len(key)}:"{key}";{value}')
    return f"a:{items}:{{{''.join(parts)}}}"


def _options(rng: random.Random) -> list[tuple[str, str]]:
    options: list[tuple[str, str]] = []
    for i in range(150):  # most options are short scalars
        value = rng.choice(["1", "0", "open", "closed", "", "https://blog.example.com",
                            "Y-m-d", "g:i a", "UTC", str(rng.randint(0, 10**9)), "posts"])
        options.append((f"option_{i}", value))
    for i in range(45):  # widget and plugin settings: serialized PHP arrays
        options.append((f"widget_{i}", _php_array(rng, rng.randint(10, 80))))
    rules = "".join(
        f's:{len(k := f"^{w}/([^/]+)/page/?([0-9]{{1,}})/?$")}:"{k}";'
        f's:{len(v := f"index.php?{w}=$matches[1]&paged=$matches[2]")}:"{v}";'
        for w in rng.choices(_WORDS, k=300)
    )
    options += [("rewrite_rules", f"a:300:{{{rules}}}"),
                ("cron", _php_array(rng, 120)), ("sidebars_widgets", _php_array(rng, 60)),
                ("active_plugins", _php_array(rng, 30)), ("theme_mods", _php_array(rng, 80))]
    return options


SCHEMA = [
    "CREATE TABLE wp_options (option_id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, "
    "option_name VARCHAR(191) NOT NULL UNIQUE, option_value LONGTEXT NOT NULL, "
    "autoload VARCHAR(20) NOT NULL DEFAULT 'yes') DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE wp_posts (ID BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, post_author BIGINT, "
    "post_date DATETIME, post_content LONGTEXT, post_title TEXT, post_status VARCHAR(20), "
    "post_name VARCHAR(200)) DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE wp_comments (comment_ID BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, "
    "comment_post_ID BIGINT, comment_author TINYTEXT, comment_author_email VARCHAR(100), "
    "comment_author_url VARCHAR(200), comment_author_IP VARCHAR(100), comment_date DATETIME, "
    "comment_content TEXT, comment_approved VARCHAR(20), comment_agent VARCHAR(255)) "
    "DEFAULT CHARSET=utf8mb4",
]


def _prepare(cluster: MariaDBCluster) -> int:
    """Create the tables and the options; returns the autoloaded options' total size."""
    conn = pymysql.connect(**cluster.primary.connect_args(), autocommit=True)
    try:
        with conn.cursor() as cur:
            for sql in SCHEMA:
                cur.execute(sql)
            options = _options(random.Random(42))
            cur.executemany(
                "INSERT INTO wp_options (option_name, option_value) VALUES (%s, %s)", options,
            )
    finally:
        conn.close()
    return sum(len(name) + len(value) for name, value in options)


def _workload(conn: Any, rng: random.Random) -> int:
    """One page-write's worth of statements; returns the number of options read."""
    cur = conn.cursor()
    try:
        cur.execute(
            "INSERT INTO wp_posts (post_author, post_date, post_content, post_title, "
            "post_status, post_name) VALUES (%s, NOW(), %s, %s, 'publish', %s)",
            (1, _prose(rng, 20_000), "A weekend in the garden", f"post-{rng.randint(0, 10**9)}"),
        )
        post_id = cur.lastrowid
        cur.execute("SELECT option_name, option_value FROM wp_options WHERE autoload = 'yes'")
        count = len(cur.fetchall())
        for i in range(5):
            cur.execute(
                "INSERT INTO wp_comments (comment_post_ID, comment_author, "
                "comment_author_email, comment_author_url, comment_author_IP, comment_date, "
                "comment_content, comment_approved, comment_agent) "
                "VALUES (%s, %s, %s, %s, %s, NOW(), %s, '1', %s)",
                (post_id, f"Reader {i}", f"reader{i}@example.com", "https://example.org/",
                 "203.0.113.7", _prose(rng, 300),
                 "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
            )
        conn.commit()
    finally:
        cur.close()
    return count


# --- contenders ----------------------------------------------------------------------------------

def _openers(cluster: MariaDBCluster) -> dict[str, Callable[[int], Any]]:
    args = cluster.primary.connect_args()

    def ours(port: int) -> Any:
        return CompressedConnection(**{**args, "port": port}, compress=True)

    def plain(port: int) -> Any:
        return pymysql.connect(**{**args, "port": port})

    openers: dict[str, Callable[[int], Any]] = {"tenantkit": ours, "pymysql": plain}
    if MySQLdb is not None:
        def c_client(port: int) -> Any:
            return MySQLdb.connect(host="127.0.0.1", port=port, user=args["user"],
                                   password=args["password"], database=args["database"],
                                   compress=True)
        openers["mysqlclient"] = c_client
    return openers


@contextlib.contextmanager
def _connections(cluster: MariaDBCluster, throttled: bool
                 ) -> Iterator[tuple[dict[str, Any], dict[str, ThrottleProxy]]]:
    proxies: dict[str, ThrottleProxy] = {}
    conns: dict[str, Any] = {}
    try:
        for name, opener in _openers(cluster).items():
            port = cluster.primary.port
            if throttled:
                proxies[name] = ThrottleProxy(("127.0.0.1", port))
                port = proxies[name].port
            conns[name] = opener(port)
        yield conns, proxies
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        for proxy in proxies.values():
            proxy.close()


def run(quick: bool = False) -> Report:
    report = Report("compress", "MySQL compressed protocol: tenantkit vs PyMySQL vs mysqlclient")
    if MySQLdb is None:
        report.notes.append("mysqlclient is not installed (pip install -e '.[bench]'; it needs "
                            "apt-get install libmariadb-dev pkg-config): PyMySQL only")
    with MariaDBCluster(replicas=0) as cluster:
        autoload = _prepare(cluster)
        report.notes.append(f"workload: 20 KB post INSERT, SELECT of 200 autoloaded options "
                            f"({autoload / 1000:.0f} KB), 5 comment INSERTs of ~0.6 KB")

        # (c) CPU time for small queries on plain loopback.
        with _connections(cluster, throttled=False) as (conns, _):
            names = [f"option_{i}" for i in range(150)]

            def small(conn: Any) -> Callable[[], object]:
                index = [0]

                def query() -> object:
                    cur = conn.cursor()
                    cur.execute("SELECT option_value FROM wp_options WHERE option_name = %s",
                                (names[index[0] % 150],))
                    index[0] += 1
                    row = cur.fetchone()
                    cur.close()
                    return row
                return query

            number = 200 if quick else 500
            cpu = alternate({name: small(conn) for name, conn in conns.items()},
                            rounds=5 if quick else 9, number=number, clock=time.process_time)
            report.add_group("CPU per small query (loopback)", cpu, unit="us",
                             per_call=number, baseline="pymysql")

        # (a) wire bytes and (b) wall time through the 1 Mbit/s, 30 ms RTT proxy.
        with _connections(cluster, throttled=True) as (conns, proxies):
            wire: dict[str, int] = {}
            rng = random.Random(7)
            for name, conn in conns.items():
                before = proxies[name].bytes
                assert _workload(conn, rng) == 200
                time.sleep(2 * ONE_WAY)  # let the last bytes through the proxy
                wire[name] = proxies[name].bytes - before
            for name, value in wire.items():
                report.add_value("wire bytes per workload (KB)", name, value / 1000, "KB",
                                 ratio=value / wire["pymysql"])
            timings = alternate(
                {name: (lambda c=conn: _workload(c, rng)) for name, conn in conns.items()},
                rounds=3 if quick else 5, number=1, warmup=0,
            )
            report.add_group("wall time per workload (1 Mbit/s, 30 ms RTT)", timings,
                             unit="ms", baseline="tenantkit")

    wall = {n: statistics.median(t) for n, t in timings.items()}
    cpu_med = {n: statistics.median(t) for n, t in cpu.items()}
    report.target("wire bytes <= 30% of uncompressed PyMySQL",
                  wire["tenantkit"] <= 0.30 * wire["pymysql"])
    report.target("throttled wall time >= 3x faster than uncompressed PyMySQL",
                  wall["pymysql"] >= 3 * wall["tenantkit"])
    report.target("CPU for small queries <= 1.3x plain PyMySQL",
                  cpu_med["tenantkit"] <= 1.3 * cpu_med["pymysql"])
    if "mysqlclient" in cpu_med:
        report.target("CPU for small queries <= 2x mysqlclient compress=True",
                      cpu_med["tenantkit"] <= 2 * cpu_med["mysqlclient"])
        report.notes.append(
            f"wall time speed-up vs PyMySQL: {wall['pymysql'] / wall['tenantkit']:.2f}x; "
            f"mysqlclient compressed: {wall['pymysql'] / wall['mysqlclient']:.2f}x"
        )
    report.notes.append("CPU is time.process_time of this process (client side only); wire "
                        "bytes are counted by the proxy, both directions, handshake excluded")
    return report


if __name__ == "__main__":
    main(run)
