from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.config import Settings
from tenantkit.errors import InvalidHost, ProvisionError
from tenantkit.provision import (
    CACHE_DIR_MODE,
    ProvisionUsageError,
    deprovision,
    provision,
)
from tenantkit.registry import Registry
from tenantkit.sites import Backend, InvalidSiteName, SiteDatabase, load_site

UPSTREAM = "http://127.0.0.1:8080"


@pytest.fixture()
def cfg(tmp_path: Path) -> Settings:
    return Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")


def tree(root: Path) -> list[str]:
    """Every path under *root* (lock files aside), for 'nothing was created' checks."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".lock"))


def test_provision_creates_tree_then_file(cfg: Settings) -> None:
    result = provision(cfg, "blog", ["Blog.Example.org", "*.blog.example.org"], backend=UPSTREAM)
    assert result.created and result.changed
    root = cfg.cache_dir / "blog"
    for d in (root, root / "pages", root / "app", root / "tmp", root / ".purge"):
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) == CACHE_DIR_MODE
    site = load_site(cfg.sites_dir / "blog.toml", cfg)
    assert site == result.site
    assert site.hosts == ("blog.example.org", "*.blog.example.org")
    assert site.backend == Backend(type="proxy", url=UPSTREAM)
    assert stat.S_IMODE((cfg.sites_dir / "blog.toml").stat().st_mode) == 0o640
    assert Registry.load(cfg).resolve("x.blog.example.org") == site
    assert [p.name for p in cfg.sites_dir.iterdir() if not p.name.endswith(".lock")] == [
        "blog.toml"
    ]


def test_second_identical_run_changes_nothing(cfg: Settings) -> None:
    provision(cfg, "blog", ["blog.example.org"], backend=UPSTREAM)
    before = (cfg.sites_dir / "blog.toml").stat()
    again = provision(cfg, "blog", ["blog.example.org"], backend=UPSTREAM)
    assert not again.changed and not again.created
    assert "nothing changed" in again.summary()
    after = (cfg.sites_dir / "blog.toml").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_different_run_changes_only_what_differs(cfg: Settings) -> None:
    provision(cfg, "blog", ["blog.example.org"], backend="wsgi:app.wsgi:application",
              database=SiteDatabase(table_prefix="wp_"))
    result = provision(cfg, "blog", ["blog.example.org", "www.blog.example.org"])
    assert result.changed and not result.created
    assert any(c.startswith("hosts: blog.example.org -> ") for c in result.changes)
    assert not any(c.startswith(("backend", "database")) for c in result.changes)
    site = load_site(cfg.sites_dir / "blog.toml", cfg)
    assert site.backend.app == "app.wsgi:application"  # kept
    assert site.database.table_prefix == "wp_"  # kept


def test_mode_is_repaired(cfg: Settings) -> None:
    provision(cfg, "blog", ["blog.example.org"], backend=UPSTREAM)
    (cfg.cache_dir / "blog" / "tmp").chmod(0o777)
    result = provision(cfg, "blog", ["blog.example.org"], backend=UPSTREAM)
    assert result.changes == (f"mode of {cfg.cache_dir / 'blog' / 'tmp'}/: 777 -> 750",)
    assert stat.S_IMODE((cfg.cache_dir / "blog" / "tmp").stat().st_mode) == 0o750


def test_owner_and_group(cfg: Settings) -> None:
    uid, gid = os.getuid(), os.getgid()
    result = provision(cfg, "blog", ["blog.example.org"], backend=UPSTREAM,
                       owner=str(uid), group=str(gid))
    assert result.created
    st = (cfg.cache_dir / "blog" / "pages").stat()
    assert (st.st_uid, st.st_gid) == (uid, gid)


def test_dry_run_creates_nothing(cfg: Settings) -> None:
    result = provision(cfg, "blog", ["blog.example.org"], backend=UPSTREAM, dry_run=True)
    assert result.dry_run and result.changed
    assert "would change" in result.summary()
    assert not cfg.sites_dir.exists() and not cfg.cache_dir.exists()


@pytest.mark.parametrize(
    ("name", "hosts", "backend", "error"),
    [
        pytest.param("../x", ["a.org"], UPSTREAM, InvalidSiteName, id="dotdot name"),
        pytest.param("a/b", ["a.org"], UPSTREAM, InvalidSiteName, id="slash name"),
        pytest.param("A", ["a.org"], UPSTREAM, InvalidSiteName, id="uppercase name"),
        pytest.param("-a", ["a.org"], UPSTREAM, InvalidSiteName, id="leading hyphen name"),
        pytest.param("", ["a.org"], UPSTREAM, InvalidSiteName, id="empty name"),
        pytest.param("a" * 64, ["a.org"], UPSTREAM, InvalidSiteName, id="64-character name"),
        pytest.param("ok", ["a..org"], UPSTREAM, InvalidHost, id="bad host"),
        pytest.param("ok", ["www.*.org"], UPSTREAM, InvalidHost, id="bad wildcard"),
        pytest.param("ok", [], UPSTREAM, ProvisionUsageError, id="no hosts"),
        pytest.param("ok", None, UPSTREAM, ProvisionUsageError, id="new site without hosts"),
        pytest.param("ok", ["a.org"], None, ProvisionUsageError, id="new site without backend"),
        pytest.param("ok", ["a.org"], "ftp://x", ValueError, id="bad backend"),
        pytest.param("ok", "a.org", UPSTREAM, ProvisionUsageError, id="hosts as a string"),
    ],
)
def test_bad_arguments_create_nothing(cfg: Settings, name: str, hosts: list[str] | None,
                                      backend: str | None, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        provision(cfg, name, hosts, backend=backend)
    assert isinstance(info.value, ValueError)  # the CLI maps these to exit code 2
    assert tree(cfg.sites_dir) == [] and tree(cfg.cache_dir) == []


def test_unknown_owner(cfg: Settings) -> None:
    with pytest.raises(ProvisionUsageError, match="unknown user"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM, owner="no-such-user-xyz")
    with pytest.raises(ProvisionUsageError, match="unknown group"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM, group="no-such-group-xyz")
    assert tree(cfg.cache_dir) == []


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        pytest.param("a.org", "A.org.", id="exact"),
        pytest.param(".a.org", "*.a.org", id="dot and star are one claim"),
        pytest.param("www.a.*", "www.a.*", id="trailing"),
    ],
)
def test_conflicts_are_refused(cfg: Settings, theirs: str, ours: str) -> None:
    provision(cfg, "first", [theirs], backend=UPSTREAM)
    before = tree(cfg.cache_dir)
    with pytest.raises(ProvisionError, match="already claimed by site 'first'") as info:
        provision(cfg, "second", ["ok.org", ours], backend=UPSTREAM)
    assert not isinstance(info.value, ValueError)  # a failure: exit code 1
    assert tree(cfg.cache_dir) == before
    assert not (cfg.sites_dir / "second.toml").exists()


def test_broken_existing_file_is_not_overwritten(cfg: Settings) -> None:
    cfg.sites_dir.mkdir(parents=True)
    (cfg.sites_dir / "a.toml").write_bytes(b"\x00garbage")
    with pytest.raises(ProvisionError, match="deprovision a"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    assert (cfg.sites_dir / "a.toml").read_bytes() == b"\x00garbage"


def test_cache_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    cfg = Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "file" / "cache")
    with pytest.raises(ProvisionError, match="cannot create the cache directory"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    assert not (cfg.sites_dir / "a.toml").exists()


def test_sites_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "sites").write_text("x")
    cfg = Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")
    with pytest.raises(ProvisionError, match="sites directory"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    assert not cfg.cache_dir.exists()


def test_cache_path_is_a_file(cfg: Settings) -> None:
    (cfg.cache_dir / "a").mkdir(parents=True)
    (cfg.cache_dir / "a" / "pages").write_text("x")
    with pytest.raises(ProvisionError, match="not a directory"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    assert not (cfg.sites_dir / "a.toml").exists()


def test_failed_write_removes_created_dirs(cfg: Settings, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    # A full disk at the last step cannot be provoked here: inject it into os.replace.
    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tenantkit.provision.os.replace", full)
    with pytest.raises(ProvisionError, match="No space left"):
        provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    assert tree(cfg.cache_dir) == []
    assert tree(cfg.sites_dir) == []  # no temp file left behind


def test_unwritable_directories(
    shared_dir: Path, as_unprivileged: Callable[[Callable[[], None]], None]
) -> None:
    cfg = Settings(sites_dir=shared_dir / "sites", cache_dir=shared_dir / "cache")
    cfg.sites_dir.mkdir(mode=0o755)  # owned by root: not writable for the unprivileged user
    shared_dir.chmod(0o777)

    def check() -> None:
        with pytest.raises(ProvisionError, match="lock file"):
            provision(cfg, "a", ["a.org"], backend=UPSTREAM)
        assert tree(cfg.cache_dir) == []
        assert tree(cfg.sites_dir) == []

    as_unprivileged(check)


def test_lock_held_by_another_process(cfg: Settings) -> None:
    cfg.sites_dir.mkdir(parents=True)
    with open(cfg.sites_dir / ".a.lock", "w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ProvisionError, match="another provision"):
            provision(cfg, "a", ["a.org"], backend=UPSTREAM, lock_timeout=0.1)
    assert provision(cfg, "a", ["a.org"], backend=UPSTREAM).created


def test_two_processes_never_corrupt(cfg: Settings) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tenantkit.config import Settings
        from tenantkit.provision import provision
        cfg = Settings(sites_dir=Path({str(cfg.sites_dir)!r}),
                       cache_dir=Path({str(cfg.cache_dir)!r}))
        host = sys.argv[1]
        for i in range(15):
            provision(cfg, "shared", [host, f"n{{i}}.{{host}}"], backend="http://127.0.0.1:1")
        print("ok")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, host], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for host in ("one.org", "two.org")]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    site = load_site(cfg.sites_dir / "shared.toml", cfg)
    assert site.hosts in (("one.org", "n14.one.org"), ("two.org", "n14.two.org"))
    assert sorted(p.name for p in cfg.sites_dir.iterdir()) == [
        "._hosts.lock", ".shared.lock", "shared.toml"]


def test_two_sites_cannot_both_claim_one_host(cfg: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs pass the conflict check before either writes, unless host claims are locked:
    the check is held open until the other run has had its chance to get there too."""
    import tenantkit.provision as module

    checked = threading.Barrier(2)
    check = module._conflicts

    def slow_check(settings: Settings, site: Any) -> list[str]:
        found = check(settings, site)
        with contextlib.suppress(threading.BrokenBarrierError):
            checked.wait(timeout=1.0)  # with the lock, the other run is still waiting
        return found

    monkeypatch.setattr(module, "_conflicts", slow_check)
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            provision(cfg, name, ["shared.example.org"], backend=UPSTREAM)
            outcomes[name] = "ok"
        except ProvisionError as exc:
            outcomes[name] = str(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(outcomes) == ["one", "two"]
    assert list(outcomes.values()).count("ok") == 1, outcomes
    loser = next(v for v in outcomes.values() if v != "ok")
    assert "already claimed" in loser
    assert len(Registry.load(cfg, log_errors=False).sites) == 1


def test_deprovision(cfg: Settings) -> None:
    provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    (cfg.cache_dir / "a" / "pages" / "x.html").write_text("page")
    result = deprovision(cfg, "a")
    assert result.removed_file and result.removed_cache
    assert not (cfg.sites_dir / "a.toml").exists()
    assert tree(cfg.cache_dir) == []
    again = deprovision(cfg, "a")
    assert not again.changes and "nothing to remove" in again.summary()


def test_deprovision_keep_cache(cfg: Settings) -> None:
    provision(cfg, "a", ["a.org"], backend=UPSTREAM)
    result = deprovision(cfg, "a", keep_cache=True)
    assert result.removed_file and not result.removed_cache
    assert (cfg.cache_dir / "a" / "pages").is_dir()


def test_deprovision_rejects_bad_names(cfg: Settings) -> None:
    with pytest.raises(InvalidSiteName):
        deprovision(cfg, "../etc")


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenantkit.toml"
    path.write_text('sites_dir = "sites"\ncache_dir = "cache"\n')
    return path


def run(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config_file), *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_provision_idempotent_and_sites(config_file: Path) -> None:
    code, out, _ = run(config_file, "provision", "blog", "--host", "blog.example.org",
                       "--upstream", UPSTREAM)
    assert code == 0, out
    assert "created" in out and "blog.toml" in out
    code, out, _ = run(config_file, "provision", "blog", "--host", "blog.example.org",
                       "--upstream", UPSTREAM)
    assert code == 0 and "nothing changed" in out
    code, out, _ = run(config_file, "provision", "shop", "--host", "*.shop.org",
                       "--backend", "wsgi:shop.app:make", "--table-prefix", "s_", "--json")
    assert code == 0, out
    assert json.loads(out)["created"] is True
    code, out, _ = run(config_file, "sites")
    assert code == 0
    assert out.splitlines()[0].split() == ["SITE", "BACKEND", "HOSTS"]
    assert "blog  proxy    blog.example.org" in out
    code, out, _ = run(config_file, "sites", "--json")
    data = json.loads(out)
    assert [s["name"] for s in data["sites"]] == ["blog", "shop"]
    assert data["sites"][1]["backend"] == {"type": "wsgi", "app": "shop.app:make", "url": None,
                                           "max_concurrency": 4, "connect_timeout": 5.0,
                                           "read_timeout": 60.0}
    assert data["errors"] == {}
    code, out, err = run(config_file, "check", "--offline")  # the upstream is not running
    # shop's app is a name only: check tries to import it, as the shim would.
    assert code == 1 and "site shop: backend does not load" in err, err
    assert "upstream" not in err
    code, out, _ = run(config_file, "deprovision", "shop", "--yes")
    assert code == 0 and "removed" in out
    code, out, _ = run(config_file, "sites", "--json")
    assert [s["name"] for s in json.loads(out)["sites"]] == ["blog"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["provision", "../x", "--host", "a.org", "--upstream", UPSTREAM], 2,
                     "invalid site name", id="dotdot"),
        pytest.param(["provision", "a/b", "--host", "a.org", "--upstream", UPSTREAM], 2,
                     "invalid site name", id="slash"),
        pytest.param(["provision", "A", "--host", "a.org", "--upstream", UPSTREAM], 2,
                     "invalid site name", id="uppercase"),
        pytest.param(["provision", "--host", "a.org", "--upstream", UPSTREAM, "--", "-a"], 2,
                     "invalid site name", id="leading hyphen"),
        pytest.param(["provision", "", "--host", "a.org", "--upstream", UPSTREAM], 2,
                     "invalid site name", id="empty"),
        pytest.param(["provision", "a" * 64, "--host", "a.org", "--upstream", UPSTREAM], 2,
                     "invalid site name", id="64 characters"),
        pytest.param(["provision", "ok", "--host", "a b", "--upstream", UPSTREAM], 2,
                     "whitespace", id="bad host"),
        pytest.param(["provision", "ok", "--upstream", UPSTREAM], 2, "give its hosts",
                     id="no host"),
        pytest.param(["provision", "ok", "--host", "a.org"], 2, "give its backend",
                     id="no backend"),
        pytest.param(["provision", "ok", "--host", "a.org", "--backend", "x:y"], 2,
                     "wsgi:module:attr", id="bad backend"),
        pytest.param(["provision", "ok", "--host", "a.org", "--upstream", "ftp://x"], 2,
                     "invalid backend", id="bad upstream"),
        pytest.param(["provision", "ok", "--host", "a.org", "--upstream", UPSTREAM,
                      "--backend", "wsgi:a:b"], 2, "not both", id="both backends"),
        pytest.param(["provision", "ok", "--host", "a.org", "--upstream", UPSTREAM,
                      "--table-prefix", "x;y"], 2, "table_prefix", id="bad table prefix"),
        pytest.param(["provision", "ok", "--host", "taken.org", "--upstream", UPSTREAM], 1,
                     "already claimed", id="conflict"),
        pytest.param(["deprovision", "../x"], 2, "invalid site name", id="deprovision dotdot"),
    ],
)
def test_cli_bad_input(config_file: Path, args: list[str], code: int, message: str) -> None:
    assert run(config_file, "provision", "taken", "--host", "taken.org",
               "--upstream", UPSTREAM)[0] == 0
    before = tree(config_file.parent)
    exit_code, out, err = run(config_file, *args)
    assert exit_code == code, out + err
    assert message in err
    assert tree(config_file.parent) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\xff\xfe\x00binary", "not UTF-8", id="binary"),
        pytest.param(b"hosts = [", "invalid TOML", id="garbage"),
        pytest.param(b"#" * 300_000, "larger than", id="huge"),
    ],
)
def test_cli_check_reports_broken_files(config_file: Path, content: bytes, message: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    assert run(config_file, "provision", "good", "--host", "good.org",
               "--upstream", UPSTREAM)[0] == 0
    (config_file.parent / "sites" / "bad.toml").write_bytes(content)
    code, out, err = run(config_file, "check")
    assert code == 1
    assert "bad.toml" in err and message in err
    # Reported once on stderr, not a second time through the registry's log.
    assert [r for r in caplog.records if r.name == "tenantkit.registry"] == []
    code, out, err = run(config_file, "sites")
    assert code == 0 and "good" in out and "bad.toml" in err


def test_cli_check_reports_conflicts_and_bad_settings(config_file: Path) -> None:
    sites = config_file.parent / "sites"
    sites.mkdir()
    for name in ("a", "b"):
        (sites / f"{name}.toml").write_text(
            f'hosts = ["same.org"]\n[backend]\ntype = "proxy"\nurl = "{UPSTREAM}"\n')
    code, _, err = run(config_file, "check")
    assert code == 1 and "a keeps it" in err
    config_file.write_text("[cache]\nttl = 'x'\n")
    code, _, err = run(config_file, "check")
    assert code == 1 and 'key "cache.ttl"' in err
