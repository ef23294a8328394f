"""Upstream timing: how long a site's backend took to answer, for the access log and the
per-site latency metrics.

Mount it right around the backends, inside the page cache (so hits are not timed)::

    app = UpstreamTimer(SiteBackendApp(pool), on_time=metrics.upstream)

The time runs from the call to the backend until the backend has started its response (a
proxied upstream's status and headers have arrived; an in-process app has returned its body)
and is kept in ``environ["tenantkit.upstream_seconds"]``; *on_time* is then called with the
site's name and the seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tenantkit.web.accesslog import UPSTREAM_KEY

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["UPSTREAM_KEY", "UpstreamTimer"]


class UpstreamTimer:
    """Time the backend of ``environ["tenantkit.site"]``."""

    def __init__(self, app: WSGIApplication, *,
                 on_time: Callable[[str, float], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.on_time = on_time
        self.clock = clock

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        started = self.clock()
        try:
            return self.app(environ, start_response)
        finally:
            seconds = self.clock() - started
            environ[UPSTREAM_KEY] = seconds
            if self.on_time is not None:
                site = environ.get("tenantkit.site")
                self.on_time(getattr(site, "name", "-"), seconds)
