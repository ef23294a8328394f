"""Issue 17: a site file that is a FIFO, a device or deeply nested TOML is one broken site.

Each case is reported for that file and skipped; loading, ``check``, ``sites`` and later
reloads keep working for every other site. The settings file nested too deep is a clear
error, not a traceback.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli
from tenantkit.config import Settings
from tenantkit.errors import ConfigError
from tenantkit.registry import Registry

GOOD = 'hosts = ["good.test"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
#: tomllib recurses once per nested array: this is past Python's recursion limit.
DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"


def fifo(path: Path) -> None:
    os.mkfifo(path)


def device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # a character device that never ends


def nested(path: Path) -> None:
    path.write_text(GOOD + DEEP)


BROKEN: list[tuple[Callable[[Path], None], str]] = [
    (fifo, "is a FIFO, not a regular file"),
    (device, "is a character device, not a regular file"),
    (nested, "nested too deeply"),
]
IDS = ["fifo", "device", "nested toml"]


def _run_bounded(target: Callable[[], object]) -> object:
    """*target*'s result (or its exception, raised here); fails instead of hanging the run
    after 20 s."""
    result: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(target())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "hung on a broken site file"
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "good.toml").write_text(GOOD)
    return Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(("make", "message"), BROKEN, ids=IDS)
def test_a_broken_site_file_is_that_one_site(settings: Settings, make: Callable[[Path], None],
                                             message: str) -> None:
    bad = settings.sites_dir / "bad.toml"
    make(bad)
    registry = _run_bounded(lambda: Registry.load(settings, log_errors=False))
    assert isinstance(registry, Registry)
    assert list(registry.sites) == ["good"]
    assert message in registry.errors[bad]
    # Later reloads keep working (and keep reporting it).
    (settings.sites_dir / "more.toml").write_text(GOOD.replace("good.test", "more.test"))
    report = _run_bounded(registry.reload)
    assert "more" in registry.sites
    assert report
    assert message in registry.errors[bad]


@pytest.mark.parametrize(("make", "message"), BROKEN, ids=IDS)
def test_sites_and_check_report_it_and_go_on(settings: Settings,
                                            make: Callable[[Path], None], message: str) -> None:
    make(settings.sites_dir / "bad.toml")
    env = {"TENANTKIT_SITES_DIR": str(settings.sites_dir),
           "TENANTKIT_CACHE_DIR": str(settings.cache_dir)}
    runner = CliRunner()
    listed = _run_bounded(lambda: runner.invoke(cli, ["sites", "--json"], env=env))
    assert listed.exit_code == 0, listed.output  # type: ignore[attr-defined]
    data = json.loads(listed.stdout)  # type: ignore[attr-defined]
    assert [s["name"] for s in data["sites"]] == ["good"]
    assert message in data["errors"][str(settings.sites_dir / "bad.toml")]
    checked = _run_bounded(lambda: runner.invoke(cli, ["check", "--offline"], env=env))
    assert message in checked.output  # type: ignore[attr-defined]
    assert "Traceback" not in checked.output  # type: ignore[attr-defined]
    assert checked.exception is None or isinstance(  # type: ignore[attr-defined]
        checked.exception, SystemExit)  # type: ignore[attr-defined]


def test_sites_json_shows_the_isolation_settings(settings: Settings) -> None:
    (settings.sites_dir / "tuned.toml").write_text(
        GOOD.replace("good.test", "tuned.test")
        + "max_concurrency = 2\nconnect_timeout = 1.5\nread_timeout = 10\n"
        + "[cache]\nstale_if_error = 60\nrewarm = true\n")
    env = {"TENANTKIT_SITES_DIR": str(settings.sites_dir),
           "TENANTKIT_CACHE_DIR": str(settings.cache_dir)}
    result = CliRunner().invoke(cli, ["sites", "--json"], env=env)
    assert result.exit_code == 0, result.output
    sites = {s["name"]: s for s in json.loads(result.stdout)["sites"]}
    assert sites["tuned"]["backend"]["max_concurrency"] == 2
    assert sites["tuned"]["backend"]["connect_timeout"] == 1.5
    assert sites["tuned"]["backend"]["read_timeout"] == 10.0
    assert sites["tuned"]["cache"]["stale_if_error"] == 60
    assert sites["tuned"]["cache"]["rewarm"] is True
    assert sites["good"]["backend"]["max_concurrency"] == 4
    assert sites["good"]["backend"]["connect_timeout"] == 5.0
    assert sites["good"]["backend"]["read_timeout"] == 60.0
    assert sites["good"]["cache"]["stale_if_error"] == 300
    assert sites["good"]["cache"]["rewarm"] is False


@pytest.mark.parametrize(("text", "message"), [
    pytest.param('hosts = ["a.test"]\n[backend]\ntype = "proxy"\nurl = "http://x"\n'
                 "max_concurrency = 0\n", ">= 1", id="no concurrency"),
    pytest.param('hosts = ["a.test"]\n[backend]\ntype = "proxy"\nurl = "http://x"\n'
                 'read_timeout = "60"\n', "seconds > 0", id="timeout as string"),
    pytest.param('hosts = ["a.test"]\n[backend]\ntype = "wsgi"\napp = "a:b"\n'
                 "read_timeout = 5\n", "only for type", id="timeout on a wsgi app"),
    pytest.param('hosts = ["a.test"]\n[backend]\ntype = "proxy"\nurl = "http://x"\n'
                 '[cache]\nrewarm = "yes"\n', "true or false", id="rewarm as string"),
])
def test_bad_isolation_settings_say_what_to_write(settings: Settings, text: str,
                                                  message: str) -> None:
    (settings.sites_dir / "bad.toml").write_text(text)
    registry = Registry.load(settings, log_errors=False)
    assert message in registry.errors[settings.sites_dir / "bad.toml"]


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda p: p.write_text(DEEP), "nested too deeply", id="nested"),
    pytest.param(fifo, "is a FIFO", id="fifo"),
])
def test_a_broken_settings_file_is_a_clear_error(tmp_path: Path, make: Callable[[Path], None],
                                                 message: str) -> None:
    path = tmp_path / "tenantkit.toml"
    make(path)
    with pytest.raises(ConfigError, match=message):
        _run_bounded(lambda: Settings.load(path, env={}))
    result = _run_bounded(lambda: CliRunner().invoke(cli, ["--config", str(path), "sites"]))
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert message in result.output  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
