"""The transport interface every bus transport implements, and the pieces they share.

A :class:`Transport` publishes events and hands each node a :class:`Consumer`; a consumer's
``poll`` returns :class:`Message` objects, which the Invalidator handles and then ``ack``\\ s,
or, when one cannot be handled (malformed, or handling it raised), moves to the transport's
dead letter (``message.dead_letter(reason)``: acknowledged too, so it never blocks a node)::

    consumer = transport.consumer("node-a")
    for message in consumer.poll(0.2):
        ...
        message.ack()
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tenantkit.cache.events import Event, from_json
from tenantkit.config import Settings
from tenantkit.errors import MalformedEvent

__all__ = ["Consumer", "Message", "Transport", "node_name", "parse_event", "site_hint"]


@dataclass
class Message:
    """One delivery from a transport: an event, a malformed payload (``error``), or a demand
    to flush every site (``flush_all``, after a possible gap). ``ack`` after handling;
    ``dead_letter(reason)`` keeps ``raw`` where an operator can read it, then acks.
    ``site`` is the site the payload names, when it can be told even from a malformed one;
    ``ref`` names the delivery in log lines (``entry 1-0 of tenantkit:events``)."""

    event: Event | None = None
    error: str | None = None
    flush_all: str | None = None
    ack: Callable[[], None] = lambda: None
    dead_letter: Callable[[str], None] | None = None
    raw: bytes = b""
    site: str | None = None
    ref: str = ""

    def reject(self, reason: str) -> None:
        """Move to the dead letter (when the transport keeps one), acknowledged."""
        if self.dead_letter is not None:
            self.dead_letter(reason)
        else:
            self.ack()


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


_SITE_RE = re.compile(rb'"site"\s*:\s*"([a-z0-9][a-z0-9-]{0,62})"')


def parse_event(raw: bytes | str) -> tuple[Event | None, str | None]:
    """The event in ``raw``, or the reason it is malformed (never both). Never raises: a
    payload that makes the parser fail in any way is malformed."""
    try:
        return from_json(raw), None
    except MalformedEvent as exc:
        return None, str(exc)
    except Exception as exc:  # a poison payload must not escape into the consumer loop
        return None, f"event: cannot be parsed ({type(exc).__name__}: {exc})"[:300]


def site_hint(raw: bytes | str) -> str | None:
    """The site a (possibly malformed) payload names, if it names one plainly."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    match = _SITE_RE.search(data[:4096])
    return match.group(1).decode() if match else None
