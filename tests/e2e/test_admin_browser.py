"""Issue 16, section 3: the admin is safe to open in a browser, and shows no password.

``tenantkit serve`` (gunicorn) with the admin on ``admin.test``; requests as a browser sends
them, over real sockets.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from tk_procs import Shim, shim_env
from tk_web import TOKEN, Sites

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")

BASIC = "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode()
PASSWORD = "p@ss%20w@rd"  # an @ (in clear) and a space (escaped)


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[Shim]:
    sites = Sites(tmp_path)
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:page")
    shim = Shim(tmp_path, shim_env(
        sites.dir, sites.cache_dir, TENANTKIT_WEB_ADMIN_HOSTS="admin.test",
        TENANTKIT_WEB_ADMIN_TOKEN=TOKEN,
        TENANTKIT_DATABASE_PRIMARY=f"mysql+tenantkit://app:{PASSWORD}@127.0.0.1:9/db"),
        "--workers", "1")
    try:
        yield shim
    finally:
        assert shim.stop() == 0, shim.output()[-6000:]


def _post(shim: Shim, path: str, headers: dict[str, str], **kw: object
          ) -> urllib3.BaseHTTPResponse:
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        return http.request("POST", shim.url + path,
                            headers={"Host": "admin.test", **headers}, **kw)  # type: ignore[arg-type]


FORM = {"site": "alpha", "all": "1"}


@pytest.mark.parametrize(("headers", "how"), [
    pytest.param({"Authorization": BASIC, "Origin": "http://evil.test"}, "form",
                 id="form from another origin"),
    pytest.param({"Authorization": BASIC, "Sec-Fetch-Site": "cross-site"}, "form",
                 id="cross-site form"),
    pytest.param({"Authorization": BASIC, "Sec-Fetch-Site": "same-site"}, "json",
                 id="same-site but another origin"),
    pytest.param({"Authorization": BASIC}, "form", id="form with cached Basic only"),
    pytest.param({"Authorization": BASIC, "Content-Type": "text/plain"}, "text",
                 id="text/plain post with cached Basic only"),
    pytest.param({"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.test"}, "json",
                 id="bearer from another origin"),
])
def test_state_changing_requests_are_refused_cross_site(shim: Shim, headers: dict[str, str],
                                                        how: str) -> None:
    for path in ("/_tenantkit/purge", "/_tenantkit/reload"):
        if how == "form":
            reply = _post(shim, path, headers, fields=FORM, encode_multipart=False)
        elif how == "text":
            reply = _post(shim, path, headers, body=b"site=alpha&all=1")
        else:
            reply = _post(shim, path, headers, json=FORM)
        assert reply.status == 403, (path, reply.status, reply.data)


@pytest.mark.parametrize(("headers", "how"), [
    pytest.param({"Authorization": f"Bearer {TOKEN}"}, "form", id="bearer form (scripts)"),
    pytest.param({"Authorization": f"Bearer {TOKEN}"}, "json", id="bearer json"),
    pytest.param({"Authorization": BASIC, "Origin": "http://admin.test",
                  "Sec-Fetch-Site": "same-origin"}, "json", id="status page fetch"),
])
def test_the_admins_own_requests_still_work(shim: Shim, headers: dict[str, str],
                                            how: str) -> None:
    if how == "form":
        reply = _post(shim, "/_tenantkit/purge", headers, fields=FORM, encode_multipart=False)
    else:
        reply = _post(shim, "/_tenantkit/purge", headers, json=FORM)
    assert reply.status == 200, reply.data


def test_passwords_are_masked_on_every_admin_page(shim: Shim) -> None:
    with urllib3.PoolManager(retries=False, timeout=10) as http:
        for path in ("/_tenantkit/health", "/_tenantkit/", "/_tenantkit/sites"):
            reply = http.request("GET", shim.url + path, headers={
                "Host": "admin.test", "Authorization": f"Bearer {TOKEN}"})
            text = reply.data.decode()
            assert reply.status in (200, 503), (path, reply.status)
            for part in ("p@ss", "w@rd", "%20w", "ss w"):
                assert part not in text, (path, part, text[:2000])
    assert "w@rd" not in shim.output()
