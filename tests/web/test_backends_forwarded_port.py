"""The proxy backend tells the upstream which port the visitor used (X-Forwarded-Port)."""

from __future__ import annotations

import io

import pytest

from tenantkit.web.backends import ProxyApp


def _environ(**extra: str) -> dict[str, object]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "HTTP_HOST": "forum.test", "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), **extra}


@pytest.mark.parametrize(("trusted", "extra", "port"), [
    pytest.param(0, {}, "8000", id="the shim's own port"),
    pytest.param(0, {"HTTP_X_FORWARDED_PORT": "443"}, "8000", id="client's header replaced"),
    pytest.param(1, {"HTTP_X_FORWARDED_PORT": "443"}, "443", id="trusted proxy's port"),
    pytest.param(1, {"HTTP_X_FORWARDED_PORT": "1, 8443"}, "8443", id="last value"),
    pytest.param(1, {}, "8000", id="trusted proxy sent none"),
])
def test_forwarded_port(trusted: int, extra: dict[str, str], port: str) -> None:
    app = ProxyApp("http://127.0.0.1:1", trusted_proxies=trusted)
    try:
        headers = app._headers(_environ(**extra))
    finally:
        app.close()
    assert headers["X-Forwarded-Port"] == port
    assert [k for k in headers if k.lower() == "x-forwarded-port"] == ["X-Forwarded-Port"]
    assert headers["X-Forwarded-Host"] == "forum.test"
