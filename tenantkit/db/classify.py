"""Is a SQL statement a read (safe on a replica) or a write (primary only)?

::

    >>> statement_role("SELECT * FROM wp_posts WHERE ID = 5")
    'read'
    >>> statement_role("SELECT * FROM wp_posts WHERE ID = 5 FOR UPDATE")
    'write'
    >>> is_write("/*!40101 SET NAMES utf8mb4 */")
    True
    >>> explain("SELECT FOUND_ROWS()")
    ('write', 'session-dependent function FOUND_ROWS()')

Results of :func:`statement_role` are cached by statement text in a bounded LRU
(:data:`CACHE_SIZE` entries; statements longer than :data:`CACHE_MAX_LENGTH` characters are
classified every time). :func:`explain` is not cached and also says why.

The rules (``contrib/wp-db-router.php`` ports them one for one; the shared cases live in
``tests/vectors/sql_roles.json``; the word lists they name are one file,
``sql_keywords.json``, that :mod:`tenantkit.db.phpkeywords` generates the PHP constants from).
**When in doubt: write.**

Readings. The statement is read the way MariaDB's lexer (``sql_lex.cc``) reads it, once per
way the server might read it, and it is a read only when every reading is a read:

- the server version is not known, so each ``/*!NNNNN[N] ... */`` / ``/*M!NNNNN[N] ... */``
  comment may run or be skipped: one reading per distinct version (the comments up to that
  version run, later ones are skipped) plus one where none runs. A statement with more than
  :data:`MAX_VERSIONS` distinct versions is a write.
- the session's ``sql_mode`` is not known either: a statement with a backslash is also read
  as ``NO_BACKSLASH_ESCAPES`` does (backslash is an ordinary character), one with a double
  quote as ``ANSI_QUOTES`` (and ``ORACLE``) does (``"..."`` is an identifier). These extra
  readings count only when they lex: one that does not would be refused by such a server.

Tokens, left to right on the upper-cased statement (each a single pass: a regular expression
without backtracking, linear in the length of the statement):

- skipped: ``--`` comments (two dashes then a space, a control character, DEL or the end)
  and ``#`` comments, both to the end of the line (or a NUL); ``/* ... */`` comments;
  strings ``'...'`` (and ``"..."`` outside ``ANSI_QUOTES``), with backslash escapes and
  doubled quotes. Keywords inside any of these mean nothing. Whitespace, punctuation and
  characters above U+FFFF separate words; ``*/`` outside an executable comment is ``*`` and
  ``/``.
- kept: words of ``[0-9A-Z_$]`` and U+0080 to U+FFFF (MySQL's unquoted identifier
  characters); quoted identifiers ```...``` (and ``"..."`` under ``ANSI_QUOTES``), which are
  never keywords but still name functions and variables (```GET_LOCK`(...)`` calls
  ``GET_LOCK``); ``@@`` (a system variable follows), ``@`` (a user variable), ``:=``, ``(``,
  ``)`` and ``;``.
- version comments: ``/*!`` and ``/*M!`` (upper-case ``M`` only: ``/*m!`` is a plain
  comment), optionally followed by a version of 5 or 6 digits. Without a version, or with one
  the reading runs, the content is code and the first ``*/`` outside a string or comment
  ends it. A comment the reading skips is not lexed: it ends at the first ``*/``, whatever
  quotes or dashes are inside, except that it may hold one plain ``/* */`` comment. MariaDB
  always skips ``/*!50700`` to ``/*!99999`` (MySQL 5.7+ syntax) and runs versions below.
- an unterminated string, identifier or comment, an unclosed executable comment, an
  executable comment inside another, or unbalanced parentheses: **cannot parse, write**.
- no token at all (empty, only comments): write.
- a ``;`` followed by any token: a multi-statement string, write. Trailing ``;`` are fine.

Roles. Leading ``(`` are skipped; the first word decides:

- ``SELECT``: a read unless a trap (below) is present.
- ``WITH``: a read when the main statement after the common table expressions (the first
  ``SELECT``/``INSERT``/``UPDATE``/``DELETE``/``REPLACE``/``TABLE``/``VALUES`` word at
  parenthesis depth 0, or a ``(`` right after a ``)`` at depth 0) is a ``SELECT``, and no trap
  is present anywhere; otherwise write.
- ``SHOW``: read, except the session-dependent ``SHOW WARNINGS``, ``SHOW ERRORS``,
  ``SHOW COUNT(*) ...``, ``SHOW PROFILE``/``PROFILES``: write.
- ``HELP``: read.
- ``DESCRIBE``, ``DESC``, ``EXPLAIN``: skip ``EXTENDED``, ``PARTITIONS``, ``ANALYZE``,
  ``FORMAT`` (and its value word); ``FOR CONNECTION`` is a read; a following statement
  (``SELECT``, ``WITH``, ``(``, ``INSERT``, ``UPDATE``, ``DELETE``, ``REPLACE``, ``TABLE``,
  ``VALUES``) makes it the role of that statement; otherwise (a table description) read.
- ``ANALYZE``: skip ``FORMAT`` (and its value word); a following statement gives its role
  (``ANALYZE SELECT`` runs the SELECT); anything else (``ANALYZE TABLE``) is a write.
- ``START TRANSACTION`` followed only by ``READ ONLY`` and ``WITH CONSISTENT SNAPSHOT``,
  with ``READ ONLY`` present: read. Any other ``START``: write.
- everything else (``INSERT``, ``UPDATE``, ``DELETE``, ``REPLACE``, ``LOAD``, DDL, ``CALL``,
  ``DO``, ``SET``, ``USE``, ``LOCK``, ``UNLOCK``, ``HANDLER``, ``XA``, ``BEGIN``, ``COMMIT``,
  ``ROLLBACK``, ``SAVEPOINT``, ``RELEASE``, ``FLUSH``, ``GRANT``, ``PREPARE``, ``EXECUTE``,
  ``TABLE``, ``VALUES``, a quoted identifier, ...): write.

Traps (anywhere in a ``SELECT``/``WITH``, subqueries included), each a write:

- ``FOR UPDATE``, ``FOR SHARE``, ``LOCK IN SHARE MODE`` (``LOCK`` then ``IN``): locking reads.
- ``INTO`` (``INTO OUTFILE``, ``INTO DUMPFILE``, ``INTO @var``, ``INTO var``).
- ``:=`` (user variable assignment) and any user variable ``@name``: user variables are
  connection state, set where the writes ran.
- ``SQL_CALC_FOUND_ROWS``: its ``FOUND_ROWS()`` must run on the same connection, and
  ``FOUND_ROWS()`` is a write (below), so both go to the primary.
- a function name, bare or quoted, followed by ``(``: ``GET_LOCK``, ``RELEASE_LOCK``,
  ``RELEASE_ALL_LOCKS``, ``IS_USED_LOCK``, ``IS_FREE_LOCK`` (locks live on one server),
  ``LAST_INSERT_ID``, ``FOUND_ROWS``, ``ROW_COUNT``, ``CONNECTION_ID``, ``LASTVAL``,
  ``NEXTVAL``, ``SETVAL`` (connection state or sequences), ``SLEEP``, ``BENCHMARK`` (they
  hold a connection for a caller's timing, which belongs with the caller's other
  statements), ``MASTER_POS_WAIT``, ``MASTER_GTID_WAIT``, ``WAIT_FOR_EXECUTED_GTID_SET``,
  ``SOURCE_POS_WAIT``, ``WSREP_*_GTID`` (replication waits name a specific server),
  ``UUID_SHORT``, ``LOAD_FILE`` (server-local state).
- ``NEXT VALUE FOR`` and ``PREVIOUS VALUE FOR`` (sequences), and the words ``NEXTVAL`` and
  ``CURRVAL`` anywhere (``seq.nextval``/``seq.currval`` under ``sql_mode=ORACLE``).
- a system variable (``@@name``, ``@@SESSION.name``, ``@@LOCAL.name``, ``@@GLOBAL.name``,
  the name bare or quoted) holding the connection's last write or transaction:
  ``IDENTITY``, ``LAST_INSERT_ID``, ``INSERT_ID``, ``LAST_GTID``, ``WARNING_COUNT``,
  ``ERROR_COUNT``, ``IN_TRANSACTION``.

Known limits: a stored function called from a SELECT may write; only its name is visible, so
it classifies as a read, and a read-only replica then refuses it loudly (error 1290). The
lexer models MariaDB (not MySQL) with an ASCII-compatible connection character set
(utf8mb4, latin1): in multi-byte sets such as SJIS or GBK a backslash can be part of a
character.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from tenantkit.db.keywords import KEYWORDS

__all__ = [
    "CACHE_MAX_LENGTH",
    "CACHE_SIZE",
    "MAX_VERSIONS",
    "Role",
    "cache_clear",
    "cache_info",
    "explain",
    "is_write",
    "statement_role",
]

Role = Literal["read", "write"]

CACHE_SIZE = 4096
CACHE_MAX_LENGTH = 4096
MAX_VERSIONS = 8
"""More distinct ``/*!NNNNN`` versions than this in one statement: write (bounds the work)."""

# Every quantifier is possessive and every alternative starts with a distinct character, so
# the engine never backtracks: each character is looked at a bounded number of times. A
# string, identifier or comment that does not end is matched by the "unterminated" token to
# the end of the statement, once (a failed attempt at a closed match costs one pass too).
_WORD = r"[0-9A-Z_$\x80-\uffff]+"
_LINE_COMMENT = r"--(?=[\x00-\x20\x7f]|\Z)[^\n\x00]*+|\#[^\n\x00]*+"
_PLAIN_COMMENT = r"/\*(?!M?!)[^*]*+\*++(?:[^/*][^*]*+\*++)*+/"
_SINGLE_BACKSLASH = r"'[^'\\]*+(?:(?:\\[\s\S]|'')[^'\\]*+)*+'"
_DOUBLE_BACKSLASH = r'"[^"\\]*+(?:(?:\\[\s\S]|"")[^"\\]*+)*+"'
_SINGLE_PLAIN = r"'[^']*+(?:''[^']*+)*+'"
_DOUBLE_PLAIN = r'"[^"]*+(?:""[^"]*+)*+"'
_BACKQUOTED = r"`[^`]*+(?:``[^`]*+)*+`"
_OPENER = r"/\*M?!(?:[0-9]{5}[0-9]?)?"
_UNTERMINATED = r"['\"`][\s\S]*+|/\*[\s\S]*+"
# After a skipped version comment's opener: up to its "*/", one plain comment allowed inside.
_SKIPPED = re.compile(r"(?:[^*/]++|\*(?!/)|/(?!\*)|/\*[^*]*+\*++(?:[^/*][^*]*+\*++)*+/)*+\*/")
_VERSIONS = re.compile(r"/\*(M?)!([0-9]{5}[0-9]?)")
_IDENTIFIER = {False: re.compile(_BACKQUOTED),
               True: re.compile(f"{_BACKQUOTED}|{_DOUBLE_PLAIN}")}


def _scanner(backslash: bool, ansi: bool, versioned: bool) -> re.Pattern[str]:
    single = _SINGLE_BACKSLASH if backslash else _SINGLE_PLAIN
    double = _DOUBLE_BACKSLASH if backslash else _DOUBLE_PLAIN
    skip = [_LINE_COMMENT, _PLAIN_COMMENT, single]
    tokens = [_BACKQUOTED]
    if ansi:
        tokens.append(_DOUBLE_PLAIN)
    else:
        skip.append(double)
    tokens += [_WORD, "@@", "[@();]", ":="]
    if versioned:
        tokens += [_OPENER, r"\*/"]
    tokens.append(_UNTERMINATED)
    # findall() returns the one group: "" for skipped text, the token otherwise. Whitespace
    # and punctuation match nothing, so the search steps over them without a list entry.
    return re.compile(f"(?:{'|'.join(skip)})|({'|'.join(tokens)})")


# (backslash escapes, ANSI_QUOTES) -> scanner; the first is the server's default reading.
_MODES = [(True, False), (False, False), (True, True), (False, True)]
_SCAN = {mode: _scanner(*mode, versioned=False) for mode in _MODES}
_SCAN_VERSIONED = {mode: _scanner(*mode, versioned=True) for mode in _MODES}

# The word lists live in sql_keywords.json, shared with the PHP drop-in (tenantkit.db.keywords).
_STATEMENTS = frozenset(KEYWORDS["statements"])
_EXPLAINED = _STATEMENTS | {"WITH", "("}
_EXPLAIN_OPTIONS = frozenset(KEYWORDS["explain_options"])
_FORMAT_VALUES = frozenset(KEYWORDS["format_values"])
_UNSAFE_FUNCTIONS = frozenset(KEYWORDS["unsafe_functions"])
_UNSAFE_SYSVARS = frozenset(KEYWORDS["unsafe_sysvars"])
_SYSVAR_SCOPES = frozenset(KEYWORDS["sysvar_scopes"])
_ORACLE_SEQUENCE = frozenset(KEYWORDS["oracle_sequence_words"])
_SESSION_SHOW = frozenset(KEYWORDS["session_show"])
# Any of these in a SELECT's token set sends it through the detailed trap check.
_TRAP_HINTS = _UNSAFE_FUNCTIONS | frozenset(KEYWORDS["trap_words"]) | _ORACLE_SEQUENCE

Verdict = tuple[Role, str]
_CALC_FOUND_ROWS = "SQL_CALC_FOUND_ROWS (its FOUND_ROWS() must run on the same connection)"
_UNTERMINATED_REASON = "cannot parse: unterminated string, identifier or comment"


def statement_role(sql: str) -> Role:
    """``"read"`` when *sql* may run on a replica, ``"write"`` when it must run on the
    primary (see the module docstring for the rules). Cached by statement text."""
    if len(sql) > CACHE_MAX_LENGTH:
        return _role(sql)
    return _cached_role(sql)


def is_write(sql: str) -> bool:
    """True when *sql* must run on the primary."""
    return statement_role(sql) == "write"


def explain(sql: str) -> Verdict:
    """``(role, reason)`` for *sql*, uncached: the reason says which rule decided."""
    return _classify(sql)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_role(sql: str) -> Role:
    return _role(sql)


# Only these first words can start a read; a statement whose very first word (after nothing
# but whitespace and parentheses) is another one is a write whatever follows, so the role
# needs no further scanning (explain() still scans, for the precise reason).
_READ_STARTERS = frozenset(KEYWORDS["read_starters"])
_LEADING_WORD = re.compile(r"[ \t\n\r\f\v(]*+([0-9A-Za-z_$\x80-\uffff]++)")


def _role(sql: str) -> Role:
    if not isinstance(sql, str):
        return _classify(sql)[0]  # raises the TypeError
    match = _LEADING_WORD.match(sql)
    if match is not None and match.group(1).upper() not in _READ_STARTERS:
        return "write"
    fast = _fast(sql)
    if fast is not None:
        return fast[0]
    return _scan(_upper(sql))[0]


def cache_info() -> functools._CacheInfo:
    """Hits, misses and size of the :func:`statement_role` cache."""
    return _cached_role.cache_info()


def cache_clear() -> None:
    _cached_role.cache_clear()


def _classify(sql: str) -> Verdict:
    if not isinstance(sql, str):
        raise TypeError(
            f"statement_role() needs the SQL text as str, got {type(sql).__name__} "
            "(decode bytes first)"
        )
    return _fast(sql) or _scan(_upper(sql))


def _upper(sql: str) -> str:
    # "/*m!" is a plain comment to MariaDB (only an upper-case M marks its version comments):
    # keep it one after upper-casing. Same length, and harmless inside strings and comments.
    if "/*m!" in sql:
        sql = sql.replace("/*m!", "/*_!")
    return sql.upper()


def _scan(upper: str) -> Verdict:
    """The full scanner (the fast path defers to it): every reading, write if any writes."""
    versioned = "/*!" in upper or "/*M!" in upper
    thresholds: list[int] = [-1]
    if versioned:
        ambiguous = {int(digits) for maria, digits in _VERSIONS.findall(upper)
                     if maria or not 50700 <= int(digits) <= 99999}
        if len(ambiguous) > MAX_VERSIONS:
            return "write", (f"more than {MAX_VERSIONS} distinct versions in "
                             "version-conditional comments")
        thresholds += sorted(ambiguous)
    modes = [(True, False)]
    if "\\" in upper:
        modes.append((False, False))
    if '"' in upper:
        modes += [(True, True)] + ([(False, True)] if "\\" in upper else [])
    first: Verdict | None = None
    for mode in modes:
        for threshold in thresholds:
            tokens = (_lex_versioned(upper, mode, threshold) if versioned
                      else _lex(upper, mode))
            if isinstance(tokens, str):
                if mode == _MODES[0]:
                    return "write", tokens
                continue  # a server in that sql_mode refuses the statement
            verdict = _classify_tokens(tokens)
            if verdict[0] == "write":
                if verdict[1].startswith("cannot parse") and mode != _MODES[0]:
                    continue
                return "write", verdict[1] + _qualifier(mode, threshold, thresholds)
            first = first or verdict
    assert first is not None
    return first


def _qualifier(mode: tuple[bool, bool], threshold: int, thresholds: list[int]) -> str:
    parts = []
    if len(thresholds) > 1:
        parts.append("when no version-conditional comment runs" if threshold < 0 else
                     f"when the server runs version-conditional comments up to {threshold}")
    if not mode[0]:
        parts.append("when backslashes do not escape")
    if mode[1]:
        parts.append("when double quotes are identifiers")
    return f" ({', '.join(parts)})" if parts else ""


def _lex(upper: str, mode: tuple[bool, bool]) -> list[str] | str:
    """The tokens of a statement without version comments, or why it does not lex."""
    tokens = [t for t in _SCAN[mode].findall(upper) if t]
    if tokens and _unterminated(tokens[-1], mode[1]):
        return _UNTERMINATED_REASON
    return tokens


def _unterminated(token: str, ansi: bool) -> bool:
    """Only the last token can be one: an unterminated one runs to the end."""
    if token[0] in "`\"":
        return (token[0] == '"' and not ansi) or _IDENTIFIER[ansi].fullmatch(token) is None
    return token[0] == "'" or token.startswith("/*")


def _runs(opener: str, threshold: int) -> bool:
    maria = opener[2] == "M"
    digits = opener[4:] if maria else opener[3:]
    if not digits:
        return True
    version = int(digits)
    if not maria and 50700 <= version <= 99999:
        return False  # MariaDB skips MySQL 5.7+ comments
    return version <= threshold


def _lex_versioned(upper: str, mode: tuple[bool, bool], threshold: int) -> list[str] | str:
    """The tokens of one reading of a statement with version comments (MariaDB's lexer:
    content that runs is code, skipped content is not lexed at all)."""
    scanner = _SCAN_VERSIONED[mode]
    tokens: list[str] = []
    executing = False
    pos = 0
    restart = True
    while restart:
        restart = False
        for match in scanner.finditer(upper, pos):
            token = match.group(1)
            if not token:
                continue
            if token.startswith(("/*!", "/*M!")):  # (an unterminated comment never does)
                if executing:
                    return "cannot parse: an executable comment inside another"
                if _runs(token, threshold):
                    executing = True
                    continue
                skipped = _SKIPPED.match(upper, match.end())
                if skipped is None:
                    return "cannot parse: unterminated version-conditional comment"
                pos, restart = skipped.end(), True
                break
            if token == "*/":
                if executing:
                    executing = False
                    continue
                pos, restart = match.start() + 1, True  # "*", then lex again from the "/"
                break
            tokens.append(token)
    if tokens and _unterminated(tokens[-1], mode[1]):
        return _UNTERMINATED_REASON
    if executing:
        return "cannot parse: unclosed executable comment"
    return tokens


# The fast path: the common statement without backslashes, and without comments, double
# quotes, backquotes, semicolons or variables outside its single-quoted strings, needs no
# scanner. Single-quoted strings are cut out by
# splitting at the quotes ('' doubling falls out as two adjacent strings), the rest becomes
# words by mapping every ASCII character that cannot be part of a word to a space. It answers
# only when the answer is certain and otherwise defers to the scanner (the tests check that
# both agree).
_WORD_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_$")
_ORDINARY = bytes(_WORD_BYTES) + b"abcdefghijklmnopqrstuvwxyz \t\n\r\f\v(),.=<>+!%?&|^~{}[]"
# Word characters upper-cased, everything else a space.
_TO_WORDS = bytes(
    c if c in _WORD_BYTES else c - 32 if 0x61 <= c <= 0x7A else 0x20 for c in range(256)
)
_FAST_HINTS = frozenset(w.encode() for w in _TRAP_HINTS if w[0].isalpha())
_DEFER_CHARS = frozenset(b'"`#;@\\')
_FAST_DEFER = frozenset(w.encode() for w in _READ_STARTERS - {"SELECT"})


def _fast(sql: str) -> Verdict | None:
    """The fast path on the statement as written (case is folded by the byte tables)."""
    if "\\" in sql:
        return None
    parts = sql.split("'")
    if not len(parts) & 1:
        return None
    # Without backslashes the first quote outside a string opens the next string, so
    # anything that matters outside strings is in the even parts.
    code = " ".join(parts[::2]) if len(parts) > 1 else sql
    if not code.isascii():
        return None
    raw = code.encode()
    rest = raw.translate(None, _ORDINARY)  # one pass; usually leaves little or nothing
    if rest:
        chars = set(rest)  # ints: membership is cheaper than bytes-in-bytes
        if (not _DEFER_CHARS.isdisjoint(chars)
                or (0x2D in chars and "--" in code)  # -
                or (0x2A in chars and ("/*" in code or "*/" in code))  # *
                or (0x3A in chars and ":=" in code)):  # :
            return None
    words = raw.translate(_TO_WORDS).split()
    if not words:
        return None
    if code.count("(") != code.count(")"):
        return "write", "cannot parse: unbalanced parentheses"
    first = words[0]
    if raw.lstrip(b"( \t\n\r\f\v")[: len(first)].upper() != first:
        return None  # something other than parentheses before the first word
    if first == b"SELECT":
        if _FAST_HINTS.isdisjoint(words):
            return "read", "SELECT"
        # The same order as _select(); ":=" and "@" cannot be here.
        if b"INTO" in words:
            return "write", "SELECT ... INTO"
        if b"SQL_CALC_FOUND_ROWS" in words:
            return "write", _CALC_FOUND_ROWS
        return None
    if first in _FAST_DEFER:
        return None
    return "write", f"{first.decode()} statement"


def _classify_tokens(words: list[str]) -> Verdict:
    if not words:
        return "write", "cannot parse: no statement"
    present = set(words)
    if ";" in present:
        end = words.index(";")
        if any(t != ";" for t in words[end + 1 :]):
            return "write", "multi-statement string"
        words = words[:end]
        if not words:
            return "write", "cannot parse: no statement"
        present = set(words)
    if words.count("(") != words.count(")"):
        return "write", "cannot parse: unbalanced parentheses"
    return _classify_words(words, present)


def _classify_words(words: list[str], present: set[str]) -> Verdict:
    start = 0
    while start < len(words) and words[start] == "(":
        start += 1
    if start == len(words):
        return "write", "cannot parse: no statement"
    first = words[start]
    if first == "SELECT":
        return _select(words, present)
    if first == "WITH":
        return _with(words, start, present)
    if first == "SHOW":
        nxt = words[start + 1] if start + 1 < len(words) else ""
        if nxt in _SESSION_SHOW:
            return "write", f"SHOW {nxt} reports on this connection's last statement"
        return "read", "SHOW"
    if first == "HELP":
        return "read", "HELP"
    if first in ("EXPLAIN", "DESCRIBE", "DESC"):
        return _explain(words, start + 1, first)
    if first == "ANALYZE":
        return _analyze(words, start + 1)
    if first == "START":
        return _start(words, start + 1)
    return "write", f"{first} statement"


def _name(token: str) -> str:
    """A word, or a quoted identifier's name (```GET_LOCK``` names ``GET_LOCK``)."""
    if token[0] in "`\"":
        return token[1:-1].replace(token[0] * 2, token[0])
    return token


def _has_trap(present: set[str]) -> bool:
    return not _TRAP_HINTS.isdisjoint(present) or any(t[0] in "`\"" for t in present)


def _select(words: list[str], present: set[str]) -> Verdict:
    """The detailed trap check, for SELECTs whose token set hints at one."""
    if not _has_trap(present):
        return "read", "SELECT"
    if "INTO" in present:
        return "write", "SELECT ... INTO"
    if ":=" in present:
        return "write", "user variable assignment :="
    if "@" in present:
        return "write", "user variable (connection state)"
    if "SQL_CALC_FOUND_ROWS" in present:
        return "write", _CALC_FOUND_ROWS
    n = len(words)
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < n else ""
        if word == "FOR" and nxt in ("UPDATE", "SHARE"):
            return "write", f"locking read FOR {nxt}"
        if word == "LOCK" and nxt == "IN":
            return "write", "locking read LOCK IN SHARE MODE"
        if (word in ("NEXT", "PREVIOUS") and nxt == "VALUE"
                and i + 2 < n and words[i + 2] == "FOR"):
            return "write", f"sequence {word} VALUE FOR"
        if word == "@@":
            name = _name(nxt) if nxt else ""
            if name in _SYSVAR_SCOPES and i + 2 < n:
                name = _name(words[i + 2])
            if name in _UNSAFE_SYSVARS:
                return "write", f"connection state @@{name}"
            continue
        name = _name(word)
        if name in _UNSAFE_FUNCTIONS and nxt == "(":
            return "write", f"session-dependent function {name}()"
        if name in _ORACLE_SEQUENCE:
            return "write", f"sequence .{name} (sql_mode=ORACLE)"
    return "read", "SELECT"


def _with(words: list[str], start: int, present: set[str]) -> Verdict:
    depth = 0
    main = ""
    previous = ""
    for i in range(start + 1, len(words)):
        word = words[i]
        if word == "(":
            if depth == 0 and previous == ")":  # a parenthesised main query
                j = i
                while j < len(words) and words[j] == "(":
                    j += 1
                main = words[j] if j < len(words) else ""
                break
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0 and word in _STATEMENTS:
            main = word
            break
        previous = word
    if not main:
        return "write", "cannot parse: WITH without a main statement"
    if main != "SELECT":
        return "write", f"WITH ... {main}"
    verdict = _select(words, present)
    if verdict[0] == "read":
        return "read", "WITH ... SELECT"
    return verdict


def _skip_format(words: list[str], i: int) -> int:
    if i < len(words) and words[i] == "FORMAT":
        i += 1
        if i < len(words) and words[i] in _FORMAT_VALUES:
            i += 1
    return i


def _explain(words: list[str], i: int, keyword: str) -> Verdict:
    while i < len(words):
        if words[i] in _EXPLAIN_OPTIONS:
            i += 1
        elif words[i] == "FORMAT":
            i = _skip_format(words, i)
        else:
            break
    if i < len(words) and words[i] == "FOR":
        return "read", f"{keyword} FOR CONNECTION"
    if i < len(words) and words[i] in _EXPLAINED:
        inner = _classify_words(words[i:], set(words[i:]))
        if inner[0] == "read":
            return "read", f"{keyword} of a read"
        return "write", f"{keyword} of a write: {inner[1]}"
    return "read", f"{keyword} of a table"  # (its name may be backquoted, hence invisible)


def _analyze(words: list[str], i: int) -> Verdict:
    i = _skip_format(words, i)
    if i < len(words) and words[i] in _EXPLAINED:
        inner = _classify_words(words[i:], set(words[i:]))
        if inner[0] == "read":
            return "read", "ANALYZE of a read"
        return "write", f"ANALYZE of a write: {inner[1]}"
    return "write", "ANALYZE TABLE (writes statistics)"


_READ_ONLY_CHARACTERISTICS = frozenset(KEYWORDS["read_only_characteristics"])


def _start(words: list[str], i: int) -> Verdict:
    if i < len(words) and words[i] == "TRANSACTION":
        rest = words[i + 1 :]
        read_only = any(
            rest[k] == "READ" and k + 1 < len(rest) and rest[k + 1] == "ONLY"
            for k in range(len(rest))
        )
        if read_only and set(rest) <= _READ_ONLY_CHARACTERISTICS:
            return "read", "START TRANSACTION READ ONLY"
    return "write", "START statement"
