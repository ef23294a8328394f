"""The tag vocabulary (:mod:`tenantkit.cache.tags`) as PHP constants, in a marked block of
``contrib/tenantkit-events.php`` (loaded by the WordPress drop-in, the tags mu-plugin and the
PunBB patch), as :mod:`tenantkit.db.phpkeywords` does for the SQL classifier::

    python -m tenantkit.export.tags contrib/tenantkit-events.php           # rewrite the block
    python -m tenantkit.export.tags --check contrib/tenantkit-events.php   # exit 1 if it differs

A test regenerates the block and compares, so PHP and Python cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from tenantkit.cache.tags import KINDS

__all__ = ["main", "php_block", "sync_php"]

_BEGIN = "// BEGIN generated from tenantkit/cache/tags.py"
_END = "// END generated from tenantkit/cache/tags.py"
_BLOCK = re.compile(rf"^([ \t]*){re.escape(_BEGIN)}.*?^[ \t]*{re.escape(_END)}[^\n]*\n",
                    re.MULTILINE | re.DOTALL)


def php_block(indent: str = "") -> str:
    """``define()`` lines for the vocabulary, between the markers: ``TENANTKIT_TAG_POST`` is
    the prefix ``'post:'``, ``TENANTKIT_TAG_HOME`` the word ``'home'``."""
    lines = [f"{indent}{_BEGIN} by",
             f"{indent}// `python -m tenantkit.export.tags`: do not edit (README: \"Cache tags\")"]
    for kind in KINDS:
        value = f"{kind.name}:" if kind.numbered else kind.name
        lines.append(f"{indent}define('TENANTKIT_TAG_{kind.name.upper()}', '{value}');")
    lines.append(f"{indent}{_END}")
    return "\n".join(lines) + "\n"


def sync_php(path: Path, *, check: bool = False) -> bool:
    """Regenerate the block in the PHP file *path*; True when it was already up to date.
    With *check*, only compare (the file is not written)."""
    text = path.read_text("utf-8")
    match = _BLOCK.search(text)
    if match is None:
        raise ValueError(f"{path}: no generated tag block (a line {_BEGIN!r} ... a line "
                         f"{_END!r}); put the two marker lines where the constants go")
    updated = text[: match.start()] + php_block(match.group(1)) + text[match.end():]
    if updated == text:
        return True
    if not check:
        path.write_text(updated, "utf-8")
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantkit.export.tags",
                                     description="Write the tag vocabulary into PHP files.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a file is not up to date; write nothing")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        stale = [p for p in args.files if not sync_php(p, check=args.check)]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{path}: {'out of date' if args.check else 'updated'}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
