"""Publishing invalidation events from application code (hooks, the shim, the CLI).

Publish after a commit (never before)::

    publish(CommentPosted("blog", 42, True, gtid=gtid), settings=settings)

:func:`publish` keeps one transport per settings for the life of the process (closed by
:func:`close_transports`). With Redis down, the event becomes a trigger file on this node.
"""

from __future__ import annotations

import logging
import threading

from tenantkit.cache.events import Event
from tenantkit.cache.transports import Transport, TriggerFileTransport, make_transport
from tenantkit.config import Settings
from tenantkit.errors import BusError

__all__ = ["close_transports", "publish"]

log = logging.getLogger(__name__)


_TRANSPORTS: dict[tuple[Settings, str], Transport] = {}
_TRANSPORTS_LOCK = threading.Lock()


def _shared_transport(settings: Settings) -> Transport:
    key = (settings, settings.bus.transport)
    with _TRANSPORTS_LOCK:
        transport = _TRANSPORTS.get(key)
        if transport is None:
            transport = _TRANSPORTS[key] = make_transport(settings)
        return transport


def close_transports() -> None:
    """Close the transports :func:`publish` opened (at shutdown, and in tests)."""
    with _TRANSPORTS_LOCK:
        transports = list(_TRANSPORTS.values())
        _TRANSPORTS.clear()
    for transport in transports:
        transport.close()


def publish(event: Event, *, settings: Settings | None = None,
            transport: Transport | None = None, fallback: bool = True) -> None:
    """Send ``event`` to every node. Call it only after the commit that caused it.

    With Redis down, the event becomes a trigger file on this node (the other nodes flush
    when they reconnect); :class:`BusError` only when that fails too. With
    ``fallback=False`` (``tenantkit purge``: an operator is waiting for the answer),
    :class:`BusError` at once, saying that nothing was published.
    """
    if transport is None:
        settings = settings if settings is not None else Settings.load()
        transport = _shared_transport(settings)
    try:
        transport.publish(event)
    except BusError as exc:
        if not fallback:
            raise BusError(f"{exc}; nothing was published, so no node purged anything "
                           "(start Redis, or fix [bus] redis_url, and run it again)") from exc
        if settings is None or isinstance(transport, TriggerFileTransport):
            raise
        log.warning("%s; writing a trigger file instead", exc)
        TriggerFileTransport(settings.cache_dir).publish(event)
