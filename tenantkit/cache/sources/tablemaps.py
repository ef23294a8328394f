"""What a changed row purges: one table map per application, selected by the site file.

::

    [meta]
    invalidation = "wordpress"          # or "punbb", or "tables" with a table -> kind map:
    # invalidation_tables = {wp_comments = "comment", wp_posts = "post", settings = "site"}

A row change becomes events of :mod:`tenantkit.cache.events`, so the site's policy
(``site``/``targeted``) decides how wide the purge is, exactly as for the hooks' events::

    tmap = table_map(site)                                  # None: the site has no map
    tmap.tables                                             # {"wp_comments": "comment", ...}
    tmap.events("comment", before=None, after=row)          # [CommentChanged(...)]

WordPress: ``posts`` -> the post (and ``home``, ``feed``, its terms, its author; revisions,
autosaves and auto-drafts ignored); ``comments`` -> the post when the comment is or was
approved; ``postmeta`` -> the post (``_edit_lock``/``_edit_last`` ignored); ``terms``,
``term_taxonomy``, ``term_relationships`` -> ``term:N`` (and the post); ``options`` -> the
whole site, except transients, cron and other known-noisy options. PunBB: posts, topics and
forums -> ``topic:N``, ``forum:N`` and ``index``; its config -> the whole site.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantkit.cache.events import CommentChanged, Event, PostEdited, Purge, SiteChanged
from tenantkit.sites import Site

__all__ = ["APPLICATIONS", "TableMap", "table_map"]

Row = Mapping[str, Any]

log = logging.getLogger(__name__)

WORDPRESS = {"posts": "wp_post", "comments": "wp_comment", "postmeta": "wp_postmeta",
             "terms": "wp_term", "term_taxonomy": "wp_term", "term_relationships":
             "wp_term_relationship", "options": "wp_option"}
PUNBB = {"posts": "punbb_post", "topics": "punbb_topic", "forums": "punbb_forum",
         "config": "site"}
APPLICATIONS = ("wordpress", "punbb", "tables")

#: Options WordPress rewrites all the time without changing any page.
NOISY_OPTIONS = frozenset({"cron", "doing_cron", "recently_edited", "rewrite_rules",
                           "recovery_keys", "auto_updater.lock", "core_updater.lock",
                           "can_compress_scripts", "db_upgraded", "fresh_site",
                           "finished_updating_comment_type", "recovery_mode_email_last_sent",
                           "https_detection_errors", "wp_force_deactivated_plugins",
                           "auto_core_update_notified", "dismissed_update_core",
                           # a cache of "are there published posts", rewritten by every
                           # wp_insert_post(): the post's own purge covers the calendar
                           "wp_calendar_block_has_published_posts"})
NOISY_PREFIXES = ("_transient_", "_site_transient_", "jetpack_sync_", "action_scheduler_")
IGNORED_META = frozenset({"_edit_lock", "_edit_last", "_encloseme", "_pingme"})


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class TableMap:
    """A site's tables (full names, prefix included) and what a row change in each means."""

    site: str
    tables: Mapping[str, str] = field(default_factory=dict)

    def events(self, kind: str, before: Row | None, after: Row | None) -> list[Event]:
        """Events for one row change (``before`` None: insert; ``after`` None: delete)."""
        rows = [r for r in (before, after) if r is not None]
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            return [SiteChanged(self.site)]
        out: list[Event] = []
        for event in handler(rows, before, after):
            if event not in out:
                out.append(event)
        return out

    # --- WordPress ------------------------------------------------------------------------

    def _wp_post(self, rows: list[Row], before: Row | None, after: Row | None) -> list[Event]:
        out: list[Event] = []
        for row in rows:
            if _text(row.get("post_type", "")) == "revision" or _text(
                    row.get("post_status", "")) == "auto-draft":
                continue  # revisions and autosaves are never shown
            out.append(PostEdited(self.site, _int(row.get("ID")),
                                  author=_int(row.get("post_author"))))
        return out

    def _wp_comment(self, rows: list[Row], before: Row | None, after: Row | None
                    ) -> list[Event]:
        visible = any(_text(r.get("comment_approved", "")) == "1" for r in rows)
        return [CommentChanged(self.site, _int(r.get("comment_post_ID")), approved=visible)
                for r in rows] if visible else []

    def _wp_postmeta(self, rows: list[Row], before: Row | None, after: Row | None
                     ) -> list[Event]:
        return [PostEdited(self.site, _int(r.get("post_id"))) for r in rows
                if _text(r.get("meta_key", "")) not in IGNORED_META]

    def _wp_term(self, rows: list[Row], before: Row | None, after: Row | None) -> list[Event]:
        tags = tuple(sorted({f"term:{_int(r.get('term_id'))}" for r in rows
                             if _int(r.get("term_id")) is not None}))
        return [Purge(self.site, tags=tags)] if tags else [SiteChanged(self.site)]

    def _wp_term_relationship(self, rows: list[Row], before: Row | None, after: Row | None
                              ) -> list[Event]:
        # term_taxonomy_id is resolved to term:N by the source (it asks the replica)
        return [PostEdited(self.site, _int(r.get("object_id")),
                           terms=tuple(t for t in [_int(r.get("term_taxonomy_id"))]
                                       if t is not None))
                for r in rows]

    def _wp_option(self, rows: list[Row], before: Row | None, after: Row | None
                   ) -> list[Event]:
        names = {_text(r.get("option_name", "")) for r in rows}
        if all(n in NOISY_OPTIONS or n.startswith(NOISY_PREFIXES) for n in names):
            return []
        log.debug("site %s: option(s) %s changed: the whole site", self.site, sorted(names))
        return [SiteChanged(self.site)]

    # --- PunBB ------------------------------------------------------------------------------

    def _punbb_post(self, rows: list[Row], before: Row | None, after: Row | None
                    ) -> list[Event]:
        tags = {f"topic:{_int(r.get('topic_id'))}" for r in rows} | {"index"}
        return [Purge(self.site, tags=tuple(sorted(tags)))]

    def _punbb_topic(self, rows: list[Row], before: Row | None, after: Row | None
                     ) -> list[Event]:
        tags = {f"topic:{_int(r.get('id'))}" for r in rows}
        tags |= {f"forum:{_int(r.get('forum_id'))}" for r in rows} | {"index"}
        return [Purge(self.site, tags=tuple(sorted(tags)))]

    def _punbb_forum(self, rows: list[Row], before: Row | None, after: Row | None
                     ) -> list[Event]:
        tags = {f"forum:{_int(r.get('id'))}" for r in rows} | {"index"}
        return [Purge(self.site, tags=tuple(sorted(tags)))]

    # --- tables= (the hooks' map) ----------------------------------------------------------

    def _comment(self, rows: list[Row], before: Row | None, after: Row | None) -> list[Event]:
        def approved(r: Row) -> bool:
            value = r.get("comment_approved", r.get("approved", 1))
            return _text(value) in ("1", "True", "true")
        visible = any(approved(r) for r in rows)
        return [CommentChanged(self.site, _int(r.get("comment_post_ID", r.get("post_id"))),
                               approved=visible) for r in rows] if visible else []

    def _post(self, rows: list[Row], before: Row | None, after: Row | None) -> list[Event]:
        return [PostEdited(self.site, _int(r.get("ID", r.get("id"))),
                           author=_int(r.get("post_author", r.get("author_id"))))
                for r in rows]

    def _site(self, rows: list[Row], before: Row | None, after: Row | None) -> list[Event]:
        return [SiteChanged(self.site)]


def table_map(site: Site) -> TableMap | None:
    """The site's table map (``[meta] invalidation``), None when it names none.

    Raises ValueError with a message saying what to write for an unknown application or a
    bad ``invalidation_tables``.
    """
    app = site.meta.get("invalidation")
    if app is None:
        return None
    prefix = site.database.table_prefix
    if app == "wordpress":
        return TableMap(site.name, {(prefix or "wp_") + t: k for t, k in WORDPRESS.items()})
    if app == "punbb":
        return TableMap(site.name, {prefix + t: k for t, k in PUNBB.items()})
    if app == "tables":
        tables = site.meta.get("invalidation_tables")
        if not isinstance(tables, Mapping) or not all(
                isinstance(k, str) and v in ("comment", "post", "site")
                for k, v in tables.items()):
            raise ValueError(f'site {site.name}: [meta] invalidation_tables: expected a table '
                             'of table name -> "comment" | "post" | "site", got '
                             f'{tables!r} (write invalidation_tables = {{wp_comments = '
                             '"comment"}})')
        return TableMap(site.name, dict(tables))
    raise ValueError(f'site {site.name}: [meta] invalidation: expected one of '
                     f'{", ".join(APPLICATIONS)}, got {app!r} (write invalidation = '
                     '"wordpress")')
