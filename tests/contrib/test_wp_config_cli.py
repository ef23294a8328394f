"""``tenantkit provision <site> --print-wp-config``: the block, read back by PHP itself."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from tenantkit.cli import cli

from .phpcli import run_php_calls
from .wordpress import require_wordpress

PASSWORD = "p'a\\ss@:/%"
PRIMARY = f"mysql+pymysql://wp:{quote(PASSWORD, safe='')}@db1.example.net:3307/blog"
REPLICA = "mysql+pymysql://wp:r@127.0.0.1:3306/blog"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenantkit.toml"
    path.write_text(
        'sites_dir = "sites"\ncache_dir = "cache"\n'
        '[database]\nread_your_writes = "pin"\npin_seconds = 7\nconnect_timeout = 1.5\n'
        '[bus]\ntransport = "redis"\nredis_url = "redis://10.0.0.5:6379/2"\nstream = "tk:ev"\n'
    )
    return path


def provision(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config_file), "provision", "blog",
                                      "--host", "blog.example.org",
                                      "--host", "www.blog.example.org",
                                      "--upstream", "http://127.0.0.1:8080", *args])
    return result.exit_code, result.stdout, result.stderr


def read_back(php: str, tmp_path: Path, text: str, names: list[str]) -> list[object]:
    """Load the printed PHP and return the constants' values as PHP sees them."""
    path = tmp_path / "printed.php"
    path.write_text(text if text.startswith("<?php") else "<?php\n" + text)
    return run_php_calls(php, [str(path)], [("constant", [n]) for n in names]).results


def test_print_wp_config_block_round_trips_through_php(
        php: str, config_file: Path, tmp_path: Path) -> None:
    code, out, err = provision(config_file, "--database", PRIMARY, "--replica", REPLICA,
                               "--print-wp-config")
    assert code == 0, err
    assert "blog" in err  # the provisioning summary, on stderr
    values = read_back(php, tmp_path, out, [
        "TENANTKIT_SITE", "TENANTKIT_DB_PRIMARY", "TENANTKIT_DB_REPLICAS", "TENANTKIT_COMPRESS",
        "TENANTKIT_BUS", "TENANTKIT_PURGE_DIR", "TENANTKIT_READ_YOUR_WRITES",
        "TENANTKIT_PIN_SECONDS", "TENANTKIT_CONNECT_TIMEOUT"])
    assert values[0] == "blog"
    assert str(values[1]).startswith("mysql://wp:")
    assert str(values[1]).endswith("@db1.example.net:3307/blog")
    assert values[2] == ["mysql://wp:r@127.0.0.1:3306/blog"]
    assert values[3] is True
    assert values[4] == "redis://10.0.0.5:6379/2?stream=tk%3Aev"
    assert values[5] == str(tmp_path / "cache" / "blog" / ".purge")
    assert values[6:] == ["pin", 7, 1.5]


def test_the_drop_in_reads_the_printed_primary_back(
        php: str, config_file: Path, tmp_path: Path) -> None:
    wordpress = require_wordpress()
    code, out, err = provision(config_file, "--database", PRIMARY, "--print-wp-config")
    assert code == 0, err
    printed = tmp_path / "printed.php"
    printed.write_text("<?php\n" + out)
    helper = tmp_path / "helper.php"
    helper.write_text(
        "<?php\nfunction tk_test_primary(): array {\n"
        "    return Tenantkit_DB::tk_parse_server(TENANTKIT_DB_PRIMARY,\n"
        "        ['user' => '', 'password' => '', 'name' => ''], 'TENANTKIT_DB_PRIMARY');\n}\n")
    result = run_php_calls(
        php, [str(printed), str(wordpress / "wp-includes" / "class-wpdb.php"),
              "wp-db-router.php", str(helper)],
        [("tk_test_primary", [])])
    server = result.results[0]
    assert (server["host"], server["port"], server["user"], server["password"], server["name"]) \
        == ("db1.example.net", 3307, "wp", PASSWORD, "blog")


def test_debian_form_is_a_whole_config_file(php: str, config_file: Path, tmp_path: Path) -> None:
    code, out, err = provision(config_file, "--database", PRIMARY, "--table-prefix", "blog_",
                               "--print-wp-config", "--debian")
    assert code == 0, err
    assert out.startswith("<?php\n// /etc/wordpress/config-blog.example.org.php")
    assert "www.blog.example.org" in out  # told to link the other host's name
    values = read_back(php, tmp_path, out, ["DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST",
                                            "TENANTKIT_SITE"])
    assert values == ["blog", "wp", PASSWORD, "db1.example.net:3307", "blog"]
    assert "$table_prefix = 'blog_';" in out


@pytest.mark.parametrize("args, message", [
    pytest.param(["--print-wp-config"], "WordPress needs MySQL or MariaDB", id="sqlite primary"),
    pytest.param(["--database", "mysql+pymysql://u:p@h/", "--print-wp-config"],
                 "names no database", id="no database name"),
    pytest.param(["--debian"], "--debian only goes with --print-wp-config", id="debian alone"),
    pytest.param(["--json", "--print-wp-config"], "not both", id="json and wp-config"),
])
def test_print_wp_config_usage_errors(config_file: Path, args: list[str], message: str) -> None:
    code, out, err = provision(config_file, *args)
    assert code == 2
    assert message in err
    assert "define(" not in out


def test_print_wp_config_paths_are_absolute(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """PHP runs elsewhere: a relative purge directory would be one no watcher looks at."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENANTKIT_CONFIG", raising=False)
    monkeypatch.setenv("TENANTKIT_SITES_DIR", "sites")
    monkeypatch.setenv("TENANTKIT_CACHE_DIR", "cache")
    result = CliRunner().invoke(cli, ["provision", "blog", "--host", "blog.example.org",
                                      "--upstream", "http://127.0.0.1:8080",
                                      "--database", PRIMARY, "--print-wp-config"])
    assert result.exit_code == 0, result.stderr
    expected = str(tmp_path / "cache" / "blog" / ".purge")
    assert f"define('TENANTKIT_PURGE_DIR', '{expected}');" in result.stdout
    assert f"define('TENANTKIT_BUS', '{expected}');" in result.stdout
    # The files to link are named by absolute path too (this checkout's contrib/).
    sources = re.findall(r"ln -s (\S+)", result.stdout)
    assert sources and all(Path(s).is_absolute() and Path(s).is_file() for s in sources), sources


def test_a_site_with_primary_candidates_prints_them(php: str, config_file: Path,
                                                    tmp_path: Path) -> None:
    code, _, err = provision(config_file)
    assert code == 0, err
    site_file = tmp_path / "sites" / "blog.toml"
    site_file.write_text(site_file.read_text() + (
        f'\n[database]\nprimaries = ["{PRIMARY}", "mysql+pymysql://wp:x@db2.example.net/blog"]\n'))
    result = CliRunner().invoke(cli, ["--config", str(config_file), "provision", "blog",
                                      "--print-wp-config"])
    assert result.exit_code == 0, result.stderr
    assert "TENANTKIT_DB_PRIMARY'" not in result.stdout
    values = read_back(php, tmp_path, result.stdout, ["TENANTKIT_DB_PRIMARIES"])
    first, second = values[0]  # type: ignore[misc]
    assert str(first).endswith("@db1.example.net:3307/blog")
    assert second == "mysql://wp:x@db2.example.net/blog"
