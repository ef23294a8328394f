"""``--json`` on provision, deprovision and purge (a failure is JSON too, with the same exit
code), deprovision's confirmation, and provision's summary printing values, not reprs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.testing import free_port

UPSTREAM = "http://127.0.0.1:8080"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("TENANTKIT_"):
            monkeypatch.delenv(var)
    (tmp_path / "tenantkit.toml").write_text('sites_dir = "sites"\ncache_dir = "cache"\n')
    return tmp_path


def run(root: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(root / "tenantkit.toml"), *args],
                                input=stdin)
    return result.exit_code, result.stdout, result.stderr


def provision_blog(root: Path) -> None:
    code, _, err = run(root, "provision", "blog", "--host", "blog.example.org",
                       "--upstream", UPSTREAM)
    assert code == 0, err


def test_provision_summary_prints_values_not_reprs(root: Path) -> None:
    provision_blog(root)
    code, out, err = run(root, "provision", "blog", "--database",
                         "mysql+pymysql://app:s3cret@db1/blog", "--replica",
                         "mysql+pymysql://app:s3cret@db2/blog", "--table-prefix", "wp_",
                         "--base-url", "https://blog.example.org")
    assert code == 0, err
    assert ("database: the global [database] -> primary=mysql+pymysql://app:********@db1/blog,"
            " replicas=[mysql+pymysql://app:********@db2/blog], table_prefix=wp_") in out
    assert "meta: none -> base_url=https://blog.example.org" in out
    for repr_text in ("SiteDatabase(", "CacheSettings(", "{'", "SecretURL", "s3cret"):
        assert repr_text not in out


def test_provision_json_success_and_failure(root: Path) -> None:
    code, out, _ = run(root, "provision", "blog", "--host", "blog.example.org",
                       "--upstream", UPSTREAM, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["created"] is True and data["site"] == "blog"
    code, out, err = run(root, "provision", "other", "--host", "blog.example.org",
                         "--upstream", UPSTREAM, "--json")
    assert code == 1  # the host is taken: the work failed
    data = json.loads(out)
    assert data["ok"] is False and data["exit_code"] == 1
    assert "already claimed by site 'blog'" in data["error"] and "already claimed" in err
    code, out, _ = run(root, "provision", "../x", "--host", "x.org", "--upstream", UPSTREAM,
                       "--json")
    assert code == 2 and json.loads(out)["exit_code"] == 2


def test_deprovision_asks_first(root: Path) -> None:
    provision_blog(root)
    site_file = root / "sites" / "blog.toml"
    code, out, err = run(root, "deprovision", "blog", stdin="n\n")
    assert code == 1
    assert "Remove site blog (its site file and its cache tree" in err
    assert "site blog was not removed (answer y, or pass --yes)" in err
    assert site_file.exists() and (root / "cache" / "blog").exists()
    code, out, err = run(root, "deprovision", "blog", stdin="")  # no answer: nothing removed
    assert code == 1 and site_file.exists()
    code, out, err = run(root, "deprovision", "blog", stdin="y\n")
    assert code == 0 and "removed" in out
    assert not site_file.exists() and not (root / "cache" / "blog").exists()


def test_deprovision_yes_and_json(root: Path) -> None:
    provision_blog(root)
    code, out, err = run(root, "deprovision", "blog", "--json")
    assert code == 2
    assert json.loads(out) == {"ok": False, "exit_code": 2, "error": (
        "--json asks no questions: add --yes to remove site blog")}
    assert (root / "sites" / "blog.toml").exists()
    code, out, err = run(root, "deprovision", "blog", "--json", "--yes")
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] and data["removed_file"] and data["removed_cache"]
    code, out, _ = run(root, "deprovision", "blog", "--json", "--yes")  # idempotent
    assert code == 0 and json.loads(out)["removed_file"] is False


def test_purge_json(root: Path) -> None:
    provision_blog(root)
    code, out, err = run(root, "purge", "blog", "--path", "/", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True and data["transport"] == "local" and data["published"] is False
    assert data["paths"] == ["/"] and data["event"]
    code, out, _ = run(root, "purge", "nosuch", "--all", "--json")
    assert code == 2 and json.loads(out)["ok"] is False
    with open(root / "tenantkit.toml", "a") as fh:  # a Redis nobody listens on
        fh.write(f'[bus]\ntransport = "redis"\nredis_url = "redis://127.0.0.1:{free_port()}/0"\n')
    code, out, err = run(root, "purge", "blog", "--all", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["exit_code"] == 1 and "nothing was published" in data["error"]


def test_deprovision_as_a_subprocess_without_a_terminal(root: Path) -> None:
    provision_blog(root)
    tenantkit = Path(sys.executable).parent / "tenantkit"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    result = subprocess.run([str(tenantkit), "--config", str(root / "tenantkit.toml"),
                             "deprovision", "blog"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (root / "sites" / "blog.toml").exists()
