from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from tk_web import Sites
from werkzeug.test import Client

from tenantkit.registry import Registry
from tenantkit.web.dispatch import HostDispatcher

MakeClient = Callable[..., tuple[Flask, Client]]


@pytest.fixture
def two_sites(sites: Sites) -> Sites:
    sites.add("alpha", ["alpha.test", "*.alpha.test"])
    sites.add("beta", ["beta.test"], extra="[cache]\nenabled = false\n")
    return sites


@pytest.mark.parametrize(("host", "site"), [
    pytest.param("alpha.test", "alpha", id="exact"),
    pytest.param("ALPHA.test.", "alpha", id="case and trailing dot"),
    pytest.param("alpha.test:8080", "alpha", id="port"),
    pytest.param("www.alpha.test", "alpha", id="wildcard"),
    pytest.param("beta.test", "beta", id="other site"),
])
def test_requests_go_to_the_site_of_their_host(two_sites: Sites, make_client: MakeClient,
                                               host: str, site: str) -> None:
    _, client = make_client()
    response = client.get("/", headers={"Host": host})
    assert response.status_code == 200
    assert response.get_data(as_text=True).startswith(f"site={site} ")


@pytest.mark.parametrize("host", [
    pytest.param("bad host", id="space"),
    pytest.param("a..b", id="empty label"),
    pytest.param("a/b", id="slash"),
    pytest.param("evil\\x", id="backslash"),
    pytest.param("a" * 64 + ".test", id="label too long"),
    pytest.param("x." * 200 + "test", id="name too long"),
    pytest.param("alpha.test:99999", id="bad port"),
    pytest.param("[::1", id="broken ipv6"),
    pytest.param("h" * 100_000, id="huge"),
])
def test_invalid_hosts_are_400(two_sites: Sites, make_client: MakeClient, host: str) -> None:
    _, client = make_client()
    response = client.get("/", headers={"Host": host})
    assert response.status_code == 400
    assert "invalid Host header" in response.get_data(as_text=True)


@pytest.mark.parametrize("host", [
    pytest.param("gamma.test", id="unknown"),
    pytest.param("alpha.test.evil.org", id="suffix of a site"),
    pytest.param("127.0.0.1", id="ip"),
    pytest.param("[::1]:80", id="ipv6"),
])
def test_unknown_hosts_are_421(two_sites: Sites, make_client: MakeClient, host: str) -> None:
    _, client = make_client()
    response = client.get("/", headers={"Host": host})
    assert response.status_code == 421
    assert "no site is configured" in response.get_data(as_text=True)


def test_no_host_at_all_is_not_served_by_the_first_site(two_sites: Sites) -> None:
    app = HostDispatcher(Registry.load(two_sites.settings()))
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "",
                               "wsgi.input": None}
    statuses: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: statuses.append(s)))
    assert statuses == ["400 Bad Request"]
    assert b"invalid Host" in body


def test_unknown_can_name_a_fallback_site(two_sites: Sites, make_client: MakeClient) -> None:
    _, client = make_client(unknown="beta")
    response = client.get("/", headers={"Host": "nobody.test"})
    assert response.status_code == 200
    assert response.get_data(as_text=True).startswith("site=beta ")


def test_forwarded_host_only_counts_when_trusted(two_sites: Sites,
                                                 make_client: MakeClient) -> None:
    _, untrusting = make_client()
    headers = {"Host": "alpha.test", "X-Forwarded-Host": "beta.test"}
    assert untrusting.get("/", headers=headers).get_data(as_text=True).startswith("site=alpha")
    _, trusting = make_client(trusted_proxies=1)
    spoofed = {"Host": "alpha.test", "X-Forwarded-Host": "beta.test, gamma.test"}
    assert trusting.get("/", headers=headers).get_data(as_text=True).startswith("site=beta")
    assert trusting.get("/", headers=spoofed).status_code == 421  # the last hop is the truth
    hostile = {"Host": "alpha.test", "X-Forwarded-Host": "../../etc"}
    assert trusting.get("/", headers=hostile).status_code == 400


def test_an_exception_in_one_site_is_a_500_for_that_request_only(
        two_sites: Sites, make_client: MakeClient) -> None:
    two_sites.add("broken", ["broken.test"], app="tk_test_apps:boom")
    two_sites.add("missing", ["missing.test"], app="no_such_module_here:app")
    _, client = make_client()
    for _ in range(3):
        assert client.get("/", headers={"Host": "broken.test"}).status_code == 500
        assert client.get("/", headers={"Host": "missing.test"}).status_code == 500
        assert client.get("/", headers={"Host": "alpha.test"}).status_code == 200


def test_unknown_methods_and_bad_cookies_reach_the_app(two_sites: Sites,
                                                      make_client: MakeClient) -> None:
    _, client = make_client()
    response = client.open("/", method="BREW", headers={"Host": "alpha.test"})
    assert response.status_code == 200
    assert response.headers["X-Tenantkit-Cache"] == "BYPASS"
    for cookie in ["=;=;;", "a=\x7f\x00", "tenantkit_rw=garbage", "x" * 20000, '"unbalanced']:
        response = client.get("/c/", headers={"Host": "alpha.test", "Cookie": cookie})
        assert response.status_code == 200


def test_a_changed_site_gets_a_rebuilt_app(sites: Sites, make_client: MakeClient) -> None:
    path = sites.add("fac", ["fac.test"], app="tk_test_apps:factory",
                     extra='[cache]\nenabled = false\n[meta]\ngreeting = "one"\n')
    app, client = make_client()
    assert client.get("/", headers={"Host": "fac.test"}).data == b"one"
    path.write_text(path.read_text().replace('"one"', '"two"'))
    app.extensions["tenantkit"].reload()
    assert client.get("/", headers={"Host": "fac.test"}).data == b"two"


def test_site_removed_mid_request(sites: Sites, make_client: MakeClient) -> None:
    path = sites.add("slow", ["slow.test"], app="tk_test_apps:slow",
                     extra="[cache]\nenabled = false\n")
    app, client = make_client()
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(client.get("/", headers={"Host": "slow.test"}).status_code))
    thread.start()
    time.sleep(0.1)
    path.unlink()
    app.extensions["tenantkit"].reload()
    thread.join(10)
    assert results == [200]  # the request in flight finishes on the old definition
    assert client.get("/", headers={"Host": "slow.test"}).status_code == 421
