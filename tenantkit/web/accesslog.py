"""Access-log middleware: one line per request on the ``tenantkit.access`` logger.

Mount it outermost, so that it sees every answer (hits served from the page cache too)::

    app = AccessLog(app, site_of=lambda environ: "-")

The text line is nginx's "combined" format followed by tenantkit's fields::

    127.0.0.1 - - [05/Dec/2025:09:13:00 +0000] "GET /post/2/ HTTP/1.1" 200 5120 "-" "curl/8.5"
    site=blog host=blog.example.org cache=HIT duration=0.0004 upstream=-

(on one line). With ``[log] format = "json"`` the same fields are keys of the JSON object.
The cache state is the response's ``X-Tenantkit-Cache`` header (``-`` where the page cache
did not take part), the site is ``environ["tenantkit.site"]`` (else *site_of*), the
upstream time is ``environ["tenantkit.upstream_seconds"]`` (see
:mod:`tenantkit.web.timing`), the duration runs until the body is closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tenantkit.logs import ACCESS_LOGGER

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["AccessLog"]

UPSTREAM_KEY = "tenantkit.upstream_seconds"
_CACHE_HEADER = "x-tenantkit-cache"


class _Request:
    __slots__ = ("bytes", "cache", "environ", "started", "status")

    def __init__(self, environ: WSGIEnvironment, started: float) -> None:
        self.environ = environ
        self.started = started
        self.status = "-"
        self.cache = "-"
        self.bytes = 0


class AccessLog:
    """Log each request once, when its response body is closed."""

    def __init__(self, app: WSGIApplication, *, logger: logging.Logger | None = None,
                 site_of: Callable[[WSGIEnvironment], str] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self.site_of = site_of
        self.clock = clock

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        request = _Request(environ, self.clock())

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            request.status = status[:3]
            for name, value in headers:
                if len(name) == len(_CACHE_HEADER) and name.lower() == _CACHE_HEADER:
                    request.cache = value
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, respond)
        except BaseException:
            request.status = "500"
            self.log(request)
            raise
        return _Body(body, request, self.log)

    def log(self, request: _Request) -> None:
        """Hand the request's record to the logger. Only the fields are gathered here: the
        text line is made when a handler formats the record (with the server's
        :class:`~tenantkit.logs.BackgroundStreamHandler`, in its writer thread)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        environ = request.environ
        duration = self.clock() - request.started
        site = environ.get("tenantkit.site")
        name = getattr(site, "name", None)
        if name is None:
            try:
                name = self.site_of(environ) if self.site_of is not None else "-"
            except Exception:  # a log line must never fail a request
                name = "-"
        path = environ.get("PATH_INFO") or "/"
        query = environ.get("QUERY_STRING")
        upstream = environ.get(UPSTREAM_KEY)
        fields: dict[str, Any] = {
            "remote": environ.get("REMOTE_ADDR") or "-",
            "method": str(environ.get("REQUEST_METHOD") or "-"),
            "path": f"{path}?{query}" if query else path,
            "protocol": str(environ.get("SERVER_PROTOCOL") or "-"),
            "status": int(request.status) if request.status.isdigit() else None,
            "bytes": request.bytes,
            "referer": str(environ.get("HTTP_REFERER") or "-"),
            "user_agent": str(environ.get("HTTP_USER_AGENT") or "-"),
            "site": name or "-",
            "host": str(environ.get("tenantkit.host") or environ.get("HTTP_HOST") or "-"),
            "cache": request.cache,
            "duration": round(duration, 6),
            "upstream": None if upstream is None else round(upstream, 6),
        }
        # makeRecord, not info(): no walk up the stack for the caller's line.
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s",
                                        (_Line(fields, time.time()),), None,
                                        extra={"fields": fields}))


class _Line:
    """The text line of one request's fields, made when it is first written."""

    __slots__ = ("fields", "when")

    def __init__(self, fields: dict[str, Any], when: float) -> None:
        self.fields = fields
        self.when = when

    def __str__(self) -> str:
        f = self.fields
        stamp = _stamp(int(self.when))
        status = "-" if f["status"] is None else f["status"]
        upstream = f["upstream"]
        return (
            f'{f["remote"]} - - [{stamp}] "{_q(f["method"])} {_q(f["path"])} '
            f'{_q(f["protocol"])}" {status} {f["bytes"]} '
            f'"{_q(f["referer"])}" "{_q(f["user_agent"])}" '
            f'site={f["site"]} host={_q(f["host"])} cache={_q(f["cache"])} '
            f'duration={f["duration"]:.4f} '
            f"upstream={'-' if upstream is None else format(upstream, '.4f')}"
        )


#: (second, its nginx-style stamp): made once per second, not once per line.
_last_stamp: tuple[int, str] = (-1, "")


def _stamp(second: int) -> str:
    global _last_stamp
    seen = _last_stamp
    if seen[0] != second:
        seen = _last_stamp = (second, time.strftime("%d/%b/%Y:%H:%M:%S +0000",
                                                    time.gmtime(second)))
    return seen[1]


def _q(text: str) -> str:
    """Quotes, backslashes and control characters escaped, as nginx does in its logs."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(f"\\x{ord(c):02X}" if not c.isprintable() or c in '"\\' else c
                   for c in text)


class _Body:
    """The response body, counted; logs the request when closed."""

    __slots__ = ("body", "done", "request")

    def __init__(self, body: Iterable[bytes], request: _Request,
                 done: Callable[[_Request], None]) -> None:
        self.body = body
        self.request = request
        self.done: Callable[[_Request], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        request = self.request
        for chunk in self.body:
            request.bytes += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            done, self.done = self.done, None
            if done is not None:
                done(self.request)
