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
``sql_keywords.json``, that :mod:`tenantkit.db.keywords` generates the PHP constants from).
**When in doubt: write.**

Tokens. The statement is upper-cased and scanned left to right:

- skipped: ``-- `` comments (two dashes then a space or control character, or the end) and
  ``#`` comments, both to the end of the line; ``/* ... */`` comments; quoted strings
  ``'...'`` and ``"..."`` (backslash escapes and doubled quotes); backquoted identifiers
  ```...``` (doubled backquotes). Keywords inside any of these mean nothing. Whitespace,
  punctuation (``, . = < > + - * / %`` ...) and characters above U+FFFF separate words.
- kept: words of ``[0-9A-Z_$]`` and the characters U+0080 to U+FFFF (MySQL's unquoted
  identifier characters); ``@@name`` system variables (with ``SESSION.``/``LOCAL.``/
  ``GLOBAL.`` parts); a bare ``@`` (a user variable); ``:=``; ``(``, ``)`` and ``;``.
- executable comments: ``/*!`` opens a comment whose content is code, ``*/`` closes it.
  ``/*!NNNNN`` (a version prefix) and ``/*M!`` (MariaDB only, with or without a version) are
  *conditional*: the server may or may not run their content, so the statement is classified
  both with and without it, and it is a write if either reading is.
- a quote that opens no complete string or identifier, an unterminated ``/*`` comment, a
  comment opened inside an executable comment, a ``*/`` that closes nothing, an unclosed
  executable comment or unbalanced parentheses: **cannot parse, write**.
- a statement containing a backslash is also read the way a server in
  ``NO_BACKSLASH_ESCAPES`` mode reads it (backslash is an ordinary character); if that reading
  parses and is a write, the statement is a write.
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
  ``TABLE``, ``VALUES``, ...): write.

Traps (anywhere in a ``SELECT``/``WITH``, subqueries included), each a write:

- ``FOR UPDATE``, ``FOR SHARE``, ``LOCK IN SHARE MODE`` (``LOCK`` then ``IN``): locking reads.
- ``INTO`` (``INTO OUTFILE``, ``INTO DUMPFILE``, ``INTO @var``, ``INTO var``).
- ``:=`` (user variable assignment) and any user variable ``@name``: user variables are
  connection state, set where the writes ran.
- ``SQL_CALC_FOUND_ROWS``: its ``FOUND_ROWS()`` must run on the same connection, and
  ``FOUND_ROWS()`` is a write (below), so both go to the primary.
- one of these words followed by ``(``: ``GET_LOCK``, ``RELEASE_LOCK``, ``RELEASE_ALL_LOCKS``,
  ``IS_USED_LOCK``, ``IS_FREE_LOCK`` (locks live on one server), ``LAST_INSERT_ID``,
  ``FOUND_ROWS``, ``ROW_COUNT``, ``CONNECTION_ID``, ``LASTVAL``, ``NEXTVAL``, ``SETVAL``
  (connection state or sequences), ``SLEEP``, ``BENCHMARK`` (they hold a connection for a
  caller's timing, which belongs with the caller's other statements), ``MASTER_POS_WAIT``,
  ``MASTER_GTID_WAIT``, ``WAIT_FOR_EXECUTED_GTID_SET``, ``SOURCE_POS_WAIT`` (replication
  waits name a specific server), ``UUID_SHORT``, ``LOAD_FILE`` (server-local state).
- ``NEXT VALUE FOR`` and ``PREVIOUS VALUE FOR`` (sequences).
- system variables holding the connection's last write: ``@@IDENTITY``, ``@@LAST_INSERT_ID``,
  ``@@INSERT_ID``, ``@@LAST_GTID``, ``@@WARNING_COUNT``, ``@@ERROR_COUNT`` (with or without
  ``SESSION.``/``LOCAL.``).

Known limit: a stored function called from a SELECT may write; only its name is visible, so it
classifies as a read, and a read-only replica then refuses it loudly (error 1290).
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from tenantkit.db.keywords import KEYWORDS

__all__ = [
    "CACHE_MAX_LENGTH",
    "CACHE_SIZE",
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

_LINE_COMMENT = r"--(?=[\x00-\x20]|\Z)[^\n]*|\#[^\n]*"
_PLAIN_COMMENT = r"/\*(?!!|M!)[\s\S]*?\*/"
_STRINGS_BACKSLASH = (
    r"""'[^'\\]*(?:(?:\\[\s\S]|'')[^'\\]*)*'|"[^"\\]*(?:(?:\\[\s\S]|"")[^"\\]*)*\""""
)
_STRINGS_PLAIN = r"""'[^']*(?:''[^']*)*'|"[^"]*(?:""[^"]*)*\""""
_BACKQUOTED = r"`[^`]*(?:``[^`]*)*`"
_TOKENS = (
    r"[0-9A-Z_$\x80-\uffff]+"  # words (upper-cased input; MySQL's unquoted identifier chars)
    r"|[();]"
    r"|@@[0-9A-Z_$.\x80-\uffff]*"  # system variables
    r"|@|:="
    r"|/\*M?!\d*"  # executable comment openers
    r"|\*/|/\*|['\"`]"  # stray closers, unterminated comments and quotes
)


def _scanner(backslash_escapes: bool, keep_comments: bool) -> re.Pattern[str]:
    strings = _STRINGS_BACKSLASH if backslash_escapes else _STRINGS_PLAIN
    skip = [strings, _BACKQUOTED, _LINE_COMMENT]
    tokens = _TOKENS
    if keep_comments:
        tokens = _PLAIN_COMMENT + "|" + tokens
    else:
        skip.append(_PLAIN_COMMENT)
    # findall() returns the one group: "" for skipped text, the token otherwise. Whitespace
    # and punctuation match nothing, so the search steps over them without a list entry.
    return re.compile(f"(?:{'|'.join(skip)})|({tokens})")


_SCAN = _scanner(True, False)
_SCAN_NBE = _scanner(False, False)
_SCAN_EXEC = _scanner(True, True)
_SCAN_EXEC_NBE = _scanner(False, True)

# The word lists live in sql_keywords.json, shared with the PHP drop-in (tenantkit.db.keywords).
_STATEMENTS = frozenset(KEYWORDS["statements"])
_EXPLAINED = _STATEMENTS | {"WITH", "("}
_EXPLAIN_OPTIONS = frozenset(KEYWORDS["explain_options"])
_FORMAT_VALUES = frozenset(KEYWORDS["format_values"])
_UNSAFE_FUNCTIONS = frozenset(KEYWORDS["unsafe_functions"])
_UNSAFE_SYSVAR_TOKENS = frozenset(
    f"@@{prefix}{name}"
    for name in KEYWORDS["unsafe_sysvars"] for prefix in KEYWORDS["sysvar_prefixes"]
)
_SESSION_SHOW = frozenset(KEYWORDS["session_show"])
# Any of these in a SELECT's token set sends it through the detailed trap check.
_TRAP_HINTS = _UNSAFE_FUNCTIONS | frozenset(KEYWORDS["trap_words"]) | _UNSAFE_SYSVAR_TOKENS
_STRAY = frozenset(KEYWORDS["stray"])

Verdict = tuple[Role, str]
_CALC_FOUND_ROWS = "SQL_CALC_FOUND_ROWS (its FOUND_ROWS() must run on the same connection)"


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
_LEADING_WORD = re.compile(r"[ \t\n\r\f\v(]*([0-9A-Z_$\x80-\uffff]+)")


def _role(sql: str) -> Role:
    if not isinstance(sql, str):
        return _classify(sql)[0]  # raises the TypeError
    fast = _fast(sql)
    if fast is not None:
        return fast[0]
    upper = sql.upper()
    match = _LEADING_WORD.match(upper)
    if match is not None and match.group(1) not in _READ_STARTERS:
        return "write"
    return _scan(upper)[0]


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
    return _fast(sql) or _scan(sql.upper())


def _scan(upper: str) -> Verdict:
    """The full scanner (the fast path defers to it)."""
    if "/*!" in upper or "/*M!" in upper:
        verdict = _classify_executable(upper, _SCAN_EXEC)
    else:
        verdict = _classify_tokens(_SCAN.findall(upper))
    if verdict[0] == "read" and "\\" in upper:
        # A server in NO_BACKSLASH_ESCAPES mode ends strings at a backslash-quote; a reading
        # that does not even parse would be refused by the server, so only a clean one counts.
        if "/*!" in upper or "/*M!" in upper:
            other = _classify_executable(upper, _SCAN_EXEC_NBE)
        else:
            other = _classify_tokens(_SCAN_NBE.findall(upper))
        if other[0] == "write" and not other[1].startswith("cannot parse"):
            return "write", f"{other[1]} (when backslashes do not escape)"
    return verdict


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
    if rest and (b'"' in rest or b"`" in rest or b"#" in rest or b";" in rest
                 or b"@" in rest or b"\\" in rest
                 or (b"-" in rest and b"--" in raw)
                 or ((b"*" in rest) and (b"/*" in raw or b"*/" in raw))
                 or (b":" in rest and b":=" in raw)):
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


def _classify_executable(upper: str, scanner: re.Pattern[str]) -> Verdict:
    """Split executable comments into the two readings (content run / not run)."""
    every: list[str] = []
    unconditional: list[str] = []
    conditional = False
    opened: str | None = None
    for token in scanner.findall(upper):
        if not token:
            continue
        if token.startswith("/*") and token not in ("/*",):
            if token[2] not in ("!", "M"):  # a plain comment, kept only to spot nesting
                if opened is not None:
                    return "write", "cannot parse: a comment inside an executable comment"
                continue
            if opened is not None:
                return "write", "cannot parse: nested executable comments"
            opened = token
            conditional = conditional or token != "/*!"
            continue
        if token == "*/":
            if opened is None:
                return "write", "cannot parse: */ closes no comment"
            opened = None
            continue
        every.append(token)
        if opened is None or opened == "/*!":
            unconditional.append(token)
    if opened is not None:
        return "write", "cannot parse: unclosed executable comment"
    verdict = _classify_tokens(every)
    if verdict[0] == "write" or not conditional:
        return verdict
    other = _classify_tokens(unconditional)
    if other[0] == "write":
        return "write", f"{other[1]} (when the version-conditional comment is not run)"
    return verdict


def _classify_tokens(tokens: list[str]) -> Verdict:
    words = list(filter(None, tokens))  # skipped text appears as "" in findall's list
    if not words:
        return "write", "cannot parse: no statement"
    present = set(words)
    if present & _STRAY:
        return "write", "cannot parse: unterminated string, identifier or comment"
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
        return _select(words, present) if present & _TRAP_HINTS else ("read", "SELECT")
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


def _select(words: list[str], present: set[str]) -> Verdict:
    """The detailed trap check, for SELECTs whose token set hints at one."""
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
        if word in _UNSAFE_FUNCTIONS and nxt == "(":
            return "write", f"session-dependent function {word}()"
        if (word in ("NEXT", "PREVIOUS") and nxt == "VALUE"
                and i + 2 < n and words[i + 2] == "FOR"):
            return "write", f"sequence {word} VALUE FOR"
    for word in present & _UNSAFE_SYSVAR_TOKENS:
        return "write", f"connection state {word}"
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
    verdict = _select(words, present) if present & _TRAP_HINTS else ("read", "SELECT")
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
