"""Fixtures for the shim's tests: a sites directory, an app over it, real upstream servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from tk_web import RawServer, ServerClient, Sites, Upstream
from werkzeug.test import Client

from tenantkit.web.app import create_app


@pytest.fixture
def sites(tmp_path: Path) -> Sites:
    return Sites(tmp_path)


@pytest.fixture
def make_client(sites: Sites) -> Iterator[Callable[..., tuple[Flask, Client]]]:
    apps: list[Flask] = []

    def make(**options: Any) -> tuple[Flask, Client]:
        app = create_app(sites.settings(**options))
        apps.append(app)
        return app, ServerClient(app, use_cookies=False)

    yield make
    for app in apps:
        app.extensions["tenantkit"].stop()


@pytest.fixture
def upstream() -> Iterator[Callable[[Callable[..., Any]], Upstream]]:
    started: list[Upstream] = []

    def start(app: Callable[..., Any]) -> Upstream:
        server = Upstream(app)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes], RawServer]]:
    started: list[RawServer] = []

    def start(reply: bytes) -> RawServer:
        server = RawServer(reply)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
