"""The tests' view of :mod:`tenantkit.testing.wordpress` (the WordPress tree, ``php -S``):
the same helpers, with a missing package turned into a skip (a failure under
TENANTKIT_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tenantkit.testing import wordpress as _wp
from tenantkit.testing.wordpress import WORDPRESS, php_literal, write_config

__all__ = ["WORDPRESS", "make_tree", "php_literal", "require_wordpress", "write_config"]


def require_wordpress() -> Path:
    reason = _wp.wordpress_missing()
    if reason:
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (TENANTKIT_REQUIRE_SERVICES=1 makes this a failure)")
        pytest.skip(reason)
    return WORDPRESS


def make_tree(dest: Path, constants: dict[str, Any]) -> Path:
    require_wordpress()
    return _wp.make_tree(dest, constants)
