"""The trigger-file transport."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantkit.cache.events import SiteChanged
from tenantkit.cache.transports import TriggerFileTransport
from tenantkit.errors import BusError


def test_files_transport_fails_clearly_when_cache_dir_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file, not a directory")
    with pytest.raises(BusError, match="cannot write a trigger file"):
        TriggerFileTransport(tmp_path / "cache").publish(SiteChanged("blog"))
