from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli


@pytest.mark.parametrize("bind", [
    pytest.param("nonsense", id="no port"),
    pytest.param("127.0.0.1:0", id="port zero"),
    pytest.param("127.0.0.1:99999", id="port too big"),
    pytest.param("127.0.0.1:http", id="port not a number"),
])
def test_serve_refuses_a_bad_bind(bind: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--bind", bind])
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output


def test_serve_refuses_zero_workers() -> None:
    assert CliRunner().invoke(cli, ["serve", "--workers", "0"]).exit_code == 2


def test_nginx_config_names_the_cache_dir_and_upstream(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text('cache_dir = "cache"\n[cache]\nbypass_cookies = ["my_session"]\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "nginx-config", "--listen",
                                      "127.0.0.1:8080", "--upstream", "127.0.0.1:9000"])
    assert result.exit_code == 0, result.output
    assert f"root {tmp_path / 'cache' / '_hosts'};" in result.output
    assert "server 127.0.0.1:9000;" in result.output
    assert "listen 127.0.0.1:8080 default_server;" in result.output
    assert "my[._ \\[]session|tenantkit[._ \\[]rw" in result.output


@pytest.mark.parametrize(("args", "toml"), [
    pytest.param(["--upstream", "x; evil"], "", id="upstream with a semicolon"),
    pytest.param(["--listen", "80 ssl;"], "", id="listen with spaces"),
    pytest.param([], '[cache]\nbypass_cookies = ["a b"]\n', id="cookie with a space"),
    pytest.param([], '[cache]\nbypass_cookies = ["x\\"y"]\n', id="cookie with a quote"),
])
def test_nginx_config_refuses_what_would_break_the_config(tmp_path: Path, args: list[str],
                                                          toml: str) -> None:
    config = tmp_path / "t.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, ["--config", str(config), "nginx-config", *args])
    assert result.exit_code == 2
    assert "nginx config" in result.output
