"""The PHP constants of the SQL classifier's word lists, generated from ``sql_keywords.json``.

The drop-in ``contrib/wp-db-router.php`` is installed by symlink or copy as
``wp-content/db.php`` and cannot read tenantkit's package files, so the lists
(:data:`tenantkit.db.keywords.KEYWORDS`) are written into a marked block of it and committed::

    python -m tenantkit.db.phpkeywords contrib/wp-db-router.php           # rewrite the block
    python -m tenantkit.db.phpkeywords --check contrib/wp-db-router.php   # exit 1 if it differs

A test regenerates the block and compares, so the two classifiers cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tenantkit.db.keywords import KEYWORDS
from tenantkit.generated import sync_block, sync_main

__all__ = ["main", "php_block", "sync_php"]

_BEGIN = "// BEGIN generated from tenantkit/db/sql_keywords.json"
_END = "// END generated from tenantkit/db/sql_keywords.json"
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


def sync_php(path: Path, *, check: bool = False) -> bool:
    """Regenerate the block in the PHP file *path*; True when it was already up to date.
    With *check*, only compare (the file is not written)."""
    return sync_block(path, _BEGIN, _END, php_block, check=check)


def main(argv: Sequence[str] | None = None) -> int:
    return sync_main(argv, prog="python -m tenantkit.db.phpkeywords",
                     description="Write the SQL classifier's keyword constants into PHP files "
                                 "(from tenantkit/db/sql_keywords.json).",
                     sync=sync_php, default_paths=[Path("contrib/wp-db-router.php")])


if __name__ == "__main__":
    sys.exit(main())
