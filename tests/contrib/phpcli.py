"""Run the PHP code in contrib/ with php-cli through subprocess (shared by the contrib tests).

``run_php_calls(php, require, [(function, [args...]), ...])`` runs the calls in one php-cli
process under ``error_reporting(E_ALL)`` with every notice turned into a failure, and returns
``PhpResult(results, stderr)``; ``stderr`` holds what the code sent to ``error_log``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
DRIVER = Path(__file__).resolve().parent / "call.php"


def php_binary() -> str:
    """The php-cli binary, or skip (fail under TENANTKIT_REQUIRE_SERVICES=1)."""
    found = shutil.which("php")
    if found is None:
        reason = "php not found: install it (apt-get install php-cli php-mysql)"
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (TENANTKIT_REQUIRE_SERVICES=1 makes this a failure)")
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class PhpResult:
    results: list[Any]
    stderr: str


PhpCall = Callable[[Sequence[str], Sequence[tuple[str, list[Any]]]], PhpResult]


def run_php_calls(
    php: str, require: Sequence[str], calls: Sequence[tuple[str, list[Any]]], timeout: float = 30,
) -> PhpResult:
    payload = json.dumps({
        "require": [str(CONTRIB / name) for name in require],
        "calls": [[name, args] for name, args in calls],
    })
    proc = subprocess.run(
        [php, "-d", "error_reporting=-1", "-d", "display_errors=stderr", "-d", "log_errors=0",
         "-d", "error_log=", str(DRIVER)],
        input=payload.encode(), capture_output=True, timeout=timeout, check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"php failed ({proc.returncode}):\n{stderr}\n{proc.stdout!r}"
    return PhpResult(json.loads(proc.stdout), stderr)
