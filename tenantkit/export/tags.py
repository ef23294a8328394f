"""The tag vocabulary (:mod:`tenantkit.cache.tags`) as PHP constants, in a marked block of
``contrib/tenantkit-events.php`` (loaded by the WordPress drop-in, the tags mu-plugin and the
PunBB patch), as :mod:`tenantkit.db.phpkeywords` does for the SQL classifier::

    python -m tenantkit.export.tags contrib/tenantkit-events.php           # rewrite the block
    python -m tenantkit.export.tags --check contrib/tenantkit-events.php   # exit 1 if it differs

A test regenerates the block and compares, so PHP and Python cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tenantkit.cache.tags import KINDS
from tenantkit.generated import sync_block, sync_main

__all__ = ["main", "php_block", "sync_php"]

_BEGIN = "// BEGIN generated from tenantkit/cache/tags.py"
_END = "// END generated from tenantkit/cache/tags.py"


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
    return sync_block(path, _BEGIN, _END, php_block, check=check)


def main(argv: Sequence[str] | None = None) -> int:
    return sync_main(argv, prog="python -m tenantkit.export.tags",
                     description="Write the tag vocabulary into PHP files.", sync=sync_php)


if __name__ == "__main__":
    raise SystemExit(main())
