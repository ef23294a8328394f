from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tenantkit.config import Settings
from tenantkit.registry import Registry
from tenantkit.watch import SiteWatcher

SEEN_WITHIN = 1.0  # seconds: the generous bound


def site_text(host: str, ttl: int = 300) -> str:
    return (f'hosts = ["{host}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:1"\n'
            f"[cache]\nttl = {ttl}\n")


def wait_for(condition: Callable[[], bool], within: float = SEEN_WITHIN) -> float:
    """Poll *condition*; return how long it took, or fail after *within* seconds."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if condition():
            return time.monotonic() - start
        time.sleep(0.01)
    assert condition(), f"not seen within {within} s"
    return time.monotonic() - start


@pytest.fixture()
def cfg(tmp_path: Path) -> Settings:
    (tmp_path / "sites").mkdir()
    return Settings(sites_dir=tmp_path / "sites", cache_dir=tmp_path / "cache")


@pytest.fixture()
def watched(cfg: Settings) -> Iterator[Registry]:
    registry = Registry.load(cfg)
    before = set(threading.enumerate())
    with SiteWatcher(registry) as watcher:
        assert watcher.observing
        yield registry
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []


def host_of(registry: Registry, host: str) -> str | None:
    site = registry.resolve(host)
    return site.name if site else None


def test_create_modify_delete(watched: Registry, cfg: Settings) -> None:
    path = cfg.sites_dir / "a.toml"
    path.write_text(site_text("a.org"))
    wait_for(lambda: host_of(watched, "a.org") == "a")
    path.write_text(site_text("a2.org"))
    wait_for(lambda: host_of(watched, "a2.org") == "a")
    assert host_of(watched, "a.org") is None
    path.unlink()
    wait_for(lambda: "a" not in watched.sites)


def test_atomic_save_and_moves(watched: Registry, cfg: Settings) -> None:
    # An editor's atomic save: temporary file in the directory, then rename over the target.
    tmp = cfg.sites_dir / ".a.toml.swp"
    tmp.write_text(site_text("a.org"))
    os.replace(tmp, cfg.sites_dir / "a.toml")
    wait_for(lambda: host_of(watched, "a.org") == "a")
    # mv into place from outside the directory.
    outside = cfg.sites_dir.parent / "b.toml"
    outside.write_text(site_text("b.org"))
    os.replace(outside, cfg.sites_dir / "b.toml")
    wait_for(lambda: host_of(watched, "b.org") == "b")
    # A rename within the directory: a site goes, another comes.
    os.rename(cfg.sites_dir / "b.toml", cfg.sites_dir / "c.toml")
    wait_for(lambda: "c" in watched.sites and "b" not in watched.sites)
    # vim-style backup: rename away, then write a new file.
    os.rename(cfg.sites_dir / "a.toml", cfg.sites_dir / "a.toml~")
    (cfg.sites_dir / "a.toml").write_text(site_text("a.org", ttl=9))
    wait_for(lambda: watched.sites.get("a") is not None and watched.sites["a"].cache.ttl == 9)
    # Moved out of the directory: removed.
    os.replace(cfg.sites_dir / "c.toml", cfg.sites_dir.parent / "c.toml")
    wait_for(lambda: "c" not in watched.sites)


def test_broken_write_keeps_last_good(watched: Registry, cfg: Settings) -> None:
    path = cfg.sites_dir / "a.toml"
    path.write_text(site_text("a.org"))
    wait_for(lambda: host_of(watched, "a.org") == "a")
    path.write_text("hosts = [")
    wait_for(lambda: path in watched.errors)
    assert host_of(watched, "a.org") == "a"


def test_scan_alone_reconciles(cfg: Settings) -> None:
    registry = Registry.load(cfg)
    with SiteWatcher(registry, use_events=False, reconcile=0.2) as watcher:
        assert not watcher.observing
        (cfg.sites_dir / "a.toml").write_text(site_text("a.org"))
        wait_for(lambda: host_of(registry, "a.org") == "a")


def test_directory_created_later(tmp_path: Path) -> None:
    cfg = Settings(sites_dir=tmp_path / "later", cache_dir=tmp_path / "cache")
    registry = Registry.load(cfg)
    before = set(threading.enumerate())
    with SiteWatcher(registry, reconcile=0.2) as watcher:
        assert not watcher.observing
        cfg.sites_dir.mkdir()
        wait_for(lambda: watcher.observing)
        (cfg.sites_dir / "a.toml").write_text(site_text("a.org"))
        wait_for(lambda: host_of(registry, "a.org") == "a")
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_burst_of_events_is_debounced(cfg: Settings) -> None:
    registry = Registry.load(cfg)
    with SiteWatcher(registry, debounce=0.2, reconcile=60) as watcher:
        wait_for(lambda: watcher.reloads >= 1)  # the reload right after start
        first = watcher.reloads
        for i in range(20):
            (cfg.sites_dir / f"s{i}.toml").write_text(site_text(f"s{i}.org"))
        wait_for(lambda: len(registry.sites) == 20)
        time.sleep(0.3)
        assert watcher.reloads - first <= 3


def test_reload_failure_keeps_watching(cfg: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reload that raises (a fault we cannot provoke through files) must not end the thread.
    registry = Registry.load(cfg)
    real = registry.reload
    calls = {"n": 0}

    def flaky() -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("simulated")
        return real()

    monkeypatch.setattr(registry, "reload", flaky)
    with SiteWatcher(registry, reconcile=0.2) as watcher:
        (cfg.sites_dir / "a.toml").write_text(site_text("a.org"))
        wait_for(lambda: host_of(registry, "a.org") == "a")
        assert watcher.running
    assert calls["n"] >= 2


def test_start_stop_idempotent(cfg: Settings) -> None:
    watcher = SiteWatcher(Registry.load(cfg))
    watcher.stop()
    watcher.start()
    watcher.start()
    assert watcher.running
    watcher.stop()
    watcher.stop()
    assert not watcher.running and not watcher.observing


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"debounce": -1}, id="negative debounce"),
        pytest.param({"reconcile": 0}, id="zero reconcile"),
        pytest.param({"debounce": 2, "max_delay": 1}, id="max delay below debounce"),
    ],
)
def test_bad_arguments(cfg: Settings, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="debounce"):
        SiteWatcher(Registry.load(cfg), **kwargs)  # type: ignore[arg-type]
