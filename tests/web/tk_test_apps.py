"""WSGI apps the web tests mount as site backends (``app = "tk_test_apps:<name>"``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from tenantkit.db.tokens import ConsistencyToken
from tenantkit.sites import Site

Start = Callable[..., Any]
PAGE = b"<!doctype html><title>hello</title><p>hello from a tenantkit test site</p>\n"
CALLS: list[str] = []


def hello(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """A page naming the site, host and path; tags from ``?tags=``."""
    site: Site | None = environ.get("tenantkit.site")
    CALLS.append(environ.get("PATH_INFO", ""))
    body = (f"site={site.name if site else '-'} host={environ.get('HTTP_HOST')} "
            f"path={environ.get('PATH_INFO')} n={len(CALLS)} "
            f"token={environ.get('tenantkit.consistency_token')}\n").encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    query = environ.get("QUERY_STRING", "")
    if query.startswith("tags="):
        headers.append(("X-Tenantkit-Tags", query[5:].replace("+", " ")))
    if query == "cookie":
        headers.append(("Set-Cookie", "session=1"))
    if query == "private":
        headers.append(("Cache-Control", "private"))
    if query == "vary":
        headers.append(("Vary", "Accept-Encoding, Cookie"))
    if query == "etag":
        headers.append(("ETag", '"v1"'))
    if query == "weak":
        headers.append(("ETag", 'W/"v1"'))
    if query == "notfound":
        start_response("404 Not Found", headers)
        return [body]
    if query == "write":
        environ["tenantkit.write_token"] = ConsistencyToken("0-1-42", time.time()).dumps()
    start_response("200 OK", headers)
    return [body]


def hello_html(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """:func:`hello` as ``text/html; charset=utf-8``: a page nginx may serve from disk."""
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [(k, "text/html; charset=utf-8" if k == "Content-Type" else v)
                   for k, v in headers]
        return start_response(status, headers, exc_info)

    return hello(environ, start)


def page(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """A fixed page, for load tests and benchmarks."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE)))])
    return [PAGE]


#: Cleared by a test to hold every render of :func:`held` until it is set again.
HOLD = threading.Event()
HOLD.set()


def held(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """:func:`hello`, once :data:`HOLD` is set (waits 30 s at most)."""
    HOLD.wait(30)
    return hello(environ, start_response)


def boom(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    raise RuntimeError("this site's app is broken")


def slow(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    time.sleep(0.3)
    return page(environ, start_response)


def factory(site: Site) -> Callable[..., Iterable[bytes]]:
    """A factory: called with the Site, returns the app (rebuilt when the site changes)."""
    greeting = str(site.meta.get("greeting", "hi")).encode()

    def app(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [greeting]

    return app


def dead_database(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """An app whose database does not answer (a closed loopback port): SQLAlchemy raises."""
    import sqlalchemy

    from tenantkit.testing import free_port

    engine = sqlalchemy.create_engine(
        f"mysql+pymysql://app:secret@127.0.0.1:{free_port()}/app",
        connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable\n"]


def buggy(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """An app with a bug: its traceback is worth logging."""
    return [b"%d" % {}["missing"]]


def chunked(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """``/big/``: 8 chunks of 1000 bytes; ``/gz/``: a gzip body that decodes to 8000
    bytes; ``/badgz/``: a gzip stream cut short. Each path counts its renders in CALLS."""
    import gzip

    path = environ.get("PATH_INFO", "")
    CALLS.append(path)
    headers = [("Content-Type", "text/html; charset=utf-8")]
    chunks = [b"%d" % (i % 10) * 1000 for i in range(8)]
    if path in ("/gz/", "/badgz/"):
        zipped = gzip.compress(b"".join(chunks))
        chunks = [zipped if path == "/gz/" else zipped[: len(zipped) // 2]]
        headers.append(("Content-Encoding", "gzip"))
    start_response("200 OK", headers)
    return iter(chunks)
