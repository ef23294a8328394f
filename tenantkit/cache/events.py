"""Content events, their JSON wire form, and what each purges under a site's policy.

::

    event = CommentPosted("blog", post_id=42, approved=True, gtid="0-1-1234")
    text = to_json(event)            # the README's "Invalidation events" format
    assert from_json(text) == event
    action = purge_action(event, policy="targeted")
    action.tags                      # ("post:42", "home")

Policies: ``"site"`` (the default) flushes the whole site on any content change;
``"targeted"`` purges by tag (the vocabulary of :mod:`tenantkit.cache.tags`): a comment purges
``post:N`` (and ``home`` when the home page shows comment counts), a post edit ``post:N``,
``home``, ``feed``, ``term:T`` for each of its terms and ``author:A``. On a PunBB site
(``app="punbb"``) ``post_id`` is a topic and ``terms`` its forums: any change purges
``topic:N``, ``forum:F`` for each forum and ``index``. Comments that are not approved purge
nothing. An explicit :class:`Purge` does what it says under either policy.

:func:`from_json` raises :class:`~tenantkit.errors.MalformedEvent` with a message naming the
field and what was wrong: such an event is logged and dropped, never retried.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from tenantkit.cache import tags as vocabulary
from tenantkit.errors import MalformedEvent
from tenantkit.validate import SITE_NAME_RE

__all__ = [
    "MAX_EVENT_BYTES",
    "CommentChanged",
    "CommentPosted",
    "Event",
    "PostDeleted",
    "PostEdited",
    "Purge",
    "PurgeAction",
    "SiteChanged",
    "from_json",
    "purge_action",
    "to_json",
    "with_gtid",
]

VERSION = 1
MAX_EVENT_BYTES = 64 * 1024
Origin = str


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class _Base:
    """Fields every event has. ``id``, ``ts`` and ``origin`` do not take part in equality."""

    type: ClassVar[str] = ""

    site: str
    gtid: str | None = field(default=None, kw_only=True)
    id: str = field(default_factory=_new_id, compare=False, kw_only=True)
    ts: float = field(default_factory=time.time, compare=False, kw_only=True)
    origin: str = field(default="python", compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not SITE_NAME_RE.fullmatch(self.site):
            raise MalformedEvent(
                f"event: field \"site\": expected a site name matching "
                f"^[a-z0-9][a-z0-9-]{{0,62}}$, got {self.site!r}"
            )


@dataclass(frozen=True)
class CommentPosted(_Base):
    """A new comment on ``post_id``; only an approved one purges anything. ``terms``: where
    the post is listed, when that matters (a PunBB reply: the topic's forum)."""

    type: ClassVar[str] = "comment_posted"
    post_id: int | None = None
    approved: bool = True
    terms: tuple[int, ...] = ()


@dataclass(frozen=True)
class CommentChanged(_Base):
    """A comment was edited, (un)approved, spammed or deleted. ``approved``: it was or is
    visible (only then can a page have shown it)."""

    type: ClassVar[str] = "comment_changed"
    post_id: int | None = None
    approved: bool = True
    terms: tuple[int, ...] = ()


@dataclass(frozen=True)
class PostEdited(_Base):
    """A post was created or edited."""

    type: ClassVar[str] = "post_edited"
    post_id: int | None = None
    terms: tuple[int, ...] = ()
    author: int | None = None


@dataclass(frozen=True)
class PostDeleted(_Base):
    """A post was deleted (or unpublished)."""

    type: ClassVar[str] = "post_deleted"
    post_id: int | None = None
    terms: tuple[int, ...] = ()
    author: int | None = None


@dataclass(frozen=True)
class SiteChanged(_Base):
    """Anything else that can change every page: theme, options, menus, widgets."""

    type: ClassVar[str] = "site_changed"


@dataclass(frozen=True)
class Purge(_Base):
    """An explicit purge: ``paths`` (of ``host``, or of every host when None), ``tags``, or
    ``all`` for the whole site."""

    type: ClassVar[str] = "purge"
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    host: str | None = None
    all: bool = False


Event = CommentPosted | CommentChanged | PostEdited | PostDeleted | SiteChanged | Purge

_TYPES: dict[str, type[Any]] = {
    cls.type: cls
    for cls in (CommentPosted, CommentChanged, PostEdited, PostDeleted, SiteChanged, Purge)
}


def to_json(event: Event) -> str:
    """The event's wire form: one JSON object with every field of the format."""
    data: dict[str, Any] = {
        "v": VERSION, "type": event.type, "site": event.site,
        "post_id": getattr(event, "post_id", None),
        "approved": getattr(event, "approved", True),
        "terms": list(getattr(event, "terms", ())),
        "author": getattr(event, "author", None),
        "paths": list(getattr(event, "paths", ())),
        "tags": list(getattr(event, "tags", ())),
        "host": getattr(event, "host", None),
        "all": getattr(event, "all", False),
        "gtid": event.gtid, "id": event.id, "ts": event.ts, "origin": event.origin,
    }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _bad(name: str, expected: str, got: Any) -> MalformedEvent:
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return MalformedEvent(f'event: field "{name}": expected {expected}, got {shown}')


def _int_or_none(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "an integer or null", value)
    return value


def _str_list(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "a list of strings", value)
    return tuple(value)


def _int_list(data: Mapping[str, Any], name: str) -> tuple[int, ...]:
    value = data.get(name, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _bad(name, "a list of integers", value)
    return tuple(value)


def _bool(data: Mapping[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "true or false", value)
    return value


def _opt_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(name, "a string or null", value)
    return value


def from_json(raw: str | bytes) -> Event:
    """Parse one event. Raises :class:`MalformedEvent` saying what is wrong; unknown fields
    are ignored."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_EVENT_BYTES:
            raise MalformedEvent(f"event: {len(raw)} bytes, more than the {MAX_EVENT_BYTES} "
                                 "allowed (send one small event per change)")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent("event: not UTF-8 text (write the JSON as UTF-8)") from None
    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"event: more than {MAX_EVENT_BYTES} bytes "
                             "(send one small event per change)")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise MalformedEvent(f"event: not valid JSON ({exc})") from None
    except RecursionError:
        raise MalformedEvent("event: JSON nested too deeply (an event is one flat object)"
                             ) from None
    if not isinstance(data, dict):
        raise MalformedEvent(f"event: expected a JSON object, got {type(data).__name__}")
    for required in ("v", "type", "site"):
        if required not in data:
            raise MalformedEvent(f'event: field "{required}" is missing (see the README, '
                                 '"Invalidation events")')
    if data["v"] != VERSION or isinstance(data["v"], bool):
        raise _bad("v", f"{VERSION}", data["v"])
    kind = data["type"]
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise _bad("type", "one of " + ", ".join(sorted(_TYPES)), kind)
    site = data["site"]
    if not isinstance(site, str) or not SITE_NAME_RE.fullmatch(site):
        raise _bad("site", "a site name matching ^[a-z0-9][a-z0-9-]{0,62}$", site)
    common: dict[str, Any] = {"site": site, "gtid": _opt_str(data, "gtid")}
    event_id = _opt_str(data, "id")
    if event_id:
        common["id"] = event_id[:128]
    ts = data.get("ts")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise _bad("ts", "a Unix time in seconds", ts)
        common["ts"] = float(ts)
    origin = _opt_str(data, "origin")
    if origin:
        common["origin"] = origin[:64]
    if cls in (CommentPosted, CommentChanged):
        event: Event = cls(**common, post_id=_int_or_none(data, "post_id"),
                           approved=_bool(data, "approved", True),
                           terms=_int_list(data, "terms"))
    elif cls in (PostEdited, PostDeleted):
        event = cls(**common, post_id=_int_or_none(data, "post_id"),
                    terms=_int_list(data, "terms"), author=_int_or_none(data, "author"))
    elif cls is Purge:
        paths = _str_list(data, "paths")
        for path in paths:
            if not path.startswith("/"):
                raise _bad("paths", "URL paths starting with '/'", path)
        tags = _str_list(data, "tags")
        for tag in tags:
            if not tag or len(tag) > 200:
                raise _bad("tags", "non-empty tags of at most 200 characters", tag)
        event = Purge(**common, paths=paths, tags=tags,
                      host=_opt_str(data, "host"), all=_bool(data, "all", False))
    else:
        event = SiteChanged(**common)
    return event


def with_gtid(event: Event, gtid: str | None) -> Event:
    """A copy of ``event`` carrying ``gtid``."""
    return replace(event, gtid=gtid)


@dataclass(frozen=True)
class PurgeAction:
    """What an event purges: everything (``flush``), or these tags and (host, path) pairs."""

    flush: bool = False
    tags: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    host: str | None = None

    def __bool__(self) -> bool:
        return self.flush or bool(self.tags) or bool(self.paths)


Policy = Literal["site", "targeted"]


def purge_action(event: Event, policy: Policy = "site", *,
                 home_shows_comments: bool = True, app: str | None = None) -> PurgeAction:
    """What ``event`` purges under ``policy``, on a site of ``app`` (``"punbb"``: the forum
    vocabulary; anything else: posts, terms and authors)."""
    if isinstance(event, Purge):
        if event.all:
            return PurgeAction(flush=True)
        return PurgeAction(tags=event.tags, paths=event.paths, host=event.host)
    if isinstance(event, CommentPosted | CommentChanged) and not event.approved:
        return PurgeAction()
    if policy == "site" or isinstance(event, SiteChanged):
        return PurgeAction(flush=True)
    if event.post_id is None:  # a change we cannot pin to a post: be safe
        return PurgeAction(flush=True)
    tag = vocabulary.tag
    if app == "punbb":
        if not event.terms:  # a topic without its forum: its listing cannot be named
            return PurgeAction(flush=True)
        return PurgeAction(tags=(tag("topic", event.post_id),
                                 *(tag("forum", f) for f in event.terms), vocabulary.INDEX))
    if isinstance(event, CommentPosted | CommentChanged):
        tags = [tag("post", event.post_id)]
        if home_shows_comments:
            tags.append(vocabulary.HOME)
        return PurgeAction(tags=tuple(tags))
    tags = [tag("post", event.post_id), vocabulary.HOME, vocabulary.FEED]
    tags += [tag("term", t) for t in event.terms]
    if event.author is not None:
        tags.append(tag("author", event.author))
    return PurgeAction(tags=tuple(tags))


def event_fields() -> dict[str, tuple[str, ...]]:
    """Field names per event type (documentation and tests)."""
    return {name: tuple(f.name for f in fields(cls)) for name, cls in _TYPES.items()}
