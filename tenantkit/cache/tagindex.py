"""The tag index of a generation: which pages carry a tag (or a URL's query variants).

::

    gN/.tags/<name>/<key-hash> -> <page key>      one symlink per page, name from keys.tag_name

A put adds its page under each of its names; a purge lists a name's pages to move them out
of the way. Entries are never removed one by one: a flush starts a new, empty generation.
"""

from __future__ import annotations

import contextlib
import os

from tenantkit.cache.keys import key_hash

__all__ = ["TAGS", "add", "pages"]

TAGS = ".tags"


def add(gen_dir: str, name: str, key: str) -> None:
    """List the page *key* under *name* (idempotent)."""
    index = f"{gen_dir}/{TAGS}/{name}"
    entry = f"{index}/{key_hash(key)[:32]}"
    try:
        os.symlink(key, entry)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(index, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.symlink(key, entry)


def pages(gen_dir: str, name: str) -> list[str]:
    """The page keys listed under *name* (entries that are not ours are left out)."""
    try:
        entries = list(os.scandir(f"{gen_dir}/{TAGS}/{name}"))
    except FileNotFoundError:
        return []
    keys = []
    for entry in entries:
        try:
            key = os.readlink(entry.path)
        except OSError:
            continue
        if key.startswith(("/", "..")) or "/../" in key:
            continue  # not one of ours
        keys.append(key)
    return keys
