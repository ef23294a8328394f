"""publish(): the shared transports and the trigger-file fallback."""

from __future__ import annotations

from pathlib import Path

from tenantkit.cache.events import SiteChanged
from tenantkit.cache.publish import close_transports, publish

from .helpers import make_settings


def test_redis_down_falls_back_to_a_trigger_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, transport="redis", redis_url="redis://127.0.0.1:1/0")
    try:
        publish(SiteChanged("blog"), settings=settings)
    finally:
        close_transports()
    assert len(list((settings.cache_dir / "blog" / ".purge").glob("*.json"))) == 1
