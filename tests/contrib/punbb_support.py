"""Helpers for the PunBB patch tests: the diff, the PHP it adds, a tiny browser, php -S."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path

import unidiff

from tenantkit.testing import free_port

from .phpcli import CONTRIB

DIFF = CONTRIB / "punbb.diff"
EVENTS_HELPER = CONTRIB / "tenantkit-events.php"
BASE_COMMIT = "4730166ff547027068600e7ecb540ec91bce68e0"


def load_patch() -> unidiff.PatchSet:
    return unidiff.PatchSet(DIFF.read_text(encoding="utf-8"))


def added_file(patch: unidiff.PatchSet, path: str) -> str:
    """The text of a file the patch creates."""
    for patched in patch:
        if patched.path == path and patched.is_added_file:
            return "".join(line.value for hunk in patched for line in hunk)
    raise AssertionError(f"the patch does not add {path}")


def write_tenantkit_php(root: Path) -> None:
    """Lay out <root>/include/tenantkit.php (from the diff) and the events helper next to it."""
    include = root / "include"
    include.mkdir(parents=True, exist_ok=True)
    (include / "tenantkit.php").write_text(added_file(load_patch(), "include/tenantkit.php"))
    (include / "tenantkit-events.php").write_bytes(EVENTS_HELPER.read_bytes())


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    text: str


class _Forms(HTMLParser):
    """The forms of a page with the values a browser would send (selected options, text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[tuple[str, dict[str, str]]] = []
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}))
            return
        if not self.forms:
            return
        fields = self.forms[-1][1]
        if tag == "select" and a.get("name"):
            self._select = a["name"]
            fields.pop(self._select, None)
        elif tag == "option" and self._select is not None:
            if "selected" in a or self._select not in fields:  # else the first option
                fields[self._select] = a.get("value", "")
        elif tag == "textarea" and a.get("name"):
            self._textarea = a["name"]
            fields[self._textarea] = ""
        elif tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind == "submit" or (kind in ("checkbox", "radio") and "checked" not in a):
                return
            fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None and self.forms:
            self.forms[-1][1][self._textarea] += data


@dataclass
class Browser:
    """Talks to 127.0.0.1:<port> with a fixed Host header; keeps cookies; follows nothing."""

    port: int
    host: str
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    def request(self, method: str, url: str, data: Mapping[str, str] | None = None) -> Response:
        parts = urllib.parse.urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {**self.headers, "Host": self.host}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if data is not None:
            body = urllib.parse.urlencode(data)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            for value in resp.headers.get_all("Set-Cookie") or []:
                cookie: SimpleCookie = SimpleCookie()
                cookie.load(value)
                self.cookies.update({k: m.value for k, m in cookie.items()})
            return Response(resp.status, dict(resp.headers), text)
        finally:
            conn.close()

    def get(self, url: str) -> Response:
        return self.request("GET", url)

    def submit(self, url: str, values: Mapping[str, str], *, action: str = "",
               button: str | None = None) -> Response:
        """Fetch *url*, fill the (last) form whose action contains *action*, post it."""
        page = self.get(url)
        parser = _Forms()
        parser.feed(page.text)
        forms = [f for f in parser.forms if action in f[0]]
        assert forms, f"no form with action {action!r} on {url} ({page.status}): {page.text[:800]}"
        target, fields = forms[-1]
        data = {**fields, **values}
        if button:
            data[button] = "1"
        return self.request("POST", urllib.parse.urljoin(url, target or url), data)


def location_id(response: Response, key: str) -> int:
    found = re.search(rf"[?&]{key}=(\d+)", response.headers.get("Location", ""))
    assert found, f"no {key}= in the redirect: {response.status} {response.headers}"
    return int(found.group(1))


@contextmanager
def php_server(php: str, docroot: Path, log: Path, env: Mapping[str, str] | None = None, *,
               display_errors: bool = False) -> Iterator[int]:
    """``php -S 127.0.0.1:<free port> -t docroot``; yields the port; stops it at the end.

    *display_errors*: as a careless php.ini would, so that what PHP says shows in the page."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # opcache off: tests rewrite the forum map within opcache's revalidate_freq.
            [php, "-d", "error_reporting=-1", "-d", "log_errors=1",
             "-d", f"display_errors={int(display_errors)}", "-d", "opcache.enable=0",
             "-S", f"127.0.0.1:{port}", "-t", str(docroot)],
            cwd=docroot, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                try:
                    conn.request("HEAD", "/", headers={"Host": "probe.invalid"})
                    conn.getresponse().read()
                finally:
                    conn.close()
                break
            except OSError:
                assert proc.poll() is None, f"php -S exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"php -S did not start:\n{log.read_text()}"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
