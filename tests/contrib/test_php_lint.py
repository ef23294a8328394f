"""Every PHP file in contrib/ passes ``php -l`` (PHP 8.2 syntax)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .phpcli import CONTRIB

PHP_FILES = sorted(CONTRIB.glob("*.php"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in PHP_FILES])
def test_php_lint(php: str, path: Path) -> None:
    proc = subprocess.run([php, "-d", "error_reporting=-1", "-l", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No syntax errors" in proc.stdout
    assert "Deprecated" not in proc.stdout + proc.stderr
