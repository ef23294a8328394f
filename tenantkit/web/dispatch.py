"""Virtual-host dispatch: one WSGI entry point for every site, chosen by the Host header.

Mount it as the whole application (the web server keeps one catch-all virtual host)::

    from tenantkit.registry import Registry
    from tenantkit.web.dispatch import HostDispatcher

    registry = Registry.load(settings)
    application = HostDispatcher(registry, trusted_proxies=1)

The resolved :class:`~tenantkit.sites.Site` is kept at ``environ["tenantkit.site"]`` and the
request goes on to ``app`` (default: the site's own backend, see
:mod:`tenantkit.web.backends`). A Host that fails normalisation answers **400**; a Host no
site claims answers **421 Misdirected Request** (RFC 9110 section 15.5.20), or goes to the site
named by ``unknown`` -- never to the first site by accident. An exception raised by one
site's app becomes a 500 for that request only. An expected failure (a database or an
upstream that does not answer, a backend that cannot be loaded: see :func:`expected_failure`)
is logged as one line naming the site; anything else with its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tenantkit.errors import InvalidHost, TenantkitError
from tenantkit.hosts import normalize_host, request_host
from tenantkit.sites import Site
from tenantkit.web.backends import BackendPool, UpstreamError
from tenantkit.web.target import untrusted_script_name

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["HostDispatcher", "SiteBackendApp", "SiteResolver", "expected_failure"]

logger = logging.getLogger(__name__)

SITE_KEY = "tenantkit.site"
HOST_KEY = "tenantkit.host"


class SiteResolver(Protocol):
    """What the dispatcher needs of :class:`tenantkit.registry.Registry`."""

    @property
    def sites(self) -> Mapping[str, Site]: ...

    def resolve(self, raw_host: str) -> Site | None: ...


def expected_failure(exc: BaseException) -> str | None:
    """A one-line reason when *exc* (or what caused it) is a failure an operator expects --
    a database or a network peer that does not answer, a tenantkit error (a backend that
    cannot be imported, a replica that is gone) -- else None: a bug, worth a traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TenantkitError | OSError) or _is_driver_error(current):
            text = str(current).strip().splitlines()
            detail = text[0][:300] if text else ""
            return f"{type(current).__name__}: {detail}" if detail else type(current).__name__
        current = current.__cause__ or current.__context__
    return None


def _is_driver_error(exc: BaseException) -> bool:
    """SQLAlchemy's and the DB-API drivers' connection-level errors, by their module (no
    driver is imported here)."""
    module = type(exc).__module__ or ""
    if module.startswith("sqlalchemy"):
        return type(exc).__name__ in ("OperationalError", "InterfaceError", "TimeoutError",
                                      "DisconnectionError")
    return module.startswith(("pymysql", "MySQLdb", "redis")) and type(exc).__name__ in (
        "OperationalError", "InterfaceError", "ConnectionError", "TimeoutError")


def error_response(start_response: StartResponse, status: str, text: str,
                   exc_info: Any = None) -> list[bytes]:
    """A short plain-text response, the only kind the shim writes itself."""
    body = (text + "\n").encode("utf-8", "replace")
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    start_response(status, headers, exc_info)
    return [body]


class SiteBackendApp:
    """The innermost app: runs ``environ["tenantkit.site"]``'s backend from a pool."""

    def __init__(self, pool: BackendPool | None = None) -> None:
        self.pool = pool or BackendPool()

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        return self.pool(environ[SITE_KEY], environ, start_response)


class HostDispatcher:
    """Resolve the site for each request, then hand it to *app* (its backend by default)."""

    def __init__(self, registry: SiteResolver, app: WSGIApplication | None = None, *,
                 trusted_proxies: int = 0, unknown: str = "421",
                 on_response: Callable[[str, int], None] | None = None) -> None:
        self.registry = registry
        self.app: WSGIApplication = app if app is not None else SiteBackendApp()
        self.trusted_proxies = trusted_proxies
        self.unknown = unknown
        self.on_response = on_response

    def resolve(self, environ: WSGIEnvironment) -> Site | None:
        """The site for this request; raises :class:`InvalidHost` for a malformed host."""
        if self.trusted_proxies == 0:
            untrusted_script_name(environ)
        host = normalize_host(request_host(environ, self.trusted_proxies))
        environ[HOST_KEY] = host
        site = self.registry.resolve(host)
        if site is None and self.unknown != "421":
            site = self.registry.sites.get(self.unknown)
        return site

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        try:
            site = self.resolve(environ)
        except InvalidHost as exc:
            self._count("-", 400)
            return error_response(start_response, "400 Bad Request",
                                  f"bad request: invalid Host header: {exc}")
        if site is None:
            self._count("-", 421)
            return error_response(
                start_response, "421 Misdirected Request",
                f"no site is configured for host {environ[HOST_KEY]!r}")
        environ[SITE_KEY] = site
        on_response = self.on_response
        started = False

        def respond(status: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal started
            started = True
            if on_response is not None:
                on_response(site.name, int(status[:3]))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, respond)
        except UpstreamError as exc:
            if started:
                raise
            logger.warning("site %s: %s", site.name, exc)
            return error_response(respond, exc.status, exc.public)
        except Exception as exc:
            reason = expected_failure(exc)
            if reason is None:
                logger.exception("site %s: the app raised on %s %s", site.name,
                                 environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            else:
                logger.error("site %s: %s %s answered 500: %s", site.name,
                             environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), reason)
            # exc_info only when the app already called start_response (PEP 3333: replace
            # the headers it gave); otherwise a server may re-raise it.
            return error_response(respond, "500 Internal Server Error",
                                  "internal server error", sys.exc_info() if started else None)

    def _count(self, site: str, status: int) -> None:
        if self.on_response is not None:
            self.on_response(site, status)
