"""Cache trees nginx can read by design: ``[cache] group`` / ``provision --group`` give each
site's cache directories the group, mode 2750 (setgid), and the page cache writes its pages
0640 there; ``check`` reports a tree nginx cannot read, with that fix."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantkit.cache.caches import site_page_cache
from tenantkit.cli import cli
from tenantkit.config import Settings
from tenantkit.registry import Registry

UPSTREAM = "http://127.0.0.1:8080"


@pytest.fixture
def nginx_group() -> str:
    try:
        return grp.getgrgid(pwd.getpwnam("www-data").pw_gid).gr_name
    except KeyError:
        pytest.skip("no www-data user on this machine (apt-get install nginx)")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(os.environ):
        if var.startswith("TENANTKIT_"):
            monkeypatch.delenv(var)
    tmp_path.chmod(0o755)
    (tmp_path / "tenantkit.toml").write_text('sites_dir = "sites"\ncache_dir = "cache"\n')
    return tmp_path


def run(root: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(root / "tenantkit.toml"), *args])
    return result.exit_code, result.stdout, result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def store_a_page(root: Path) -> Path:
    settings = Settings.load(root / "tenantkit.toml")
    site = Registry.load(settings).sites["blog"]
    cache = site_page_cache(site)
    assert cache.put("blog.example.org", "/2024/hello/", b"<p>hello</p>",
                     headers=[("Content-Type", "text/html; charset=utf-8")])
    return next(site.pages_dir.glob("g*/blog.example.org/2024/hello/index.html"))


def test_provision_group_makes_a_tree_nginx_reads_and_check_agrees(root: Path,
                                                                   nginx_group: str) -> None:
    gid = grp.getgrnam(nginx_group).gr_gid
    code, out, err = run(root, "provision", "blog", "--host", "blog.example.org",
                         "--upstream", UPSTREAM)
    assert code == 0, err
    site_root = root / "cache" / "blog"
    os.chown(site_root, -1, 0)
    for d in (site_root, site_root / "pages"):
        assert mode(d) == 0o750
    code, _, err = run(root, "check", "--offline")
    assert code == 1
    assert "nginx (www-data) cannot enter it" in err
    assert f"run tenantkit provision blog --group {nginx_group}" in err

    code, out, err = run(root, "provision", "blog", "--group", nginx_group)
    assert code == 0, err
    for d in (site_root, *(site_root / s for s in ("pages", "app", "tmp", ".purge"))):
        st = d.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2750, gid), d
    assert f"mode of {site_root}/: 750 -> 2750" in out

    page = store_a_page(root)
    st = page.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid)
    assert page.parent.stat().st_gid == gid  # directories below inherit the group
    assert run(root, "check", "--offline")[0] == 0

    # A later provision without --group keeps the group and the setgid bit.
    code, out, _ = run(root, "provision", "blog", "--host", "blog.example.org")
    assert code == 0 and "nothing changed" in out
    assert mode(site_root / "pages") == 0o2750


def test_cache_group_setting_is_the_default_group(root: Path, nginx_group: str) -> None:
    with open(root / "tenantkit.toml", "a") as fh:
        fh.write(f'[cache]\ngroup = "{nginx_group}"\n')
    code, out, err = run(root, "provision", "blog", "--host", "blog.example.org",
                         "--upstream", UPSTREAM)
    assert code == 0, err
    pages = root / "cache" / "blog" / "pages"
    assert mode(pages) == 0o2750
    assert pages.stat().st_gid == grp.getgrnam(nginx_group).gr_gid
    assert "(mode 2750)" in out


def test_without_a_group_pages_stay_world_readable(root: Path) -> None:
    assert run(root, "provision", "blog", "--host", "blog.example.org",
               "--upstream", UPSTREAM)[0] == 0
    assert mode(store_a_page(root)) == 0o644


def test_a_bad_cache_group_setting_is_reported(root: Path) -> None:
    with open(root / "tenantkit.toml", "a") as fh:
        fh.write('[cache]\ngroup = "www data"\n')
    code, _, err = run(root, "check", "--offline")
    assert code == 1
    assert 'key "cache.group"' in err and 'write group = "www-data"' in err
