"""``tenantkit check``: every problem of every file, with what to do; exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.testing import MariaDBCluster, free_port

WEB_TESTS = Path(__file__).resolve().parents[1] / "web"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("TENANTKIT_"):
            monkeypatch.delenv(var)
    monkeypatch.syspath_prepend(str(WEB_TESTS))  # tk_test_apps, a real WSGI module
    (tmp_path / "sites").mkdir()
    (tmp_path / "tenantkit.toml").write_text(
        f'sites_dir = "sites"\ncache_dir = "cache"\n'
        f'[database]\nprimary = "sqlite:///{tmp_path}/tk.db"\n')
    return tmp_path


def check(root: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(root / "tenantkit.toml"), "check",
                                      *args])
    return result.exit_code, result.stdout, result.stderr


def site(root: Path, name: str, body: str, suffix: str = ".toml") -> Path:
    path = root / "sites" / f"{name}{suffix}"
    path.write_text(body)
    return path


GOOD = 'hosts = ["good.test"]\n[backend]\ntype = "wsgi"\napp = "tk_test_apps:hello"\n'


def test_a_good_setup_passes(root: Path) -> None:
    site(root, "good", GOOD)
    code, out, err = check(root)
    assert code == 0, err
    assert "ok: settings and 1 site file(s) are valid" in out


def test_every_problem_of_the_settings_with_did_you_mean(root: Path) -> None:
    (root / "tenantkit.toml").write_text(
        '[web]\nadmin_tokn = "x"\n[cache]\nttl = "soon"\n[bus]\ntransport = "carrier pigeon"\n')
    code, _, err = check(root)
    assert code == 1
    assert 'key "web.admin_tokn": unknown key (did you mean "admin_token"?)' in err
    assert 'key "cache.ttl"' in err and 'key "bus.transport"' in err


def test_every_problem_of_every_site_file(root: Path) -> None:
    site(root, "one", 'hostz = ["a.test"]\n[backend]\ntype = "fastcgi"\n[cache]\nttl = -1\n')
    site(root, "two", "hosts = [\n")
    code, _, err = check(root, "--offline")
    assert code == 1
    one = [line for line in err.splitlines() if "one.toml" in line]
    assert any('"hostz": unknown key (did you mean "hosts"?)' in x for x in one), err
    assert any('key "backend.type"' in x for x in one), err
    assert any('key "cache.ttl"' in x for x in one), err
    assert any("two.toml" in x and "invalid TOML" in x for x in err.splitlines())


def test_a_misspelt_extension_is_reported(root: Path) -> None:
    site(root, "blog", GOOD, suffix=".tml")
    site(root, "README", "notes", suffix=".md")
    code, _, err = check(root)
    assert code == 1
    assert "error: " in err and "blog.tml: ignored" in err and "rename it to blog.toml" in err
    assert "warning: " in err and "README.md: ignored" in err


def test_misspelt_environment_variables(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKIT_CACHE_TTLL", "5")
    monkeypatch.setenv("TENANTKIT_SERVE_WORKERS", "4")  # click's, for `serve --workers`
    monkeypatch.setenv("TENANTKIT_LOG_FORMAT", "json")
    code, _, err = check(root)
    assert code == 1
    assert ("environment variable TENANTKIT_CACHE_TTLL: not a tenantkit setting, ignored "
            '(did you mean "TENANTKIT_CACHE_TTL"?)') in err
    assert "SERVE_WORKERS" not in err and "LOG_FORMAT" not in err


def test_backends_that_do_not_import_or_answer(root: Path) -> None:
    site(root, "gone", 'hosts = ["gone.test"]\n[backend]\ntype = "wsgi"\n'
                       'app = "no_such_module:app"\n')
    site(root, "down", f'hosts = ["down.test"]\n[backend]\ntype = "proxy"\n'
                       f'url = "http://127.0.0.1:{free_port()}"\n')
    code, _, err = check(root)
    assert code == 1
    assert "site gone: backend does not load" in err and "no_such_module" in err
    assert "site down: upstream http://127.0.0.1:" in err and "does not answer" in err
    code, _, err = check(root, "--offline")
    assert "site down" not in err and "site gone" in err


def test_databases_and_redis_that_do_not_answer(root: Path) -> None:
    (root / "tenantkit.toml").write_text(
        f'[database]\nprimary = "mysql+pymysql://app:s3cret@127.0.0.1:{free_port()}/app"\n'
        f"connect_timeout = 1\n"
        f'[bus]\ntransport = "redis"\nredis_url = "redis://127.0.0.1:{free_port()}/0"\n')
    code, _, err = check(root)
    assert code == 1
    assert "primary mysql+pymysql://app:********@127.0.0.1:" in err and "does not answer" in err
    assert "Redis does not answer" in err
    assert "s3cret" not in err


def test_cache_tree_nginx_cannot_read(root: Path) -> None:
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user on this machine")
    site(root, "good", GOOD)
    pages = root / "cache" / "good" / "pages"
    pages.mkdir(parents=True)
    for directory in (root / "cache", root / "cache" / "good", pages):
        os.chown(directory, os.getuid(), 0)
        directory.chmod(0o750)
    code, _, err = check(root)
    assert code == 1
    assert "site good: cache tree" in err and "is 0750" in err
    assert "nginx (www-data) cannot enter it" in err
    assert f"(chmod o+x {root / 'cache'})" in err  # every site's directory: no site's group
    (root / "cache").chmod(0o755)
    code, _, err = check(root)
    assert code == 1 and f"{root / 'cache' / 'good'} is 0750" in err
    assert "tenantkit provision good --group www-data" in err
    for directory in (root / "cache", root / "cache" / "good", pages):
        directory.chmod(0o755)
    assert check(root)[0] == 0


def test_json_and_exit_codes(root: Path) -> None:
    site(root, "good", GOOD)
    code, out, _ = check(root, "--json")
    assert code == 0
    data = json.loads(out)
    assert data == {"ok": True, "sites": 1, "problems": []}
    site(root, "bad", "hosts = 1\n")
    code, out, _ = check(root, "--json", "--offline")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    assert data["problems"][0]["level"] == "error"
    assert data["problems"][0]["where"].endswith("bad.toml")
    assert check(root, "--purge", "nosuch")[0] == 2


def test_purge_self_test(root: Path) -> None:
    site(root, "good", GOOD)
    code, out, err = check(root, "--purge", "good", "--json")
    assert code == 0, err
    report = json.loads(out)["purge"]
    assert report["purged"] is True and report["seconds"] >= 0


def test_purge_self_test_fails_without_an_invalidator(root: Path) -> None:
    site(root, "good", GOOD)
    with open(root / "tenantkit.toml", "a") as fh:
        fh.write('[bus]\ntransport = "files"\n')
    code, _, err = check(root, "--purge", "good", "--timeout", "0.5")
    assert code == 1
    assert "the probe page was not purged within 0.5s on this node (" in err
    assert "is the invalidator running on this node?" in err


def test_check_as_a_subprocess(root: Path) -> None:
    site(root, "bad", "hosts = 1\n")
    tenantkit = Path(sys.executable).parent / "tenantkit"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTKIT_")}
    result = subprocess.run([str(tenantkit), "--config", str(root / "tenantkit.toml"),
                             "check", "--json", "--offline"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout)["ok"] is False
    assert "Traceback" not in result.stderr


def test_purge_self_test_reports_every_node_of_the_stream(root: Path, redis_server: Any) -> None:
    import redis

    from tenantkit.cache.invalidator import Invalidator
    from tenantkit.config import Settings
    from tenantkit.registry import Registry

    site(root, "good", GOOD)
    with open(root / "tenantkit.toml", "a") as fh:
        fh.write(f'[bus]\ntransport = "redis"\nredis_url = "{redis_server.url}"\n'
                 f'node = "node-a"\n')
    settings = Settings.load(root / "tenantkit.toml")
    registry = Registry.load(settings)
    with Invalidator(settings, registry, node="node-a", poll_timeout=0.05), \
            Invalidator(settings, registry, node="node-b", poll_timeout=0.05):
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 10  # both groups exist once the consumers joined

        def groups() -> int:
            try:
                return len(client.xinfo_groups(settings.bus.stream))
            except redis.ResponseError:  # the stream is made with the first group
                return 0

        while groups() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        code, out, err = check(root, "--purge", "good", "--json", "--offline")
        assert code == 0, err
        report = json.loads(out)["purge"]
        assert [n["node"] for n in report["nodes"]] == ["node-a", "node-b"]
        assert all(n["purged"] and 0 <= n["seconds"] < 10 for n in report["nodes"]), report
        assert report["purged"] is True and report["node"] == "node-a"

        code, out, err = check(root, "--purge", "good", "--offline")  # the text report
        assert code == 0, err
        assert "node node-a dropped good's probe page over redis in" in out
        assert "node node-b dropped good's probe page over redis in" in out

        # A node whose invalidator is gone (its group stays): named, with the fix.
        client.xgroup_create(settings.bus.stream, "tenantkit:node-gone", id="$")
        code, out, err = check(root, "--purge", "good", "--json", "--offline",
                               "--timeout", "1")
        assert code == 1
        nodes = {n["node"]: n for n in json.loads(out)["purge"]["nodes"]}
        assert nodes["node-gone"] == {"node": "node-gone", "purged": False, "seconds": None}
        assert nodes["node-b"]["purged"] is True
        problems = [p["message"] for p in json.loads(out)["problems"]]
        assert any("node node-gone did not acknowledge the purge within 1s" in m
                   and "XGROUP DESTROY" in m for m in problems), problems
        client.close()


def test_a_replica_the_binlog_source_cannot_read(root: Path, mariadb_pair: MariaDBCluster
                                                 ) -> None:
    # The plain test replica logs MIXED rows without column names, and the application
    # user has no REPLICATION SLAVE: each is one error naming the fix.
    site(root, "blog", GOOD + f'[database]\nprimary = "{mariadb_pair.primary_url}"\n'
         f'replicas = ["{mariadb_pair.replica_url}"]\n[meta]\ninvalidation = "wordpress"\n')
    code, _, err = check(root)
    assert code == 1, err
    lines = [line for line in err.splitlines() if "binlog source: replica" in line]
    assert len(lines) == 3, err
    assert "binlog_format = MIXED: the binlog source needs binlog_format = ROW" in lines[0]
    assert "binlog_row_metadata = NO_LOG" in lines[1] and "my.cnf" in lines[1]
    assert "user 'tenantkit' has no REPLICATION SLAVE grant" in lines[2]
    assert "GRANT REPLICATION SLAVE ON *.* TO 'tenantkit'@'%'" in lines[2]
    assert "tenantkit:tenantkit@" not in err  # the password stays masked
    # A site that does not ask for binlog invalidation is not held to it.
    site(root, "blog", GOOD + f'[database]\nprimary = "{mariadb_pair.primary_url}"\n'
         f'replicas = ["{mariadb_pair.replica_url}"]\n')
    code, _, err = check(root)
    assert code == 0, err
    assert "binlog" not in err
