from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from tenantkit.cache.pagecache import PageCache
from tenantkit.cli import cli
from tenantkit.testing import RedisServer

HOST = "blog.example.org"


def _config(tmp_path: Path, transport: str = "local", redis_url: str = "redis://127.0.0.1:1/0"
            ) -> Path:
    sites = tmp_path / "sites"
    sites.mkdir(exist_ok=True)
    (sites / "blog.toml").write_text(
        f'hosts = ["{HOST}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
        '[cache]\npolicy = "targeted"\n')
    config = tmp_path / "tenantkit.toml"
    config.write_text(f'sites_dir = "sites"\ncache_dir = "cache"\n[bus]\n'
                      f'transport = "{transport}"\nredis_url = "{redis_url}"\n')
    return config


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["blog"], "say what to purge", id="nothing to purge"),
    pytest.param(["blog", "--path", "about/"], "starts with '/'", id="relative path"),
    pytest.param(["nosuch", "--all"], "unknown site 'nosuch' (known sites: blog)", id="unknown"),
    pytest.param(["blog", "--host", "x.org", "--all"], "--host only applies to --path",
                 id="host alone"),
    pytest.param(["blog", "--path", "/", "--host", "bad host"], "--host: invalid host",
                 id="bad host"),
    pytest.param(["Blog!", "--all"], "unknown site", id="hostile site name"),
])
def test_purge_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(_config(tmp_path)), "purge", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_purge_local_applies_here(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cache = PageCache(tmp_path / "cache" / "blog" / "pages")
    cache.put(HOST, "/", b"home", tags=["home"])
    cache.put(HOST, "/a/", b"a", tags=["post:1"])
    cache.put(HOST, "/b/", b"b")
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "purge", "blog", "--tag", "post:1"])
    assert result.exit_code == 0, result.output
    assert cache.get(HOST, "/a/").stale  # type: ignore[union-attr]
    assert not cache.get(HOST, "/").stale  # type: ignore[union-attr]
    result = runner.invoke(cli, ["--config", str(config), "purge", "blog", "--path", "/b/",
                                 "--host", "BLOG.example.org:80"])
    assert result.exit_code == 0, result.output
    assert cache.get(HOST, "/b/").stale  # type: ignore[union-attr]
    result = runner.invoke(cli, ["--config", str(config), "purge", "blog", "--all"])
    assert result.exit_code == 0, result.output
    assert cache.generation() == "g2"


def test_purge_over_redis_publishes(tmp_path: Path, redis_server: RedisServer) -> None:
    config = _config(tmp_path, "redis", redis_server.url)
    result = CliRunner().invoke(cli, ["--config", str(config), "purge", "blog", "--all"])
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_server.url)
    try:
        entries = client.xrange("tenantkit:events")
    finally:
        client.close()
        from tenantkit.cache.publish import close_transports

        close_transports()
    assert len(entries) == 1
    event = json.loads(entries[0][1][b"event"])
    assert (event["type"], event["site"], event["all"], event["origin"]) == (
        "purge", "blog", True, "cli")


def test_invalidator_rejects_a_bad_transport(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(_config(tmp_path)), "invalidator",
                                      "--transport", "carrier-pigeon"])
    assert result.exit_code == 2
    assert "carrier-pigeon" in result.output


def test_purge_over_redis_with_redis_down_fails_and_says_so(tmp_path: Path) -> None:
    from tenantkit.cache.publish import close_transports

    config = _config(tmp_path, "redis", "redis://127.0.0.1:1/0")
    try:
        result = CliRunner().invoke(cli, ["--config", str(config), "purge", "blog", "--all"])
    finally:
        close_transports()
    assert result.exit_code == 1, result.output
    assert "cannot publish to Redis at redis://127.0.0.1:1/0" in result.output
    assert "nothing was published" in result.output
    assert "published a purge" not in result.output
