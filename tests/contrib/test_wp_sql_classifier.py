"""The drop-in's PHP classifier agrees with tenantkit.db.classify, case for case.

The shared vectors (tests/vectors/sql_roles.json) and a Hypothesis differential test built
from SQL fragments, traps included, against the Python reference.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantkit.db.classify import explain
from tenantkit.db.keywords import KEYWORDS

from .phpcli import CONTRIB, run_php_calls

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sql_roles.json"
ROUTER = ["wp-db-router.php"]


def php_roles(php: str, statements: list[str]) -> list[str]:
    calls = [("Tenantkit_SQL_Classifier::role", [sql]) for sql in statements]
    result = run_php_calls(php, ROUTER, calls)
    assert result.stderr == ""
    return result.results


def test_php_constants_are_the_shared_keyword_lists(php: str) -> None:
    script = (f"require {json.dumps(str(CONTRIB / ROUTER[0]))};"
              "echo json_encode((new ReflectionClass('Tenantkit_SQL_Classifier'))"
              "->getConstants());")
    proc = subprocess.run([php, "-r", script], capture_output=True, text=True, timeout=30,
                          check=True)
    constants = json.loads(proc.stdout)
    assert {name: constants.get(name.upper()) for name in KEYWORDS} == {
        name: list(words) for name, words in KEYWORDS.items()}


def test_shared_vectors(php: str) -> None:
    vectors = json.loads(VECTORS.read_text())
    assert len(vectors) >= 200
    roles = php_roles(php, [v["sql"] for v in vectors])
    wrong = [(v["sql"], v["role"], got, v["why"])
             for v, got in zip(vectors, roles, strict=True) if got != v["role"]]
    assert wrong == []


@pytest.mark.parametrize("sql, role", [
    pytest.param("SELECT SQL_CALC_FOUND_ROWS ID FROM wp_posts LIMIT 10", "calc", id="calc"),
    pytest.param("SELECT FOUND_ROWS()", "found_rows", id="found rows"),
    pytest.param("SELECT SQL_CALC_FOUND_ROWS ID FROM wp_posts FOR UPDATE", "write",
                 id="calc and locking"),
    pytest.param("SELECT FOUND_ROWS(), GET_LOCK('x', 1)", "write", id="found rows and lock"),
    pytest.param("SELECT SQL_CALC_FOUND_ROWS @a := 1", "write", id="calc and variable"),
    pytest.param("SELECT 1", "read", id="read"),
    pytest.param("INSERT INTO t VALUES (1)", "write", id="write"),
])
def test_routing_roles_relax_only_calc_found_rows(php: str, sql: str, role: str) -> None:
    result = run_php_calls(php, ROUTER, [("Tenantkit_SQL_Classifier::route", [sql])])
    assert result.results == [role]


_FRAGMENTS = [
    "SELECT", "select", "*", "FROM", "wp_posts", "WHERE", "ID", "=", "1", ",", "'a'", "'\\''",
    "'it''s'", '"x"', "`t`", "`for update`", "-- c\n", "--x", "#x\n", "/* c */", "/*!40101",
    "/*!", "/*M!100100", "*/", "(", ")", ";", "FOR", "UPDATE", "SHARE", "LOCK", "IN", "MODE",
    "INTO", "OUTFILE", "@x", "@@last_gtid", "@@session.identity", ":=", "SQL_CALC_FOUND_ROWS",
    "FOUND_ROWS", "LAST_INSERT_ID", "GET_LOCK", "SLEEP", "()", "WITH", "c", "AS", "INSERT",
    "UPDATE", "DELETE", "REPLACE", "SHOW", "WARNINGS", "EXPLAIN", "DESCRIBE", "ANALYZE",
    "FORMAT", "JSON", "START", "TRANSACTION", "READ", "ONLY", "WITH CONSISTENT SNAPSHOT",
    "\\", "NEXT", "VALUE", "é", "\u017felect", "\n", "\t", "DESC", "TABLE", "VALUES", "SET",
    "HELP", "UNION", "BEGIN", "COMMIT", "DO", "CALL",
    "/*!999999", "/*!50700", "/*M!100100", "/*m!", "/*!1001000", "--\x7f", "--\x01", "\x00",
    "`GET_LOCK`", "`get_lock`(", '"GET_LOCK"', "@@", "@@session.`identity`", "@@`identity`",
    ".nextval", ".CURRVAL", "s.nextval", "*/*", "/**/", "`a``b`", '"a""b"', "'\\", "ü",
    "\U0001f600", "@@session", ".", "identity", "IN_TRANSACTION", "`",
]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(st.lists(
    st.lists(st.tuples(st.sampled_from(_FRAGMENTS), st.sampled_from(["", " "])),
             min_size=1, max_size=14).map(lambda parts: "".join(a + b for a, b in parts)),
    min_size=100, max_size=200,
))
def test_php_agrees_with_python_on_generated_sql(php: str, statements: list[str]) -> None:
    roles = php_roles(php, statements)
    wrong = [(sql, explain(sql), got) for sql, got in zip(statements, roles, strict=True)
             if got != explain(sql)[0]]
    assert wrong == []


def test_huge_statements_are_classified_quickly_and_safely(php: str) -> None:
    insert = "INSERT INTO wp_postmeta VALUES " + "(1, 'k', 'v'')'),\n" * 200_000 + "(2, 'k', 'v')"
    select = "SELECT ID FROM wp_posts WHERE ID IN (" + "1," * 200_000 + "1)"
    trap = select[:-1] + ") FOR UPDATE"
    assert php_roles(php, [insert, select, trap]) == ["write", "read", "write"]
    assert [explain(s)[0] for s in (insert, select, trap)] == ["write", "read", "write"]


def test_hostile_input_is_linear_in_php(php: str) -> None:
    """1 MB of unterminated strings and comments, and of version comments, is classified in
    one pass (the bound is generous: seconds, where a quadratic scan takes hours)."""
    units = ["\\'", "/*", "/*!999999 '", "/*!100100 '*/ ", "`a`(", "--\x7f", "/*! ("]
    statements = [("SELECT " + unit * (1_000_000 // len(unit)))[:1_000_000] for unit in units]
    start = time.monotonic()
    roles = php_roles(php, statements)
    elapsed = time.monotonic() - start
    assert roles == [explain(sql)[0] for sql in statements]
    assert elapsed < 30, elapsed
