"""The transport interface every bus transport implements, and the pieces they share.

A :class:`Transport` publishes events and hands each node a :class:`Consumer`; a consumer's
``poll`` returns :class:`Message` objects, which the Invalidator handles and then ``ack``\\ s::

    consumer = transport.consumer("node-a")
    for message in consumer.poll(0.2):
        ...
        message.ack()
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tenantkit.cache.events import Event, from_json
from tenantkit.config import Settings
from tenantkit.errors import MalformedEvent

__all__ = ["Consumer", "Message", "Transport", "node_name", "parse_event"]


@dataclass
class Message:
    """One delivery from a transport: an event, a malformed payload (``error``), or a demand
    to flush every site (``flush_all``, after a possible gap). ``ack`` after handling."""

    event: Event | None = None
    error: str | None = None
    flush_all: str | None = None
    ack: Callable[[], None] = lambda: None


class Consumer(Protocol):
    def poll(self, timeout: float) -> list[Message]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    name: str

    def publish(self, event: Event) -> None: ...

    def consumer(self, node: str) -> Consumer: ...

    def close(self) -> None: ...


def node_name(settings: Settings) -> str:
    """This node's name: ``[bus] node``, else the host name."""
    return settings.bus.node or socket.gethostname()


def parse_event(raw: bytes | str) -> tuple[Event | None, str | None]:
    """The event in ``raw``, or the reason it is malformed (never both)."""
    try:
        return from_json(raw), None
    except MalformedEvent as exc:
        return None, str(exc)
