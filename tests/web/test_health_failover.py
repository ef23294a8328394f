"""``/_tenantkit/health`` and the status page show the primary candidate that takes writes
now, since when, and a split brain as an error (503)."""

from __future__ import annotations

from tk_web import Sites, admin_headers
from werkzeug.test import Client

from tenantkit.config import DatabaseSettings
from tenantkit.testing import MariaDBCluster
from tenantkit.web.app import create_app
from tenantkit.web.extension import Tenantkit


def test_health_shows_the_primary_now_and_a_split_brain(
        sites: Sites, mariadb_failover_cluster: MariaDBCluster) -> None:
    cluster = mariadb_failover_cluster
    other = cluster.replicas[0]
    sites.add("alpha", ["alpha.test"])
    app = create_app(sites.settings(database=DatabaseSettings(
        primaries=(cluster.primary.url(), other.url()), replicas=(cluster.replicas[1].url(),),
        connect_timeout=1)))
    ext: Tenantkit = app.extensions["tenantkit"]
    client = Client(app)
    try:
        response = client.get("/_tenantkit/health", headers=admin_headers())
        assert response.status_code == 200, response.get_json()
        db = response.get_json()["checks"]["database"]
        assert f":{cluster.primary.port}/" in db["primary_now"]
        assert db["split_brain"] is False and len(db["candidates"]) == 2
        assert "tenantkit:tenantkit@" not in response.get_data(as_text=True)
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert 'id="primary-now"' in page and f":{cluster.primary.port}/" in page

        other.query("SET GLOBAL read_only = 0")  # two writable: a split brain
        ext.router().finder.check()
        response = client.get("/_tenantkit/health", headers=admin_headers())
        assert response.status_code == 503
        assert any(r.startswith("database: split brain")
                   for r in response.get_json()["reasons"])
        page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
        assert "split brain: writes refused" in page

        other.query("SET GLOBAL read_only = 1")
        ext.router().finder.check()
        assert client.get("/_tenantkit/health", headers=admin_headers()).status_code == 200
    finally:
        ext.stop()
