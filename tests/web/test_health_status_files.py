"""Invalidator status files (``cache_dir/_status/<node>.json``) are input: a corrupt, empty,
huge, symlinked or non-regular one, or a hostile node name, gives health a clear reason --
never a 500, a hang or a traceback per request -- and the metrics and status page still
answer."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tk_web import Sites, admin_headers
from werkzeug.test import Client

from tenantkit.cache import status as status_module
from tenantkit.cache.status import InvalidatorStatus, read_status, status_file, write_status
from tenantkit.config import BusSettings
from tenantkit.web.app import create_app

NODE = "web-7"


def _good(**changes: Any) -> bytes:
    data = {"node": NODE, "source": "bus", "transport": "files", "connected": True,
            "last_event": None, "lag": None, "dead_letters": 0, "handled": 1, "pid": 1,
            "updated": time.time(), "error": ""}
    data.update(changes)
    return json.dumps(data).encode()


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _huge(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(status_module.MAX_STATUS_BYTES + 1)


def _symlink_to_good(path: Path) -> None:
    elsewhere = path.parent.parent / "elsewhere.json"
    elsewhere.write_bytes(_good())
    path.symlink_to(elsewhere)


HOSTILE: list[Any] = [
    pytest.param(_write(b"{not json"), "Expecting", id="bad json"),
    pytest.param(_write(b""), "empty", id="empty"),
    pytest.param(_write(b"{\"node\": \"\xff\"}"), "utf-8", id="not utf-8"),
    pytest.param(_write(b"[" * 5000 + b"]" * 5000), "nested too deeply", id="deeply nested"),
    pytest.param(_write(b"[1, 2]"), "not a JSON object", id="a list"),
    pytest.param(_write(_good(updated="soon")), "updated", id="updated as string"),
    pytest.param(_write(_good(updated=float("nan"))), "updated", id="nan updated"),
    pytest.param(_write(_good(connected="false")), "connected", id="connected as string"),
    pytest.param(_write(_good(lag=[1])), "lag", id="lag a list"),
    pytest.param(_write(_good(node="web-7\x1b[31m")), "node", id="node with escapes"),
    pytest.param(_huge, "larger than", id="huge"),
    pytest.param(lambda p: p.symlink_to("/dev/zero"), "symlink", id="symlink to a device"),
    pytest.param(_symlink_to_good, "symlink", id="symlink to a file"),
    pytest.param(lambda p: p.mkdir(), "directory", id="directory"),
    pytest.param(lambda p: os.mkfifo(p), "FIFO", id="fifo"),
]


def _bounded(target: Callable[[], Any]) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "hung on a status file"
    return result[0]


@pytest.mark.parametrize(("make", "why"), HOSTILE)
def test_a_hostile_status_file_is_a_clear_health_reason(
        sites: Sites, make: Callable[[Path], None], why: str,
        caplog: pytest.LogCaptureFixture) -> None:
    sites.add("alpha", ["alpha.test"])
    settings = replace(sites.settings(), bus=BusSettings(node=NODE, transport="files"))
    path = status_file(settings.cache_dir, NODE)
    path.parent.mkdir(parents=True)
    make(path)
    app = create_app(settings)
    client = Client(app)
    caplog.set_level(logging.DEBUG)
    try:
        for _ in range(3):
            response = _bounded(lambda: client.get("/_tenantkit/health",
                                                   headers=admin_headers()))
            assert response.status_code == 503, response.get_data(True)
            reasons = response.get_json()["reasons"]
            assert any(r.startswith(f"invalidation: the invalidator of node {NODE}: its status "
                                    f"file {path} is unreadable (") and why in r
                       and "remove the file" in r for r in reasons), reasons
            metrics = _bounded(lambda: client.get("/_tenantkit/metrics",
                                                  headers=admin_headers()))
            assert metrics.status_code == 200
            assert f'tenantkit_invalidation_up{{node="{NODE}",source="bus"}} 0.0' \
                in metrics.get_data(True)
            page = _bounded(lambda: client.get("/_tenantkit/", headers=admin_headers()))
            assert page.status_code == 200
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        logged = [r for r in caplog.records if "status file" in r.getMessage()
                  and r.levelno >= logging.WARNING]
        assert len(logged) == 1, [r.getMessage() for r in logged]
    finally:
        app.extensions["tenantkit"].stop()


@pytest.mark.parametrize("node", ["../../etc/passwd", "web\n7", "x" * 300, ".", "",
                                  "w\udc80eb"], ids=["traversal", "newline", "long", "dot",
                                                     "empty", "lone surrogate"])
def test_a_hostile_node_name_stays_in_the_status_directory_and_round_trips(
        tmp_path: Path, node: str) -> None:
    write_status(tmp_path, InvalidatorStatus(node=node, source="bus"))
    path = status_file(tmp_path, node)
    assert path.parent == tmp_path / "_status" and path.is_file()
    assert len(path.name) < 120
    found = read_status(tmp_path, node)
    assert found is not None
    if node.isprintable() and 0 < len(node) <= 255:
        assert found.node == node and found.problem() is None
    else:  # a name the file cannot hold as written: a clear reason, not a crash
        assert found.problem() is not None


def test_a_report_from_the_future_is_a_problem(tmp_path: Path) -> None:
    status = InvalidatorStatus(node=NODE, updated=time.time() + 3600)
    problem = status.problem()
    assert problem is not None and "future" in problem
