"""The PHP constants of the SQL classifier's word lists, generated from ``sql_keywords.json``.

The drop-in ``contrib/wp-db-router.php`` is installed by symlink or copy as
``wp-content/db.php`` and cannot read tenantkit's package files, so the lists
(:data:`tenantkit.db.keywords.KEYWORDS`) are written into a marked block of it and committed::

    python -m tenantkit.db.phpkeywords contrib/wp-db-router.php           # rewrite the block
    python -m tenantkit.db.phpkeywords --check contrib/wp-db-router.php   # exit 1 if it differs

A test regenerates the block and compares, so the two classifiers cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tenantkit.db.keywords import KEYWORDS

__all__ = ["main", "php_block", "sync_php"]

_BEGIN = "// BEGIN generated from tenantkit/db/sql_keywords.json"
_END = "// END generated from tenantkit/db/sql_keywords.json"
_BLOCK = re.compile(rf"^([ \t]*){re.escape(_BEGIN)}.*?^[ \t]*{re.escape(_END)}[^\n]*\n",
                    re.MULTILINE | re.DOTALL)
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
    text = path.read_text("utf-8")
    match = _BLOCK.search(text)
    if match is None:
        raise ValueError(
            f"{path}: no generated keyword block (a line {_BEGIN!r} ... a line {_END!r}); "
            "put the two marker lines inside the classifier class, where its constants go"
        )
    updated = text[: match.start()] + php_block(match.group(1)) + text[match.end() :]
    if updated == text:
        return True
    if not check:
        path.write_text(updated, "utf-8")
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tenantkit.db.phpkeywords",
        description="Write the SQL classifier's keyword constants into PHP files "
                    "(from tenantkit/db/sql_keywords.json).",
    )
    parser.add_argument("paths", nargs="*", type=Path,
                        default=[Path("contrib/wp-db-router.php")])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file's block is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in args.paths:
        try:
            if not sync_php(path, check=args.check):
                stale.append(path)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for path in stale:
        verb = "is out of date (run without --check to rewrite it)" if args.check else "updated"
        print(f"{path}: {verb}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
