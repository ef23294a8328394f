"""Logging for every tenantkit process, configured once from the settings through
:func:`logging.config.dictConfig`::

    from tenantkit.logs import configure_logging
    configure_logging(settings)        # log_level, [log] format and [log] access

One handler on the root logger writes to stderr (systemd's journal, docker logs), as text or
as one JSON object a line. In the server (``logging_config(settings, background=True)``, what
``tenantkit serve`` hands gunicorn) it is a :class:`BackgroundStreamHandler`: a request thread
only queues its record, one thread per process formats and writes them, so no request ever
waits on a slow or blocked stderr, nor on another thread's write; what is queued is written
before the process exits. Everything goes through it: tenantkit's own loggers, the access
log (logger ``tenantkit.access``, off with ``[log] access = false``) and gunicorn's
``gunicorn.error`` (``tenantkit serve`` hands gunicorn the same configuration as
``logconfig_dict``, and turns gunicorn's own access log off: ``tenantkit.access`` is the one
line per request).

A record may carry structured fields (``logger.info(msg, extra={"fields": {...}})``): the JSON
format writes them as keys of their own, the text format writes the message alone (the access
log already puts them in its message).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import queue
import threading
import time
import weakref
from typing import Any, TextIO

from tenantkit.config import Settings

__all__ = ["ACCESS_LOGGER", "BackgroundStreamHandler", "JsonFormatter", "TextFormatter",
           "configure_logging", "logging_config"]

#: The access log's logger: one line per request.
ACCESS_LOGGER = "tenantkit.access"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` (the time as ``2025-12-05 09:13:00,123``, local time), the date
    and time made once per second rather than once per line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        seen = self._second
        if seen[0] != second:
            seen = self._second = (second, time.strftime(self.default_time_format,
                                                         self.converter(record.created)))
        return f"{seen[1]},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the record's ``fields`` and, when there is one, the exception as ``error``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class BackgroundStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose writing is done by a thread of its own::

        handler = BackgroundStreamHandler(sys.stderr)
        logging.getLogger().addHandler(handler)
        logging.getLogger("x").info("queued")     # returns at once, whatever the stream does
        handler.flush()                           # until what was queued is written

    :meth:`emit` only queues the record (no lock, no formatting, no system call); the writer
    thread (one per process, started on the first record, again in a forked child) formats
    what is queued and writes it in one go. :meth:`flush` waits until everything queued
    before it is written (at most *flush_timeout* seconds), :meth:`close` -- which
    :func:`logging.shutdown` calls at exit -- writes the rest and stops the thread; a record
    emitted after that is written at once. At most *max_queued* records wait: while the
    stream is blocked that long, more are dropped, and counted in one line once it writes
    again."""

    MAX_QUEUED = 100_000
    #: Records written in one go, at most.
    BATCH = 1000
    #: Seconds between two looks at the queue (a line is written within this).
    INTERVAL = 0.05

    def __init__(self, stream: TextIO | None = None, *, max_queued: int = MAX_QUEUED,
                 flush_timeout: float = 5.0) -> None:
        super().__init__(stream)
        self.max_queued = max_queued
        self.flush_timeout = flush_timeout
        self.dropped = 0
        self._write_lock = threading.Lock()  # held while writing, and across a fork
        self._start_lock = threading.Lock()
        self._reset()
        _handlers.add(self)

    def _reset(self) -> None:
        """A new queue and no writer (in a new handler, and in a forked child: what the
        parent had queued is the parent's to write)."""
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = \
            queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and queue, without the handler's lock: queueing needs none."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            self._write([record])
            return
        if self._writer is None:
            self._start()
        if self._queue.qsize() >= self.max_queued:
            self.dropped += 1
            return
        self._queue.put(record)

    def flush(self) -> None:
        """Wait until every record queued so far is written (at most ``flush_timeout``)."""
        writer = self._writer
        if writer is None or not writer.is_alive() or writer is threading.current_thread():
            return
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        done.wait(self.flush_timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer; records emitted from now on are written at
        once."""
        writer = self._writer
        if writer is not None and writer.is_alive() and writer is not threading.current_thread():
            self._queue.put(None)
            self._wake.set()
            writer.join(self.flush_timeout)
        self._closed = True
        super().close()

    def _start(self) -> None:
        with self._start_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, args=(self._queue,),
                                                name="tenantkit-log-writer", daemon=True)
                self._writer.start()

    def _run(self, inbox: queue.SimpleQueue[logging.LogRecord | threading.Event | None]
             ) -> None:
        while True:
            # Woken by flush() and close(), else every INTERVAL: never once per record.
            self._wake.wait(self.INTERVAL)
            self._wake.clear()
            batch: list[logging.LogRecord] = []
            waiting: list[threading.Event] = []
            stop = False
            while not stop:
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    batch.append(item)
                    if len(batch) >= self.BATCH:
                        self._write(batch)
                        batch = []
            self._write(batch)
            for event in waiting:
                event.set()
            if stop:
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        lines = []
        dropped, self.dropped = self.dropped, 0
        if dropped:
            lines.append(self.format(logging.makeLogRecord({
                "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": "%d log records dropped: the log stream was blocked while %d waited",
                "args": (dropped, self.max_queued)})))
        for record in records:
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        if not lines:
            return
        with self._write_lock:
            try:
                self.stream.write(self.terminator.join(lines) + self.terminator)
                self.stream.flush()
            except Exception:
                if records:
                    self.handleError(records[-1])


#: Every BackgroundStreamHandler, so that a fork never happens in the middle of a write and
#: the child starts with an empty queue of its own.
_handlers: weakref.WeakSet[BackgroundStreamHandler] = weakref.WeakSet()


def _before_fork() -> None:
    for handler in list(_handlers):
        handler._write_lock.acquire()


def _after_fork_in_parent() -> None:
    for handler in list(_handlers):
        handler._write_lock.release()


def _after_fork_in_child() -> None:
    for handler in list(_handlers):
        handler._write_lock = threading.Lock()
        handler._start_lock = threading.Lock()
        handler._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def logging_config(settings: Settings, *, level: str | None = None,
                   background: bool = False) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` dictionary for *settings* (also gunicorn's
    ``logconfig_dict``). ``background``: stderr is written by a
    :class:`BackgroundStreamHandler` (the server's request threads never wait on it)."""
    chosen = (level or settings.log_level).upper()
    formatter = "json" if settings.log.format == "json" else "text"
    handler = f"{__name__}.BackgroundStreamHandler" if background else "logging.StreamHandler"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"()": f"{__name__}.TextFormatter"},
            "json": {"()": f"{__name__}.JsonFormatter"},
        },
        "handlers": {
            "stderr": {"class": handler, "stream": "ext://sys.stderr",
                       "formatter": formatter},
        },
        "root": {"level": chosen, "handlers": ["stderr"]},
        "loggers": {
            # The access log is on or off by itself, whatever log_level says.
            ACCESS_LOGGER: {"level": "INFO" if settings.log.access else "CRITICAL",
                            "propagate": True},
            "gunicorn.error": {"level": chosen, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def configure_logging(settings: Settings, *, level: str | None = None) -> None:
    """Configure this process's logging from *settings* (replaces the root handlers)."""
    logging.config.dictConfig(logging_config(settings, level=level))
    logging.captureWarnings(True)
