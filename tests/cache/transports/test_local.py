"""The in-process transport."""

from __future__ import annotations

import json
from pathlib import Path

from tenantkit.cache.events import SiteChanged
from tenantkit.cache.transports import LocalTransport

from ..helpers import make_settings


def test_local_publish_without_an_invalidator_writes_a_trigger_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    LocalTransport(settings.cache_dir).publish(SiteChanged("blog"))
    files = list((settings.cache_dir / "blog" / ".purge").glob("*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["type"] == "site_changed"
