"""What a statement does to the state of its session, beyond its role.

::

    >>> effect("SET NAMES utf8mb4")
    Effect(kind='session', names=frozenset({'character_set_client', ...}), dependent=False)
    >>> effect("SET sql_mode = CONCAT(@@sql_mode, ',ANSI')").dependent
    True
    >>> effect("SET NAMES utf8mb4; INSERT INTO t VALUES (1)") is None    # a write, no more
    True
    >>> effect("CREATE TEMPORARY TABLE tmp (id INT)")
    Effect(kind='create-temporary', names=frozenset({'tmp'}), dependent=False)

The routing connection (:mod:`tenantkit.db.session`) asks :func:`effect` about every
statement; ``None`` (most statements) means "nothing but its role". The kinds:

- ``session``: a ``SET`` of session variables only (``SET NAMES``, ``SET CHARACTER SET``,
  ``SET [SESSION|LOCAL] var = value``, ``SET @@[session.|local.]var = value``,
  ``SET SESSION TRANSACTION ...``), one statement, whose every value is a read for
  :func:`~tenantkit.db.classify.statement_role` (no user variable, no write function, no
  locking subquery). ``names`` are the variables it sets (``SET NAMES`` sets the four
  ``character_set_*``/``collation_connection`` variables); ``dependent`` is true when a value
  reads a system variable (``CONCAT(@@sql_mode, ...)``), so that earlier settings of the same
  variable still matter. Such a statement runs on every leg and is replayed on new ones.
- ``next-transaction``: ``SET TRANSACTION ...`` without ``SESSION``: the next transaction only.
- ``use``: ``USE db``.
- ``create-temporary``, ``drop-table``: ``CREATE [OR REPLACE] TEMPORARY TABLE`` and
  ``DROP [TEMPORARY] TABLE`` with the tables they name (``DROP TABLE`` drops a temporary
  table of that name first).
- ``read-only-start``: ``START TRANSACTION ... READ ONLY``; ``begin``: any other
  ``START TRANSACTION`` or ``BEGIN``.

Anything else that starts with ``SET`` (``SET STATEMENT ... FOR``, ``SET GLOBAL``, user
variables, ``SET PASSWORD``/``ROLE``, several statements, executable comments, anything this
module cannot read with certainty) has no effect: it is a plain write, run on the primary
and never replayed. **When in doubt, a write.**
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Literal

from tenantkit.db.classify import statement_role

__all__ = ["Effect", "Kind", "effect"]

Kind = Literal["session", "next-transaction", "use", "create-temporary", "drop-table",
               "read-only-start", "begin"]

_CHARSET_VARIABLES = frozenset({"character_set_client", "character_set_connection",
                                "character_set_results", "collation_connection"})
_TX_WORDS = frozenset({"ISOLATION", "LEVEL", "READ", "WRITE", "ONLY", "COMMITTED",
                       "UNCOMMITTED", "REPEATABLE", "SERIALIZABLE"})
_NOT_SESSION = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY", "STATEMENT", "PASSWORD",
                          "ROLE", "DEFAULT"})
_STARTERS = frozenset({"SET", "USE", "CREATE", "DROP", "START", "BEGIN"})

# One token per match; possessive quantifiers keep it linear on unterminated input.
_LEXER = re.compile(
    r"""(?P<ws>\s++)
    |(?P<comment>--(?=[\x00-\x20\x7f]|\Z)[^\n]*+|\#[^\n]*+|/\*(?!!|M!)(?:[^*]|\*(?!/))*+\*/)
    |(?P<string>'(?:[^'\\]|\\[\s\S]|'')*+'|"(?:[^"\\]|\\[\s\S]|"")*+")
    |(?P<quoted>`(?:[^`]|``)*+`)
    |(?P<sysvar>@@(?:[A-Za-z0-9_$\x80-\uffff]++|`(?:[^`]|``)*+`)
        (?:\.(?:[A-Za-z0-9_$\x80-\uffff]++|`(?:[^`]|``)*+`))*+)
    |(?P<word>[A-Za-z0-9_$\x80-\uffff]++)
    |(?P<op>:=|[(),;=.%])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Effect:
    """What a statement does to its session (see the module docstring)."""

    kind: Kind
    names: frozenset[str] = frozenset()
    dependent: bool = False


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def _tokens(sql: str) -> list[_Token] | None:
    """The tokens of *sql* without whitespace and comments, or None when it holds anything
    else (executable comments, unterminated quotes, a second statement)."""
    out: list[_Token] = []
    pos, end = 0, len(sql)
    while pos < end:
        match = _LEXER.match(sql, pos)
        if match is None:
            return None
        kind = match.lastgroup or ""
        if kind not in ("ws", "comment"):
            out.append(_Token(kind, match.group(), pos, match.end()))
        pos = match.end()
    while out and out[-1].text == ";":
        out.pop()
    if any(t.text == ";" for t in out):
        return None  # several statements
    return out


def _identifier(token: _Token) -> str | None:
    if token.kind == "word":
        return token.text
    if token.kind == "quoted":
        return token.text[1:-1].replace("``", "`")
    return None


@functools.lru_cache(maxsize=4096)
def effect(sql: str) -> Effect | None:
    """What *sql* does to its session, or None (see the module docstring)."""
    head = sql.lstrip()[:6].upper()
    if not head.startswith(("SET", "USE", "CREATE", "DROP", "START", "BEGIN", "/*", "--", "#")):
        return None
    tokens = _tokens(sql)
    if not tokens or tokens[0].upper not in _STARTERS:
        return None
    if any(t.kind == "string" and "\\" in t.text for t in tokens):
        return None  # read differently under NO_BACKSLASH_ESCAPES: not sure, so a write
    first = tokens[0].upper
    if first == "SET":
        return _set(sql, tokens)
    if first == "USE":
        return Effect("use", frozenset({"\0database"})) if len(tokens) == 2 \
            and _identifier(tokens[1]) is not None else None
    if first in ("CREATE", "DROP"):
        return _table(tokens)
    if first == "BEGIN":
        return Effect("begin")
    if len(tokens) > 1 and tokens[1].upper == "TRANSACTION":
        words = [t.upper for t in tokens[2:]]
        if any(a == "READ" and b == "ONLY" for a, b in itertools.pairwise(words)):
            return Effect("read-only-start")
        return Effect("begin")
    return None


def _table(tokens: list[_Token]) -> Effect | None:
    words = [t.upper for t in tokens]
    i = 1
    if words[0] == "CREATE":
        if words[1:3] == ["OR", "REPLACE"]:
            i = 3
        if words[i:i + 2] != ["TEMPORARY", "TABLE"]:
            return None
        i += 2
        if words[i:i + 3] == ["IF", "NOT", "EXISTS"]:
            i += 3
        name = _table_name(tokens, i)
        return None if name is None else Effect("create-temporary", frozenset({name[0]}))
    if words[i] == "TEMPORARY":
        i += 1
    if words[i:i + 1] != ["TABLE"] and words[i:i + 1] != ["TABLES"]:
        return None
    i += 1
    if words[i:i + 2] == ["IF", "EXISTS"]:
        i += 2
    names = set()
    while True:
        name = _table_name(tokens, i)
        if name is None:
            return None
        names.add(name[0])
        i = name[1]
        if i < len(tokens) and tokens[i].text == ",":
            i += 1
            continue
        break
    return Effect("drop-table", frozenset(names))


def _table_name(tokens: list[_Token], i: int) -> tuple[str, int] | None:
    """The table name at *i* (its last part, for ``db.table``) and the index after it."""
    if i >= len(tokens) or (name := _identifier(tokens[i])) is None:
        return None
    i += 1
    if i + 1 < len(tokens) and tokens[i].text == ".":
        name = _identifier(tokens[i + 1])
        if name is None:
            return None
        i += 2
    return name, i


def _set(sql: str, tokens: list[_Token]) -> Effect | None:
    words = [t.upper for t in tokens]
    if len(tokens) < 2 or words[1] in _NOT_SESSION:
        return None
    if words[1] == "TRANSACTION":
        return Effect("next-transaction") if _transaction(tokens[2:]) else None
    if words[1] in ("SESSION", "LOCAL") and words[2:3] == ["TRANSACTION"]:
        rest = words[3:]
        if not _transaction(tokens[3:]):
            return None
        characteristics = set()
        if "ISOLATION" in rest:
            characteristics.add("transaction_isolation")
        if "READ" in rest and ("ONLY" in rest or "WRITE" in rest):
            characteristics.add("transaction_read_only")
        return Effect("session", frozenset(characteristics))
    names: set[str] = set()
    dependent = False
    i, n = 1, len(tokens)
    while True:
        if i >= n:
            return None
        word = words[i]
        if word == "NAMES" or word == "CHARSET" or (word == "CHARACTER"
                                                     and words[i + 1:i + 2] == ["SET"]):
            i += 2 if word == "CHARACTER" else 1
            if i >= n or tokens[i].kind not in ("word", "string", "quoted"):
                return None
            i += 1
            if word == "NAMES" and words[i:i + 1] == ["COLLATE"]:
                if i + 1 >= n or tokens[i + 1].kind not in ("word", "string", "quoted"):
                    return None
                i += 2
            names |= _CHARSET_VARIABLES
        else:
            name, i = _variable(tokens, i)
            if name is None or i >= n or tokens[i].text not in ("=", ":="):
                return None
            i += 1
            start, depth = i, 0
            while i < n and not (depth == 0 and tokens[i].text == ","):
                depth += tokens[i].text == "("
                depth -= tokens[i].text == ")"
                if depth < 0:
                    return None
                i += 1
            if i == start or depth != 0:
                return None
            value = sql[tokens[start].start:tokens[i - 1].end]
            if statement_role(f"SELECT {value}") != "read":
                return None  # the value writes, locks or uses a user variable
            dependent = dependent or any(t.kind == "sysvar" for t in tokens[start:i])
            names.add(name)
        if i == n:
            return Effect("session", frozenset(names), dependent)
        if tokens[i].text != ",":
            return None
        i += 1


def _variable(tokens: list[_Token], i: int) -> tuple[str | None, int]:
    """The session variable named at *i* (lower case) and the index after it; None for a
    global, persisted or user variable, or anything unreadable."""
    token = tokens[i]
    if token.upper in ("SESSION", "LOCAL"):
        i += 1
        if i >= len(tokens):
            return None, i
        token = tokens[i]
    if token.kind == "sysvar":
        parts = [p.strip("`").lower() for p in token.text[2:].split(".")]
        if len(parts) == 2 and parts[0] in ("session", "local"):
            parts = parts[1:]
        if len(parts) != 1 or not parts[0]:
            return None, i + 1
        return parts[0], i + 1
    if token.upper in _NOT_SESSION:
        return None, i + 1
    name = _identifier(token)
    if name is None or (i + 1 < len(tokens) and tokens[i + 1].text == "."):
        return None, i + 1
    return name.lower(), i + 1


def _transaction(tokens: list[_Token]) -> bool:
    """Are *tokens* only transaction characteristics (``ISOLATION LEVEL ...``, ``READ ONLY``)?"""
    return bool(tokens) and all(t.upper in _TX_WORDS or t.text == "," for t in tokens)
