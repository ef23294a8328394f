"""One rule for a site's database servers, and every consumer follows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.transports import LocalTransport
from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.db.router import Router
from tenantkit.db.servers import connect_seconds, site_servers
from tenantkit.export.punbb import forum_for_site
from tenantkit.export.wordpress import render_wp_config
from tenantkit.sites import Backend, Site, SiteDatabase

# Nothing listens on port 1: a connect fails at once, which is all the consumers need here.
G_PRIMARY = "mysql+pymysql://app:pw@127.0.0.1:1/global"
G_REPLICA = "mysql+pymysql://app:pw@127.0.0.2:1/global"
S_PRIMARY = "mysql+pymysql://app:pw@127.0.0.3:1/site"
S_REPLICA = "mysql+pymysql://app:pw@127.0.0.4:1/site"


def _site(primary: str | None, replicas: tuple[str, ...]) -> Site:
    return Site(name="blog", hosts=("blog.example.org",),
                backend=Backend(type="proxy", url="http://127.0.0.1:9"),
                database=SiteDatabase(primary=primary, replicas=replicas),
                meta={"app": "punbb"})


CASES = [
    pytest.param(S_PRIMARY, (S_REPLICA,), (G_REPLICA,), S_PRIMARY, (S_REPLICA,),
                 id="own primary and replica"),
    pytest.param(S_PRIMARY, (), (G_REPLICA,), S_PRIMARY, (),
                 id="own primary, no replicas: never the global replicas"),
    pytest.param(S_PRIMARY, (), (), S_PRIMARY, (), id="own primary, none anywhere"),
    pytest.param(None, (S_REPLICA,), (G_REPLICA,), G_PRIMARY, (S_REPLICA,),
                 id="own replicas of the global primary"),
    pytest.param(None, (), (G_REPLICA,), G_PRIMARY, (G_REPLICA,), id="neither: global"),
    pytest.param(None, (), (), G_PRIMARY, (), id="neither, no global replicas"),
]


def _host(url: str) -> str:
    return str(create_engine(url).url.host)


@pytest.mark.parametrize(("primary", "replicas", "global_replicas", "want_primary",
                          "want_replicas"), CASES)
def test_every_consumer_uses_the_same_servers(
        tmp_path: Path, primary: str | None, replicas: tuple[str, ...],
        global_replicas: tuple[str, ...], want_primary: str,
        want_replicas: tuple[str, ...]) -> None:
    settings = Settings(cache_dir=tmp_path / "cache", database=DatabaseSettings(
        primary=G_PRIMARY, replicas=global_replicas, connect_timeout=1),
        bus=BusSettings(replica_wait_timeout=0.5))
    site = _site(primary, replicas)
    servers = site_servers(site, settings)
    assert (servers.primary, servers.replicas) == (want_primary, want_replicas)

    router = Router.from_site(site, settings)
    try:
        assert _host(str(router.engine("write").url)) == _host(want_primary)
        assert [_host(str(r.engine.url)) for r in router._replicas] == [
            _host(u) for u in want_replicas]
    finally:
        router.close()

    php = render_wp_config(site, settings)
    assert f"@{_host(want_primary)}:1/" in re.search(r"TENANTKIT_DB_PRIMARY', '([^']*)'",
                                                      php).group(1)  # type: ignore[union-attr]
    replica_list = re.search(r"TENANTKIT_DB_REPLICAS', \[([^\]]*)\]", php)
    assert replica_list is not None
    assert re.findall(r"@([0-9.]+):1/", replica_list.group(1)) == [
        _host(u) for u in want_replicas]

    assert forum_for_site(site, settings).db_host == f"{_host(want_primary)}:1"

    inv = Invalidator(settings, registry=None, transport=LocalTransport(settings.cache_dir))
    try:
        # The wait has a replica to ask exactly when the site has one (it cannot connect here).
        assert inv._replica_has(site, "0-1-1") is (not want_replicas)
        assert [_host(u) for u in inv._engines] == [_host(u) for u in want_replicas[:1]]
    finally:
        inv.stop()


@pytest.mark.parametrize(("seconds", "whole"), [(0.2, 1), (1, 1), (1.5, 2), (2, 2), (2.01, 3)])
def test_connect_timeout_has_one_rounding(seconds: float, whole: int) -> None:
    assert connect_seconds(seconds) == whole
    servers = site_servers(None, Settings(database=DatabaseSettings(
        primary=G_PRIMARY, connect_timeout=seconds)))
    assert servers.connect_args(G_PRIMARY)["connect_timeout"] == whole
    assert servers.connect_args("sqlite:///x.db") == {}


def test_every_connection_has_read_and_write_timeouts() -> None:
    settings = Settings(database=DatabaseSettings(
        primary=G_PRIMARY, replicas=(G_REPLICA,), read_timeout=20, replica_read_timeout=4.5,
        write_timeout=7))
    servers = site_servers(None, settings)
    assert servers.connect_args(G_PRIMARY) == {
        "connect_timeout": 2, "read_timeout": 20, "write_timeout": 7}
    assert servers.connect_args(G_REPLICA) == {
        "connect_timeout": 2, "read_timeout": 5, "write_timeout": 7}
    defaults = site_servers(None, Settings(database=DatabaseSettings(primary=G_PRIMARY)))
    assert defaults.connect_args(G_PRIMARY)["read_timeout"] == 30


def test_servers_repr_masks_passwords() -> None:
    text = repr(site_servers(_site(S_PRIMARY, (S_REPLICA,))))
    assert "pw" not in text and "********" in text


# --- primary candidates (failover) -------------------------------------------------------

S_PRIMARY2 = "mysql+pymysql://app:pw@127.0.0.5:1/site"
G_PRIMARY2 = "mysql+pymysql://app:pw@127.0.0.6:1/global"


@pytest.mark.parametrize(("site_db", "global_db", "want", "want_mode"), [
    pytest.param(SiteDatabase(primaries=(S_PRIMARY, S_PRIMARY2)), DatabaseSettings(),
                 (S_PRIMARY, S_PRIMARY2), "error", id="site candidates"),
    pytest.param(SiteDatabase(), DatabaseSettings(primaries=(G_PRIMARY, G_PRIMARY2),
                                                  on_primary_down="read_only"),
                 (G_PRIMARY, G_PRIMARY2), "read_only", id="global candidates"),
    pytest.param(SiteDatabase(primary=S_PRIMARY, on_primary_down="read_only"),
                 DatabaseSettings(primaries=(G_PRIMARY, G_PRIMARY2)),
                 (S_PRIMARY,), "read_only", id="own single primary: one candidate"),
    pytest.param(SiteDatabase(), DatabaseSettings(primary=G_PRIMARY), (G_PRIMARY,), "error",
                 id="one primary: one candidate"),
])
def test_primary_candidates_follow_the_one_rule(
        site_db: SiteDatabase, global_db: DatabaseSettings, want: tuple[str, ...],
        want_mode: str) -> None:
    site = Site(name="blog", hosts=("blog.example.org",),
                backend=Backend(type="proxy", url="http://127.0.0.1:9"), database=site_db)
    servers = site_servers(site, Settings(database=global_db))
    assert servers.primaries == want
    assert servers.primary == want[0]
    assert servers.on_primary_down == want_mode
    router = Router.from_site(site, Settings(database=global_db))
    try:
        assert router.on_primary_down == want_mode
        assert router.finder.names == [_masked(u) for u in want]
    finally:
        router.close()


def _masked(url: str) -> str:
    return url.replace(":pw@", ":********@")


def test_site_file_primaries_and_settings_primaries(tmp_path: Path) -> None:
    from tenantkit.errors import ConfigError, SiteFileError
    from tenantkit.sites import load_site

    config = tmp_path / "tenantkit.toml"
    config.write_text(f'[database]\nprimaries = ["{G_PRIMARY}", "{G_PRIMARY2}"]\n'
                      'on_primary_down = "read_only"\n')
    settings = Settings.load(config, env={})
    assert settings.database.candidates == (G_PRIMARY, G_PRIMARY2)
    assert settings.database.primary == G_PRIMARY
    config.write_text(f'[database]\nprimary = "{G_PRIMARY}"\nprimaries = ["{G_PRIMARY2}"]\n')
    with pytest.raises(ConfigError, match="remove primary"):
        Settings.load(config, env={})
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "blog.toml").write_text(
        'hosts = ["blog.example.org"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        f'[database]\nprimaries = ["{S_PRIMARY}", "{S_PRIMARY2}"]\n'
        'on_primary_down = "read_only"\n')
    site = load_site(sites / "blog.toml", settings)
    assert site.database.primaries == (S_PRIMARY, S_PRIMARY2)
    assert site.database.on_primary_down == "read_only"
    (sites / "blog.toml").write_text(
        'hosts = ["blog.example.org"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[database]\non_primary_down = "maybe"\n')
    with pytest.raises(SiteFileError, match="on_primary_down"):
        load_site(sites / "blog.toml", settings)
