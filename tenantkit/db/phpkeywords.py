"""The PHP constants of the SQL classifier's word lists, generated from ``sql_keywords.json``,
and of the "connection lost" error codes (:data:`tenantkit.db.failures.CONNECTION_LOST`).

The drop-in ``contrib/wp-db-router.php`` is installed by symlink or copy as
``wp-content/db.php`` and cannot read tenantkit's package files, so the lists
(:data:`tenantkit.db.keywords.KEYWORDS`, ``CONNECTION_LOST``) are written into marked blocks
of it and committed::

    python -m tenantkit.db.phpkeywords contrib/wp-db-router.php           # rewrite the block
    python -m tenantkit.db.phpkeywords --check contrib/wp-db-router.php   # exit 1 if it differs

A test regenerates the blocks and compares, so the two routers cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tenantkit.db.failures import CONNECTION_LOST
from tenantkit.db.keywords import KEYWORDS
from tenantkit.generated import sync_block, sync_main

__all__ = ["main", "php_block", "php_failures_block", "sync_php"]

_BEGIN = "// BEGIN generated from tenantkit/db/sql_keywords.json"
_END = "// END generated from tenantkit/db/sql_keywords.json"
_FAILURES_BEGIN = "// BEGIN generated from tenantkit/db/failures.py"
_FAILURES_END = "// END generated from tenantkit/db/failures.py"
_WIDTH = 100


def _php_string(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _php_constant(name: str, words: Sequence[str], indent: str) -> list[str]:
    items = [_php_string(w) for w in words]
    head = f"{indent}private const {name.upper()} = ["
    one_line = head + ", ".join(items) + "];"
    if len(one_line) <= _WIDTH:
        return [one_line]
    lines, line = [head], indent + "    "
    for item in items:
        piece = item + ","
        if line.strip() and len(line) + 1 + len(piece) > _WIDTH:
            lines.append(line)
            line = indent + "    "
        line += (" " if line.strip() else "") + piece
    lines += [line, indent + "];"]
    return lines


def php_block(indent: str = "    ", keywords: Mapping[str, Sequence[str]] | None = None) -> str:
    """The PHP constants for *keywords* (default: :data:`KEYWORDS`), between the markers."""
    lines = [f"{indent}{_BEGIN} by",
             f"{indent}// `python -m tenantkit.db.phpkeywords`: do not edit"]
    for name, words in (keywords if keywords is not None else KEYWORDS).items():
        lines += _php_constant(name, words, indent)
    lines.append(f"{indent}{_END}")
    return "\n".join(lines) + "\n"


def php_failures_block(indent: str = "    ") -> str:
    """The PHP constant ``CONNECTION_LOST`` (sorted error numbers), between its markers."""
    codes = ", ".join(str(code) for code in sorted(CONNECTION_LOST))
    return (f"{indent}{_FAILURES_BEGIN} by\n"
            f"{indent}// `python -m tenantkit.db.phpkeywords`: do not edit\n"
            f"{indent}private const CONNECTION_LOST = [{codes}];\n"
            f"{indent}{_FAILURES_END}\n")


def sync_php(path: Path, *, check: bool = False) -> bool:
    """Regenerate the blocks in the PHP file *path* (the keywords; the connection-lost codes
    where the file has their markers); True when they were already up to date. With *check*,
    only compare (the file is not written)."""
    same = sync_block(path, _BEGIN, _END, php_block, check=check)
    if _FAILURES_BEGIN in path.read_text("utf-8"):
        same = sync_block(path, _FAILURES_BEGIN, _FAILURES_END, php_failures_block,
                          check=check) and same
    return same


def main(argv: Sequence[str] | None = None) -> int:
    return sync_main(argv, prog="python -m tenantkit.db.phpkeywords",
                     description="Write the SQL classifier's keyword constants (from "
                                 "tenantkit/db/sql_keywords.json) and the connection-lost "
                                 "error codes (tenantkit/db/failures.py) into PHP files.",
                     sync=sync_php, default_paths=[Path("contrib/wp-db-router.php")])


if __name__ == "__main__":
    sys.exit(main())
