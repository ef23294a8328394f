"""Fixtures for the PHP code in contrib/: ``php`` (the binary) and ``php_call``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .phpcli import PhpCall, PhpResult, php_binary, run_php_calls
from .wordpress import make_tree


@pytest.fixture(scope="session")
def php() -> str:
    return php_binary()


@pytest.fixture
def php_call(php: str) -> PhpCall:
    def call(require: Sequence[str], calls: Sequence[tuple[str, list[Any]]]) -> PhpResult:
        return run_php_calls(php, require, calls)
    return call


@pytest.fixture(scope="session")
def wp_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One throwaway WordPress tree for the session; each test writes its own wp-config.php."""
    return make_tree(tmp_path_factory.mktemp("wordpress") / "wp", {})
