"""How invalidation events reach every web node: one small interface, four transports.

::

    transport = make_transport(settings)           # the one ``[bus] transport`` names
    transport.publish(event)
    consumer = transport.consumer(node_name(settings))
    for message in consumer.poll(timeout=0.2):     # events, malformed payloads, flush demands
        ...
        message.ack()

- :mod:`~tenantkit.cache.transports.base`: :class:`Transport`, :class:`Consumer`,
  :class:`Message`;
- :mod:`~tenantkit.cache.transports.local` (``local``): in-process queues, else trigger files;
- :mod:`~tenantkit.cache.transports.files` (``files``): trigger files in ``.purge/``;
- :mod:`~tenantkit.cache.transports.redis_streams` (``redis``): at least once, per-node groups;
- :mod:`~tenantkit.cache.transports.redis_pubsub` (``pubsub``): at most once, for comparison.

Publishing from application code goes through :func:`tenantkit.cache.publish.publish`;
consuming is the :class:`~tenantkit.cache.invalidator.Invalidator`'s job.
"""

from __future__ import annotations

from tenantkit.cache.transports.base import Consumer, Message, Transport, node_name, parse_event
from tenantkit.cache.transports.files import TriggerFileTransport, read_trigger_file
from tenantkit.cache.transports.local import LocalTransport
from tenantkit.cache.transports.redis_pubsub import RedisPubSubTransport
from tenantkit.cache.transports.redis_streams import RedisStreamTransport
from tenantkit.config import Settings
from tenantkit.errors import BusError

__all__ = [
    "Consumer",
    "LocalTransport",
    "Message",
    "RedisPubSubTransport",
    "RedisStreamTransport",
    "Transport",
    "TriggerFileTransport",
    "make_transport",
    "node_name",
    "parse_event",
    "read_trigger_file",
]


def make_transport(settings: Settings, kind: str | None = None) -> Transport:
    """The transport named by ``kind`` (default: ``[bus] transport``)."""
    kind = kind or settings.bus.transport
    if kind == "local":
        return LocalTransport(settings.cache_dir)
    if kind == "files":
        return TriggerFileTransport(settings.cache_dir)
    if kind == "redis":
        return RedisStreamTransport(settings.bus.redis_url, settings.bus.stream,
                                    settings.bus.stream_maxlen)
    if kind == "pubsub":
        return RedisPubSubTransport(settings.bus.redis_url, settings.bus.stream)
    raise BusError(f'bus: unknown transport {kind!r} (use "local", "redis", "pubsub" or "files")')
