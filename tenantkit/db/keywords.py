"""The SQL classifier's word lists: one file, read by Python, generated into PHP.

``sql_keywords.json`` (next to this module, shipped as package data) holds every list of words
the classifier's rules name; :mod:`tenantkit.db.classify` reads it at import, as
:data:`KEYWORDS`::

    KEYWORDS["unsafe_functions"]   # ("GET_LOCK", "RELEASE_LOCK", ...)

The WordPress drop-in cannot read package files (it is installed by symlink or copy as
``wp-content/db.php``), so it carries the same lists as PHP constants that
:mod:`tenantkit.db.phpkeywords` generates into a marked block of ``contrib/wp-db-router.php``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources

__all__ = ["KEYWORDS", "load_keywords"]

_FILE = "sql_keywords.json"


def load_keywords() -> dict[str, tuple[str, ...]]:
    """The lists of ``sql_keywords.json``, by name (``"unsafe_functions"``, ...)."""
    raw = json.loads(resources.files(__package__).joinpath(_FILE).read_text("utf-8"))
    return {name: tuple(words) for name, words in raw.items() if not name.startswith("_")}


KEYWORDS: Mapping[str, tuple[str, ...]] = load_keywords()
