"""The Invalidator with the in-process transport and trigger files (no servers needed)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tenantkit.cache.events import CommentPosted, PostEdited, Purge, SiteChanged, to_json
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.pagecache import PageCache
from tenantkit.cache.publish import publish
from tenantkit.cache.transports import TriggerFileTransport

from .helpers import HOST, Purges, make_settings, registry_for, wait_until


def _cache(settings: object, site: str = "blog") -> PageCache:
    return PageCache(settings.cache_dir / site / "pages")  # type: ignore[attr-defined]


def test_local_publish_purges_through_the_invalidator(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    cache = _cache(settings)
    cache.put(HOST, "/", b"home")
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.05):
        publish(CommentPosted("blog", 1, False), settings=settings)  # unapproved: nothing
        publish(CommentPosted("blog", 1, True), settings=settings)
        assert purges.wait_count(1)
    assert len(purges.seen) == 1
    assert purges.seen[0][3].flush
    page = cache.get(HOST, "/")
    assert page is not None and page.stale


def test_targeted_policy_purges_tags_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, policy="targeted")
    cache = _cache(settings)
    cache.put(HOST, "/p/42/", b"post", tags=["post:42"])
    cache.put(HOST, "/p/43/", b"other", tags=["post:43"])
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.05):
        publish(PostEdited("blog", 42, (7,), 3), settings=settings)
        assert purges.wait_count(1)
    assert cache.get(HOST, "/p/42/").stale  # type: ignore[union-attr]
    assert not cache.get(HOST, "/p/43/").stale  # type: ignore[union-attr]
    assert purges.seen[0][3].tags == ("post:42", "home", "feed", "term:7", "author:3")


def test_unknown_site_is_dropped_and_others_still_served(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path)
    purges = Purges()
    with caplog.at_level(logging.WARNING), Invalidator(
            settings, registry_for(settings), on_purge=purges, poll_timeout=0.05):
        publish(SiteChanged("nosuchsite"), settings=settings)
        publish(SiteChanged("blog"), settings=settings)
        assert purges.wait_count(1)
    assert "unknown site 'nosuchsite'" in caplog.text


_WRITER = r"""
import os, sys, tempfile
directory, name, payload = sys.argv[1], sys.argv[2], sys.argv[3].encode()
fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
with os.fdopen(fd, "wb") as f:
    f.write(payload)
os.replace(tmp, os.path.join(directory, name))
"""


@pytest.mark.parametrize(("payload", "message"), [
    pytest.param("{not json", "not valid JSON", id="broken json"),
    pytest.param('{"v": 1, "type": "site_changed"}', 'field "site" is missing', id="no site"),
    pytest.param('{"v": 1, "type": "nuke", "site": "blog"}', 'field "type"', id="unknown type"),
    pytest.param('{"v": 1, "type": "site_changed", "site": "other"}', "a site may only purge "
                 "itself", id="another site"),
    pytest.param("x" * 70000, "more than", id="huge"),
])
def test_trigger_files_from_another_process(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            payload: str, message: str) -> None:
    settings = make_settings(tmp_path)
    cache = _cache(settings)
    cache.put(HOST, "/", b"home")
    purge_dir = settings.cache_dir / "blog" / ".purge"
    purges = Purges()
    with caplog.at_level(logging.WARNING), Invalidator(
            settings, registry_for(settings), on_purge=purges, poll_timeout=0.05,
            scan_interval=0.5) as invalidator:
        subprocess.run([sys.executable, "-c", _WRITER, str(purge_dir), "bad.json", payload],
                       check=True, timeout=30)
        assert wait_until(lambda: not (purge_dir / "bad.json").exists())
        assert message in caplog.text
        # Moved to the dead letter, and the site flushed: the event it meant is lost.
        assert purges.wait_count(1)
        assert purges.seen[0][1] is None and purges.seen[0][3].flush
        assert (purge_dir / "failed" / "bad.json").read_bytes() == payload.encode()
        assert message in (purge_dir / "failed" / "bad.json.reason").read_text()
        # The watcher is still alive: a good file is handled.
        cache.put(HOST, "/", b"home again")
        good = to_json(Purge("blog", paths=("/",), host=HOST))
        subprocess.run([sys.executable, "-c", _WRITER, str(purge_dir), "good.json", good],
                       check=True, timeout=30)
        assert purges.wait_count(2)
        assert invalidator.errors >= 1 and invalidator.dead_letters == 1
    assert cache.get(HOST, "/").stale  # type: ignore[union-attr]
    assert sorted(p.name for p in purge_dir.iterdir()) == ["failed"]


def test_trigger_files_present_at_start_are_scanned(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    TriggerFileTransport(settings.cache_dir).publish(Purge("blog", all=True))
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.05,
                     scan_interval=0.1):
        assert purges.wait_count(1)
    assert purges.seen[0][3].flush


def test_relative_cache_dir_trigger_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    from dataclasses import replace

    monkeypatch.chdir(tmp_path)
    settings = replace(make_settings(tmp_path), cache_dir=Path("cache"),
                       sites_dir=Path("sites"))
    purges = Purges()
    with Invalidator(settings, registry_for(settings), on_purge=purges, poll_timeout=0.05,
                     scan_interval=0.2):
        TriggerFileTransport(settings.cache_dir).publish(Purge("blog", tags=("home",)))
        assert purges.wait_count(1)
    assert list((tmp_path / "cache" / "blog" / ".purge").iterdir()) == []


def test_a_stop_asked_before_run_forever_starts_is_not_lost(tmp_path: Path) -> None:
    """``tenantkit invalidator`` installs its SIGTERM handler, then starts: a SIGTERM in
    between (systemd stopping it as it starts) used to be wiped by start(), and the process
    ran on until SIGKILL."""
    import threading

    settings = make_settings(tmp_path)
    invalidator = Invalidator(settings, registry_for(settings), poll_timeout=0.05)
    invalidator.stop()  # the signal handler, before run_forever
    runner = threading.Thread(target=invalidator.run_forever, daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "run_forever ignored the stop asked before it started"
    # A stopped invalidator started again (in process) runs until stopped again.
    invalidator.start()
    assert invalidator.state() in ("running", "starting")
    invalidator.stop()
