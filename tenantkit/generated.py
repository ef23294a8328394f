"""Blocks of generated source kept inside committed files, between two marker lines.

The PHP side cannot read tenantkit's package data, so its constants (the SQL classifier's word
lists, the tag vocabulary) are written into marked blocks of the PHP files and committed; a test
regenerates each block and compares, so the two languages cannot drift apart::

    sync_block(path, BEGIN, END, render)              # rewrite the block; True if unchanged
    sync_block(path, BEGIN, END, render, check=True)  # only compare
    sys.exit(sync_main(argv, prog=..., description=..., sync=sync_php))
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["sync_block", "sync_main"]


def sync_block(path: Path, begin: str, end: str, render: Callable[[str], str], *,
               check: bool = False) -> bool:
    """Replace the lines from *begin* to *end* in *path* with ``render(indent)`` (the indent
    of the *begin* line); True when the file already held that. With *check*, write nothing.
    Raises ValueError when the file has no such block."""
    block = re.compile(rf"^([ \t]*){re.escape(begin)}.*?^[ \t]*{re.escape(end)}[^\n]*\n",
                       re.MULTILINE | re.DOTALL)
    text = path.read_text("utf-8")
    match = block.search(text)
    if match is None:
        raise ValueError(f"{path}: no generated block (a line {begin!r} ... a line {end!r}); "
                         "put the two marker lines where the generated constants go")
    updated = text[: match.start()] + render(match.group(1)) + text[match.end():]
    if updated == text:
        return True
    if not check:
        path.write_text(updated, "utf-8")
    return False


def sync_main(argv: Sequence[str] | None, *, prog: str, description: str,
              sync: Callable[..., bool], default_paths: Sequence[Path] = ()) -> int:
    """The command line of a generator: ``[--check] PATH ...``; exit 1 when ``--check``
    finds a block out of date, 2 when a file cannot be read or has no block."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("paths", nargs="*" if default_paths else "+", type=Path,
                        default=list(default_paths))
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file's block is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in args.paths:
        try:
            if not sync(path, check=args.check):
                stale.append(path)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for path in stale:
        verb = "is out of date (run without --check to rewrite it)" if args.check else "updated"
        print(f"{path}: {verb}", file=sys.stderr)
    return 1 if stale and args.check else 0
