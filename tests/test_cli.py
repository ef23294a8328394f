from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tenantkit.cli import cli


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "config" in result.output


def test_config_prints_masked_settings(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[database]\nprimary = "mysql://app:s3cret@db/app"\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "config"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["database"]["primary"] == "mysql://app:********@db/app"
    assert "s3cret" not in result.output


def test_bad_settings_are_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[cache]\nttl = 'x'\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "config"])
    assert result.exit_code == 2
    assert 'key "cache.ttl"' in result.output
