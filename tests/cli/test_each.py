"""``tenantkit each``: one command per site, in parallel, a summary, non-zero on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("TENANTKIT_"):
            monkeypatch.delenv(var)
    sites = tmp_path / "sites"
    sites.mkdir()
    for name in ("blog-a", "blog-b", "shop"):
        (sites / f"{name}.toml").write_text(
            f'hosts = ["{name}.test", "*.{name}.test"]\n[backend]\ntype = "proxy"\n'
            f'url = "http://127.0.0.1:9"\n')
    (sites / "shop.toml").write_text(
        'hosts = ["shop.test"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[database]\nprimary = "mysql+pymysql://shop:s3cret@db.internal/shop"\n')
    (tmp_path / "tenantkit.toml").write_text('sites_dir = "sites"\ncache_dir = "cache"\n')
    return tmp_path


def each(root: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(root / "tenantkit.toml"), "each", *args])
    return result.exit_code, result.stdout, result.stderr


def test_runs_per_site_with_its_values(root: Path) -> None:
    code, out, err = each(root, "--", sys.executable, "-c",
                          "import os; print(os.environ['TENANTKIT_SITE'], "
                          "os.environ['TENANTKIT_HOST'], os.environ['TENANTKIT_CACHE_DIR'], "
                          "os.environ['TENANTKIT_DATABASE_PRIMARY'])")
    assert code == 0, err
    lines = sorted(out.splitlines())
    assert len(lines) == 3
    assert lines[0].startswith(f"blog-a: blog-a blog-a.test {root / 'cache' / 'blog-a'} ")
    # The command gets the real URL (it must connect); only what each prints is its output.
    assert lines[2] == (f"shop: shop shop.test {root / 'cache' / 'shop'} "
                        "mysql+pymysql://shop:s3cret@db.internal/shop")
    assert "each: 3 of 3 site(s) ok" in err


def test_glob_failures_and_summary(root: Path) -> None:
    code, _, err = each(root, "--sites", "blog-*", "--", sys.executable, "-c",
                          "import os, sys; sys.exit(3 if os.environ['TENANTKIT_SITE'] == "
                          "'blog-b' else 0)")
    assert code == 1
    assert "failed: blog-b (exit 3)" in err
    assert "each: 1 of 2 site(s) ok, 1 failed" in err
    assert "shop" not in err


def test_no_such_command_and_no_match(root: Path) -> None:
    code, _, err = each(root, "--", "no-such-command-tk")
    assert code == 1 and "no-such-command-tk: command not found" in err
    code, _, err = each(root, "--sites", "nothing*", "--", "true")
    assert code == 2 and "matches no site" in err


def test_runs_in_parallel_with_a_bound(root: Path) -> None:
    marker = root / "running"
    marker.mkdir()
    script = ("import os, time, pathlib; d = pathlib.Path(os.environ['MARK']); "
              "p = d / os.environ['TENANTKIT_SITE']; p.touch(); time.sleep(0.5); "
              "print(len(list(d.iterdir()))); p.unlink()")
    os.environ["MARK"] = str(marker)
    try:
        code, out, _ = each(root, "--jobs", "2", "--", sys.executable, "-c", script)
    finally:
        del os.environ["MARK"]
    assert code == 0
    seen = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines()]
    assert max(seen) == 2  # two at once, never three


def test_sites_json_gives_what_a_script_needs(root: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(root / "tenantkit.toml"), "sites",
                                      "--json"])
    data = json.loads(result.stdout)
    shop = next(s for s in data["sites"] if s["name"] == "shop")
    assert shop["database"]["primary"] == "mysql+pymysql://shop:********@db.internal/shop"
    assert shop["cache_root"] == str(root / "cache" / "shop")
    assert shop["cache"]["enabled"] is True
    assert "s3cret" not in result.stdout


def test_each_as_a_subprocess(root: Path) -> None:
    tenantkit = Path(sys.executable).parent / "tenantkit"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    done = subprocess.run([str(tenantkit), "--config", str(root / "tenantkit.toml"), "each",
                           "--", "sh", "-c", 'echo "$TENANTKIT_HOSTS"; test "$TENANTKIT_SITE" '
                           '!= shop'], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "blog-a: blog-a.test *.blog-a.test" in done.stdout
    assert "failed: shop (exit 1)" in done.stderr and "Traceback" not in done.stderr
