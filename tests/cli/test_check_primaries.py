"""``tenantkit check`` with primary candidates: exactly one must be writable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.testing import MariaDBCluster, free_port


def _check(tmp_path: Path, primaries: list[str],
           monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    for var in list(os.environ):
        if var.startswith("TENANTKIT_"):
            monkeypatch.delenv(var)
    (tmp_path / "sites").mkdir(exist_ok=True)
    listed = ", ".join(f'"{p}"' for p in primaries)
    (tmp_path / "tenantkit.toml").write_text(
        f'sites_dir = "sites"\ncache_dir = "cache"\n[database]\nprimaries = [{listed}]\n'
        "connect_timeout = 1\n")
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "tenantkit.toml"), "check"])
    return result.exit_code, result.stdout + result.stderr


def test_one_writable_candidate_is_fine(tmp_path: Path, mariadb_pair: MariaDBCluster,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _check(tmp_path, [mariadb_pair.primary_url, mariadb_pair.replica_url],
                       monkeypatch)
    assert "primaries" not in out and code == 0, out


def test_no_writable_candidate_is_an_error(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dead = [f"mysql+pymysql://app:pw@127.0.0.1:{free_port()}/app" for _ in range(2)]
    code, out = _check(tmp_path, dead, monkeypatch)
    assert code == 1
    assert "error: primaries: no candidate is writable" in out
    assert "pw@" not in out


def test_sites_json_lists_the_candidates(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dead = [f"mysql+pymysql://app:pw@127.0.0.1:{free_port()}/app" for _ in range(2)]
    _check(tmp_path, dead, monkeypatch)  # writes the settings
    (tmp_path / "sites" / "blog.toml").write_text(
        'hosts = ["blog.example.org"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[database]\non_primary_down = "read_only"\n')
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "tenantkit.toml"), "sites",
                                      "--json"])
    assert result.exit_code == 0, result.output
    database = json.loads(result.stdout)["sites"][0]["database"]
    assert database["primaries"] == [d.replace(":pw@", ":********@") for d in dead]
    assert database["on_primary_down"] == "read_only"
