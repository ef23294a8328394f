"""The primary-outage hook for the page cache: ``environ["tenantkit.primary_outage"]`` is
true while no primary candidate takes writes and the site says ``on_primary_down =
"read_only"``."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from werkzeug.test import Client
from werkzeug.wrappers import Response

from tenantkit.db.router import Router
from tenantkit.errors import PrimaryUnavailable
from tenantkit.testing import free_port
from tenantkit.web.consistency import PRIMARY_OUTAGE, RouterTokens


def _nowhere() -> list[str]:
    # Nothing listens there: each candidate refuses the connection (a dead primary).
    return [f"mysql+pymysql://app:pw@127.0.0.1:{free_port()}/app" for _ in range(2)]


@pytest.mark.parametrize(("mode", "outage"), [
    pytest.param("read_only", True, id="read_only: serve stale"),
    pytest.param("error", False, id="error: errors as today"),
])
def test_the_outage_is_in_the_environ_when_the_response_starts(mode: str, outage: bool) -> None:
    router = Router(_nowhere(), on_primary_down=mode,  # type: ignore[arg-type]
                    connect_timeout=1)
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            with router.session() as session:
                session.execute(text("INSERT INTO t VALUES (1)"))
        except PrimaryUnavailable:
            pass
        return Response("down", status=503)(environ, start_response)

    def outer(environ: dict[str, Any], start_response: Any) -> Any:
        def respond(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen["outage"] = environ.get(PRIMARY_OUTAGE)  # what the page cache would read
            return start_response(status, headers, exc_info)
        return RouterTokens(app, router)(environ, respond)

    try:
        response = Client(outer).get("/")
        assert response.status_code == 503
        assert seen["outage"] is outage
        assert router.primary_state().index is None
    finally:
        router.close()
