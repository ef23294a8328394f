"""Generations of a page cache: ``current``, the previous ones kept to serve stale, new ones,
old ones swept.

::

    root/current -> g9          what nginx and every reader use (layout.CURRENT)
    root/previous -> g8         the newest previous generation (for people reading the tree)
    root/g8/.flushed            when g8 stopped being current (wall-clock seconds)
    root/g7/, root/g5/          older previous generations, still within the stale horizon
    root/.trash-g4-<hex>/       a generation being deleted in the background

A whole-site flush makes a new empty generation and swaps ``current`` to it atomically. Up to
:data:`MAX_PREVIOUS` flushed generations that still hold pages and were flushed within the
stale horizon are kept, so that however many flushes come in a row a page is still found in
the newest generation that has it (:func:`previous`); the others are renamed out of the way
and deleted in a thread (:func:`sweep`)::

    for name, flushed in generations.previous(root, current="g9"):   # newest first
        ...
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from tenantkit.cache.keys import QUERY_TREE, safe_host

__all__ = ["FLUSHED", "MAX_PREVIOUS", "PREVIOUS", "has_pages", "hosts", "new_generation",
           "number", "previous", "read_flushed", "sweep"]

PREVIOUS = "previous"
FLUSHED = ".flushed"
#: At most this many previous generations are kept (and looked through), newest first.
MAX_PREVIOUS = 16

_GENERATION = re.compile(r"g(\d+)").fullmatch


def number(name: str) -> int | None:
    """The number of generation *name* (``g7`` -> 7); None for any other name."""
    m = _GENERATION(name)
    return int(m.group(1)) if m else None


def new_generation(root: Path) -> str:
    """Create the next generation directory under *root*; returns its name (``gN``)."""
    numbers = [int(m.group(1)) for name in os.listdir(root) if (m := _GENERATION(name))]
    number = max(numbers, default=0) + 1
    while True:
        name = f"g{number}"
        try:
            os.mkdir(root / name)
            return name
        except FileExistsError:
            number += 1


def read_flushed(generation_dir: str) -> float | None:
    """When the generation at *generation_dir* was flushed; None when it was not (or is
    gone)."""
    try:
        with open(os.path.join(generation_dir, FLUSHED), "rb") as f:
            return float(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def previous(root: Path, current: str, *, limit: int | None = 2 * MAX_PREVIOUS
             ) -> list[tuple[str, float]]:
    """The flushed generations but *current*, newest first, with when each was flushed: at
    most *limit* (None: all; the default leaves room for the empty generations :func:`sweep`
    may not have removed yet). A generation without a readable ``.flushed`` (being made, or
    current) is left out: a flush writes it before it swaps ``current``, so a reader that
    lists them just before a swap already sees the generation being flushed."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            n = number(name)
            if n is not None and name != current:
                found.append((n, name))
    out = []
    for _, name in sorted(found, reverse=True):
        flushed = read_flushed(f"{root}/{name}")
        if flushed is not None:
            out.append((name, flushed))
            if limit is not None and len(out) >= limit:
                break
    return out


def has_pages(generation_dir: str) -> bool:
    """True when the generation may hold a page (any host directory or the query tree);
    False for one that holds none (a flush that came before anything was stored again)."""
    try:
        with os.scandir(generation_dir) as entries:
            return any(not e.name.startswith(".") or e.name == QUERY_TREE for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def sweep(root: Path, keep: Iterable[str], *, below: str | None = None) -> list[str]:
    """Delete, in a background thread, every generation under *root* not in *keep* (only
    those numbered below generation *below* when given: a newer one may be another
    process's flush under way). Returns the (renamed) directories being deleted."""
    keep = set(keep)
    top = None if below is None else number(below)
    doomed = []
    for name in os.listdir(root):
        n = number(name)
        if n is not None and name not in keep and (top is None or n < top):
            trash = root / f".trash-{name}-{secrets.token_hex(4)}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(root / name, trash)
                doomed.append(str(trash))
    if doomed:
        thread = threading.Thread(target=_delete_trees, args=(doomed,),
                                  name="tenantkit-cache-sweep", daemon=True)
        thread.start()
    return doomed


def _delete_trees(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def hosts(generation_dir: str) -> list[str]:
    """The hosts with pages in a generation (nginx tree or query tree; may repeat)."""
    try:
        found = [e.name for e in os.scandir(generation_dir)
                 if not e.name.startswith(".") and safe_host(e.name)]
    except FileNotFoundError:
        found = []
    # Hosts seen only in the query tree count too.
    with contextlib.suppress(FileNotFoundError):
        found += [e.name for e in os.scandir(f"{generation_dir}/{QUERY_TREE}")
                  if safe_host(e.name)]
    return found
