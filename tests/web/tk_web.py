"""Helpers shared by the shim's tests (tests/web and tests/e2e)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.test import Client

from tenantkit.config import DatabaseSettings, Settings, WebSettings

TOKEN = "s3cret-admin-token"


class ServerClient(Client):
    """werkzeug's test client reading every response body to its end and closing it at once,
    as a server does (a page is stored when its body has been read and closed)."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> Any:
        return super().open(*args, buffered=buffered, **kwargs)


class Sites:
    """Writes site files into a temporary sites directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "sites"
        self.dir.mkdir()
        self.cache_dir = root / "cache"

    def add(self, name: str, hosts: list[str], *, app: str | None = "tk_test_apps:hello",
            url: str | None = None, extra: str = "") -> Path:
        lines = [f"hosts = {hosts!r}".replace("'", '"'), "[backend]"]
        if url is not None:
            lines += ['type = "proxy"', f'url = "{url}"']
        else:
            lines += ['type = "wsgi"', f'app = "{app}"']
        path = self.dir / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    def settings(self, *, database: DatabaseSettings | None = None, **web: Any) -> Settings:
        web.setdefault("admin_hosts", ("admin.test",))
        web.setdefault("admin_token", TOKEN)
        web.setdefault("secret_key", "test-secret-key")
        database = database or DatabaseSettings(primary=f"sqlite:///{self.root}/tenantkit.db")
        return Settings(sites_dir=self.dir, cache_dir=self.cache_dir, database=database,
                        web=WebSettings(**web))


class Upstream:
    """A real HTTP server on loopback running *app* in a thread."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class RawServer:
    """A loopback TCP server that answers every connection with fixed bytes, then closes."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.reply = reply
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.stopping:
                    return
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            pass
        self.thread.join(5)
        self.sock.close()


class DripServer:
    """A loopback HTTP server answering a request for a path starting with ``/drip`` with a
    status line and then one byte every *interval* seconds (in the head, or in the body after
    a whole head with *head_first*), never finishing before the test ends; any other path
    with a small page at once. Every request line is kept in ``lines``."""

    def __init__(self, interval: float = 0.05, *, head_first: bool = True) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.interval = interval
        self.head_first = head_first
        self.lines: list[str] = []
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            conn.settimeout(10)
            try:
                line = reader.readline(65536).decode("latin-1").strip()
                while reader.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                self.lines.append(line)
                if " /drip" not in line:
                    body = b"<p>fine</p>"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                if self.head_first:
                    conn.sendall(b"Content-Type: text/html\r\n"
                                 b"Content-Length: 100000\r\n\r\n")
                else:
                    conn.sendall(b"X-Drip: ")
                while not self.stopping.wait(self.interval):  # ends with the test
                    conn.sendall(b"a")
            except OSError:
                pass  # the proxy cut us off

    def close(self) -> None:
        self.stopping.set()
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            pass  # wakes the acceptor
        self.acceptor.join(5)
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


def wait_stored(cache_dir: Path, site: str, host: str, path: str,
                timeout: float = 10.0, query: str = "") -> None:
    """Until the page of *host*, *path* and *query* (as the cache keys it: ignored
    arguments left out) of *site* is in the cache: a miss stores its page just after the
    visitor has its last byte, so the visitor's next request may still miss."""
    from tenantkit.cache.keys import page_key

    page = cache_dir / site / "pages" / "current" / page_key(host, path, query)
    deadline = time.monotonic() + timeout
    while not any((page / name).is_file() for name in ("index.html", ".page.body")):
        assert time.monotonic() < deadline, f"{host}{path}?{query} never stored"
        time.sleep(0.01)


def admin_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Host": "admin.test", "Authorization": f"Bearer {token}"}
