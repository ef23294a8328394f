"""Shared helpers for the cache and bus tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenantkit.cache.events import Event, PurgeAction
from tenantkit.config import BusSettings, DatabaseSettings, Settings
from tenantkit.registry import Registry
from tenantkit.sites import Site

HOST = "blog.example.org"


class FakeClock:
    """``clock.now`` is what a page cache given this clock reads as the time; tests move it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_settings(tmp: Path, *, policy: str = "site", transport: str = "local",
                  redis_url: str = "redis://127.0.0.1:1/0", replicas: tuple[str, ...] = (),
                  primary: str = "sqlite:///:memory:", replica_wait_timeout: float = 2.0,
                  lag_threshold: float = 5.0, node: str = "node-a", maxlen: int = 10000,
                  sites: tuple[str, ...] = ("blog",)) -> Settings:
    sites_dir = tmp / "sites"
    sites_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(sites):
        host = HOST if index == 0 else f"{name}.example.org"
        (sites_dir / f"{name}.toml").write_text(
            f'hosts = ["{host}"]\n[backend]\ntype = "proxy"\nurl = "http://127.0.0.1:9"\n'
            f'[cache]\npolicy = "{policy}"\nstale_seconds = 30\n'
        )
    return Settings(
        sites_dir=sites_dir, cache_dir=tmp / "cache",
        database=DatabaseSettings(primary=primary, replicas=replicas,
                                  lag_threshold=lag_threshold),
        bus=BusSettings(transport=transport, redis_url=redis_url,  # type: ignore[arg-type]
                        node=node, replica_wait_timeout=replica_wait_timeout,
                        stream_maxlen=maxlen),
    )


def registry_for(settings: Settings) -> Registry:
    registry = Registry.load(settings)
    assert registry.sites, registry.errors
    return registry


class Purges:
    """An ``on_purge`` callback that records purges and lets a test wait for them."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Event | None, Site, PurgeAction]] = []
        self.cond = threading.Condition()

    def __call__(self, event: Event | None, site: Site, action: PurgeAction) -> None:
        with self.cond:
            self.seen.append((time.monotonic(), event, site, action))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 15.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.seen), timeout)

    def wait_count(self, count: int, timeout: float = 15.0) -> bool:
        return self.wait_for(lambda seen: len(seen) >= count, timeout)


def wait_until(check: Callable[[], bool], timeout: float = 15.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()
