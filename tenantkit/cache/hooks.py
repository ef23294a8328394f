"""SQLAlchemy hooks: after a commit that wrote to mapped tables, publish the matching events
with the commit's GTID. Nothing is published before the commit, nor for a rollback.

::

    Session = sessionmaker(engine)                 # or a tenantkit Router
    install(Session, site, tables={"wp_comments": "comment", "wp_posts": "post"},
            settings=settings)
    with Session() as session:
        session.add(Comment(comment_post_ID=42, comment_approved="1"))
        session.commit()                           # -> CommentPosted("blog", 42, True, gtid=...)

``tables`` maps table names (or ORM classes) to a kind: ``"comment"`` (row attributes
``comment_post_ID`` or ``post_id``, ``comment_approved`` or ``approved``), ``"post"``
(``ID`` or ``id``, ``post_author`` or ``author_id``) or ``"site"`` (any change flushes the
site). Rows written through ORM objects give precise events; bulk statements
(``session.execute(update(...))``) on a mapped table give the safe event for their kind
(a comment or post we cannot pin down flushes the site).

The GTID is read with :func:`tenantkit.db.gtid.last_gtid` on the session's connection right
after the commit, before the connection goes back to the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import inspect
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from tenantkit.cache.events import (
    CommentChanged,
    CommentPosted,
    Event,
    PostDeleted,
    PostEdited,
    SiteChanged,
    with_gtid,
)
from tenantkit.cache.publish import publish
from tenantkit.cache.transports import Transport
from tenantkit.config import Settings
from tenantkit.db.gtid import last_gtid
from tenantkit.db.router import Router
from tenantkit.errors import TenantkitError
from tenantkit.sites import Site

__all__ = ["DEFAULT_TABLES", "install"]

log = logging.getLogger(__name__)

DEFAULT_TABLES: Mapping[str, str] = {"wp_comments": "comment", "wp_posts": "post"}
KINDS = ("comment", "post", "site")
_PENDING = "tenantkit.pending_events"
_CONNECTION = "tenantkit.connection"


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _approved(value: Any) -> bool:
    return value in (1, True, "1", "approve", "approved")


def _was_or_is_approved(obj: Any) -> bool:
    for name in ("comment_approved", "approved"):
        if hasattr(obj, name):
            history = inspect(obj).attrs[name].history
            values = [*history.added, *history.unchanged, *history.deleted]
            return any(_approved(v) for v in values) if values else True
    return True


class _Hooks:
    def __init__(self, site: Site, kinds: Mapping[str, str], settings: Settings | None,
                 transport: Transport | None, router: Router | None = None) -> None:
        self.site = site
        self.kinds = kinds
        self.settings = settings
        self.transport = transport
        self.router = router

    def _mine(self, session: Session) -> bool:
        # Router sessions are watched through the Session class: keep only this router's.
        return self.router is None or session.bind is self.router.routing_engine

    def _gtid(self, session: Session, conn: Any) -> str | None:
        if self.router is not None:
            # The router read the GTID on the primary leg right after the commit; a query
            # here would be routed to a replica.
            token = self.router.last_token()
            return token.gtid if token is not None else None
        return last_gtid(conn) if conn is not None else None

    def _kind(self, obj: Any) -> str | None:
        try:
            table = inspect(type(obj)).local_table
        except Exception:  # not mapped
            return None
        return self.kinds.get(getattr(table, "name", ""))

    def _events_for(self, obj: Any, change: str) -> list[Event]:
        kind = self._kind(obj)
        name = self.site.name
        if kind == "comment":
            post_id = _as_int(_attr(obj, "comment_post_ID", "post_id"))
            if change == "new":
                return [CommentPosted(name, post_id,
                                      _approved(_attr(obj, "comment_approved", "approved")))]
            return [CommentChanged(name, post_id, _was_or_is_approved(obj))]
        if kind == "post":
            post_id = _as_int(_attr(obj, "ID", "id"))
            author = _as_int(_attr(obj, "post_author", "author_id"))
            if change == "deleted":
                return [PostDeleted(name, post_id, author=author)]
            return [PostEdited(name, post_id, author=author)]
        if kind == "site":
            return [SiteChanged(name)]
        return []

    def _remember(self, session: Session, events: list[Event]) -> None:
        if not events:
            return
        session.info.setdefault(_PENDING, []).extend(events)
        if _CONNECTION not in session.info and self.router is None:
            session.info[_CONNECTION] = session.connection()

    def after_flush(self, session: Session, context: UOWTransaction) -> None:
        if not self._mine(session):
            return
        events: list[Event] = []
        for change, objects in (("new", session.new), ("dirty", session.dirty),
                                ("deleted", session.deleted)):
            for obj in objects:
                if change == "dirty" and not session.is_modified(obj):
                    continue
                events += self._events_for(obj, change)
        self._remember(session, events)

    def do_orm_execute(self, state: ORMExecuteState) -> None:
        if not self._mine(state.session) or not (
                state.is_insert or state.is_update or state.is_delete):
            return
        table = getattr(state.statement, "table", None)
        kind = self.kinds.get(getattr(table, "name", ""))
        name = self.site.name
        event: Event
        if kind == "comment":
            event = CommentChanged(name, None, True)
        elif kind == "post":
            event = PostEdited(name, None)
        elif kind == "site":
            event = SiteChanged(name)
        else:
            return
        self._remember(state.session, [event])

    def after_commit(self, session: Session) -> None:
        events: list[Event] = session.info.pop(_PENDING, [])
        conn = session.info.pop(_CONNECTION, None)
        if not events:
            return
        gtid = None
        try:
            gtid = self._gtid(session, conn)
        except Exception as exc:  # the commit stands; publish without a GTID
            log.warning("hooks: cannot read the commit's GTID: %s", exc)
        for unique in dict.fromkeys(events):
            try:
                publish(with_gtid(unique, gtid), settings=self.settings, transport=self.transport)
            except TenantkitError as exc:  # the commit stands: never fail the request
                log.error("hooks: cannot publish %s for site %s: %s", unique.type,
                          self.site.name, exc)

    def after_rollback(self, session: Session) -> None:
        session.info.pop(_PENDING, None)
        session.info.pop(_CONNECTION, None)

    def after_soft_rollback(self, session: Session, previous_transaction: Any) -> None:
        self.after_rollback(session)




def install(target: Any, site: Site, tables: Mapping[Any, str] | None = None, *,
            settings: Settings | None = None, transport: Transport | None = None
            ) -> Callable[[], None]:
    """Publish ``site``'s events after each commit of sessions made by ``target``: a
    ``sessionmaker``, a ``Session`` class, or a :class:`~tenantkit.db.router.Router` (its
    ``session()`` and ``sessionmaker()`` sessions; the GTID is the router's token). Returns a
    function that removes the hooks."""
    kinds: dict[str, str] = {}
    for key, kind in (tables if tables is not None else DEFAULT_TABLES).items():
        if kind not in KINDS:
            raise ValueError(f"hooks: table {key!r}: kind {kind!r} is not one of {KINDS}")
        name = key if isinstance(key, str) else getattr(inspect(key).local_table, "name", None)
        if not name:
            raise ValueError(f"hooks: {key!r} is neither a table name nor a mapped class")
        kinds[name] = kind
    router = target if isinstance(target, Router) else None
    hooks = _Hooks(site, kinds, settings, transport, router)
    if router is not None:
        target = Session
    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("after_flush", hooks.after_flush),
        ("do_orm_execute", hooks.do_orm_execute),
        ("after_commit", hooks.after_commit),
        ("after_rollback", hooks.after_rollback),
        ("after_soft_rollback", hooks.after_soft_rollback),
    ]
    for name, fn in listeners:
        sa_event.listen(target, name, fn)

    def remove() -> None:
        for name, fn in listeners:
            sa_event.remove(target, name, fn)

    return remove
