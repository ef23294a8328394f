"""``/_tenantkit/health`` answers 503 with the reason for what a load balancer must know, and
the status page shows every worker's numbers and this node's name."""

from __future__ import annotations

import time
from dataclasses import replace

from tk_web import Sites, admin_headers
from werkzeug.test import Client

from tenantkit.config import BusSettings
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
        client = Client(app)
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
