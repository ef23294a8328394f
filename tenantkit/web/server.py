"""Run the shim: under gunicorn when it is installed (the ``server`` extra), else on werkzeug's
threaded server (enough for the demo and for development)::

    from tenantkit.web.server import serve
    serve(settings, bind="127.0.0.1:8000", workers=2)      # blocks until SIGINT / SIGTERM

Each gunicorn worker builds its own app after the fork and starts its own site watcher and
invalidator (``post_worker_init``), so no thread is ever shared across a fork. With more than
one worker, Prometheus metrics are kept in ``PROMETHEUS_MULTIPROC_DIR`` (a temporary
directory unless set) and every scrape adds up all workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from tenantkit.config import Settings

__all__ = ["gunicorn_available", "parse_bind", "serve"]

logger = logging.getLogger(__name__)

#: What ``tenantkit serve`` and the benchmark give gunicorn.
GUNICORN_DEFAULTS: dict[str, Any] = {
    "worker_class": "gthread",
    "threads": 8,
    "keepalive": 5,
    "timeout": 60,
    "graceful_timeout": 10,
    "accesslog": None,
    "limit_request_field_size": 8190,
}


def gunicorn_available() -> bool:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return False
    return True


def parse_bind(bind: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` / ``"[::1]:8000"`` / ``":8000"`` -> (host, port); ValueError else."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--bind {bind!r}: expected HOST:PORT such as 127.0.0.1:8000")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(settings: Settings, *, bind: str = "127.0.0.1:8000", workers: int = 2,
          use_gunicorn: bool | None = None, ready: Callable[[], None] | None = None) -> None:
    """Serve every site until interrupted. ``use_gunicorn=None``: when installed."""
    parse_bind(bind)
    if use_gunicorn is None:
        use_gunicorn = gunicorn_available()
    if use_gunicorn:
        _serve_gunicorn(settings, bind, workers)
    else:
        _serve_werkzeug(settings, bind, ready)


def _serve_werkzeug(settings: Settings, bind: str, ready: Callable[[], None] | None) -> None:
    from werkzeug.serving import make_server

    from tenantkit.web.app import create_app

    host, port = parse_bind(bind)
    app = create_app(settings, TENANTKIT_BACKGROUND=True)
    server = make_server(host, port, app, threaded=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    logger.info("serving on http://%s:%d/ (werkzeug, one process)", host, server.server_port)
    try:
        if ready is not None:
            ready()
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        app.extensions["tenantkit"].stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_gunicorn(settings: Settings, bind: str, workers: int) -> None:
    made_dir = None
    master = os.getpid()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made_dir = tempfile.mkdtemp(prefix="tenantkit-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
    try:
        GunicornServer(settings, {"bind": bind, "workers": workers}).run()
    finally:
        # Workers are forked inside run() and unwind through here when they exit: only the
        # master may remove what every worker still uses.
        if made_dir is not None and os.getpid() == master:
            shutil.rmtree(made_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _gunicorn_base() -> type:
    from gunicorn.app.base import BaseApplication

    base: type = BaseApplication
    return base


class GunicornServer(_gunicorn_base() if gunicorn_available() else object):  # type: ignore[misc]
    """gunicorn's BaseApplication loading the shim in each worker."""

    def __init__(self, settings: Settings, options: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.options = {**GUNICORN_DEFAULTS, **(options or {})}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        from tenantkit.logs import logging_config

        self.cfg.set("loglevel", self.settings.log_level.lower())
        # Written by a thread of each process: a request never waits on stderr.
        self.cfg.set("logconfig_dict", logging_config(self.settings, background=True))
        self.cfg.set("logger_class", _logger_class())
        self.cfg.set("post_worker_init", _post_worker_init)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("child_exit", _child_exit)

    def load(self) -> Any:
        from tenantkit.web.app import create_app

        return create_app(self.settings)


def _logger_class() -> type:
    """gunicorn's logger without gunicorn's access log: ``tenantkit.access``
    (:mod:`tenantkit.web.accesslog`) writes the one line per request, with every field
    gunicorn's has, and ``[log] access = false`` turns it off. gunicorn would otherwise log
    a second line per request whenever it is given a ``logconfig_dict``, and build it even
    when nothing prints it."""
    from gunicorn.glogging import Logger

    class NoAccessLog(Logger):  # type: ignore[misc]
        def _compute_access_log_enabled(self) -> bool:
            return False

        def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
            return None

    return NoAccessLog


def _post_worker_init(worker: Any) -> None:
    worker.wsgi.extensions["tenantkit"].start()


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        app.extensions["tenantkit"].stop()


def _child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
