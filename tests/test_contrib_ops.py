"""What an operator installs next to the package: systemd units, the license."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))


def test_license_matches_pyproject() -> None:
    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert license_ == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # The units name /usr/local/bin/tenantkit: verify a copy pointing at this checkout's.
    tenantkit = shutil.which("tenantkit") or "/bin/true"
    for other in UNITS:
        text = other.read_text().replace("/usr/local/bin/tenantkit", tenantkit)
        (tmp_path / other.name).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / unit.name)],
                            capture_output=True, text=True, timeout=60, check=False)
    relevant = [line for line in (result.stdout + result.stderr).splitlines()
                if unit.name in line or "tenantkit" in line]
    assert result.returncode == 0 and relevant == [], result.stdout + result.stderr
    assert re.search(r"^Restart=", unit.read_text(), re.M)
