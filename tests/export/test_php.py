"""The PHP helpers both PHP exports share: one bus URL for WordPress and PunBB."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.export.php import php_bus_url, php_string
from tenantkit.export.punbb import forum_for_site
from tenantkit.export.wordpress import render_wp_config
from tenantkit.sites import Backend, Site, SiteDatabase


@pytest.mark.parametrize(
    ("bus", "expected"),
    [
        pytest.param(BusSettings(), "", id="local bus: no url"),
        pytest.param(BusSettings(transport="files"), "", id="trigger files: no url"),
        pytest.param(BusSettings(transport="redis", redis_url="redis://r:6379/0"),
                     "redis://r:6379/0", id="redis with defaults"),
        pytest.param(BusSettings(transport="redis", redis_url="redis://r/0", stream="s:x"),
                     "redis://r/0?stream=s%3Ax", id="own stream"),
        pytest.param(BusSettings(transport="redis", redis_url="redis://r/0", stream_maxlen=500),
                     "redis://r/0?maxlen=500", id="own maxlen"),
        pytest.param(BusSettings(transport="redis", redis_url="redis://r/0?timeout=2",
                                 stream="s", stream_maxlen=7),
                     "redis://r/0?timeout=2&stream=s&maxlen=7", id="url with a query"),
    ],
)
def test_php_bus_url(bus: BusSettings, expected: str) -> None:
    assert php_bus_url(Settings(bus=bus)) == expected


def test_wordpress_and_punbb_carry_the_same_bus(tmp_path: Path) -> None:
    settings = Settings(
        cache_dir=tmp_path / "cache",
        database=DatabaseSettings(primary="mysql+pymysql://u:p@db.internal/forum"),
        bus=BusSettings(transport="redis", redis_url="redis://:pw@127.0.0.1:6379/1",
                        stream="forum:events", stream_maxlen=1234),
    )
    site = Site(name="forum", hosts=("forum.test",),
                backend=Backend(type="proxy", url="http://127.0.0.1:8080"),
                database=SiteDatabase(table_prefix="forum_"), meta={"app": "punbb"},
                cache_root=tmp_path / "cache" / "forum")
    punbb_bus = forum_for_site(site, settings).bus
    wp_bus = re.search(r"define\('TENANTKIT_BUS', (.*)\);", render_wp_config(site, settings))
    assert wp_bus is not None
    assert wp_bus.group(1) == php_string(punbb_bus)
    assert parse_qs(urlsplit(punbb_bus).query) == {"stream": ["forum:events"],
                                                   "maxlen": ["1234"]}
