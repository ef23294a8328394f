"""``/_tenantkit/health`` answers 503 with the reason for what a load balancer must know, and
the status page shows every worker's numbers and this node's name."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from tk_web import ServerClient, Sites, admin_headers
from werkzeug.test import Client

from tenantkit.cache import status as status_module
from tenantkit.cache.invalidator import Invalidator
from tenantkit.cache.sources.binlog import BinlogSource
from tenantkit.config import BusSettings
from tenantkit.registry import Registry
from tenantkit.testing import free_port
from tenantkit.web.app import create_app
from tenantkit.web.extension import Tenantkit


def _health(client: Client) -> tuple[int, dict[str, object]]:
    response = client.get("/_tenantkit/health", headers=admin_headers())
    return response.status_code, response.get_json()


def test_503_when_the_invalidator_is_down(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    app = create_app(sites.settings(), TENANTKIT_BACKGROUND=True)
    ext: Tenantkit = app.extensions["tenantkit"]
    try:
        client = Client(app)
        status, report = _health(client)
        assert status == 200, report
        assert report["checks"]["bus"]["invalidator"] == "running"  # type: ignore[index]
        invalidator = ext.invalidator()
        assert invalidator is not None
        invalidator.stop()  # the thread is gone, as after a crash
        status, report = _health(client)
        assert status == 503
        assert report["checks"]["bus"]["invalidator"] == "down"  # type: ignore[index]
        assert any("invalidator is not running" in r
                   for r in report["reasons"])  # type: ignore[attr-defined]
    finally:
        ext.stop()


def test_503_when_redis_is_unreachable(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    settings = sites.settings()
    settings = replace(settings, bus=BusSettings(
        transport="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app = create_app(settings)
    try:
        status, report = _health(Client(app))
        assert status == 503
        assert any(r.startswith("bus: Redis is unreachable")
                   for r in report["reasons"])  # type: ignore[attr-defined]
    finally:
        app.extensions["tenantkit"].stop()


def test_503_when_the_cache_directory_is_not_writable(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    blocker = sites.root / "not-a-directory"
    blocker.write_text("a file where the cache directory should be\n")
    app = create_app(replace(sites.settings(), cache_dir=blocker / "cache"))
    try:
        status, report = _health(Client(app))
        assert status == 503
        assert report["checks"]["cache"]["writable"] is False  # type: ignore[index]
        assert any(r.startswith("cache: cache directory ") and "is not writable" in r
                   for r in report["reasons"])  # type: ignore[attr-defined]
    finally:
        app.extensions["tenantkit"].stop()


def test_the_node_is_named_as_configured_everywhere(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    settings = replace(sites.settings(), bus=BusSettings(node="web-7"))
    app = create_app(settings, TENANTKIT_BACKGROUND=True)
    try:
        client = Client(app)
        _, report = _health(client)
        assert report["node"] == "web-7"
        assert report["checks"]["bus"]["node"] == "web-7"  # type: ignore[index]
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert '<strong id="node">web-7</strong>' in page
        assert "this node" not in page
    finally:
        app.extensions["tenantkit"].stop()


def test_status_page_counts_requests_errors_and_upstream_time(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    sites.add("broken", ["broken.test"], app="tk_test_apps:buggy")
    app = create_app(sites.settings())
    try:
        client = ServerClient(app)
        for _ in range(3):
            client.get("/x/", headers={"Host": "alpha.test"}).close()
        client.get("/", headers={"Host": "broken.test"}).close()
        time.sleep(0)
        stats = app.extensions["tenantkit"].metrics.site_stats()
        assert stats["alpha"]["requests"] == 3 and stats["alpha"]["errors"] == 0
        assert stats["broken"]["errors"] == 1
        assert stats["alpha"]["upstream_p50"] is not None  # the one MISS was timed
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert '<meta http-equiv="refresh" content="10">' in page
        assert 'data-site="alpha"' in page and "66.7%" in page
    finally:
        app.extensions["tenantkit"].stop()


def _poll(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_health_follows_the_status_file_of_the_node_invalidator(
        sites: Sites, monkeypatch: pytest.MonkeyPatch) -> None:
    # As under `tenantkit serve` beside `tenantkit invalidator`: the invalidator runs in
    # another process; the shim knows it only from its status file.
    sites.add("alpha", ["alpha.test"])
    settings = replace(sites.settings(), bus=BusSettings(node="web-7", transport="files"))
    invalidator = Invalidator(settings, Registry.load(settings)).start()
    app = create_app(settings)
    client = Client(app)
    try:
        assert _poll(lambda: _health(client)[1]["checks"]["invalidation"]["reported"])
        status, report = _health(client)
        assert status == 200, report
        check = report["checks"]["invalidation"]  # type: ignore[index]
        assert check["source"] == "bus" and check["connected"] and check["dead_letters"] == 0
        metrics = client.get("/_tenantkit/metrics", headers=admin_headers()).get_data(True)
        assert 'tenantkit_invalidation_up{node="web-7",source="bus"} 1.0' in metrics
        assert 'tenantkit_invalidation_dead_letters_total{node="web-7",source="bus"} 0.0' \
            in metrics
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert 'id="invalidation"' in page and "running" in page
        invalidator.stop()  # as after a crash: the file is no longer rewritten
        monkeypatch.setattr(status_module, "STALE_AFTER", 0.3)
        assert _poll(lambda: _health(client)[0] == 503)
        _, report = _health(client)
        assert any(r.startswith("invalidation: the invalidator of node web-7 (pid ")
                   and "last reported" in r
                   for r in report["reasons"])  # type: ignore[attr-defined]
        metrics = client.get("/_tenantkit/metrics", headers=admin_headers()).get_data(True)
        assert 'tenantkit_invalidation_up{node="web-7",source="bus"} 0.0' in metrics
    finally:
        invalidator.stop()
        app.extensions["tenantkit"].stop()


def test_503_when_the_binlog_source_cannot_reach_its_replica(sites: Sites) -> None:
    sites.add("alpha", ["alpha.test"])
    settings = replace(sites.settings(), bus=BusSettings(node="web-8", transport="files"))
    registry = Registry.load(settings)
    invalidator = Invalidator(settings, registry)
    source = BinlogSource(settings, registry,
                          url=f"mysql+pymysql://repl:pw@127.0.0.1:{free_port()}/")
    invalidator.sources = [source]
    source.start()  # the replica is down: logged, retried, and reported
    invalidator.start()
    app = create_app(settings)
    client = Client(app)
    try:
        assert _poll(lambda: _health(client)[0] == 503)
        _, report = _health(client)
        check = report["checks"]["invalidation"]  # type: ignore[index]
        assert check["source"] == "bus+binlog" and check["connected"] is False
        reason = check["reason"]
        assert reason.startswith("the invalidator of node web-8 is not connected: replica "
                                 "mysql+pymysql://repl:********@127.0.0.1:")
        assert "Can't connect" in reason
    finally:
        source.stop()
        invalidator.stop()
        app.extensions["tenantkit"].stop()


def test_a_standby_worker_is_healthy_names_the_actor_and_takes_over(sites: Sites) -> None:
    """Another process on the node (here: another Invalidator of the same node) is the
    actor: this worker stands by, healthy, and says whose turn it is; it takes over when
    the actor goes."""
    import os

    sites.add("alpha", ["alpha.test"])
    settings = replace(sites.settings(), bus=BusSettings(node="web-9", transport="files"))
    actor = Invalidator(settings, Registry.load(settings)).start()
    app = create_app(settings, TENANTKIT_BACKGROUND=True)
    client = Client(app)
    standby = f"standby: node actor is pid {os.getpid()}"
    try:
        assert actor.role == "actor"
        status, report = _health(client)
        assert status == 200, report
        bus = report["checks"]["bus"]  # type: ignore[index]
        assert bus["invalidator"] == standby and bus["role"] == "standby"
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert standby in page
        actor.stop()
        assert _poll(lambda: _health(client)[1]["checks"]["bus"][  # type: ignore[index]
            "invalidator"] == "running")
        assert _health(client)[0] == 200
    finally:
        actor.stop()
        app.extensions["tenantkit"].stop()


def test_metrics_add_up_the_node_counters_of_every_process(sites: Sites) -> None:
    from tenantkit.cache.nodecounters import (
        COALESCED,
        FLUSHES,
        RENDERS,
        STALE_SERVED,
        NodeCounters,
    )

    sites.add("alpha", ["alpha.test"])
    settings = sites.settings()
    one, two = NodeCounters(settings.cache_dir), NodeCounters(settings.cache_dir)
    one.add(FLUSHES, "alpha")
    one.add(RENDERS, "alpha", 3)
    two.add(FLUSHES, "alpha", 2)
    two.add(COALESCED, "alpha", 4)
    two.add(STALE_SERVED, 'we"ird\nsite', 5)  # a label value is escaped, never breaks /metrics
    one.save()
    two.save()
    (one.path.parent / "garbage.json").write_bytes(b"\xff{")  # skipped, logged once
    app = create_app(settings)
    try:
        client = Client(app)
        response = client.get("/_tenantkit/metrics", headers=admin_headers())
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert 'tenantkit_node_flushes_total{site="alpha"} 3.0' in text
        assert 'tenantkit_node_renders_total{site="alpha"} 3.0' in text
        assert 'tenantkit_node_coalesced_total{site="alpha"} 4.0' in text
        assert 'tenantkit_node_stale_served_total{site="we\\"ird\\nsite"} 5.0' in text
        assert "# TYPE tenantkit_node_purges_total counter" in text
        _, report = _health(client)
        counters = report["checks"]["invalidation"]["counters"]  # type: ignore[index]
        assert counters["flushes"] == {"alpha": 3} and counters["renders"] == {"alpha": 3}
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert '<td class="n flushes">3</td>' in page and '<td class="n renders">3</td>' in page
    finally:
        app.extensions["tenantkit"].stop()
