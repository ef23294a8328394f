"""The server's logging: written by a thread of each process, so no request waits on stderr,
and nothing queued is lost when the process stops."""

from __future__ import annotations

import io
import logging
import logging.config
import re
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from tk_web import ServerClient, Sites

from tenantkit.logs import ACCESS_LOGGER, BackgroundStreamHandler

#: Generous bound for work that takes milliseconds.
BOUND = 10.0


class BlockedStream(io.StringIO):
    """A stream whose writes wait until :meth:`release` (a full pipe, a stuck journal)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.released.wait()
        return super().write(text)

    def release(self) -> None:
        self.released.set()

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@pytest.fixture
def stream() -> Iterator[BlockedStream]:
    blocked = BlockedStream()
    yield blocked
    blocked.release()


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """Whatever a test configures, the logging of the test run is put back afterwards."""
    names = ["", ACCESS_LOGGER, "gunicorn.error", "gunicorn.access"]
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_a_hit_is_answered_while_the_servers_log_stream_is_blocked(
        sites: Sites, stream: BlockedStream, keep_logging: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What `tenantkit serve` hands gunicorn, with stderr stuck: before, every request's
    # access line was written by the request's own thread, which then waited.
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install "
                                           "-e '.[server]')")
    from tenantkit.web.app import create_app
    from tenantkit.web.server import GunicornServer

    sites.add("alpha", ["alpha.test"])
    settings = sites.settings()
    app = create_app(settings)
    monkeypatch.setattr(sys, "stderr", stream)
    logging.config.dictConfig(GunicornServer(settings).cfg.logconfig_dict)
    client = ServerClient(app, use_cookies=False)
    answers: list[str] = []

    def visit() -> None:
        for _ in range(20):
            response = client.get("/p/", headers={"Host": "alpha.test"})
            answers.append(response.headers["X-Tenantkit-Cache"])

    try:  # (nothing but the visitor's thread may log here: the stream blocks)
        visitor = threading.Thread(target=visit, daemon=True)
        visitor.start()
        visitor.join(BOUND)
        assert not visitor.is_alive(), f"requests held by the log stream after {answers}"
        assert answers[0] == "MISS" and set(answers[1:]) == {"HIT"}
        assert stream.entered.wait(BOUND)  # the writer is stuck, the requests were not
        stream.release()
        for handler in logging.getLogger().handlers:
            handler.flush()
        logged = [line for line in stream.lines() if "tenantkit.access" in line]
        assert len(logged) == 20, stream.lines()  # one line per request, none lost
        assert all('"GET /p/ HTTP/1.1" 200 ' in line for line in logged)
    finally:
        stream.release()  # before the handlers are closed: a blocked one holds its lock
        app.extensions["tenantkit"].stop()


def _record(n: int) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "tenantkit.test", "levelno": logging.INFO,
                                  "levelname": "INFO", "msg": "record %d", "args": (n,)})


def test_what_is_queued_is_written_at_close_and_later_records_at_once(
        stream: BlockedStream) -> None:
    handler = BackgroundStreamHandler(stream)
    started = time.monotonic()
    for n in range(500):
        handler.handle(_record(n))
    assert time.monotonic() - started < BOUND  # queued, not written
    assert stream.entered.wait(BOUND)
    stream.release()
    handler.close()  # what logging.shutdown() does at exit
    handler.handle(_record(500))
    assert stream.lines() == [f"record {n}" for n in range(501)]


def test_flush_waits_for_what_was_queued_before_it() -> None:
    out = io.StringIO()
    handler = BackgroundStreamHandler(out)
    try:
        for n in range(3):
            handler.handle(_record(n))
        handler.flush()
        assert out.getvalue().splitlines() == ["record 0", "record 1", "record 2"]
    finally:
        handler.close()


def test_past_max_queued_records_are_dropped_and_counted_in_one_line(
        stream: BlockedStream) -> None:
    handler = BackgroundStreamHandler(stream, max_queued=10)
    try:
        handler.handle(_record(0))
        assert stream.entered.wait(BOUND)  # the writer holds record 0, stuck in write()
        for n in range(1, 30):
            handler.handle(_record(n))
        stream.release()
        handler.flush()
        lines = stream.lines()
        dropped = [line for line in lines if "dropped" in line]
        assert len(dropped) == 1, lines
        found = re.search(r"(\d+) log records dropped", dropped[0])
        assert found is not None, dropped
        written = [line for line in lines if line.startswith("record ")]
        assert int(found.group(1)) == 19 and written == [f"record {n}" for n in range(11)]
    finally:
        handler.close()
