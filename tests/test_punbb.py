"""tenantkit.export.punbb and ``tenantkit punbb-config``: the PunBB forum map."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantkit.cli import cli
from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.errors import ForumMapError
from tenantkit.export.punbb import (
    build_forum_map,
    forum_for_site,
    php_literal,
    render_forum_map,
    write_forum_map,
)
from tenantkit.hosts import HostIndex
from tenantkit.sites import Backend, Site, SiteDatabase

MYSQL = "mysql+pymysql://punbb:s3cret@db.internal:3307/forums"


def site(name: str, hosts: tuple[str, ...] = ("forum.test",), *, forum: bool = True,
         primary: str | None = MYSQL, prefix: str = "", cache: Path = Path("/srv/cache"),
         **meta: object) -> Site:
    return Site(
        name=name, hosts=hosts, backend=Backend(type="proxy", url="http://127.0.0.1:1"),
        database=SiteDatabase(primary=primary, table_prefix=prefix),
        meta={**({"app": "punbb"} if forum else {}), **meta}, cache_root=cache / name,
    )


SETTINGS = Settings(sites_dir=Path("/srv/sites"), cache_dir=Path("/srv/cache"))


def test_forum_for_site_defaults() -> None:
    forum = forum_for_site(site("my-forum", ("*.x.test", "my.test")), SETTINGS)
    assert forum.db_type == "mysqli_innodb"
    assert (forum.db_host, forum.db_name, forum.db_username, forum.db_password) == (
        "db.internal:3307", "forums", "punbb", "s3cret")
    assert forum.db_prefix == "my_forum_"
    assert forum.base_url == "http://my.test"
    assert forum.cookie_name == "forum_cookie_my_forum"
    assert forum.cache_dir == "/srv/cache/my-forum/app/"
    assert forum.purge_dir == "/srv/cache/my-forum/.purge/"
    assert forum.avatars_dir == "img/avatars/my-forum"
    assert forum.bus == ""
    assert "s3cret" not in repr(forum)


def test_forum_for_site_uses_global_database_and_meta_base_url() -> None:
    settings = Settings(database=DatabaseSettings(primary="mariadb+pymysql://u@db/all"),
                        bus=BusSettings(transport="redis", redis_url="redis://:pw@r:6379/1",
                                        stream="forums"))
    forum = forum_for_site(site("f", primary=None, prefix="pun_",
                                base_url="https://f.example/"), settings)
    assert (forum.db_host, forum.db_name, forum.db_prefix) == ("db", "all", "pun_")
    assert forum.base_url == "https://f.example"
    assert forum.bus == "redis://:pw@r:6379/1?stream=forums"


def test_relative_cache_dir_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    forum = forum_for_site(site("f", cache=Path("cache")), SETTINGS)
    assert forum.cache_dir == f"{tmp_path}/cache/f/app/"


@pytest.mark.parametrize(("kwargs", "says"), [
    pytest.param({"primary": "sqlite:///x.db"}, "PunBB needs MySQL or MariaDB", id="sqlite"),
    pytest.param({"primary": "postgresql://u:pw@h/db"}, "PunBB needs MySQL", id="postgres"),
    pytest.param({"primary": "mysql+pymysql://u:pw@h"}, "names no host or no database",
                 id="no database"),
    pytest.param({"primary": "mysql+pymysql://u:pw@[::1]:3306/db"}, "no IPv6 literal",
                 id="ipv6"),
    pytest.param({"primary": "mysql+pymysql://u:pw@h/db?unix_socket=/run/s"}, "unix_socket",
                 id="unix socket"),
    pytest.param({"primary": "not a url"}, "not a database URL", id="garbage url"),
    pytest.param({"prefix": "1x_"}, "table prefix '1x_'", id="prefix starting with a digit"),
    pytest.param({"prefix": "p" * 41}, "at most 40", id="prefix too long"),
    pytest.param({"hosts": ("*.only.test",)}, "no exact host name", id="only wildcards"),
    pytest.param({"base_url": "ftp://x"}, "[meta] base_url", id="base url scheme"),
    pytest.param({"base_url": "http://x'.test"}, "[meta] base_url", id="base url quote"),
    pytest.param({"base_url": "http://x.test/?a=1"}, "[meta] base_url", id="base url query"),
    pytest.param({"base_url": 42}, "[meta] base_url", id="base url not a string"),
])
def test_unusable_forum_settings_say_what_to_fix(kwargs: dict[str, object], says: str) -> None:
    hosts = kwargs.pop("hosts", ("forum.test",))
    with pytest.raises(ForumMapError) as info:
        forum_for_site(site("f", hosts, **kwargs), SETTINGS)  # type: ignore[arg-type]
    assert says in str(info.value)
    assert str(info.value).startswith("site f")
    assert "pw" not in str(info.value).replace("pw@", "")


def test_shared_tables_are_refused() -> None:
    sites = [site("a", ("a.test",), prefix="same_"), site("b", ("b.test",), prefix="SAME_")]
    with pytest.raises(ForumMapError, match="sites a and b would share the tables"):
        build_forum_map(sites, SETTINGS)


def test_named_sites() -> None:
    sites = [site("a", ("a.test",)), site("b", ("b.test",)), site("blog", ("c.test",),
                                                                  forum=False)]
    assert list(build_forum_map(sites, SETTINGS).forums) == ["a", "b"]
    assert list(build_forum_map(sites, SETTINGS, names=["b"]).forums) == ["b"]
    with pytest.raises(ForumMapError, match="no site named nope"):
        build_forum_map(sites, SETTINGS, names=["nope"])
    with pytest.raises(ForumMapError, match=r'site blog is not a PunBB forum .*app = "punbb"'):
        build_forum_map(sites, SETTINGS, names=["blog"])


def test_other_sites_keep_their_hosts_and_regexes_are_reported() -> None:
    sites = [site("forum", ("forum.test", "*.test", "~^re\\.test$")),
             site("blog", ("blog.test",), forum=False)]
    forum_map = build_forum_map(sites, SETTINGS)
    assert forum_map.lookup("x.test") == "forum"
    assert forum_map.lookup("blog.test") is None
    assert forum_map.skipped == ("forum: ~^re\\.test$",)


# --- the map picks what HostIndex picks -------------------------------------------------------

LABELS = ("a", "b", "forum", "test", "org")
label_paths = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
patterns = st.one_of(
    label_paths,
    label_paths.map(lambda p: "*." + p),
    label_paths.map(lambda p: "." + p),
    label_paths.map(lambda p: p + ".*"),
)
site_tables = st.dictionaries(st.sampled_from(("s1", "s2", "s3", "s4")),
                              st.lists(patterns, min_size=1, max_size=4), min_size=1)


@settings(max_examples=300, deadline=None)
@given(table=site_tables, forums=st.sets(st.sampled_from(("s1", "s2", "s3", "s4"))),
       hosts=st.lists(label_paths, min_size=1, max_size=20))
def test_map_lookup_agrees_with_host_index(table: dict[str, list[str]], forums: set[str],
                                           hosts: list[str]) -> None:
    sites = [site(name, tuple(pats), forum=name in forums, prefix=f"{name}_",
                  base_url="http://x.test")
             for name, pats in table.items()]
    index = HostIndex({s.name: s.hosts for s in sites})
    forum_map = build_forum_map(sites, SETTINGS)
    for host in hosts:
        expected = index.match(host)
        assert forum_map.lookup(host) == (expected if expected in forums else None), host


# --- PHP source -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def php() -> str:
    found = shutil.which("php")
    if found is None:
        if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
            pytest.fail("php not found: apt-get install php-cli")
        pytest.skip("php not found: install it (apt-get install php-cli)")
    return found


def php_value(php: str, path: Path) -> object:
    proc = subprocess.run([php, "-d", "error_reporting=-1", "-r",
                           f"echo json_encode(include {php_literal(str(path))});"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("value", [
    pytest.param("it's", id="quote"),
    pytest.param("back\\slash\\", id="backslashes"),
    pytest.param("\\'", id="escaped quote"),
    pytest.param("?> <?php echo 1;", id="php close tag"),
    pytest.param("$var {$x} \n\t", id="dollar and newline"),
    pytest.param("bücher — ünïcödé", id="unicode"),
    pytest.param(["a", 1, True, None, {"k": "v"}, []], id="nested"),
])
def test_php_literal_round_trips(php: str, tmp_path: Path, value: object) -> None:
    target = tmp_path / "v.php"
    target.write_text("<?php return " + php_literal(value) + ";\n", encoding="utf-8")
    assert php_value(php, target) == value


def test_php_literal_refuses_nul_and_objects() -> None:
    with pytest.raises(ValueError, match="NUL"):
        php_literal("a\0b")
    with pytest.raises(TypeError):
        php_literal(object())


def test_rendered_map_is_valid_php_with_everything(php: str, tmp_path: Path) -> None:
    sites = [site("a", ("a.test", "*.a.test", "www.a.*"), prefix="fa_"),
             site("b", (".b.test",), prefix="fb_", base_url="https://b.test"),
             site("blog", ("blog.a.test",), forum=False)]
    target = tmp_path / "map.php"
    write_forum_map(target, render_forum_map(build_forum_map(sites, SETTINGS,
                                                             events_helper="/x/ev.php")))
    lint = subprocess.run([php, "-l", str(target)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert "No syntax errors" in lint.stdout
    value = php_value(php, target)
    assert isinstance(value, dict)
    assert value["version"] == 1
    assert value["events_helper"] == "/x/ev.php"
    assert value["hosts"] == {"a.test": "a", "blog.a.test": ""}
    assert value["leading"] == {"a.test": ["a", False], "b.test": ["b", True]}
    assert value["trailing"] == {"www.a": "a"}
    assert value["forums"]["b"]["base_url"] == "https://b.test"
    assert value["forums"]["a"]["db_password"] == "s3cret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["map.php"]


def test_write_forum_map_leaves_no_temp_file_on_failure(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_forum_map(tmp_path / "map.php", "<?php return array();\n")
    assert list(tmp_path.iterdir()) == []


# --- the command ------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "sites").mkdir()
    (tmp_path / "tenantkit.toml").write_text(
        'sites_dir = "sites"\ncache_dir = "cache"\n[database]\n'
        f'primary = "{MYSQL}"\n')
    (tmp_path / "sites" / "forum.toml").write_text(
        'hosts = ["forum.test", "*.forum.test", "~^f[0-9]\\\\.test$"]\n'
        '[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:8080"\n'
        '[database]\ntable_prefix = "forum_"\n[meta]\napp = "punbb"\n')
    (tmp_path / "sites" / "blog.toml").write_text(
        'hosts = ["blog.forum.test"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:8081"\n')
    return tmp_path


def run(project: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(project / "tenantkit.toml"), *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_prints_the_map(project: Path) -> None:
    code, out, err = run(project, "punbb-config")
    assert code == 0, err
    assert out.startswith("<?php\n")
    assert "'forum.test' => 'forum'" in out
    assert "'blog.forum.test' => ''" in out
    assert f"'cache_dir' => '{project}/cache/forum/app/'" in out
    assert "regex host pattern left out of the forum map: forum: ~^f[0-9]\\.test$" in err
    assert not (project / "cache").exists()


def test_cli_writes_file_and_creates_dirs(project: Path, php: str) -> None:
    target = project / "www" / "tenantkit_forums.php"
    target.parent.mkdir()
    code, out, err = run(project, "punbb-config", "--output", str(target), "--create-dirs",
                         "--events-helper", "/srv/tenantkit/contrib/tenantkit-events.php")
    assert code == 0, err
    assert out == ""
    assert "wrote" in err and "1 forum(s)" in err
    assert (project / "cache" / "forum" / "app").is_dir()
    assert (project / "cache" / "forum" / ".purge").is_dir()
    value = php_value(php, target)
    assert isinstance(value, dict)
    assert value["events_helper"] == "/srv/tenantkit/contrib/tenantkit-events.php"
    assert list(value["forums"]) == ["forum"]


@pytest.mark.parametrize(("args", "code", "says"), [
    pytest.param(("blog",), 2, "not a PunBB forum", id="not a forum"),
    pytest.param(("nope",), 2, "no site named nope", id="unknown site"),
    pytest.param(("--output", "/nonexistent/dir/map.php"), 1, "cannot write", id="bad output"),
])
def test_cli_errors(project: Path, args: tuple[str, ...], code: int, says: str) -> None:
    got, _, err = run(project, "punbb-config", *args)
    assert got == code
    assert says in err


def test_cli_reports_broken_site_files_and_no_forums(project: Path) -> None:
    (project / "sites" / "forum.toml").unlink()
    (project / "sites" / "broken.toml").write_text("hosts = [\n")
    code, out, err = run(project, "punbb-config")
    assert code == 0
    assert "broken.toml" in err and "left out of the forum map" in err
    assert "no site in" in err and 'app = "punbb"' in err
    assert "'forums' => array()" in out


def test_cli_refuses_a_non_mysql_database(project: Path) -> None:
    (project / "tenantkit.toml").write_text('sites_dir = "sites"\ncache_dir = "cache"\n')
    code, _, err = run(project, "punbb-config")
    assert code == 2
    assert "PunBB needs MySQL or MariaDB" in err and "the global [database] primary" in err


# --- tenantkit provision --print-punbb-config -------------------------------------------------

def test_provision_prints_the_forum_map(project: Path, php: str) -> None:
    code, out, err = run(project, "provision", "cats", "--host", "cats.test", "--upstream",
                         "http://127.0.0.1:8080", "--table-prefix", "cats_",
                         "--print-punbb-config")
    assert code == 0, err
    assert "site cats" in err and "created" in err
    target = project / "map.php"
    target.write_text(out)
    value = php_value(php, target)
    assert isinstance(value, dict)
    assert sorted(value["forums"]) == ["cats", "forum"]
    assert value["hosts"]["cats.test"] == "cats"
    assert value["forums"]["cats"]["cache_dir"] == f"{project}/cache/cats/app/"
    assert 'app = "punbb"' in (project / "sites" / "cats.toml").read_text()
    assert (project / "cache" / "cats" / "app").is_dir()


def test_provision_dry_run_prints_the_map_and_writes_nothing(project: Path) -> None:
    code, out, err = run(project, "provision", "cats", "--host", "cats.test", "--upstream",
                         "http://127.0.0.1:8080", "--dry-run", "--print-punbb-config")
    assert code == 0, err
    assert "'cats.test' => 'cats'" in out
    assert "'db_prefix' => 'cats_'" in out
    assert not (project / "sites" / "cats.toml").exists()


def test_provision_refuses_an_unusable_forum_before_writing(project: Path) -> None:
    code, _, err = run(project, "provision", "cats", "--host", "cats.test", "--upstream",
                       "http://127.0.0.1:8080", "--table-prefix", "forum_",
                       "--print-punbb-config")
    assert code == 2
    assert "would share the tables forum_*" in err
    assert not (project / "sites" / "cats.toml").exists()
    assert not (project / "cache" / "cats").exists()


@pytest.mark.parametrize("other", [pytest.param("--json", id="json"),
                                   pytest.param("--print-wp-config", id="wp config")])
def test_provision_print_punbb_config_goes_alone(project: Path, other: str) -> None:
    code, _, err = run(project, "provision", "cats", "--host", "cats.test", "--upstream",
                       "http://127.0.0.1:8080", "--print-punbb-config", other)
    assert code == 2
    assert "--print-punbb-config goes alone" in err
    assert not (project / "sites" / "cats.toml").exists()


# --- base URL: tenantkit provision --base-url (issue 20) -----------------------------------------

def test_provision_base_url_is_fixed_in_the_map(project: Path, php: str) -> None:
    code, out, err = run(project, "provision", "cats", "--host", "cats.test", "--upstream",
                         "http://127.0.0.1:8080", "--table-prefix", "cats_",
                         "--base-url", "https://cats.example.org/", "--print-punbb-config")
    assert code == 0, err
    assert 'base_url = "https://cats.example.org"' in (project / "sites" / "cats.toml").read_text()
    target = project / "map.php"
    target.write_text(out)
    value = php_value(php, target)
    assert isinstance(value, dict)
    assert value["forums"]["cats"]["base_url"] == "https://cats.example.org"
    assert value["forums"]["cats"]["base_url_fixed"] is True
    # No [meta] base_url: a guess PunBB replaces with the request's (trusted proxy) origin
    assert value["forums"]["forum"]["base_url"] == "http://forum.test"
    assert value["forums"]["forum"]["base_url_fixed"] is False
    assert value["trusted_proxies"] == ["127.0.0.1", "::1"]
    # A later provision without --base-url keeps it; the option alone changes only [meta]
    code, _, err = run(project, "provision", "cats", "--base-url", "https://c.example.org")
    assert code == 0, err
    text = (project / "sites" / "cats.toml").read_text()
    assert 'base_url = "https://c.example.org"' in text and 'app = "punbb"' in text


@pytest.mark.parametrize("url", ["cats.example.org", "ftp://cats.example.org", "https://"])
def test_provision_refuses_a_bad_base_url(project: Path, url: str) -> None:
    code, _, err = run(project, "provision", "cats", "--host", "cats.test", "--upstream",
                       "http://127.0.0.1:8080", "--base-url", url)
    assert code == 2
    assert "--base-url" in err
    assert not (project / "sites" / "cats.toml").exists()
