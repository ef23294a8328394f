"""Read-your-writes across requests for a site app that uses a :class:`~tenantkit.db.router.Router`.

Wrap the site's WSGI app (the demo blog does this)::

    router = Router.from_site(site, settings)
    app.wsgi_app = RouterTokens(app.wsgi_app, router)

For each request it opens ``router.with_token(...)`` with the token the page-cache middleware
found in the browser's signed cookie (``environ["tenantkit.consistency_token"]``), so the
request's reads see that browser's earlier writes; when the request itself wrote, the token
of its commits goes to ``environ["tenantkit.write_token"]`` before the response starts, and
the middleware turns it into the cookie. A garbled token is ignored. The router is also
registered for the shim's metrics (routing decisions, replica lag).

**Primary outage.** ``environ["tenantkit.primary_outage"]`` (:data:`PRIMARY_OUTAGE`) is set to
:meth:`Router.primary_outage() <tenantkit.db.router.Router.primary_outage>` when the request
starts and again when its response starts: true while no primary candidate takes writes and
the site's ``on_primary_down`` is ``"read_only"``. The page-cache middleware, which runs
around this one and shares the environ, reads it when the app answers with an error, and
serves the stale page instead for the length of the outage::

    if status >= 500 and environ.get(PRIMARY_OUTAGE): serve the stale copy
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tenantkit.db.router import ConsistencyToken, Router
from tenantkit.errors import TenantkitError
from tenantkit.web.metrics import watch_router
from tenantkit.web.rwcookie import TOKEN_IN, TOKEN_OUT

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["PRIMARY_OUTAGE", "RouterTokens"]

#: The environ key that says "the site's primary is down and it serves stale pages meanwhile".
PRIMARY_OUTAGE = "tenantkit.primary_outage"

logger = logging.getLogger(__name__)


class RouterTokens:
    """WSGI middleware carrying a router's consistency tokens in and out of each request."""

    def __init__(self, app: WSGIApplication, router: Router) -> None:
        self.app = app
        self.router = router
        watch_router(router)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        given: ConsistencyToken | None = None
        raw = environ.get(TOKEN_IN)
        if raw:
            try:
                given = ConsistencyToken.loads(raw)
            except (TenantkitError, ValueError) as exc:
                logger.debug("ignoring consistency token: %s", exc)
        environ[PRIMARY_OUTAGE] = self.router.primary_outage()
        with self.router.with_token(given) as scope:

            def respond(status: str, headers: Any, exc_info: Any = None) -> Any:
                environ[PRIMARY_OUTAGE] = self.router.primary_outage()
                if scope.produced is not None:
                    environ[TOKEN_OUT] = scope.produced.dumps()
                return start_response(status, headers, exc_info)

            body = self.app(environ, respond)
            if scope.produced is not None:
                environ[TOKEN_OUT] = scope.produced.dumps()
            return body
