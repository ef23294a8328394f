"""Read/write splitting: classifier throughput and the cost of routing a read.

Classifier: statements per second on a WordPress-like corpus, for tenantkit uncached
(``statement_role`` on more distinct statements than its LRU holds, so every call misses),
tenantkit cached
(``statement_role`` on statements already in its LRU), a HyperDB-style prefix regex and an
sqlparse-based classifier (``sqlparse.parse(sql)[0].get_type()``). Each one's misroutes on
the oracle corpus ``tests/vectors/sql_roles.json`` (the statements MariaDB itself judges in
tests/db/test_classify.py) are counted: writes sent to a replica (the target is 0) and reads
sent to the primary. Then the time tenantkit takes on 1 KB, 100 KB and 1 MB of hostile input
(unterminated strings and comments, version comments): it must grow linearly.

Routing: ORM ``session.get()`` and Core ``SELECT ... WHERE id = ?`` through the Router
against the replica's own Engine, on a real MariaDB primary + replica
(``tenantkit.testing.MariaDBCluster``).

    python -m benchmarks.router [--quick]
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Integer, String, bindparam, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks.harness import Report, alternate, main
from tenantkit.db import classify
from tenantkit.db.classify import statement_role
from tenantkit.db.router import Router
from tenantkit.testing import MariaDBCluster

VECTORS = Path(__file__).parent.parent / "tests" / "vectors" / "sql_roles.json"

# The shape of the queries a WordPress page load sends (wpdb), with varying literals.
_TEMPLATES = [
    "SELECT option_value FROM wp_options WHERE option_name = '{word}' LIMIT 1",
    "SELECT * FROM wp_posts WHERE ID = {n} LIMIT 1",
    "SELECT post_id, meta_key, meta_value FROM wp_postmeta WHERE post_id IN ({n},{m}) "
    "ORDER BY meta_id ASC",
    "SELECT t.*, tt.* FROM wp_terms AS t  INNER JOIN wp_term_taxonomy AS tt ON t.term_id = "
    "tt.term_id WHERE tt.taxonomy IN ('category') AND t.term_id IN ( {n} )",
    "SELECT  t.term_id, tt.term_taxonomy_id, tr.object_id FROM wp_terms AS t  INNER JOIN "
    "wp_term_taxonomy AS tt ON t.term_id = tt.term_id INNER JOIN wp_term_relationships AS tr "
    "ON tr.term_taxonomy_id = tt.term_taxonomy_id WHERE tt.taxonomy IN ('category', "
    "'post_tag', 'post_format') AND tr.object_id IN ({n}) ORDER BY t.name ASC",
    "SELECT wp_comments.comment_ID FROM wp_comments  WHERE ( comment_approved = '1' ) AND "
    "comment_post_ID = {n} AND comment_parent = 0  ORDER BY wp_comments.comment_date_gmt ASC, "
    "wp_comments.comment_ID ASC",
    "SELECT   wp_posts.* FROM wp_posts  WHERE 1=1  AND wp_posts.post_name = '{word}' AND "
    "wp_posts.post_type = 'post'  ORDER BY wp_posts.post_date DESC",
    "SELECT user_id, meta_key, meta_value FROM wp_usermeta WHERE user_id IN ({n}) "
    "ORDER BY umeta_id ASC",
    "SELECT COUNT(*) FROM wp_comments WHERE comment_post_ID = {n} AND comment_approved = '1'",
    "SELECT SQL_CALC_FOUND_ROWS  wp_posts.ID FROM wp_posts  WHERE 1=1  AND ((wp_posts.post_type"
    " = 'post' AND (wp_posts.post_status = 'publish'))) ORDER BY wp_posts.post_date DESC "
    "LIMIT {n}, 10",
    "SELECT FOUND_ROWS()",
    "UPDATE `wp_options` SET `option_value` = '{n}' WHERE `option_name` = '_transient_{word}'",
    "INSERT INTO `wp_postmeta` (`post_id`, `meta_key`, `meta_value`) VALUES ({n}, '_edit_lock',"
    " '{m}:1')",
    "SELECT * FROM wp_users WHERE user_login = '{word}' LIMIT 1",
    "SELECT option_name, option_value FROM wp_options WHERE autoload = 'yes'",
]
_WORDS = ["siteurl", "home", "blogname", "hello-world", "sample-page", "admin", "cron",
          "it''s", "widget_block", "theme_mods_twentytwentyfour"]


def corpus(size: int, seed: int = 4) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(size):
        template = _TEMPLATES[i % len(_TEMPLATES)]
        out.append(template.format(n=rng.randrange(1, 10**6), m=rng.randrange(1, 10**6),
                                   word=rng.choice(_WORDS) + str(i)))
    return out


# HyperDB's approach: a statement is a read when it starts with one of a few keywords.
_PREFIX_READ = re.compile(r"\A\s*(?:SELECT|SHOW|DESCRIBE|DESC|EXPLAIN)\b", re.IGNORECASE)


def prefix_regex_role(sql: str) -> str:
    return "read" if _PREFIX_READ.match(sql) else "write"


def sqlparse_role(sql: str) -> str:
    import sqlparse

    statements = sqlparse.parse(sql)
    if len(statements) != 1:
        return "write"
    return "read" if statements[0].get_type() == "SELECT" else "write"


def _mistakes(role: Callable[[str], str]) -> tuple[int, int, int]:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    wrong_reads = sum(1 for v in vectors if v["role"] == "write" and role(v["sql"]) == "read")
    wrong_writes = sum(1 for v in vectors if v["role"] == "read" and role(v["sql"]) == "write")
    return wrong_reads, wrong_writes, len(vectors)


def _classifier(report: Report, quick: bool) -> None:
    statements = corpus(classify.CACHE_SIZE * (2 if quick else 5))
    small = statements[:1000]  # all of these stay in the cache
    slow = statements[:100 if quick else 300]  # sqlparse is slow: a smaller slice

    def ours_uncached() -> None:
        for sql in statements:
            statement_role(sql)

    def ours_cached() -> None:
        for sql in small:
            statement_role(sql)

    def prefix() -> None:
        for sql in statements:
            prefix_regex_role(sql)

    def parsed() -> None:
        for sql in slow:
            sqlparse_role(sql)

    classify.cache_clear()
    for sql in small:
        statement_role(sql)
    rounds = 5 if quick else 11
    timings = alternate({"tenantkit uncached": ours_uncached, "HyperDB-style prefix regex":
                         prefix}, rounds=rounds)
    report.add_group("classify, uncached (per statement)", timings, unit="us",
                     per_call=len(statements), baseline="tenantkit uncached")
    cached = alternate({"tenantkit cached": ours_cached}, rounds=rounds, number=20)
    report.add_group("classify, cached (per statement)", cached, unit="us",
                     per_call=len(small) * 20)
    parsed_t = alternate({"sqlparse get_type()": parsed}, rounds=3 if quick else 5)
    report.add_group("classify, sqlparse (per statement)", parsed_t, unit="us",
                     per_call=len(slow))
    uncached_rate = 1e6 / report.median("classify, uncached (per statement)",
                                        "tenantkit uncached")
    cached_rate = 1e6 / report.median("classify, cached (per statement)", "tenantkit cached")
    report.add_value("throughput", "tenantkit uncached", uncached_rate, "stmt/s")
    report.add_value("throughput", "tenantkit cached", cached_rate, "stmt/s")
    report.add_value("throughput", "HyperDB-style prefix regex", 1e6 / report.median(
        "classify, uncached (per statement)", "HyperDB-style prefix regex"), "stmt/s")
    report.add_value("throughput", "sqlparse get_type()", 1e6 / report.median(
        "classify, sqlparse (per statement)", "sqlparse get_type()"), "stmt/s")
    best = len(statements) / min(timings["tenantkit uncached"])
    best_cached = len(small) * 20 / min(cached["tenantkit cached"])
    report.notes.append(
        f"best round (least disturbed by other processes): uncached {best:,.0f} stmt/s, "
        f"cached {best_cached:,.0f} stmt/s; the targets below use the medians"
    )
    report.target("uncached classification >= 300 000 statements/s", uncached_rate >= 300_000)
    report.target("cached classification >= 2 000 000 statements/s", cached_rate >= 2_000_000)
    for name, role in (("tenantkit", statement_role), ("HyperDB-style prefix regex",
                                                         prefix_regex_role),
                       ("sqlparse get_type()", sqlparse_role)):
        wrong_reads, wrong_writes, total = _mistakes(role)
        report.add_value("misroutes on the oracle corpus", f"{name}: writes sent to a replica",
                         wrong_reads, "statements")
        report.add_value("misroutes on the oracle corpus", f"{name}: reads sent to the primary",
                         wrong_writes, "statements")
        report.notes.append(
            f"{name} on the {total} shared vectors: {wrong_reads} writes sent to a replica, "
            f"{wrong_writes} reads sent to the primary"
        )
        if name == "tenantkit":
            report.target("0 writes sent to a replica on the oracle corpus", wrong_reads == 0)


# Hostile inputs: each unit repeated to the size. The old scanner was quadratic on these.
_HOSTILE = {
    "unterminated escapes": "SELECT '" + "\\'",
    "unclosed comments": "SELECT /*",
    "skipped version comments": "SELECT /*!999999 '",
    "executable comment, many tokens": "SELECT /*! (",
    "quoted function names": "SELECT `a`(",
}


def _hostile(report: Report, quick: bool) -> None:
    sizes = {"1 KB": 1_000, "100 KB": 100_000, "1 MB": 1_000_000}
    worst: dict[str, float] = {}
    for name, unit in _HOSTILE.items():
        for label, size in sizes.items():
            sql = (unit * (size // len(unit) + 1))[:size]
            best = float("inf")
            for _ in range(1 if size > 100_000 or quick else 3):
                start = time.perf_counter()
                classify.explain(sql)
                best = min(best, time.perf_counter() - start)
            report.add_value(f"hostile input: {name}", label, best * 1e3, "ms")
            worst[label] = max(worst.get(label, 0.0), best)
    per_kb_small = worst["1 KB"]
    per_kb_large = worst["1 MB"] / 1_000
    report.notes.append(
        f"hostile input, slowest kind: 1 KB {worst['1 KB'] * 1e3:.2f} ms, 100 KB "
        f"{worst['100 KB'] * 1e3:.1f} ms, 1 MB {worst['1 MB'] * 1e3:.0f} ms"
    )
    report.target("hostile input is linear: 1 MB within 10x the scaled 1 KB time",
                  per_kb_large <= 10 * per_kb_small)


class _Base(DeclarativeBase):
    pass


class _Post(_Base):
    __tablename__ = "bench_posts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100))


def _routing(report: Report, quick: bool) -> None:
    rows = 1000
    with MariaDBCluster(replicas=1) as cluster:
        setup = create_engine(cluster.primary_url)
        try:
            _Base.metadata.create_all(setup)
            with setup.begin() as conn:
                conn.execute(_Post.__table__.insert(),
                             [{"id": i, "title": f"post {i}"} for i in range(1, rows + 1)])
        finally:
            setup.dispose()
        cluster.wait_replicas()
        direct = create_engine(cluster.replica_url)
        router = Router(cluster.primary_url, [cluster.replica_url], health_interval=5.0)
        try:
            rng = random.Random(7)
            ids = [rng.randrange(1, rows + 1) for _ in range(10_000)]
            position = {"i": 0}

            def next_id() -> int:
                position["i"] = (position["i"] + 1) % len(ids)
                return ids[position["i"]]

            def orm_routed() -> None:
                with router.session() as session:
                    assert session.get(_Post, next_id()) is not None

            def orm_direct() -> None:
                with Session(direct) as session:
                    assert session.get(_Post, next_id()) is not None

            query = select(_Post.title).where(_Post.id == bindparam("id", type_=Integer))

            def core_routed() -> None:
                with router.connect() as conn:
                    conn.execute(query, {"id": next_id()}).scalar_one()

            def core_direct() -> None:
                with direct.connect() as conn:
                    conn.execute(query, {"id": next_id()}).scalar_one()

            number = 100 if quick else 300
            rounds = 5 if quick else 15
            orm = alternate({"router session.get()": orm_routed,
                             "replica Engine session.get()": orm_direct},
                            rounds=rounds, number=number, warmup=3)
            report.add_group("ORM session.get() (per call)", orm, unit="us", per_call=number,
                             baseline="replica Engine session.get()")
            core = alternate({"router SELECT by id": core_routed,
                              "replica Engine SELECT by id": core_direct},
                             rounds=rounds, number=number, warmup=3)
            report.add_group("Core SELECT ... WHERE id = ? (per call)", core, unit="us",
                             per_call=number, baseline="replica Engine SELECT by id")
            orm_ratio = (report.median("ORM session.get() (per call)", "router session.get()")
                         / report.median("ORM session.get() (per call)",
                                         "replica Engine session.get()"))
            core_ratio = (report.median("Core SELECT ... WHERE id = ? (per call)",
                                        "router SELECT by id")
                          / report.median("Core SELECT ... WHERE id = ? (per call)",
                                          "replica Engine SELECT by id"))
            report.target(f"ORM routed/direct <= 1.10 (got {orm_ratio:.3f})", orm_ratio <= 1.10)
            report.target(f"Core routed/direct <= 1.10 (got {core_ratio:.3f})",
                          core_ratio <= 1.10)
            stats = router.stats()
            report.notes.append(f"router decisions during the run: {stats}")
        finally:
            router.close()
            direct.dispose()


def run(quick: bool = False) -> Report:
    logging.getLogger("tenantkit").setLevel(logging.WARNING)
    report = Report("router", "read/write splitting: classifier throughput, routing overhead")
    _classifier(report, quick)
    _hostile(report, quick)
    _routing(report, quick)
    return report


if __name__ == "__main__":
    main(run)
