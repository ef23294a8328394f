from __future__ import annotations

from pathlib import Path

import pytest

from tenantkit import ConfigError, Settings, mask_url


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenantkit.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_with_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.load(env={})
    assert settings.sites_dir == Path("sites")
    assert settings.cache_dir == Path("cache")
    assert settings.database.primary == "sqlite:///./tenantkit.db"
    assert settings.database.replicas == ()
    assert settings.bus.transport == "local"
    assert settings.source is None


def test_reads_tenantkit_toml_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, 'sites_dir = "s"\n[cache]\nttl = 60\n')
    monkeypatch.chdir(tmp_path)
    settings = Settings.load(env={})
    assert settings.sites_dir == Path("s")
    assert settings.cache.ttl == 60


def test_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[bus]\ntransport = "redis"\n')
    settings = Settings.load(env={"TENANTKIT_CONFIG": str(path)})
    assert settings.bus.transport == "redis"
    assert settings.source == str(path)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'sites_dir = "sites"\ncache_dir = "/var/cache/tk"\n')
    settings = Settings.load(path, env={})
    assert settings.sites_dir == tmp_path / "sites"
    assert settings.cache_dir == Path("/var/cache/tk")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nprimary = "sqlite:///a.db"\n[cache]\nttl = 60\n')
    settings = Settings.load(path, env={
        "TENANTKIT_DATABASE_PRIMARY": "mysql+pymysql://u:p@h/db",
        "TENANTKIT_DATABASE_REPLICAS": "mysql+pymysql://u:p@r1/db, mysql+pymysql://u:p@r2/db",
        "TENANTKIT_CACHE_TTL": "30",
        "TENANTKIT_CACHE_ENABLED": "off",
        "TENANTKIT_SITES_DIR": "/srv/sites",
        "TENANTKIT_WEB_ADMIN_HOSTS": "admin.example.org",
        "TENANTKIT_PROVISION_HOST": "ignored: belongs to the CLI",
    })
    assert settings.database.primary == "mysql+pymysql://u:p@h/db"
    assert settings.database.replicas == ("mysql+pymysql://u:p@r1/db", "mysql+pymysql://u:p@r2/db")
    assert settings.cache.ttl == 30
    assert settings.cache.enabled is False
    assert settings.sites_dir == Path("/srv/sites")
    assert settings.web.admin_hosts == ("admin.example.org",)


def test_settings_are_frozen_and_compare_by_value() -> None:
    a, b = Settings(), Settings()
    assert a == b
    with pytest.raises(AttributeError):
        a.sites_dir = Path("x")  # type: ignore[misc]


def test_passwords_are_masked_in_repr(tmp_path: Path) -> None:
    path = write(tmp_path, """
[database]
primary = "mysql+tenantkit://app:s3cret@db1/app"
replicas = ["mysql+pymysql://app:an0ther@127.0.0.1/app"]
[bus]
redis_url = "redis://:r3dis@127.0.0.1:6379/0"
[web]
admin_token = "t0ken"
secret_key = "k3y"
""")
    text = repr(Settings.load(path, env={}))
    for secret in ("s3cret", "an0ther", "r3dis", "t0ken", "k3y"):
        assert secret not in text
    assert "app:********@db1" in text


@pytest.mark.parametrize(("url", "masked"), [
    pytest.param("mysql://u:p@h/db", "mysql://u:********@h/db", id="user and password"),
    pytest.param("mysql://u@h/db", "mysql://u@h/db", id="no password"),
    pytest.param("redis://:pw@h:1/0", "redis://:********@h:1/0", id="redis password only"),
    pytest.param("sqlite:///./x.db", "sqlite:///./x.db", id="sqlite"),
    pytest.param("see mysql://a:b@c and redis://:d@e", "see mysql://a:********@c and "
                 "redis://:********@e", id="inside a log line"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(("text", "fragments"), [
    pytest.param("sites_dir = 5\n", ['key "sites_dir"', "expected a string", "got 5"],
                 id="wrong type"),
    pytest.param("colour = 1\n", ['key "colour"', "unknown key", "allowed:", "sites_dir"],
                 id="unknown top-level key"),
    pytest.param("[cache]\nttl = -1\n", ['key "cache.ttl"', "from 0 to", "-1"], id="negative ttl"),
    pytest.param("[cache]\nttl = 1.5\n", ['key "cache.ttl"', "whole number"], id="float ttl"),
    pytest.param("[database]\nread_timeout = nan\n", ['key "database.read_timeout"', "finite"],
                 id="nan timeout"),
    pytest.param("[cache]\nstale_if_error = 1" + "0" * 400 + "\n",
                 ['key "cache.stale_if_error"', "from 0 to"], id="huge stale_if_error"),
    pytest.param("[cache]\nenabled = \"yes\"\n", ['key "cache.enabled"', "true or false"],
                 id="quoted bool"),
    pytest.param("[cache]\npolicy = \"all\"\n", ['key "cache.policy"', '"site" or "targeted"'],
                 id="bad policy"),
    pytest.param("[cache]\nsize = 1\n", ['key "cache.size"', "allowed in [cache]", "ttl"],
                 id="unknown section key"),
    pytest.param("cache = 1\n", ['key "cache"', "a table", "[cache]"], id="section not a table"),
    pytest.param("[database]\nprimary = \"db1\"\n", ['key "database.primary"', "database URL"],
                 id="url without scheme"),
    pytest.param("[database]\nreplicas = \"mysql://r/db\"\n",
                 ['key "database.replicas"', "a list of strings", 'replicas = ["'],
                 id="replicas not a list"),
    pytest.param("[database]\nread_your_writes = \"always\"\n",
                 ['"gtid" or "pin" or "off"'], id="bad read_your_writes"),
    pytest.param("[bus]\ntransport = \"kafka\"\n", ['key "bus.transport"', '"local"'],
                 id="bad transport"),
    pytest.param("[bus]\nredis_url = \"127.0.0.1:6379\"\n", ["Redis URL"], id="bad redis url"),
    pytest.param("[bus]\ncoalesce_window = -0.1\n", ['key "bus.coalesce_window"', "from 0 to 5"],
                 id="negative coalesce window"),
    pytest.param("[bus]\ncoalesce_window = 3600\n", ['key "bus.coalesce_window"', "from 0 to 5"],
                 id="coalesce window of an hour"),
    pytest.param("[bus]\ncoalesce_window = inf\n", ['key "bus.coalesce_window"', "finite"],
                 id="infinite coalesce window"),
    pytest.param("[bus]\ncoalesce_window = \"fast\"\n", ['key "bus.coalesce_window"',
                 "a number"], id="coalesce window not a number"),
    pytest.param("[web]\nunknown = \"Bad Site\"\n", ['key "web.unknown"', '"421" or a site name'],
                 id="bad unknown"),
    pytest.param("log_level = \"LOUD\"\n", ['key "log_level"', '"DEBUG"'], id="bad log level"),
    pytest.param("[cache\nttl=1", ["invalid TOML", "fix the syntax"], id="broken toml"),
])
def test_bad_files_name_the_file_the_key_and_the_fix(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Settings.load(path, env={})
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_password_in_a_bad_url_is_masked_in_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[bus]\nredis_url = "http://:hunter2@h"\n')
    with pytest.raises(ConfigError) as info:
        Settings.load(path, env={})
    assert "hunter2" not in str(info.value)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "tenantkit.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Settings.load(path, env={})


def test_missing_file_named_by_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(env={"TENANTKIT_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(("var", "value", "fragment"), [
    pytest.param("TENANTKIT_CACHE_TTL", "soon", "an integer", id="int"),
    pytest.param("TENANTKIT_CACHE_ENABLED", "maybe", "true or false", id="bool"),
    pytest.param("TENANTKIT_DATABASE_PIN_SECONDS", "x", "a number", id="float"),
    pytest.param("TENANTKIT_BUS_COALESCE_WINDOW", "nan", "finite", id="coalesce window nan"),
    pytest.param("TENANTKIT_BUS_TRANSPORT", "smoke", '"redis"', id="choice"),
])
def test_bad_environment_values_name_the_variable(var: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={var: value})
    assert f"environment variable {var}" in str(info.value)
    assert fragment in str(info.value)


def test_coalesce_window_default_and_setting(tmp_path: Path) -> None:
    assert Settings.load(env={}).bus.coalesce_window == 0.25
    path = write(tmp_path, "[bus]\ncoalesce_window = 0\n")
    assert Settings.load(path, env={}).bus.coalesce_window == 0.0
    assert Settings.load(env={"TENANTKIT_BUS_COALESCE_WINDOW": "1.5"}).bus.coalesce_window == 1.5
