"""What serves a site: an in-process WSGI app or an HTTP upstream.

:class:`BackendPool` turns a :class:`~tenantkit.sites.Site` into a WSGI callable, built lazily
the first time the site is asked for and rebuilt when its definition changes (the old one is
released once its last in-flight request is done)::

    pool = BackendPool(trusted_proxies=1)
    app = pool.get(site)                 # a WSGI app for this site definition
    body = app(environ, start_response)

``Backend(type="wsgi", app="blog.wsgi:application")`` imports ``blog.wsgi`` and uses its
``application`` attribute: a WSGI app, or a factory called with the site. A factory is any
callable that is not itself a WSGI app (one positional parameter instead of two).

``Backend(type="proxy", url="http://127.0.0.1:8080")`` forwards to an HTTP upstream
(:class:`ProxyApp`) with pooled keep-alive connections: the client's ``Host`` is preserved,
``X-Forwarded-For/-Proto/-Host`` are set and hop-by-hop headers dropped. With
``trusted_proxies`` the host the site was chosen by (``X-Forwarded-Host``) is sent as both
``Host`` and ``X-Forwarded-Host``. A ``Proxy`` request header (httpoxy) is never forwarded;
response fields named in the upstream's ``Connection`` header are dropped (RFC 9110 section
7.6.1), and so is the ``Content-Length`` of a chunked response (:func:`end_to_end`): the
server re-frames the body it is given. The upstream receives the request target exactly as
the client sent it (:func:`tenantkit.web.target.request_target`, also the page cache's
key). An upstream that cannot be reached, or closes before the first byte of its body,
answers 502; one that times out 504; each is logged in one line naming the site.

Framing, so that no request or response can be taken for another (issue 24):

- A request body is read whole before anything is sent upstream (in memory up to 1 MiB,
  then in a temporary file; at most ``max_body`` bytes, else 413), and forwarded with its
  ``Content-Length`` -- never chunked. A body that does not arrive completely (shorter than
  its ``Content-Length``, a chunked body cut short or malformed) is answered 400 and never
  forwarded. ``Content-Length`` with ``Transfer-Encoding``, a length that is not digits, or
  a transfer coding other than ``chunked`` are answered 400/501 and never forwarded.
- A request with a body is sent with ``Connection: close`` and its upstream connection is
  closed after the response: the proxy cannot know whether the upstream read that body,
  and a body the upstream did not read would be parsed as the next request.
- Interim (1xx) responses are consumed (:mod:`tenantkit.web.upstream`); ``101`` is 502.
- An upstream connection goes back to the pool only after a response read to the end its
  framing gives, from an upstream that keeps the connection alive; anything else (the
  visitor went away, the upstream closed mid-body) closes it.
- A response with neither ``Content-Length`` nor chunked framing (``php -S``, HTTP/1.0)
  ends at the close, which looks the same whether the upstream finished or died mid-page.
  Such a body counts as whole (and may be stored, as nginx and Varnish do) only when the
  close was clean and, for an HTML page, the document's ``</html>`` arrived
  (:data:`HTML_END`): else the visitor gets it as it came (a fragment such as
  ``admin-ajax.php``'s answer has none either), and :data:`NOT_STORABLE` keeps it out of
  the page cache; the upstream is logged once. Its connection is never reused.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import inspect
import logging
import pkgutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tenantkit.config import mask_url
from tenantkit.errors import SiteError
from tenantkit.hosts import request_host
from tenantkit.sites import Site
from tenantkit.web.target import request_target
from tenantkit.web.upstream import Deadline, Unreachable, UpstreamPool, complete

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["DEADLINE", "HTML_END", "NOT_STORABLE", "RETRY_AFTER", "BackendError", "BackendPool",
           "ProxyApp", "Timeouts", "UpstreamClosed", "UpstreamError", "UpstreamTimeout",
           "end_to_end", "load_wsgi_app", "over_limit"]

logger = logging.getLogger(__name__)

#: RFC 9110 section 7.6.1 connection-specific fields, never forwarded in either direction.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})


def end_to_end(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields of a message a proxy or a cache may pass on: without the hop-by-hop ones,
    those the message's ``Connection`` names (RFC 9110 section 7.6.1), and a
    ``Content-Length`` that a ``Transfer-Encoding`` overrides (RFC 9112 section 6.3: the
    body is re-framed by whoever sends it next)::

        end_to_end([("Transfer-Encoding", "chunked"), ("Content-Length", "3"),
                    ("Connection", "X-Hop"), ("X-Hop", "1"), ("ETag", '"a"')])
        # [("ETag", '"a"')]
    """
    fields = list(fields)
    named = {t.strip().lower() for k, v in fields if k.lower() == "connection"
             for t in v.split(",")}
    if any(k.lower() == "transfer-encoding" for k, _ in fields):
        named.add("content-length")
    return [(k, v) for k, v in fields if k.lower() not in HOP_BY_HOP and k.lower() not in named]


#: Request fields the proxy sets itself from the body it read (``Expect``: the body is sent
#: at once, as nginx does).
_FRAMING = frozenset({"content-length", "expect"})
#: Request fields never forwarded: ``Proxy`` would become an upstream CGI's HTTP_PROXY
#: (httpoxy); ``Script-Name`` would move the upstream's idea of the path.
_NEVER_FORWARDED = frozenset({"proxy", "script-name"})
_CHUNK = 64 * 1024
#: Request bodies larger than this are spooled to a temporary file.
_SPOOL = 1024 * 1024
#: Seconds a visitor refused for a busy backend is told to wait (``Retry-After``).
RETRY_AFTER = 5
#: A busy site's refusals are logged at most this often (one line with their count).
REFUSED_LOG_SECONDS = 10.0
#: The environ key of an overall deadline for the upstream exchange (``time.monotonic()``
#: seconds, a float): past it the exchange is cut off and answered 504 (the re-warmer's).
DEADLINE = "tenantkit.deadline"
#: A close-delimited HTML page is whole only if this (any case) is in its last
#: :data:`HTML_TAIL` bytes: the one sign left that the upstream finished it.
HTML_END = b"</html"
HTML_TAIL = 4096
#: The environ key a backend sets, by the end of its body at the latest, to say why the
#: response must not be stored (a str): the page cache passes it on and never stores it.
NOT_STORABLE = "tenantkit.not_storable"
#: Default largest request body (nginx's ``client_max_body_size`` in ``tenantkit nginx-config``).
MAX_BODY = 64 * 1024 * 1024


class BackendError(SiteError):
    """A site's backend cannot be built (bad ``app`` reference, import error, bad URL)."""


class UpstreamError(ConnectionError):
    """The upstream failed while its response body was being read: ``status`` is what the
    visitor gets when nothing was sent yet, ``public`` its text."""

    status = "502 Bad Gateway"
    public = "upstream unavailable"


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before the whole response body was sent."""


class UpstreamTimeout(UpstreamError):
    """The upstream stopped sending its response body for longer than the read timeout."""

    status = "504 Gateway Timeout"
    public = "upstream timed out"


def _is_wsgi_app(obj: Any) -> bool:
    if hasattr(obj, "wsgi_app"):  # Flask, and apps following its convention
        return True
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return True  # a C callable or similar: assume it is an app
    positional = [p for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


def load_wsgi_app(site: Site) -> WSGIApplication:
    """Import ``site.backend.app`` (``"module:attr"``) and return the WSGI app it names,
    calling it with *site* first when it is a factory."""
    ref = site.backend.app or ""
    module_name, _, attr = ref.partition(":")
    where = f"site {site.name!r}: backend app {ref!r}"
    if not module_name or not attr:
        raise BackendError(f'{where}: expected "module:attribute" (write app = "myapp.wsgi:app")')
    try:
        obj: Any = pkgutil.resolve_name(ref)
    except ImportError as exc:
        raise BackendError(f"{where}: cannot import {module_name!r}: {exc} "
                           "(install the package or fix the module name)") from exc
    except AttributeError:
        raise BackendError(f"{where}: module {module_name!r} has no attribute {attr!r} "
                           "(check the name after the colon)") from None
    except ValueError as exc:
        raise BackendError(f'{where}: {exc} (write app = "myapp.wsgi:app")') from None
    if not callable(obj):
        raise BackendError(f"{where}: {attr!r} is a {type(obj).__name__}, not a WSGI app "
                           "or a factory")
    if not _is_wsgi_app(obj):
        obj = obj(site)
        if not callable(obj):
            raise BackendError(f"{where}: the factory returned {type(obj).__name__}, "
                               "not a WSGI app")
    app: WSGIApplication = obj
    return app


class ProxyApp:
    """A WSGI app forwarding every request to one HTTP upstream.

    ``trusted_proxies`` says how many proxies in front of us may be believed: with 0, a
    client-sent ``X-Forwarded-For`` is replaced; otherwise our peer's address is appended.
    """

    def __init__(self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 maxsize: int = 16, trusted_proxies: int = 0,
                 max_body: int = MAX_BODY) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"backend url {mask_url(url)!r}: expected http://host:port "
                               "or https://host:port")
        self.url = url
        self.prefix = parts.path.rstrip("/")
        self.trusted_proxies = trusted_proxies
        self.max_body = max_body
        self.timeout = Timeouts(connect_timeout, read_timeout)
        #: Whether the upstream was logged for a response ending at the close (once).
        self.pool = UpstreamPool(url, maxsize=maxsize, connect_timeout=connect_timeout,
                                 read_timeout=read_timeout)

    def close(self) -> None:
        self.pool.close()

    def _headers(self, environ: WSGIEnvironment) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").title()
                headers[name] = value
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers = {k: v for k, v in end_to_end(headers.items())
                   if k.lower() not in _FRAMING and k.lower() not in _NEVER_FORWARDED}
        remote = environ.get("REMOTE_ADDR", "")
        prior = headers.get("X-Forwarded-For", "")
        if self.trusted_proxies > 0 and prior:
            headers["X-Forwarded-For"] = f"{prior}, {remote}"
        else:
            headers["X-Forwarded-For"] = remote
        # The host the site (and the page-cache key) came from, under both names.
        host = request_host(environ, self.trusted_proxies)
        headers["Host"] = host
        headers["X-Forwarded-Host"] = host
        headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        port = environ.get("SERVER_PORT", "")
        if self.trusted_proxies > 0 and environ.get("HTTP_X_FORWARDED_PORT"):
            port = environ["HTTP_X_FORWARDED_PORT"].split(",")[-1].strip()
        headers["X-Forwarded-Port"] = port
        return headers

    def _target(self, environ: WSGIEnvironment) -> str:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if isinstance(raw, str) and raw.startswith("/"):
            return self.prefix + raw
        path, query = request_target(environ)
        return self.prefix + path + ("?" + query if query else "")

    def _body(self, environ: WSGIEnvironment) -> tuple[Any, int] | None:
        """The whole request body as (file, length), None without one; raises _Refused when
        the body's framing is ambiguous or the body did not arrive completely."""
        length = environ.get("CONTENT_LENGTH") or ""
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        expected: int | None
        if coding is not None:
            if length:
                raise _Refused("400 Bad Request",
                               "both Content-Length and Transfer-Encoding: send one of them")
            if coding.strip().lower() != "chunked":
                raise _Refused("501 Not Implemented",
                               f"Transfer-Encoding {coding!r}: only chunked is understood")
            if not environ.get("wsgi.input_terminated"):
                raise _Refused("411 Length Required",
                               "a chunked body this server does not decode: send Content-Length")
            expected = None
        elif length:
            if not (length.isascii() and length.isdigit()):
                raise _Refused("400 Bad Request", f"Content-Length {length!r} is not a number")
            expected = int(length)
        else:
            return None
        if expected is not None and expected > self.max_body:
            raise _Refused("413 Content Too Large",
                           f"a body of more than {self.max_body} bytes")
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 (returned)
        try:
            got = _spool(environ["wsgi.input"], spool, expected, self.max_body)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool, got

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        body: Any = None
        when = environ.get(DEADLINE)
        deadline = Deadline(when) if isinstance(when, float) else None
        try:
            headers = self._headers(environ)
            framed = self._body(environ)
            if framed is not None:
                body, size = framed
                headers["Content-Length"] = str(size)
                if size:
                    # Whether the upstream reads this body, the proxy cannot know: one it
                    # did not read would be parsed as the next request on the connection.
                    headers["Connection"] = "close"
            target = self._target(environ)
            conn = self.pool.get()
            try:
                with deadline.active() if deadline is not None else contextlib.nullcontext():
                    conn.request(method, target, body, headers)
                    response = conn.getresponse()
            except BaseException:
                conn.close()
                raise
        except (http.client.HTTPException, OSError) as exc:
            if deadline is not None:
                deadline.done()
                if deadline.expired:
                    logger.warning("site %s: upstream %s: no response by the deadline: %s",
                                   _site_name(environ), mask_url(self.url), exc)
                    return _plain(start_response, "504 Gateway Timeout", "upstream timed out")
            return self._failed(environ, start_response, exc)
        except _Refused as exc:
            logger.info("upstream %s: request refused: %s", mask_url(self.url), exc.message)
            return _plain(start_response, exc.status, f"bad request: {exc.message}")
        except ValueError as exc:  # http.client refuses a method or header value
            return _plain(start_response, "400 Bad Request", f"bad request: {exc}")
        finally:
            if body is not None:
                body.close()
        if response.status < 200:  # 101: a protocol switch nobody asked for
            response.close()
            conn.close()
            if deadline is not None:
                deadline.done()
            logger.warning("upstream %s answered %d: not a final response",
                           mask_url(self.url), response.status)
            return _plain(start_response, "502 Bad Gateway", "upstream unavailable")
        out = end_to_end(response.msg.items())
        body = _ResponseBody(response, conn, self.pool, self.url, deadline)
        if response.length is None and not response.chunked:
            content_type = response.msg.get("Content-Type", "")
            if content_type.lower().lstrip().startswith(("text/html", "application/xhtml")):
                body.html_end = environ
        # Up to _CHUNK bytes of the body (all of most pages) are read before the status line
        # goes out: an upstream that fails by then still gets an honest 502/504 instead of
        # a truncated 200.
        iterator = iter(body)
        first: list[bytes] = []
        try:
            got = 0
            for chunk in iterator:
                first.append(chunk)
                got += len(chunk)
                if got >= _CHUNK:
                    break
        except UpstreamError as exc:
            body.close()
            logger.warning("site %s: %s", _site_name(environ), exc)
            return _plain(start_response, exc.status, exc.public)
        except BaseException:
            body.close()
            raise
        start_response(f"{response.status} {response.reason or ''}".rstrip(), out)
        return _Prefetched(first, iterator, body, _site_name(environ), whole=body.released)

    def _failed(self, environ: WSGIEnvironment, start_response: StartResponse,
                exc: BaseException) -> list[bytes]:
        """The answer (and the one log line) for an upstream that failed before answering."""
        if isinstance(exc, Unreachable):
            logger.warning("site %s: upstream %s unreachable: %s", _site_name(environ),
                           mask_url(self.url), exc)
            return _plain(start_response, "502 Bad Gateway", "upstream unavailable")
        if isinstance(exc, TimeoutError):
            logger.warning("site %s: upstream %s timed out: %s", _site_name(environ),
                           mask_url(self.url), exc)
            return _plain(start_response, "504 Gateway Timeout", "upstream timed out")
        logger.warning("site %s: upstream %s failed: %s", _site_name(environ),
                       mask_url(self.url), exc)
        return _plain(start_response, "502 Bad Gateway", "upstream unavailable")


def _site_name(environ: WSGIEnvironment) -> str:
    return str(getattr(environ.get("tenantkit.site"), "name", "-"))


class _Refused(Exception):
    """A request the proxy will not send on: *status* and what was wrong."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _spool(stream: Any, spool: Any, expected: int | None, limit: int) -> int:
    """Copy the request body from the WSGI input into *spool*: exactly *expected* bytes, or
    (chunked, decoded by the server) everything up to its end. Returns the length."""
    got = 0
    for _ in range(limit + 2):  # bounded: every turn but the last reads at least one byte
        want = _CHUNK if expected is None else min(_CHUNK, expected - got)
        if want <= 0:
            return got
        try:
            data: bytes = stream.read(want)
        except Exception as exc:  # each server has its own error for a broken body
            raise _Refused("400 Bad Request",
                           f"the request body did not arrive completely ({exc})") from exc
        if not data:
            if expected is not None:
                raise _Refused("400 Bad Request", f"the request body ended after {got} of "
                               f"its {expected} bytes (Content-Length)")
            return got
        got += len(data)
        if got > limit:
            raise _Refused("413 Content Too Large", f"a body of more than {limit} bytes")
        spool.write(data)
    raise AssertionError("unreachable: every turn reads a byte or returns")


def over_limit(start_response: StartResponse) -> list[bytes]:
    """The answer to a request its site's backend has no slot for: ``503``, ``Retry-After``."""
    body = b"site busy: too many requests waiting for its backend\n"
    start_response("503 Service Unavailable", [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
        ("Retry-After", str(RETRY_AFTER)), ("Cache-Control", "no-store")])
    return [body]


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Timeouts:
    """A proxy's two timeouts, in seconds: to connect, and to wait for each read or send."""

    __slots__ = ("connect_timeout", "read_timeout")

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout


#: Upstreams already logged by :meth:`_ResponseBody._unfinished` (once per process).
_UNFINISHED_LOGGED: set[str] = set()


class _ResponseBody:
    """Streams the upstream body; the connection goes back to the pool on close when the
    body was read to its end (:func:`tenantkit.web.upstream.complete`), else it is closed."""

    __slots__ = ("conn", "deadline", "html_end", "pool", "released", "response", "url")

    def __init__(self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 pool: UpstreamPool, url: str, deadline: Deadline | None = None) -> None:
        self.response = response
        self.conn = conn
        self.pool = pool
        self.url = url
        self.deadline = deadline
        self.released = False
        #: The body ends at the close and is an HTML page, whole only with
        #: :data:`HTML_END`: the request's environ, told :data:`NOT_STORABLE` if it is not.
        self.html_end: WSGIEnvironment | None = None

    def __iter__(self) -> Iterator[bytes]:
        deadline = self.deadline
        if deadline is None:
            yield from self._stream()
            self._release()
            return
        try:
            yield from self._stream()
        except UpstreamError as exc:
            if deadline.expired:
                raise UpstreamTimeout(f"upstream {mask_url(self.url)}: the body did not "
                                      "arrive by the deadline") from exc
            raise
        if deadline.expired:  # cut short: a body read until the close looks complete
            raise UpstreamTimeout(f"upstream {mask_url(self.url)}: the body did not "
                                  "arrive by the deadline")
        self._release()

    def _release(self) -> None:
        """The body was read to its end: the connection goes back to the pool at once (a
        server that never calls close() holds no socket)."""
        if self.deadline is not None:
            self.deadline.done()
        self.response.close()
        if not self.response.will_close:
            self.pool.put(self.conn)
        else:
            self.conn.close()
        self.released = True

    def _stream(self) -> Iterator[bytes]:
        response = self.response
        read = response.read1
        tail = b"" if self.html_end else None
        try:
            while True:
                data = read(_CHUNK)
                if not data:
                    break
                if tail is not None:
                    tail = (tail + data)[-HTML_TAIL:]
                yield data
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {mask_url(self.url)} timed out mid-body: "
                                  f"{exc}") from exc
        except (http.client.HTTPException, OSError) as exc:
            # Once the status line has gone out, the only honest signal left is to make the
            # server drop the connection, so the client sees a truncated response.
            raise UpstreamClosed(f"upstream {mask_url(self.url)} closed mid-body: "
                                 f"{exc!r}") from exc
        if not complete(response):
            raise UpstreamClosed(f"upstream {mask_url(self.url)} closed mid-body: "
                                 "the body ended before its length")
        if tail is not None and HTML_END not in tail.lower():
            self._unfinished(self.html_end)

    def _unfinished(self, environ: WSGIEnvironment | None) -> None:
        """An HTML page without its end, which its close cannot prove whole: not stored."""
        if environ is None:
            return
        environ[NOT_STORABLE] = "an HTML page that ends at the close without its </html>"
        if self.url not in _UNFINISHED_LOGGED:
            _UNFINISHED_LOGGED.add(self.url)
            logger.warning("site %s: upstream %s sent an HTML page without Content-Length or "
                           "chunked framing that ended before its </html> (%s): passed on, "
                           "not stored, as is any such page (a cut page looks whole); make "
                           "the upstream frame its responses (php-fpm behind a web server "
                           "does)", _site_name(environ), mask_url(self.url),
                           environ.get("PATH_INFO", "?"))

    def close(self) -> None:
        if self.released:
            return
        self.released = True
        if self.deadline is not None:
            self.deadline.done()
        # Not read to its end: what is left of it would be read as the next request's
        # response.
        self.response.close()
        self.conn.close()


class _Prefetched:
    """The upstream body with its first piece already read. An upstream that fails after
    that is logged in one line, and the server is made to drop the visitor's connection
    (a :class:`ConnectionResetError`, which WSGI servers take quietly: the status line
    has gone out, a cut connection is the only honest signal left)."""

    __slots__ = ("body", "first", "iterator", "site", "whole")

    def __init__(self, first: list[bytes], iterator: Iterator[bytes],
                 body: _ResponseBody, site: str = "-", *, whole: bool = False) -> None:
        self.first = first
        self.iterator = iterator
        self.body = body
        self.site = site
        #: The whole body, when the first piece was all of it (read to its end, its
        #: connection released): the page cache hashes it for the visitor's ETag.
        self.whole = first if whole else None

    def __iter__(self) -> Iterator[bytes]:
        yield from self.first
        try:
            yield from self.iterator
        except UpstreamError as exc:
            logger.warning("site %s: %s (the response was cut short)", self.site, exc)
            raise ConnectionResetError(errno.ECONNRESET, f"response cut short: {exc}"
                                       ) from exc

    def close(self) -> None:
        self.body.close()


class _Entry:
    __slots__ = ("app", "inflight", "refused", "refused_logged", "retired", "site", "slots")

    def __init__(self, site: Site, app: WSGIApplication) -> None:
        self.site = site
        self.app = app
        self.inflight = 0
        self.retired = False
        #: One per request the backend may serve at once (``backend.max_concurrency``).
        self.slots = threading.BoundedSemaphore(site.backend.max_concurrency)
        self.refused = 0
        self.refused_logged = 0.0


def _release(app: object) -> None:
    close = getattr(app, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.exception("releasing backend %r failed", app)


class BackendPool:
    """One built backend per site definition; rebuilt when the :class:`Site` changes.

    Each site's backend serves at most ``site.backend.max_concurrency`` requests at once in
    this process; one more is answered ``503`` with ``Retry-After`` at once, without waiting
    (:func:`over_limit`), so a site whose upstream hangs holds at most that many of the
    worker's threads and every other site -- and every cache hit, which never reaches a
    backend -- keeps the rest. A slot is held until the response body is closed. A proxy
    upstream gets the site's ``connect_timeout`` and ``read_timeout``.
    """

    def __init__(self, *, trusted_proxies: int = 0,
                 loader: Callable[[Site], WSGIApplication] = load_wsgi_app) -> None:
        self.trusted_proxies = trusted_proxies
        self.loader = loader
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _build(self, site: Site) -> WSGIApplication:
        backend = site.backend
        if backend.type == "proxy":
            return ProxyApp(backend.url or "", connect_timeout=backend.connect_timeout,
                            read_timeout=backend.read_timeout,
                            maxsize=max(backend.max_concurrency, 1),
                            trusted_proxies=self.trusted_proxies)
        return self.loader(site)

    def _entry(self, site: Site) -> _Entry:
        entry = self._entries.get(site.name)
        if entry is not None and (entry.site is site or entry.site == site):
            return entry
        with self._lock:
            entry = self._entries.get(site.name)
            if entry is not None and entry.site == site:
                return entry
            fresh = _Entry(site, self._build(site))
            self._entries[site.name] = fresh
            if entry is not None:
                logger.info("site %s changed: backend rebuilt", site.name)
                self._retire(entry)
            return fresh

    def _retire(self, entry: _Entry) -> None:
        entry.retired = True
        if entry.inflight == 0:
            _release(entry.app)

    def get(self, site: Site) -> WSGIApplication:
        """The WSGI app serving *site* (built on first use). Raises :class:`BackendError`."""
        return self._entry(site).app

    def __call__(self, site: Site, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        """Run *site*'s backend for one request, keeping it alive until the body is closed."""
        entry = self._entry(site)
        if not entry.slots.acquire(blocking=False):
            return self._refuse(entry, start_response)
        with self._lock:
            entry.inflight += 1
        try:
            body = entry.app(environ, start_response)
        except BaseException:
            self._done(entry)
            raise
        if type(body) is list:  # already complete: nothing of the app runs after this
            self._done(entry)
            return body
        return _Tracked(body, lambda: self._done(entry))

    def _refuse(self, entry: _Entry, start_response: StartResponse) -> list[bytes]:
        """The backend is busy with ``max_concurrency`` requests: 503 now, logged at most
        once every :data:`REFUSED_LOG_SECONDS` per site (with how many were refused)."""
        with self._lock:
            entry.refused += 1
            now = time.monotonic()
            due = now - entry.refused_logged >= REFUSED_LOG_SECONDS
            if due:
                count, entry.refused, entry.refused_logged = entry.refused, 0, now
        if due:
            logger.warning("site %s: backend busy with %d requests (backend.max_concurrency): "
                           "%d answered 503", entry.site.name, entry.site.backend.max_concurrency,
                           count)
        return over_limit(start_response)

    def _done(self, entry: _Entry) -> None:
        entry.slots.release()
        with self._lock:
            entry.inflight -= 1
            release = entry.retired and entry.inflight == 0
        if release:
            _release(entry.app)

    def discard(self, keep: Iterable[str]) -> None:
        """Release the backends of every site not named in *keep* (removed sites)."""
        keep = set(keep)
        with self._lock:
            gone = [name for name in self._entries if name not in keep]
            entries = [self._entries.pop(name) for name in gone]
        for entry in entries:
            logger.info("site %s removed: backend released", entry.site.name)
            with self._lock:
                entry.retired = True
                release = entry.inflight == 0
            if release:
                _release(entry.app)

    def close(self) -> None:
        self.discard(())


class _Tracked:
    """Wraps a WSGI body so that a callback runs exactly once when it is closed."""

    __slots__ = ("body", "callback")

    def __init__(self, body: Iterable[bytes], callback: Callable[[], None]) -> None:
        self.body = body
        self.callback: Callable[[], None] | None = callback

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    @property
    def whole(self) -> list[bytes] | None:
        """The wrapped body's ``whole`` (see :class:`_Prefetched`)."""
        whole: list[bytes] | None = getattr(self.body, "whole", None)
        return whole

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            callback, self.callback = self.callback, None
            if callback is not None:
                callback()
