"""The access log (one line per request, text or JSON) and one line per expected failure."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from tk_web import Sites
from werkzeug.test import Client

from tenantkit.config import LogSettings, Settings
from tenantkit.logs import ACCESS_LOGGER, TEXT_FORMAT, JsonFormatter, TextFormatter, logging_config
from tenantkit.testing import free_port
from tenantkit.web.accesslog import AccessLog

MakeClient = Callable[..., tuple[Flask, Client]]


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


def test_one_line_per_request_with_site_cache_state_and_times(
        sites: Sites, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    sites.add("alpha", ["alpha.test"])
    _, client = make_client()
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    for _ in range(3):  # MISS, HIT, then a hit replayed before any site resolution
        response = client.get("/a/?x=1", headers={"Host": "alpha.test",
                                                   "User-Agent": "probe/1"})
        response.close()  # as a server does: the line is written when the body is closed
        assert response.status_code == 200
    client.get("/", headers={"Host": "nobody.test"}).close()
    records = _access(caplog)
    assert len(records) == 4
    fields = [r.fields for r in records]  # type: ignore[attr-defined]
    assert [f["cache"] for f in fields] == ["MISS", "HIT", "HIT", "-"]
    assert [f["site"] for f in fields] == ["alpha", "alpha", "alpha", "-"]
    assert [f["status"] for f in fields] == [200, 200, 200, 421]
    assert fields[0]["upstream"] is not None and fields[0]["upstream"] >= 0
    assert fields[1]["upstream"] is None  # a hit never reached the backend
    assert all(f["bytes"] > 0 and f["duration"] >= 0 for f in fields)
    line = records[0].getMessage()
    assert '"GET /a/?x=1 HTTP/1.1" 200 ' in line
    assert '"-" "probe/1" site=alpha host=alpha.test cache=MISS duration=' in line
    assert " upstream=" in line and "upstream=-" in records[1].getMessage()


def test_access_log_off(sites: Sites, caplog: pytest.LogCaptureFixture) -> None:
    from tenantkit.web.app import create_app

    sites.add("alpha", ["alpha.test"])
    base = sites.settings()
    settings = Settings(sites_dir=base.sites_dir, cache_dir=base.cache_dir,
                        database=base.database, web=base.web, log=LogSettings(access=False))
    app = create_app(settings)
    try:
        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        Client(app).get("/", headers={"Host": "alpha.test"}).close()
        assert _access(caplog) == []
    finally:
        app.extensions["tenantkit"].stop()


def test_json_lines_carry_the_fields() -> None:
    logger = logging.getLogger("tenantkit.test.json")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "%s", ("the line",),
                               None, extra={"fields": {"site": "blog", "status": 200}})
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "the line"
    assert (out["site"], out["status"], out["level"]) == ("blog", 200, "INFO")
    assert out["time"].endswith("Z")


def test_logging_config_follows_the_settings() -> None:
    settings = Settings(log_level="WARNING", log=LogSettings(format="json", access=False))
    config = logging_config(settings)
    assert config["root"]["level"] == "WARNING"
    assert config["handlers"]["stderr"]["formatter"] == "json"
    assert config["loggers"][ACCESS_LOGGER]["level"] == "CRITICAL"
    assert config["loggers"]["gunicorn.error"] == {"level": "WARNING", "handlers": [],
                                                   "propagate": True}


def test_an_exception_in_the_app_is_logged_as_a_500() -> None:
    def boom(environ: dict[str, Any], start_response: Any) -> Any:
        raise RuntimeError("x")

    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    logger = logging.getLogger("tenantkit.test.access")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    with pytest.raises(RuntimeError):
        Client(AccessLog(boom, logger=logger)).get("/x")
    assert lines[0].fields["status"] == 500  # type: ignore[attr-defined]


def test_a_dead_database_is_one_line_naming_the_site(
        sites: Sites, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:dead_database")
    _, client = make_client()
    caplog.set_level(logging.INFO)
    assert client.get("/", headers={"Host": "alpha.test"}).status_code == 500
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None
    message = errors[0].getMessage()
    assert message.startswith("site alpha: GET / answered 500: OperationalError: ")
    assert "\n" not in message and "secret" not in message


def test_a_dead_upstream_is_one_line_naming_the_site(
        sites: Sites, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    sites.add("alpha", ["alpha.test"], url=f"http://127.0.0.1:{free_port()}")
    _, client = make_client()
    caplog.set_level(logging.INFO)
    assert client.get("/", headers={"Host": "alpha.test"}).status_code == 502
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage().startswith("site alpha: upstream http://127.0.0.1:")


def test_a_bug_keeps_its_traceback(
        sites: Sites, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    sites.add("alpha", ["alpha.test"], app="tk_test_apps:buggy")
    _, client = make_client()
    assert client.get("/", headers={"Host": "alpha.test"}).status_code == 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


@pytest.mark.parametrize("created", [0.0, 1764925980.0005, 1764925980.999, 1764925981.5])
def test_the_text_formatter_writes_what_the_text_format_says(created: float) -> None:
    record = logging.makeLogRecord({"name": "tenantkit.x", "levelno": logging.INFO,
                                    "levelname": "INFO", "msg": "line %d", "args": (1,)})
    record.created, record.msecs = created, (created - int(created)) * 1000 // 1
    formatter = TextFormatter()
    for _ in range(2):  # the second time from the time kept for that second
        assert formatter.format(record) == logging.Formatter(TEXT_FORMAT).format(record)
