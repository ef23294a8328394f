"""Issue 16: the page cache and the shim speak HTTP correctly.

``tenantkit serve`` (gunicorn, one worker) in front of a raw-socket upstream that answers as
production upstreams do (compressing Apache, JSON and feeds, security headers), and real nginx
from ``tenantkit nginx-config`` in front of the shim where the issue names it.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import urllib3
from tk_procs import Nginx, Shim, shim_env
from tk_upstream import TIMEOUT, RawUpstream, Request, exchange, read_request, status_of
from tk_web import Sites, wait_stored

from tenantkit.export.nginx import render_config
from tenantkit.testing import free_port

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install -e '.[server]')")

HOST = "blog.test"
HTML = "text/html; charset=utf-8"
FEED = b'<?xml version="1.0"?><rss><channel><title>&lt;script&gt;alert(1)&lt;/script&gt;' \
    b"</title></channel></rss>"
SECURITY = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=()",
    "Content-Security-Policy": "default-src 'self'",
    "Access-Control-Allow-Origin": "*",
    "Content-Disposition": 'inline; filename="page.html"',
    "Link": '<https://blog.test/wp-json/>; rel="https://api.w.org/"',
}


def _reply(status: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def answer(request: Request, n: int) -> bytes:
    """The upstream's page for *request*, the *n*-th request it answered."""
    target = request.target
    path = target.partition("?")[0]
    text = f"<!doctype html><p>target={target} n={n}</p>".encode()
    headers = {"Content-Type": HTML}
    if path == "/gz/":
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return _reply("200 OK", gzip.compress(text), headers)
    elif path == "/br/":
        headers.update({"Vary": "Accept-Encoding", "Content-Encoding": "br"})
        return _reply("200 OK", b"\x8b\x03\x80brotli?\x03", headers)
    elif path == "/feed/":
        return _reply("200 OK", FEED, {"Content-Type": "application/rss+xml; charset=UTF-8"})
    elif path == "/api/":
        return _reply("200 OK", b'{"title": "<script>alert(1)</script>"}',
                      {"Content-Type": "application/json"})
    elif path == "/headers/":
        headers.update(SECURITY)
        headers["Cache-Control"] = "public, max-age=600"
    elif path == "/maxage0/":
        headers["Cache-Control"] = "max-age=0"
    elif path == "/smaxage/":
        headers["Cache-Control"] = "max-age=0, s-maxage=600"
    elif path == "/varyua/":
        headers["Vary"] = "User-Agent"
    elif path == "/hop/":
        headers.update({"Connection": "X-Hop-Secret, keep-alive", "X-Hop-Secret": "42"})
    elif path == "/cut/":
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1000\r\n\r\n"
                b"<p>partial")
    return _reply("200 OK", text, headers)


def keep_alive(conn: socket.socket, reader: BinaryIO, up: RawUpstream) -> None:
    for _ in range(1000):
        request = read_request(reader)
        if request is None:
            return
        up.record(request)
        data = answer(request, len(up.heads))
        conn.sendall(data)
        if request.target.startswith("/cut/"):
            return  # closes mid-body


class Stack:
    def __init__(self, tmp_path: Path, upstream: RawUpstream, *, nginx: bool = False,
                 site_extra: str = "", **env: str) -> None:
        self.upstream = upstream
        sites = Sites(tmp_path)
        sites.add("blog", [HOST], url=upstream.url, extra=site_extra)
        self.cache_dir = sites.cache_dir
        self.shim = Shim(tmp_path, shim_env(sites.dir, sites.cache_dir, **env), "--workers", "1")
        self.url = self.shim.url
        self.nginx: Nginx | None = None
        if nginx:
            port = free_port()
            self.nginx = Nginx(tmp_path, render_config(
                sites.settings(), upstream=f"127.0.0.1:{self.shim.port}",
                listen=f"127.0.0.1:{port}"))
            self.nginx.start(port)
            self.url = f"http://127.0.0.1:{port}"
        self.http = urllib3.PoolManager(retries=False, timeout=TIMEOUT)

    def get(self, path: str, *, direct: bool = False, **headers: str
            ) -> urllib3.BaseHTTPResponse:
        url = self.shim.url if direct else self.url
        headers.setdefault("Host", HOST)
        return self.http.request("GET", url + path, headers=headers, decode_content=False)

    def wait_stored(self, path: str, query: str = "") -> None:
        wait_stored(self.cache_dir, "blog", HOST, path, query=query)

    def targets(self) -> list[str]:
        return [r.target for r in self.upstream.heads]

    def close(self) -> str:
        self.http.clear()
        if self.nginx is not None:
            self.nginx.stop()
        code = self.shim.stop()
        self.upstream.close()
        output = self.shim.output()
        assert code == 0, output[-6000:]
        assert self.upstream.errors == []
        return output


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**options: Any) -> Stack:
        made.append(Stack(tmp_path, RawUpstream(keep_alive), **options))
        return made[-1]

    yield make
    for one in made:
        output = one.close()
        assert "Traceback" not in output, output[-6000:]


# -- the key is the target sent upstream -----------------------------------------------------


def test_a_script_name_header_cannot_store_a_page_as_another(stack: Callable[..., Stack]) -> None:
    s = stack()
    evil = s.get("/evil/", direct=True, SCRIPT_NAME="/evil")
    assert evil.status == 200
    home = s.get("/", direct=True)
    assert b"target=/ " in home.data, home.data


def test_an_encoded_slash_is_not_the_same_page(stack: Callable[..., Stack]) -> None:
    s = stack(nginx=True)
    assert b"target=/a%2Fb/ " in s.get("/a%2Fb/").data
    plain = s.get("/a/b/")
    assert b"target=/a/b/ " in plain.data, plain.data
    s.wait_stored("/a%2Fb/")
    assert s.get("/a%2Fb/").headers["X-Tenantkit-Cache"] == "HIT"
    assert b"target=/a%2Fb/ " in s.get("/a%2Fb/").data
    # nginx decodes $uri: it must not answer an encoded target from a plain page's file
    assert b"target=/a%2Fb/ " in s.get("/a%2Fb/", direct=False).data
    assert b"target=/a/%62/ " in s.get("/a/%62/").data


# -- Content-Encoding and Vary ----------------------------------------------------------------


def test_a_gzip_page_is_served_to_each_visitor_as_it_asks(stack: Callable[..., Stack]) -> None:
    s = stack(nginx=True)
    first = s.get("/gz/", **{"Accept-Encoding": "gzip"})
    assert first.headers["Content-Encoding"] == "gzip"
    page = gzip.decompress(first.data)
    s.wait_stored("/gz/")
    for direct in (True, False):
        plain = s.get("/gz/", direct=direct)
        assert plain.status == 200
        assert plain.headers.get("Content-Encoding") is None, (direct, plain.headers)
        assert plain.data == page, (direct, plain.data[:40])
        assert plain.headers["X-Tenantkit-Cache"] == "HIT"
    zipped = s.get("/gz/", direct=True, **{"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["X-Tenantkit-Cache"] == "HIT"
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["Vary"].lower()
    assert gzip.decompress(zipped.data) == page
    assert s.targets().count("/gz/") == 1


def test_an_encoding_the_shim_cannot_decode_or_another_vary_is_not_stored(
        stack: Callable[..., Stack]) -> None:
    s = stack()
    s.get("/br/", **{"Accept-Encoding": "br"})
    assert s.get("/br/").headers["X-Tenantkit-Cache"] == "MISS"
    s.get("/varyua/", **{"User-Agent": "a"})
    assert s.get("/varyua/", **{"User-Agent": "b"}).headers["X-Tenantkit-Cache"] == "MISS"


# -- nginx serves the stored type ---------------------------------------------------------------


@pytest.mark.parametrize(("path", "ctype"), [
    pytest.param("/feed/", "application/rss+xml; charset=UTF-8", id="rss"),
    pytest.param("/api/", "application/json", id="json"),
])
def test_nginx_serves_a_page_with_its_own_type(stack: Callable[..., Stack], path: str,
                                               ctype: str) -> None:
    s = stack(nginx=True)
    first = s.get(path)
    assert first.headers["Content-Type"] == ctype
    s.wait_stored(path)
    for _ in range(2):
        again = s.get(path)
        assert again.headers["Content-Type"] == ctype
        assert again.headers["X-Tenantkit-Cache"] == "HIT"
        assert again.data == first.data
    assert s.targets().count(path) == 1


def test_nginx_serves_plain_html_pages_itself(stack: Callable[..., Stack]) -> None:
    s = stack(nginx=True)
    s.get("/post/")
    s.wait_stored("/post/")
    hit = s.get("/post/")
    assert hit.headers["X-Tenantkit-Cache"] == "HIT"
    assert hit.headers["Content-Type"] == HTML
    assert "nginx" in hit.headers.get("Server", "")  # answered from disk by nginx


# -- headers kept on hits -----------------------------------------------------------------------


def test_a_hit_carries_the_apps_end_to_end_headers(stack: Callable[..., Stack]) -> None:
    s = stack(nginx=True)
    s.get("/headers/")
    s.wait_stored("/headers/")
    for direct in (True, False):
        hit = s.get("/headers/", direct=direct)
        assert hit.headers["X-Tenantkit-Cache"] == "HIT"
        for name, value in SECURITY.items():
            assert hit.headers.get(name) == value, (direct, name, dict(hit.headers))
        assert hit.headers["Cache-Control"] == "public, max-age=600"
        assert int(hit.headers["Age"]) >= 0
        etag = hit.headers["ETag"]
        cond = s.get("/headers/", direct=direct, **{"If-None-Match": etag})
        assert cond.status == 304, direct
        assert cond.headers["ETag"] == etag
        assert cond.headers["Cache-Control"] == "public, max-age=600"
    assert s.targets().count("/headers/") == 1


# -- Cache-Control from the app -----------------------------------------------------------------


def test_cache_control_from_the_app_is_honoured(stack: Callable[..., Stack]) -> None:
    s = stack()
    s.get("/maxage0/")
    assert s.get("/maxage0/").headers["X-Tenantkit-Cache"] == "MISS"
    s.get("/smaxage/")
    s.wait_stored("/smaxage/")
    assert s.get("/smaxage/").headers["X-Tenantkit-Cache"] == "HIT"


# -- index.html ---------------------------------------------------------------------------------


def test_index_html_slash_does_not_collide_with_the_directory(
        stack: Callable[..., Stack]) -> None:
    s = stack(nginx=True)
    assert b"target=/index.html/ " in s.get("/index.html/").data
    home = s.get("/")
    assert home.status == 200 and b"target=/ " in home.data
    s.wait_stored("/")
    again = s.get("/")
    assert again.status == 200 and again.headers["X-Tenantkit-Cache"] == "HIT"
    assert b"target=/ " in again.data
    assert b"target=/index.html/ " in s.get("/index.html/").data


# -- trusted proxies ----------------------------------------------------------------------------


def test_the_upstream_gets_the_host_the_site_came_from(stack: Callable[..., Stack]) -> None:
    s = stack(TENANTKIT_WEB_TRUSTED_PROXIES="1")
    reply = s.get("/p/", direct=True, Host="internal.lan:8000",
                  **{"X-Forwarded-Host": HOST})
    assert reply.status == 200
    head = s.upstream.heads[-1]
    assert head.headers["host"] == HOST
    assert head.headers["x-forwarded-host"] == HOST


# -- ignored query arguments ---------------------------------------------------------------------


def test_marketing_arguments_do_not_split_the_cache(stack: Callable[..., Stack]) -> None:
    s = stack(site_extra='[cache]\nignore_query_args = ["utm_*", "fbclid", "gclid", "ref"]\n')
    first = s.get("/p/?a=1&utm_source=news&utm_medium=mail")
    assert first.headers["X-Tenantkit-Cache"] == "MISS"
    assert s.targets()[-1] == "/p/?a=1&utm_source=news&utm_medium=mail"
    s.wait_stored("/p/", query="a=1")
    for query in ("a=1&fbclid=xyz", "gclid=1&a=1", "a=1", "ref=tw&a=1"):
        hit = s.get("/p/?" + query)
        assert hit.headers["X-Tenantkit-Cache"] == "HIT", query
        assert hit.data == first.data
    assert s.get("/p/?a=2&utm_source=x").headers["X-Tenantkit-Cache"] == "MISS"
    assert len(s.targets()) == 2


def test_default_marketing_arguments(stack: Callable[..., Stack]) -> None:
    s = stack()
    s.get("/q/?utm_campaign=x")
    s.wait_stored("/q/")
    hit = s.get("/q/?fbclid=1")
    assert hit.headers["X-Tenantkit-Cache"] == "HIT"
    assert s.get("/q/").headers["X-Tenantkit-Cache"] == "HIT"


# -- the proxy is a good HTTP citizen -----------------------------------------------------------


def test_fields_named_in_connection_are_not_forwarded(stack: Callable[..., Stack]) -> None:
    s = stack()
    for _ in range(2):
        reply = s.get("/hop/")
        assert reply.status == 200
        assert "X-Hop-Secret" not in reply.headers, dict(reply.headers)


def test_a_proxy_request_header_never_reaches_the_upstream(stack: Callable[..., Stack]) -> None:
    s = stack()
    assert s.get("/x/", Proxy="http://evil.test:8080").status == 200
    head = s.upstream.heads[-1]
    assert "proxy" not in head.headers


def test_an_upstream_closing_mid_body_is_a_502_logged_once(stack: Callable[..., Stack]) -> None:
    s = stack()
    for path in ("/cut/", "/cut/?x=1"):
        reply = exchange(s.shim.port, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                         "Cookie: wordpress_logged_in_1=u\r\nConnection: close\r\n\r\n".encode()
                         if "x" in path else
                         f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                         .encode())
        assert status_of(reply) == 502, reply[:200]
    s.shim.stop()
    lines = [line for line in s.shim.output().splitlines() if "mid-body" in line]
    assert len(lines) == 2, lines
    assert all("blog" in line for line in lines), lines

