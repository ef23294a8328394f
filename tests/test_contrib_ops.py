"""What an operator installs next to the package: systemd units, the license."""

from __future__ import annotations

import json
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


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_runs_tenantkit_serve() -> None:
    instructions = _dockerfile()
    keywords = [k for k, _ in instructions]
    assert keywords[0] == "FROM" and "python:3.11" in instructions[0][1]
    command = [json.loads(args) for k, args in instructions if k in ("ENTRYPOINT", "CMD")]
    argv = [word for part in command for word in part]
    assert argv[:2] == ["tenantkit", "serve"], argv
    assert "--bind" in argv and argv[argv.index("--bind") + 1].startswith("0.0.0.0:")
    port = argv[argv.index("--bind") + 1].rsplit(":", 1)[1]
    assert ("EXPOSE", port) in instructions
    # it installs this checkout with the server extra, and does not run as root
    assert any(k == "RUN" and "'.[server]'" in args for k, args in instructions)
    assert any(k == "USER" and args not in ("root", "0") for k, args in instructions)
    copied = " ".join(args for k, args in instructions if k == "COPY")
    for needed in ("pyproject.toml", "tenantkit"):
        assert needed in copied
