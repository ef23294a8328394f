"""The statement classifier: shared vectors, properties, and MariaDB as the oracle."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import pymysql
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tenantkit.db import classify
from tenantkit.db.classify import explain, is_write, statement_role
from tenantkit.testing import MariaDBCluster

VECTORS_FILE = Path(__file__).parent.parent / "vectors" / "sql_roles.json"
VECTORS: list[dict[str, str]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))


def _id(index: int, sql: str) -> str:
    return f"{index}:{sql[:60]}"


@pytest.mark.parametrize(
    ("sql", "role", "why"),
    [pytest.param(v["sql"], v["role"], v["why"], id=_id(i, v["sql"])) for i, v in
     enumerate(VECTORS)],
)
def test_vector(sql: str, role: str, why: str) -> None:
    assert statement_role(sql) == role, f"{why}: {explain(sql)}"
    assert is_write(sql) is (role == "write")
    assert explain(sql)[0] == role


def test_vector_file_is_well_formed() -> None:
    assert len(VECTORS) >= 200
    assert len({v["sql"] for v in VECTORS}) == len(VECTORS), "duplicate statements"
    for v in VECTORS:
        assert set(v) == {"sql", "role", "why"}
        assert v["role"] in ("read", "write")
        assert v["why"].strip()
    whys = " ".join(v["why"] for v in VECTORS)
    for needed in ("WordPress read", "WordPress write", "PunBB read", "PunBB write",
                   "inside a string", "backquoted identifier", "inside a comment",
                   "executable comment", "multi-statement", "locking read", "INTO",
                   "sequences", "cannot parse"):
        assert needed in whys, needed


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        pytest.param("SELECT 1 FOR UPDATE", "locking read FOR UPDATE", id="lock"),
        pytest.param("SELECT 1; SELECT 2", "multi-statement string", id="multi"),
        pytest.param("SELECT 'x", "cannot parse: unterminated string, identifier or comment",
                     id="unterminated"),
        pytest.param("/*!100100 SELECT 1, */ DELETE FROM t",
                     "DELETE statement (when no version-conditional comment runs)",
                     id="conditional"),
        pytest.param("SELECT 1 /*!100100 '*/ FOR UPDATE -- ' */",
                     "locking read FOR UPDATE (when no version-conditional comment runs)",
                     id="skipped version comment"),
        pytest.param('SELECT "GET_LOCK"(1, 0)',
                     "session-dependent function GET_LOCK() (when double quotes are identifiers)",
                     id="ansi quotes"),
        pytest.param("SELECT 'a\\'; DELETE FROM t; -- '",
                     "multi-statement string (when backslashes do not escape)", id="nbe"),
    ],
)
def test_explain_says_why(sql: str, reason: str) -> None:
    assert explain(sql) == ("write", reason)


def test_rejects_bytes_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="decode bytes first"):
        statement_role(b"SELECT 1")  # type: ignore[arg-type]


def test_cache_is_bounded_and_skips_huge_statements() -> None:
    classify.cache_clear()
    for i in range(classify.CACHE_SIZE + 50):
        statement_role(f"SELECT {i}")
    info = classify.cache_info()
    assert info.maxsize == classify.CACHE_SIZE
    assert info.currsize == classify.CACHE_SIZE
    huge = "SELECT '" + "x" * (classify.CACHE_MAX_LENGTH + 1) + "'"
    assert statement_role(huge) == "read"
    assert classify.cache_info().currsize == classify.CACHE_SIZE
    before = classify.cache_info().hits
    assert statement_role("SELECT 7") == "read"
    statement_role("SELECT 7")
    assert classify.cache_info().hits == before + 1


# --- properties ------------------------------------------------------------------------

_SEPARATORS = [" ", "\n", "\t", "  ", "\r\n", " /* c */ ", "/**/", " -- c\n", " #c\n",
               " /* FOR UPDATE; DELETE */ ", " -- SELECT\n", "\f", "\v", " --\x7f'\n",
               " --\x01\"\n", " /*!999999 ' */ ", " /*!50700 \" */ ", " /*m! ` */ ",
               " /*M!999999 /* ' */ -- */ ", "/*!*/", " /*!100100 */ ", " #\x00 "]
_PIECE = re.compile(
    r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`]|``)*`|:=|@@[\w.$]+|@\w+|@'[^']*'"""
    r"""|@`[^`]*`|<=>|<=|>=|<>|!=|\d+(?:\.\d+)?|[\w$]+|\S"""
)
_QUOTED = ("'", '"', "`", "@'", "@`")


def _recombinable(v: dict[str, str]) -> bool:
    sql = v["sql"]
    return (v["role"] == "write" and "cannot parse" not in v["why"]
            and "backslash" not in v["why"] and "\\" not in sql
            and not any(mark in sql for mark in ("--", "#", "/*", "*/")))


WRITES = [v["sql"] for v in VECTORS if _recombinable(v)]


@st.composite
def disguised_writes(draw: st.DrawFn, source: st.SearchStrategy[str] | None = None,
                     parentheses: bool = True) -> str:
    """A write from the vectors (or *source*), re-joined with random whitespace, comments,
    version comments the server skips and executable comments around its pieces, its words
    in random case and its function names maybe backquoted, wrapped in random parentheses."""
    sql = draw(source if source is not None else st.sampled_from(WRITES))
    pieces = _PIECE.findall(sql)
    out = [draw(st.sampled_from(["", *_SEPARATORS]))]
    for i, piece in enumerate(pieces):
        if not piece.startswith(_QUOTED):
            if (piece.upper() in classify._UNSAFE_FUNCTIONS and pieces[i + 1 : i + 2] == ["("]
                    and draw(st.booleans())):
                piece = f"`{piece}`"  # a backquoted name calls the same function
            piece = "".join(
                c.upper() if draw(st.booleans()) else c.lower() for c in piece
            )
        if i and draw(st.integers(0, 5)) == 0:
            # an executable comment around the piece: MariaDB runs its content
            piece = draw(st.sampled_from(["/*!{} */", "/*M!{} */", "/*!100100 {} */",
                                          "/*M!100100 {}*/", "/*!40101{}*/"])).format(piece)
        out.append(piece)
        out.append(draw(st.sampled_from(_SEPARATORS)))
    text = "".join(out)
    depth = draw(st.integers(0, 3)) if parentheses else 0
    return "(" * depth + text + ")" * depth


def test_disguise_has_material() -> None:
    assert len(WRITES) >= 100


@settings(max_examples=400, deadline=None)
@given(disguised_writes())
def test_comments_whitespace_case_and_parentheses_never_make_a_write_a_read(sql: str) -> None:
    assert statement_role(sql) == "write", explain(sql)


_ALPHABET = st.sampled_from([
    "SELECT", "select", "FOR", "UPDATE", "INTO", "WITH", "AS", "SHOW", "DESC", "EXPLAIN",
    "START", "TRANSACTION", "READ", "ONLY", "GET_LOCK", "(", ")", ";", "'", '"', "`", "\\",
    "--", "#", "/*", "*/", "/*!", "/*M!40101", "@", "@@", ":=", " ", "\n", "x", "1", ".", ",",
    "é", "\u00a0", "\U0001f600", "INSERT", "insert", "\u017felect", "ß", "SQL_CALC_FOUND_ROWS",
    "LOCK", "IN", "SHARE", "NEXT", "VALUE", "\x1c", "-", "*",
])


@settings(max_examples=600, deadline=None)
@given(st.lists(_ALPHABET, max_size=14).map("".join))
@example("'/*M!40101'SELECTSELECT")  # a version comment inside a string: no qualifier matters
def test_fast_path_agrees_with_the_scanner(sql: str) -> None:
    fast = classify._fast(sql)
    if fast is not None:
        role, reason = classify._scan(classify._upper(sql))
        # The scanner may add which reading it took ("(when ...)"); the verdict must agree.
        assert fast == (role, reason.split(" (when ")[0])


@settings(max_examples=600, deadline=None)
@given(st.lists(_ALPHABET, max_size=14).map("".join))
def test_role_shortcut_agrees_with_the_scanner(sql: str) -> None:
    assert classify._role(sql) == classify._classify(sql)[0]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_classifies_without_error(sql: str) -> None:
    assert statement_role(sql) in ("read", "write")


_HOSTILE = ["'", "\\'", '"', "`", "/*", "/*!", "/*!999999 '", "/*!100100 ", "/*M!1 ", "*/",
            "-- ", "#", "x'", "(", "@@", "`a`(", '"a"(', "/*!100100 '*/ ", "\\", "/*m!", ";",
            "/*!1000", "--\x7f", " ", "SELECT", "FOR UPDATE", "\x00"]


def _seconds(sql: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        explain(sql)
        best = min(best, time.perf_counter() - start)
    return best


@settings(max_examples=12, deadline=None, database=None)
@given(st.sampled_from(["SELECT ", "SELECT /*! ", "WITH a AS (", "EXPLAIN SELECT \"", ""]),
       st.lists(st.sampled_from(_HOSTILE), min_size=1, max_size=4).map("".join))
def test_hostile_input_takes_linear_time(prefix: str, unit: str) -> None:
    """1 MB of hostile input (unterminated strings and comments, version comments...) takes
    about 1000 times as long as 1 KB of it, not a million times: the bound is 50 times the
    scaled 1 KB time, plus a second for a busy machine. The quadratic scanner of old took
    minutes on 100 KB."""
    def statement(size: int) -> str:
        return (prefix + unit * (size // len(unit) + 1))[:size]

    small = _seconds(statement(1_000), repeat=5)
    large = _seconds(statement(1_000_000), repeat=1)
    assert large <= 50 * 1_000 * small + 1.0, (large, small)


def test_many_versions_are_a_write_with_bounded_work() -> None:
    sql = "SELECT 1 " + "".join(f"/*!1{i:05d} , {i} */" for i in range(classify.MAX_VERSIONS + 1))
    assert explain(sql) == ("write", f"more than {classify.MAX_VERSIONS} distinct versions in "
                                     "version-conditional comments")
    fine = "SELECT 1 " + "".join(f"/*!1{i:05d} , {i} */" for i in range(classify.MAX_VERSIONS))
    assert explain(fine) == ("read", "SELECT")


# --- the oracle: MariaDB itself ----------------------------------------------------------

SCHEMA = [
    "CREATE TABLE t (id INT PRIMARY KEY, a INT, b INT, x INT, update_time INT, into_date INT,"
    " for_user INT, last_insert_id_col INT, found_rows_total INT, locked INT, sleep_time INT,"
    " next_value INT, `for update` INT, `update` INT, `delete` INT, `a``b; DROP TABLE t` INT,"
    " `@x` INT, `sleep` INT, `for` INT, option_value TEXT, name VARCHAR(20))",
    "CREATE TABLE u (id INT PRIMARY KEY, a INT)",
    "CREATE TABLE `into` (id INT)", "CREATE TABLE `insert` (id INT, `update` INT, `delete` INT)",
    "CREATE TABLE a (id INT)", "CREATE TABLE b (id INT)",
    "CREATE SEQUENCE s",
    "CREATE TABLE wp_options (option_id BIGINT AUTO_INCREMENT PRIMARY KEY, option_name VARCHAR(191)"
    " UNIQUE, option_value LONGTEXT, autoload VARCHAR(20) DEFAULT 'yes')",
    "CREATE TABLE wp_users (ID BIGINT AUTO_INCREMENT PRIMARY KEY, user_login VARCHAR(60),"
    " user_registered DATETIME)",
    "CREATE TABLE wp_usermeta (umeta_id BIGINT AUTO_INCREMENT PRIMARY KEY, user_id BIGINT,"
    " meta_key VARCHAR(255), meta_value LONGTEXT)",
    "CREATE TABLE wp_posts (ID BIGINT AUTO_INCREMENT PRIMARY KEY, post_author BIGINT DEFAULT 0,"
    " post_date DATETIME, post_date_gmt DATETIME, post_content LONGTEXT, post_title TEXT,"
    " post_status VARCHAR(20) DEFAULT 'publish', post_name VARCHAR(200), post_parent BIGINT"
    " DEFAULT 0, post_type VARCHAR(20) DEFAULT 'post', comment_count BIGINT DEFAULT 0)",
    "CREATE TABLE wp_postmeta (meta_id BIGINT AUTO_INCREMENT PRIMARY KEY, post_id BIGINT,"
    " meta_key VARCHAR(255), meta_value LONGTEXT)",
    "CREATE TABLE wp_terms (term_id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200),"
    " slug VARCHAR(200))",
    "CREATE TABLE wp_termmeta (meta_id BIGINT AUTO_INCREMENT PRIMARY KEY, term_id BIGINT,"
    " meta_key VARCHAR(255), meta_value LONGTEXT)",
    "CREATE TABLE wp_term_taxonomy (term_taxonomy_id BIGINT AUTO_INCREMENT PRIMARY KEY,"
    " term_id BIGINT, taxonomy VARCHAR(32))",
    "CREATE TABLE wp_term_relationships (object_id BIGINT, term_taxonomy_id BIGINT)",
    "CREATE TABLE wp_comments (comment_ID BIGINT AUTO_INCREMENT PRIMARY KEY,"
    " comment_post_ID BIGINT, comment_author TINYTEXT, comment_author_email VARCHAR(100),"
    " comment_author_url VARCHAR(200), comment_content TEXT, comment_approved VARCHAR(20),"
    " comment_date DATETIME, comment_date_gmt DATETIME, comment_parent BIGINT DEFAULT 0)",
    "CREATE TABLE punbb_users (id INT AUTO_INCREMENT PRIMARY KEY, group_id INT, username"
    " VARCHAR(200), email VARCHAR(80), title VARCHAR(50), url VARCHAR(100), location"
    " VARCHAR(30), signature TEXT, email_setting INT, num_posts INT DEFAULT 0, last_post INT,"
    " registered INT, admin_note VARCHAR(30))",
    "CREATE TABLE punbb_groups (g_id INT AUTO_INCREMENT PRIMARY KEY, g_title VARCHAR(50),"
    " g_user_title VARCHAR(50))",
    "CREATE TABLE punbb_online (user_id INT, ident VARCHAR(200), logged INT, idle INT DEFAULT 0,"
    " csrf_token VARCHAR(40), prev_url VARCHAR(255), UNIQUE KEY (user_id, ident))",
    "CREATE TABLE punbb_categories (id INT AUTO_INCREMENT PRIMARY KEY, cat_name VARCHAR(80),"
    " disp_position INT)",
    "CREATE TABLE punbb_forums (id INT AUTO_INCREMENT PRIMARY KEY, forum_name VARCHAR(80),"
    " forum_desc TEXT, redirect_url VARCHAR(100), moderators TEXT, num_topics INT, num_posts"
    " INT, last_post INT, last_post_id INT, last_poster VARCHAR(200), sort_by INT,"
    " disp_position INT, cat_id INT)",
    "CREATE TABLE punbb_forum_perms (group_id INT, forum_id INT, read_forum INT, post_replies"
    " INT, post_topics INT)",
    "CREATE TABLE punbb_topics (id INT AUTO_INCREMENT PRIMARY KEY, poster VARCHAR(200), subject"
    " VARCHAR(255), posted INT, first_post_id INT, last_post INT, last_post_id INT,"
    " last_poster VARCHAR(200), num_views INT DEFAULT 0, num_replies INT DEFAULT 0, closed INT"
    " DEFAULT 0, sticky INT DEFAULT 0, moved_to INT, forum_id INT)",
    "CREATE TABLE punbb_posts (id INT AUTO_INCREMENT PRIMARY KEY, poster VARCHAR(200),"
    " poster_id INT, poster_ip VARCHAR(39), poster_email VARCHAR(80), message TEXT,"
    " hide_smilies INT, posted INT, edited INT, edited_by VARCHAR(200), topic_id INT)",
    "CREATE TABLE punbb_config (conf_name VARCHAR(255), conf_value TEXT)",
    "CREATE TABLE punbb_subscriptions (user_id INT, topic_id INT)",
]

# DML that MariaDB must refuse inside a READ ONLY transaction: proof the oracle is awake.
MUST_REFUSE = [
    "INSERT INTO t VALUES (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 'x', 'y')",
    "UPDATE t SET a = 1", "DELETE FROM t WHERE id = 1", "REPLACE INTO u VALUES (1, 1)",
    "UPDATE punbb_topics SET num_views=num_views+1 WHERE id=1",
    "DELETE FROM punbb_online WHERE logged<1699999000",
    "SELECT * FROM t WHERE id = 1 FOR UPDATE", "SELECT NEXTVAL(s)", "SELECT SETVAL(s, 10)",
    "SELECT NEXT VALUE FOR s", "SELECT * FROM t WHERE id = 1 FOR UPDATE SKIP LOCKED",
    "SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT", "EXPLAIN DELETE FROM t",
    "ANALYZE UPDATE t SET a = 2", "SELECT 1 /*!999999 '*/ FROM t FOR UPDATE -- ' */",
    "SELECT id FROM t --\x7f'\n FOR UPDATE -- '",
]
READ_ONLY_REFUSED = 1792

# Writes that are safe to run in a READ ONLY transaction on a throwaway connection: statements
# MariaDB checks against the transaction (DML, locking reads, sequences), and session-state
# reads whose effect ends with the connection (locks, variables). Everything else a write may
# start with is never run: DDL and LOCK/SET/USE/XA... commit implicitly or change the
# server (SHUTDOWN, KILL, GRANT, replication), INTO OUTFILE/DUMPFILE write files, CALL and
# HANDLER run or open things. Those stay known writes, classified by the rules alone.
_RUNNABLE_FIRST_WORDS = frozenset(
    {"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "REPLACE", "EXPLAIN", "DESCRIBE", "DESC",
     "ANALYZE", "SHOW", "HELP", "VALUES", "TABLE", "(", "START"})
_NEVER_RUN = re.compile(r"OUTFILE|DUMPFILE|SHUTDOWN|\bKILL\b|ANALYZE\s+TABLE|SLEEP\(1\)|"
                        r"MASTER_GTID_WAIT|MASTER_POS_WAIT|WAIT_FOR_EXECUTED|BENCHMARK",
                        re.IGNORECASE)
ORACLE_DATABASE = "tk_oracle"


def runnable(sql: str) -> bool:
    words = re.findall(r"[A-Za-z_]+|\(", sql)
    return bool(words) and words[0].upper() in _RUNNABLE_FIRST_WORDS and not _NEVER_RUN.search(sql)


def _run_read_only(cluster: MariaDBCluster, sql: str) -> int | None:
    """Run *sql* in a READ ONLY transaction on a throwaway connection to the scratch database;
    the error code or None."""
    conn = pymysql.connect(**cluster.primary.connect_args(ORACLE_DATABASE), connect_timeout=5,
                           read_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION READ ONLY")
            try:
                cur.execute(sql)
                with contextlib.suppress(pymysql.Error):
                    cur.fetchall()
            except pymysql.Error as exc:
                return int(exc.args[0])
            finally:
                with contextlib.suppress(pymysql.Error):
                    conn.rollback()
        return None
    finally:
        conn.close()


@pytest.fixture()
def oracle(mariadb_pair: MariaDBCluster) -> MariaDBCluster:
    """The pair's primary with a scratch database holding the corpus's tables."""
    with contextlib.closing(mariadb_pair.primary.admin()) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {ORACLE_DATABASE}")
        cur.execute(f"CREATE DATABASE {ORACLE_DATABASE}")
        cur.execute(f"USE {ORACLE_DATABASE}")
        for ddl in SCHEMA:
            cur.execute(ddl)
        cur.execute("INSERT INTO t (id, a) VALUES (1, 1)")
    return mariadb_pair


def test_mariadb_oracle_refuses_nothing_we_call_a_read(oracle: MariaDBCluster) -> None:
    """Every statement of the corpus that MariaDB refuses in START TRANSACTION READ ONLY (1792)
    is classified a write; every read of the corpus runs, and so does every write that is safe
    to run (see runnable()); the rest are known writes."""
    for sql in MUST_REFUSE:
        assert statement_role(sql) == "write", sql
        assert _run_read_only(oracle, sql) == READ_ONLY_REFUSED, sql
    reads = [v["sql"] for v in VECTORS if v["role"] == "read"]
    writes = [v["sql"] for v in VECTORS if v["role"] == "write" and runnable(v["sql"])]
    assert len(reads) >= 100 and len(writes) >= 100
    outcomes = {sql: _run_read_only(oracle, sql) for sql in reads + writes}
    refused = {sql for sql, code in outcomes.items() if code == READ_ONLY_REFUSED}
    misread = sorted(sql for sql in refused if statement_role(sql) == "read")
    assert misread == [], f"MariaDB refused these 'reads' in a READ ONLY transaction: {misread}"
    assert len(refused) >= 30, refused  # the oracle saw real writes among the vectors
    succeeded = [sql for sql in reads if outcomes[sql] is None]
    assert len(succeeded) >= len(reads) * 0.8, {s: outcomes[s] for s in reads if outcomes[s]}


_REFUSED_WRITES = [sql for sql in MUST_REFUSE if "--" not in sql and "/*" not in sql]


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_mariadb_oracle_on_disguised_writes(oracle: MariaDBCluster, data: st.DataObject) -> None:
    """Writes MariaDB refuses, disguised (comments, version comments, case, whitespace,
    quoting): whenever MariaDB still refuses the disguise, the classifier calls it a write
    (and it calls every disguise a write, whatever the server says)."""
    sql = data.draw(disguised_writes(st.sampled_from(_REFUSED_WRITES), parentheses=False))
    role = statement_role(sql)
    code = _run_read_only(oracle, sql)  # 1792, or 1064/1630 when the disguise broke it
    assert code != READ_ONLY_REFUSED or role == "write", (sql, explain(sql))
    assert role == "write", (sql, code, explain(sql))

