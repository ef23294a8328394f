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
(:class:`ProxyApp`) with pooled keep-alive connections: request and response bodies are
streamed, the client's ``Host`` is preserved, ``X-Forwarded-For/-Proto/-Host`` are set and
hop-by-hop headers dropped. An upstream that times out answers 504, one that cannot be
reached 502.
"""

from __future__ import annotations

import inspect
import logging
import pkgutil
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from tenantkit.config import mask_url
from tenantkit.errors import SiteError
from tenantkit.sites import Site

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["BackendError", "BackendPool", "ProxyApp", "UpstreamClosed", "load_wsgi_app"]

logger = logging.getLogger(__name__)

#: RFC 9110 section 7.6.1 connection-specific fields, never forwarded in either direction.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
_CHUNK = 64 * 1024


class BackendError(SiteError):
    """A site's backend cannot be built (bad ``app`` reference, import error, bad URL)."""


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before the whole response body was sent."""


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
                 maxsize: int = 16, trusted_proxies: int = 0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"backend url {mask_url(url)!r}: expected http://host:port "
                               "or https://host:port")
        self.url = url
        self.prefix = parts.path.rstrip("/")
        self.trusted_proxies = trusted_proxies
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.pool = urllib3.connection_from_url(
            url, maxsize=maxsize, block=False, timeout=self.timeout, retries=False)

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
        if environ.get("CONTENT_LENGTH"):
            headers["Content-Length"] = environ["CONTENT_LENGTH"]
        named = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        for name in list(headers):
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named:
                del headers[name]
        remote = environ.get("REMOTE_ADDR", "")
        prior = headers.get("X-Forwarded-For", "")
        if self.trusted_proxies > 0 and prior:
            headers["X-Forwarded-For"] = f"{prior}, {remote}"
        else:
            headers["X-Forwarded-For"] = remote
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        headers["Host"] = host
        headers["X-Forwarded-Host"] = host
        headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        return headers

    def _target(self, environ: WSGIEnvironment) -> str:
        path = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if not path or not path.startswith("/"):
            raw = environ.get("PATH_INFO", "").encode("latin-1")
            path = quote(environ.get("SCRIPT_NAME", "") + raw.decode("latin-1"),
                         safe="/:@!$&'()*+,;=~%")
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
        return self.prefix + path

    def _body(self, environ: WSGIEnvironment, headers: dict[str, str]) -> tuple[Any, bool]:
        stream = environ["wsgi.input"]
        if "Content-Length" in headers:
            try:
                length = int(headers["Content-Length"])
            except ValueError:
                raise _BadRequest("Content-Length is not a number") from None
            return (_LimitedReader(stream, length) if length > 0 else None), False
        if environ.get("wsgi.input_terminated") or environ.get("HTTP_TRANSFER_ENCODING"):
            return _read_chunks(stream), True
        return None, False

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            headers = self._headers(environ)
            body, chunked = self._body(environ, headers)
            response = self.pool.urlopen(
                method, self._target(environ), body=body, headers=headers, chunked=chunked,
                redirect=False, retries=False, preload_content=False, decode_content=False,
                assert_same_host=False, timeout=self.timeout,
            )
        except _BadRequest as exc:
            return _plain(start_response, "400 Bad Request", f"bad request: {exc}")
        except NewConnectionError as exc:  # a subclass of the timeout error, but not one
            logger.warning("upstream %s unreachable: %s", mask_url(self.url), exc)
            return _plain(start_response, "502 Bad Gateway", "upstream unavailable")
        except Urllib3TimeoutError as exc:
            logger.warning("upstream %s timed out: %s", mask_url(self.url), exc)
            return _plain(start_response, "504 Gateway Timeout", "upstream timed out")
        except (Urllib3HTTPError, OSError) as exc:
            logger.warning("upstream %s failed: %s", mask_url(self.url), exc)
            return _plain(start_response, "502 Bad Gateway", "upstream unavailable")
        except ValueError as exc:  # http.client refuses a method or header value
            return _plain(start_response, "400 Bad Request", f"bad request: {exc}")
        out = [(k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
        start_response(f"{response.status} {response.reason or ''}".rstrip(), out)
        return _ResponseBody(response, self.url)


class _BadRequest(Exception):
    pass


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


class _LimitedReader:
    """A file-like view of at most *length* bytes of the WSGI input stream."""

    def __init__(self, stream: Any, length: int) -> None:
        self.stream = stream
        self.left = length

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data: bytes = self.stream.read(size)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data


def _read_chunks(stream: Any) -> Iterator[bytes]:
    while True:
        data: bytes = stream.read(_CHUNK)
        if not data:
            return
        yield data


class _ResponseBody:
    """Streams the upstream body; releases the pooled connection on close."""

    def __init__(self, response: Any, url: str) -> None:
        self.response = response
        self.url = url

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.response.stream(_CHUNK, decode_content=False)
        except (Urllib3HTTPError, OSError) as exc:
            logger.warning("upstream %s closed mid-body: %s", mask_url(self.url), exc)
            # The status line has gone out: the only honest signal left is to make the
            # server drop the connection, so the client sees a truncated response.
            raise UpstreamClosed(f"upstream {mask_url(self.url)} closed mid-body") from exc

    def close(self) -> None:
        self.response.release_conn()


class _Entry:
    __slots__ = ("app", "inflight", "retired", "site")

    def __init__(self, site: Site, app: WSGIApplication) -> None:
        self.site = site
        self.app = app
        self.inflight = 0
        self.retired = False


def _release(app: object) -> None:
    close = getattr(app, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.exception("releasing backend %r failed", app)


class BackendPool:
    """One built backend per site definition; rebuilt when the :class:`Site` changes."""

    def __init__(self, *, trusted_proxies: int = 0, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0,
                 loader: Callable[[Site], WSGIApplication] = load_wsgi_app) -> None:
        self.trusted_proxies = trusted_proxies
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.loader = loader
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _build(self, site: Site) -> WSGIApplication:
        if site.backend.type == "proxy":
            return ProxyApp(site.backend.url or "", connect_timeout=self.connect_timeout,
                            read_timeout=self.read_timeout,
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

    def _done(self, entry: _Entry) -> None:
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

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            callback, self.callback = self.callback, None
            if callback is not None:
                callback()
