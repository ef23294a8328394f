"""Generations of a page cache: ``current`` and ``previous`` symlinks, new ones, old ones swept.

::

    root/current -> g7          what nginx and every reader use (layout.CURRENT)
    root/previous -> g6         the generation before the last flush, served stale for a while
    root/g6/.flushed            when g6 stopped being current (wall-clock seconds)
    root/.trash-g5-<hex>/       a generation being deleted in the background

A whole-site flush makes a new empty generation and swaps ``current`` to it atomically; the
old one becomes ``previous``; older ones are renamed out of the way and deleted in a thread.
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

__all__ = ["FLUSHED", "PREVIOUS", "hosts", "new_generation", "read_flushed", "sweep"]

PREVIOUS = "previous"
FLUSHED = ".flushed"

_GENERATION = re.compile(r"g(\d+)").fullmatch


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


def sweep(root: Path, keep: Iterable[str]) -> list[str]:
    """Delete, in a background thread, every generation under *root* not in *keep*. Returns
    the (renamed) directories being deleted."""
    keep = set(keep)
    doomed = []
    for name in os.listdir(root):
        if _GENERATION(name) and name not in keep:
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
