"""Logging for every tenantkit process, configured once from the settings through
:func:`logging.config.dictConfig`::

    from tenantkit.logs import configure_logging
    configure_logging(settings)        # log_level, [log] format and [log] access

One handler on the root logger writes to stderr (systemd's journal, docker logs), as text or
as one JSON object a line. Everything goes through it: tenantkit's own loggers, the access
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
import time
from typing import Any

from tenantkit.config import Settings

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "configure_logging", "logging_config"]

#: The access log's logger: one line per request.
ACCESS_LOGGER = "tenantkit.access"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def logging_config(settings: Settings, *, level: str | None = None) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` dictionary for *settings* (also gunicorn's
    ``logconfig_dict``)."""
    chosen = (level or settings.log_level).upper()
    formatter = "json" if settings.log.format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"format": TEXT_FORMAT},
            "json": {"()": f"{__name__}.JsonFormatter"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
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
