from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from tk_web import TOKEN, Sites, admin_headers
from werkzeug.test import Client

from tenantkit.config import BusSettings, DatabaseSettings

MakeClient = Callable[..., tuple[Flask, Client]]


@pytest.fixture
def admin(sites: Sites, make_client: MakeClient) -> tuple[Flask, Client]:
    sites.add("alpha", ["alpha.test"])
    return make_client()


@pytest.mark.parametrize(("headers", "status"), [
    pytest.param({}, 401, id="no token"),
    pytest.param({"Authorization": "Bearer wrong"}, 401, id="wrong token"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, 401, id="longer token"),
    pytest.param({"Authorization": f"Token {TOKEN}"}, 401, id="wrong scheme"),
    pytest.param({"Authorization": "Basic !!!notbase64"}, 401, id="garbled basic"),
    pytest.param({"Authorization": "Bearer \udcff"}, 401, id="undecodable"),
    pytest.param({"Authorization": f"Bearer {TOKEN}"}, 200, id="bearer"),
    pytest.param({"Authorization": "Basic " + base64.b64encode(f"x:{TOKEN}".encode()).decode()},
                 200, id="basic with the token as password"),
])
def test_admin_needs_the_token(admin: tuple[Flask, Client], headers: dict[str, str],
                               status: int) -> None:
    _, client = admin
    response = client.get("/_tenantkit/sites", headers={"Host": "admin.test", **headers})
    assert response.status_code == status
    if status == 401:
        assert "alpha" not in response.get_data(as_text=True)
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_no_token_configured_means_no_admin(sites: Sites, make_client: MakeClient) -> None:
    sites.add("alpha", ["alpha.test"])
    _, client = make_client(admin_token="")
    assert client.get("/_tenantkit/health", headers=admin_headers("")).status_code == 404
    assert client.get("/_tenantkit/health", headers=admin_headers()).status_code == 404


def test_admin_paths_on_site_hosts_belong_to_the_site(admin: tuple[Flask, Client]) -> None:
    _, client = admin
    response = client.get("/_tenantkit/health", headers={"Host": "alpha.test",
                                                        "Authorization": f"Bearer {TOKEN}"})
    assert response.get_data(as_text=True).startswith("site=alpha ")


def test_health_sites_reload(admin: tuple[Flask, Client], sites: Sites) -> None:
    _, client = admin
    health = client.get("/_tenantkit/health", headers=admin_headers())
    assert health.status_code == 200
    assert health.get_json()["checks"]["sites"] == {"ok": True, "count": 1, "errors": {}}
    assert health.headers["Cache-Control"] == "no-store"
    sites.add("beta", ["beta.test"], url="http://127.0.0.1:9")
    (sites.dir / "broken.toml").write_text("hosts = 'not a list'\n")
    report = client.post("/_tenantkit/reload", headers=admin_headers()).get_json()
    assert report["added"] == ["beta"]
    assert [f.rsplit("/", 1)[-1] for f in report["failed"]] == ["broken.toml"]
    listing = client.get("/_tenantkit/sites", headers=admin_headers()).get_json()
    assert [s["name"] for s in listing["sites"]] == ["alpha", "beta"]
    assert listing["sites"][1]["url"] == "http://127.0.0.1:9"
    assert any("broken.toml" in f for f in listing["errors"])
    assert client.get("/", headers={"Host": "beta.test"}).status_code == 502


def test_health_is_503_without_sites(sites: Sites, make_client: MakeClient) -> None:
    _, client = make_client()
    response = client.get("/_tenantkit/health", headers=admin_headers())
    assert response.status_code == 503
    assert response.get_json()["status"] == "unhealthy"


def test_purge(admin: tuple[Flask, Client]) -> None:
    app, client = admin
    site = {"Host": "alpha.test"}
    renders = app.extensions["tenantkit"].pagecache.renders
    for path in ("/a/", "/b/?tags=post:1"):
        client.get(path, headers=site)
        assert client.get(path, headers=site).headers["X-Tenantkit-Cache"] == "HIT"
    purge = client.post("/_tenantkit/purge", headers=admin_headers(),
                        json={"site": "alpha", "tag": "post:1"})
    assert purge.status_code == 200, purge.data
    # A purged page is served stale while it is rendered again in the background:
    assert client.get("/b/?tags=post:1", headers=site).headers["X-Tenantkit-Cache"] == "STALE"
    assert client.get("/a/", headers=site).headers["X-Tenantkit-Cache"] == "HIT"
    assert renders.wait_idle()
    assert client.get("/b/?tags=post:1", headers=site).headers["X-Tenantkit-Cache"] == "HIT"
    form = client.post("/_tenantkit/purge", headers=admin_headers(),
                       data={"site": "alpha", "path": "/a/"})
    assert form.status_code == 200, form.data
    assert client.get("/a/", headers=site).headers["X-Tenantkit-Cache"] == "STALE"
    assert renders.wait_idle()
    assert client.post("/_tenantkit/purge", headers=admin_headers(),
                       json={"site": "alpha", "all": True}).status_code == 200
    assert client.get("/a/", headers=site).headers["X-Tenantkit-Cache"] == "STALE"
    assert renders.wait_idle()
    assert client.get("/a/", headers=site).headers["X-Tenantkit-Cache"] == "HIT"


@pytest.mark.parametrize(("body", "status", "message"), [
    pytest.param({"site": "nope", "all": True}, 404, "unknown site", id="unknown site"),
    pytest.param({"site": "alpha"}, 400, "say what to purge", id="nothing"),
    pytest.param({"site": "alpha", "tag": 5}, 400, "string or a list", id="bad tag"),
    pytest.param(["alpha"], 400, "JSON object", id="not an object"),
    pytest.param({"site": "alpha", "path": "no-slash"}, 500, "purge failed", id="bad path"),
])
def test_bad_purges_say_what_is_wrong(admin: tuple[Flask, Client], body: object, status: int,
                                      message: str) -> None:
    _, client = admin
    response = client.post("/_tenantkit/purge", headers=admin_headers(), json=body)
    assert response.status_code == status
    assert message in response.get_data(as_text=True)


def test_metrics(admin: tuple[Flask, Client]) -> None:
    _, client = admin
    client.get("/m/", headers={"Host": "alpha.test"})
    client.get("/m/", headers={"Host": "alpha.test"})
    client.get("/", headers={"Host": "nowhere.test"})
    text = client.get("/_tenantkit/metrics", headers=admin_headers()).get_data(as_text=True)
    assert 'tenantkit_requests_total{site="alpha",status="200"} 2.0' in text
    assert 'tenantkit_requests_total{site="-",status="421"} 1.0' in text
    assert 'tenantkit_cache_total{result="HIT",site="alpha"} 1.0' in text
    assert "tenantkit_sites 1.0" in text
    assert "# TYPE tenantkit_routing_decisions_total counter" in text


def test_status_page_escapes_what_it_shows(admin: tuple[Flask, Client], sites: Sites) -> None:
    app, client = admin
    (sites.dir / "evil.toml").write_text('hosts = ["<script>alert(1)</script>"]\n')
    app.extensions["tenantkit"].reload()
    page = client.get("/_tenantkit/", headers=admin_headers())
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<strong>alpha</strong>" in html and "alpha.test" in html
    assert "evil.toml" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_health_follows_the_real_database(sites: Sites, make_client: MakeClient,
                                          mariadb_pair: Any) -> None:
    sites.add("alpha", ["alpha.test"])
    database = DatabaseSettings(primary=mariadb_pair.primary_url,
                                replicas=(mariadb_pair.replica_url,), connect_timeout=1.0)
    _, client = make_client(database=database)
    healthy = client.get("/_tenantkit/health", headers=admin_headers())
    assert healthy.status_code == 200, healthy.data
    db = healthy.get_json()["checks"]["database"]
    assert db["primary_reachable"] is True
    assert list(db["replica_lag"]) and "tenantkit:********@" in next(iter(db["replica_lag"]))
    mariadb_pair.stop_primary()
    down = client.get("/_tenantkit/health", headers=admin_headers())
    assert down.status_code == 503
    details = down.get_json()["checks"]["database"]
    assert details["primary_reachable"] is False and details["primary_error"]
    page = client.get("/_tenantkit/", headers=admin_headers()).get_data(as_text=True)
    assert "unreachable" in page
    assert client.get("/", headers={"Host": "alpha.test"}).status_code == 200  # sites go on


def test_health_reports_a_dead_redis_bus(sites: Sites, make_client: MakeClient,
                                         redis_server: Any) -> None:
    sites.add("alpha", ["alpha.test"])
    app, client = make_client()
    ext = app.extensions["tenantkit"]
    ext.settings = replace(ext.settings, bus=BusSettings(transport="redis",
                                                         redis_url=redis_server.url))
    bus = client.get("/_tenantkit/health", headers=admin_headers()).get_json()["checks"]["bus"]
    assert bus["connected"] is True
    redis_server.stop()
    response = client.get("/_tenantkit/health", headers=admin_headers())
    assert response.status_code == 503
    assert response.get_json()["checks"]["bus"]["connected"] is False
