from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from flask import Flask
from tk_web import RawServer, Sites, Upstream
from werkzeug.test import Client, EnvironBuilder

from tenantkit.db.tokens import ConsistencyToken
from tenantkit.sites import Backend, Site
from tenantkit.testing import free_port
from tenantkit.web.backends import BackendError, BackendPool, ProxyApp

MakeClient = Callable[..., tuple[Flask, Client]]


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Echoes what reached the upstream as JSON."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        body = environ["wsgi.input"].read(length)
    elif environ.get("wsgi.input_terminated"):
        body = environ["wsgi.input"].read()
    else:
        body = b""
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
               if k.startswith("HTTP_")}
    data = json.dumps({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                       "query": environ.get("QUERY_STRING", ""), "headers": headers,
                       "body_len": len(body), "body_head": body[:20].decode("latin-1")})
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(1.0)
    out = data.encode()
    start_response("201 Created", [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(out))),
                                   ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
                                   ("X-Upstream", "yes")])
    return [out]


@pytest.fixture
def proxied(sites: Sites, upstream: Callable[..., Upstream],
            make_client: MakeClient) -> tuple[Client, Upstream]:
    server = upstream(echo)
    sites.add("php", ["php.test"], url=server.url)
    _, client = make_client()
    return client, server


def test_proxy_preserves_host_sets_forwarded_drops_hop_by_hop(
        proxied: tuple[Client, Upstream]) -> None:
    client, _ = proxied
    response = client.post("/wp-comments-post.php?x=1", data=b"a" * 300_000, headers={
        "Host": "php.test", "X-Forwarded-For": "6.6.6.6", "Connection": "close, X-Secret",
        "X-Secret": "hop", "TE": "trailers", "Cookie": "wordpress_logged_in_1=me"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 201
    assert response.headers["X-Upstream"] == "yes"
    assert "Keep-Alive" not in response.headers
    seen = response.get_json()
    assert seen["method"] == "POST" and seen["path"] == "/wp-comments-post.php"
    assert seen["query"] == "x=1"
    assert seen["body_len"] == 300_000
    headers = seen["headers"]
    assert headers["host"] == "php.test"
    assert headers["x-forwarded-host"] == "php.test"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "10.1.2.3"  # the client's own claim is not trusted
    assert "x-secret" not in headers and "te" not in headers
    assert headers["cookie"] == "wordpress_logged_in_1=me"


def test_proxy_appends_to_forwarded_for_behind_trusted_proxies(
        sites: Sites, upstream: Callable[..., Upstream], make_client: MakeClient) -> None:
    server = upstream(echo)
    sites.add("php", ["php.test"], url=server.url)
    _, client = make_client(trusted_proxies=1)
    seen = client.get("/", headers={"Host": "php.test", "X-Forwarded-For": "1.2.3.4"},
                      environ_base={"REMOTE_ADDR": "10.0.0.1"}).get_json()
    assert seen["headers"]["x-forwarded-for"] == "1.2.3.4, 10.0.0.1"


def test_proxy_forwards_a_chunked_request_body_with_its_length(
        upstream: Callable[..., Upstream]) -> None:
    server = upstream(echo)
    app = ProxyApp(server.url)
    environ = EnvironBuilder("/upload", method="PUT", headers={"Host": "php.test"},
                             input_stream=io.BytesIO(b"x" * 100_000)).get_environ()
    del environ["CONTENT_LENGTH"]  # what a server hands on for Transfer-Encoding: chunked
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    statuses: list[str] = []
    try:
        body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        data = b"".join(body)
        body.close()  # type: ignore[attr-defined]
    finally:
        app.close()
    assert statuses == ["201 Created"]
    seen = json.loads(data)
    assert seen["body_len"] == 100_000
    assert "transfer-encoding" not in seen["headers"]  # re-framed with Content-Length


def test_proxy_passes_unknown_methods(proxied: tuple[Client, Upstream]) -> None:
    client, _ = proxied
    response = client.open("/", method="PROPFIND", headers={"Host": "php.test"})
    assert response.status_code == 201
    assert response.get_json()["method"] == "PROPFIND"


def test_upstream_down_is_502(sites: Sites, make_client: MakeClient) -> None:
    sites.add("down", ["down.test"], url=f"http://127.0.0.1:{free_port()}")
    _, client = make_client()
    response = client.get("/", headers={"Host": "down.test"})
    assert response.status_code == 502
    assert b"upstream unavailable" in response.data


def test_upstream_timeout_is_504(upstream: Callable[..., Upstream]) -> None:
    server = upstream(echo)
    app = ProxyApp(server.url, read_timeout=0.2)
    client = Client(app)
    try:
        response = client.get("/sleep", headers={"Host": "php.test"})
        assert response.status_code == 504
        assert client.get("/", headers={"Host": "php.test"}).status_code == 201
    finally:
        app.close()


def test_upstream_closing_mid_body_is_not_passed_off_as_complete(
        raw_server: Callable[[bytes], RawServer]) -> None:
    server = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
    app = ProxyApp(server.url)
    try:
        # Nothing has gone to the client yet: an honest 502 (issue 16), not a short 200.
        reply = Client(app).get("/", headers={"Host": "x.test"})
        assert reply.status_code == 502 and b"only ten" not in reply.get_data()
    finally:
        app.close()


def test_upstream_garbage_is_502(raw_server: Callable[[bytes], RawServer]) -> None:
    server = raw_server(b"this is not HTTP\r\n\r\n")
    app = ProxyApp(server.url)
    try:
        assert Client(app).get("/", headers={"Host": "x.test"}).status_code == 502
    finally:
        app.close()


@pytest.mark.parametrize("lengths", [
    pytest.param("Content-Length: 2\r\nContent-Length: 12\r\n", id="two lengths"),
    pytest.param("Content-Length: 2, 12\r\n", id="a list"),
    pytest.param("Content-Length: +2\r\n", id="signed"),
    pytest.param("Content-Length: 0_2\r\n", id="underscore"),
])
def test_an_upstream_length_that_is_not_one_number_is_502(
        raw_server: Callable[[bytes], RawServer], lengths: str) -> None:
    # http.client would frame the body by int() of the first: the visitor would get a body
    # cut by a length it was never told, the rest left on a reused connection.
    server = raw_server(f"HTTP/1.1 200 OK\r\n{lengths}\r\nokAND MORE".encode())
    app = ProxyApp(server.url)
    try:
        reply = Client(app).get("/", headers={"Host": "x.test"})
        assert reply.status_code == 502 and b"ok" not in reply.get_data()
    finally:
        app.close()


def test_a_head_answered_chunked_is_whole(raw_server: Callable[[bytes], RawServer]) -> None:
    # No body follows a HEAD response, whatever its Transfer-Encoding says.
    server = raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n")
    app = ProxyApp(server.url)
    try:
        reply = Client(app).head("/", headers={"Host": "x.test"})
        assert reply.status_code == 200 and reply.headers["X-Up"] == "1"
    finally:
        app.close()


def _call(app: ProxyApp, environ: dict[str, Any]) -> tuple[str, bytes]:
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return statuses[0], data


@pytest.mark.parametrize(("environ", "status"), [
    pytest.param({"CONTENT_LENGTH": "10", "HTTP_TRANSFER_ENCODING": "chunked"}, "400",
                 id="length and chunked"),
    pytest.param({"CONTENT_LENGTH": "10", "input": b"short"}, "400", id="short body"),
    pytest.param({"CONTENT_LENGTH": "+5"}, "400", id="signed length"),
    pytest.param({"CONTENT_LENGTH": "5, 5"}, "400", id="length list"),
    pytest.param({"CONTENT_LENGTH": "\u0665"}, "400", id="non-ascii digit"),
    pytest.param({"HTTP_TRANSFER_ENCODING": "gzip"}, "501", id="unknown coding"),
    pytest.param({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": False}, "411",
                 id="chunked not decoded"),
    pytest.param({"CONTENT_LENGTH": "70"}, "413", id="too large"),
    pytest.param({"HTTP_TRANSFER_ENCODING": "chunked", "input": b"x" * 70}, "413",
                 id="chunked too large"),
])
def test_a_body_of_unknown_or_incomplete_framing_is_never_forwarded(
        upstream: Callable[..., Upstream], environ: dict[str, Any], status: str) -> None:
    calls: list[str] = []

    def count(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        calls.append(env["PATH_INFO"])
        return echo(env, start_response)

    server = upstream(count)
    app = ProxyApp(server.url, max_body=64)
    base = EnvironBuilder("/form", method="POST", headers={"Host": "php.test"},
                          input_stream=io.BytesIO(environ.pop("input", b"x" * 10))
                          ).get_environ()
    del base["CONTENT_LENGTH"]
    base["wsgi.input_terminated"] = True
    try:
        got, _ = _call(app, {**base, **environ})
        assert got.startswith(status), got
        assert calls == []
        # The same request framed right goes through; a "Content_Length" header (which some
        # servers hand on as HTTP_CONTENT_LENGTH) never sets the forwarded length.
        got, data = _call(app, {**base, "wsgi.input": io.BytesIO(b"x" * 10),
                                "CONTENT_LENGTH": "10", "HTTP_CONTENT_LENGTH": "99",
                                "HTTP_EXPECT": "100-continue"})
        assert got == "201 Created"
        seen = json.loads(data)
        assert seen["body_len"] == 10
        assert "content-length" not in seen["headers"] and "expect" not in seen["headers"]
        assert seen["headers"]["connection"] == "close"
    finally:
        app.close()


def test_a_broken_chunked_body_is_never_forwarded(upstream: Callable[..., Upstream]) -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("chunk missing terminator")  # what the server raises

    calls: list[str] = []

    def count(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        calls.append(env["PATH_INFO"])
        return echo(env, start_response)

    app = ProxyApp(upstream(count).url)
    environ = EnvironBuilder("/form", method="POST", headers={"Host": "php.test"},
                             input_stream=Broken()).get_environ()
    del environ["CONTENT_LENGTH"]
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    try:
        assert _call(app, environ)[0].startswith("400")
        assert calls == []
    finally:
        app.close()


@pytest.mark.parametrize(("reply", "status", "body"), [
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
                 b"Set-Cookie: early=1\r\n\r\n"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "200 OK", b"ok",
                 id="103"),
    pytest.param(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
                 b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno", "404 Not Found",
                 b"no", id="102 and 100"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                 "502 Bad Gateway", b"upstream unavailable\n", id="101"),
    pytest.param(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 17 + b"HTTP/1.1 200 OK\r\n\r\n",
                 "502 Bad Gateway", b"upstream unavailable\n", id="endless interims"),
])
def test_interim_responses_are_consumed(raw_server: Callable[[bytes], RawServer],
                                        reply: bytes, status: str, body: bytes) -> None:
    app = ProxyApp(raw_server(reply).url)
    try:
        environ = EnvironBuilder("/", headers={"Host": "x.test"}).get_environ()
        assert _call(app, environ) == (status, body)
    finally:
        app.close()


@pytest.mark.parametrize(("backend", "message"), [
    pytest.param(Backend(type="wsgi", app="nocolon"), "module:attribute", id="no colon"),
    pytest.param(Backend(type="wsgi", app="no_such_mod_xyz:app"), "cannot import", id="import"),
    pytest.param(Backend(type="wsgi", app="tk_test_apps:nothing"), "no attribute", id="attr"),
    pytest.param(Backend(type="wsgi", app="tk_test_apps:PAGE"), "not a WSGI app", id="bytes"),
    pytest.param(Backend(type="proxy", url="ftp://x"), "expected http", id="bad url"),
])
def test_bad_backends_say_what_is_wrong(backend: Backend, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        BackendPool().get(Site(name="s", hosts=("s.test",), backend=backend))


def test_pool_releases_replaced_backends_after_their_last_request() -> None:
    closed: list[str] = []

    class App:
        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, environ: Any, start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [])
            yield self.name.encode()

        def close(self) -> None:
            closed.append(self.name)

    pool = BackendPool(loader=lambda site: App(str(site.meta["v"])))
    one = Site(name="s", hosts=("s.test",), backend=Backend(type="wsgi", app="m:a"),
               meta={"v": 1})
    two = Site(name="s", hosts=("s.test",), backend=Backend(type="wsgi", app="m:a"),
               meta={"v": 2})
    body = pool(one, {}, lambda *a: None)
    assert pool.get(two).name == "2"  # type: ignore[attr-defined]
    assert closed == []  # the request on version 1 is still running
    assert list(body) == [b"1"]
    body.close()  # type: ignore[attr-defined]
    assert closed == ["1"]
    pool.discard([])
    assert closed == ["1", "2"]


def token_upstream(environ: dict[str, Any], start_response: Callable[..., Any]
                   ) -> Iterable[bytes]:
    """A PHP-like upstream announcing its write's consistency token in a header."""
    token = ConsistencyToken("0-1-77", time.time()).dumps()
    start_response("200 OK", [("Content-Type", "text/html"), ("X-Tenantkit-Token", token),
                              ("X-Tenantkit-Tags", "post:1")])
    return [b"saved"]


def test_a_proxied_app_can_hand_over_its_token(sites: Sites, upstream: Callable[..., Upstream],
                                              make_client: MakeClient) -> None:
    server = upstream(token_upstream)
    sites.add("php", ["php.test"], url=server.url)
    _, client = make_client()
    response = client.post("/wp-comments-post.php", headers={"Host": "php.test"})
    assert response.status_code == 200
    assert "X-Tenantkit-Token" not in response.headers
    assert "X-Tenantkit-Tags" not in response.headers
    assert response.headers["Set-Cookie"].startswith("tenantkit_rw=")
    get = client.get("/x/", headers={"Host": "php.test"})
    assert get.headers["X-Tenantkit-Cache"] == "MISS"
    again = client.get("/x/", headers={"Host": "php.test"})
    assert again.headers["X-Tenantkit-Cache"] == "MISS"  # a page that wrote is never stored


def test_a_busy_backend_answers_503_at_once_and_frees_its_slot_on_close() -> None:
    import threading

    entered = threading.Event()
    release = threading.Event()

    def hung(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        entered.set()
        release.wait(10)
        yield b"late"

    pool = BackendPool(loader=lambda site: hung)
    site = Site(name="s", hosts=("s.test",),
                backend=Backend(type="wsgi", app="m:a", max_concurrency=1))
    statuses: list[str] = []

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        if status.startswith("503"):
            assert dict(headers)["Retry-After"].isdigit()

    first = pool(site, {}, start)
    worker = threading.Thread(target=lambda: list(first))
    worker.start()
    assert entered.wait(10)
    started = time.monotonic()
    refused = pool(site, {}, start)
    assert time.monotonic() - started < 1.0
    assert statuses[-1].startswith("503")
    assert b"busy" in b"".join(refused)
    release.set()
    worker.join(10)
    first.close()  # type: ignore[attr-defined]
    entered.clear()
    release.clear()
    again = pool(site, {}, start)
    release.set()
    assert list(again) == [b"late"]
    assert statuses[-1] == "200 OK"
    again.close()  # type: ignore[attr-defined]


def test_a_proxy_backend_gets_its_site_timeouts() -> None:
    backend = Backend(type="proxy", url="http://127.0.0.1:9", connect_timeout=1.5,
                      read_timeout=7.0)
    app = BackendPool().get(Site(name="s", hosts=("s.test",), backend=backend))
    assert isinstance(app, ProxyApp)
    assert app.timeout.connect_timeout == 1.5
    assert app.timeout.read_timeout == 7.0
