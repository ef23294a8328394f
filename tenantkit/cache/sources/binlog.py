"""The binlog source: purges from this node's own replica binlog (``invalidator --source binlog``).

Every write reaches the page cache, whoever made it (wp-cli, cron, a plugin's raw SQL):
primary -> replication -> this node's replica applies it and writes its binlog -> this reader
(python-mysql-replication) -> the site's table map (:mod:`~tenantkit.cache.sources.tablemaps`)
-> one coalesced purge per site (:func:`tenantkit.cache.purge.purge`) -> position saved::

    source = BinlogSource(settings, registry, url="mysql+pymysql://repl:pw@127.0.0.1:3307/")
    source.start()
    ...
    source.stop()

A row is in the replica before its event is in the replica's binlog, so a purge can never be
undone by a re-fill from a replica that lags: replica-safe with no GTID wait.

The replica needs ``log_slave_updates=ON``, ``binlog_format=ROW`` and
``binlog_row_metadata=FULL``; the user of ``url`` needs ``REPLICATION SLAVE`` (and
``SELECT`` on the sites' term tables, for WordPress term tags).

The position (the last GTID of every replication domain whose purge is done) is written
atomically to ``cache_dir/_binlog/<host>-<port>.json`` after each purge; a restart resumes
there. No position, a corrupt file, or a position the replica no longer has (binlogs purged,
error 1236) flushes every site on the replica and starts from its current position, with one
log line; that position is read *before* the flush, so a write applied during it is not
skipped.

A reader thread turns each committed transaction into events; a purger thread takes what is
queued, waits ``coalesce`` seconds for more (at most ``max_delay``), merges per site and purges
once: a 30 000-row import is one purge, not 30 000.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import MariadbGtidEvent, QueryEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent
from sqlalchemy.engine import make_url

from tenantkit import layout
from tenantkit.cache.caches import SiteCaches
from tenantkit.cache.events import Event, PostEdited, PurgeAction, SiteChanged
from tenantkit.cache.nodecounters import FLUSHES, PURGES, NodeCounters
from tenantkit.cache.purge import action_for, purge
from tenantkit.cache.sources.tablemaps import TableMap, table_map
from tenantkit.config import Settings, mask_url
from tenantkit.db.servers import site_servers
from tenantkit.errors import BusError
from tenantkit.files import write_atomic
from tenantkit.sites import Site

__all__ = ["REPLICA_GRANT", "REPLICA_NEEDS", "BinlogSource", "check_replica", "replica_urls"]

log = logging.getLogger(__name__)

_GTID_POS = re.compile(r"^(\d+-\d+-\d+)(,\d+-\d+-\d+)*$")
_BINLOG_GONE = 1236  # ER_MASTER_FATAL_ERROR_READING_BINLOG: binlogs purged, GTID not found


class _OneLineReconnect(logging.Filter):
    """pymysqlreplication logs a multi-line warning each time it reconnects (also when
    :meth:`BinlogSource.stop` wakes the reader): one line at INFO instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Re-request the connection" not in record.getMessage():
            return True
        log.info("binlog: the connection to the replica was lost; reconnecting")
        return False


_RECONNECT_FILTER = _OneLineReconnect()


@dataclass
class _Txn:
    """One committed transaction: the position after it and its events per site."""

    position: str
    events: dict[str, list[Event]] = field(default_factory=dict)


def _address(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 3306


def replica_urls(settings: Settings, sites: Mapping[str, Site]) -> list[str]:
    """This node's replicas (the first replica of each site with a table map), one URL each."""
    seen: dict[tuple[str, int], str] = {}
    for site in sites.values():
        if site.meta.get("invalidation") is None:
            continue
        replicas = site_servers(site, settings).replicas
        if replicas:
            seen.setdefault(_address(replicas[0]), replicas[0])
    return list(seen.values())


class BinlogSource:
    """Reads the binlog of the replica at ``url`` and purges the sites it serves (those whose
    first replica is that server and whose site file names an ``invalidation`` map).

    ``on_purge(None, site, action)`` is called after each coalesced purge.
    """

    def __init__(self, settings: Settings, registry: Any, *, url: str,
                 server_id: int | None = None, caches: SiteCaches | None = None,
                 on_purge: Callable[[Event | None, Site, PurgeAction], None] | None = None,
                 coalesce: float = 0.005, max_delay: float = 0.1,
                 node: str = "") -> None:
        self.settings = settings
        self.registry = registry
        self.url = url
        self.host, self.port = _address(url)
        self.server_id = server_id or (0x40000000 | zlib.crc32(
            f"{node}:{os.getpid()}:{url}".encode()) & 0x3FFFFFFF)
        self.caches = caches if caches is not None else SiteCaches()
        self.on_purge = on_purge
        self.coalesce = coalesce
        self.max_delay = max_delay
        self.state_path = layout.binlog_state(settings.cache_dir, self.host, self.port)
        logging.getLogger("pymysqlreplication").addFilter(_RECONNECT_FILTER)  # idempotent
        self._queue: queue.Queue[_Txn] = queue.Queue(maxsize=10000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: BinLogStreamReader | None = None
        self._position = ""
        self.rows = 0
        self.transactions = 0
        self.purges = 0
        self.flushes = 0
        #: Unix time of the last purge or flush (None: none yet).
        self.last_purge: float | None = None
        self.connected = False
        self.error = ""
        self._behind_since: float | None = None  # oldest transaction read, not yet purged
        self._restart_why = ""  # set: restart() still to do (the replica did not answer)

    # --- what is ours ---------------------------------------------------------------------

    def _maps(self) -> dict[tuple[str, str], tuple[Site, TableMap, str]]:
        """(schema, table) -> (site, its map, the table's kind), for the sites on our replica."""
        out: dict[tuple[str, str], tuple[Site, TableMap, str]] = {}
        for site in self.registry.sites.values():
            try:
                tmap = table_map(site)
            except ValueError as exc:
                log.error("binlog: %s; the site is not invalidated from the binlog", exc)
                continue
            if tmap is None:
                continue
            servers = site_servers(site, self.settings)
            if not servers.replicas or _address(servers.replicas[0]) != (self.host, self.port):
                continue
            schema = make_url(servers.primary).database or ""
            for table, kind in tmap.tables.items():
                out[(schema, table)] = (site, tmap, kind)
        return out

    def status(self) -> dict[str, Any]:
        """For the invalidator's status file: ``connected`` (and ``error``), ``lag`` (seconds
        since the oldest transaction read but not yet purged; 0 when none), ``last_event``."""
        behind = self._behind_since
        return {"connected": self.connected, "error": self.error,
                "lag": 0.0 if behind is None else max(0.0, time.time() - behind),
                "last_event": self.last_purge}

    def sites(self) -> list[Site]:
        """The sites this source invalidates."""
        return list({s.name: s for s, _, _ in self._maps().values()}.values())

    # --- position -------------------------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        parsed = make_url(self.url)
        return {"host": self.host, "port": self.port, "user": parsed.username or "root",
                "password": str(parsed.password or "")}

    def _control(self) -> pymysql.connections.Connection[Any]:
        args = self._connect_args()
        return pymysql.connect(host=args["host"], port=args["port"], user=args["user"],
                               password=args["password"], connect_timeout=5, autocommit=True)

    def current_position(self) -> str:
        """The replica's binlog position now (``@@gtid_binlog_pos``)."""
        with contextlib.closing(self._control()) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            row = cur.fetchone()
        return str(row[0] if row else "")

    def load_position(self) -> tuple[str | None, str]:
        """The saved position, or None and why it cannot be used (then :meth:`restart`)."""
        try:
            data = json.loads(self.state_path.read_bytes())
            position = data["gtid"]
            if not isinstance(position, str) or not _GTID_POS.match(position):
                raise ValueError(f"bad GTID position {position!r}")
            return position, ""
        except FileNotFoundError:
            return None, f"no saved binlog position in {self.state_path}"
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return None, f"binlog position file {self.state_path} is unreadable ({exc})"

    def restart(self, why: str) -> str:
        """Start over from the replica's current position: read it, THEN flush every site
        on the replica (one log line), then save it. In that order, a write the replica
        applies during the flush is after the position, so it is read and purged, never
        skipped. Raises pymysql.MySQLError when the position cannot be read (nothing
        flushed then)."""
        position = self.current_position()
        self._flush_all(f"{why}: flushing every site on {self.host}:{self.port} and starting "
                        f"from its current position {position}")
        self.save_position(position)
        return position

    def save_position(self, position: str) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_path, json.dumps(
            {"gtid": position, "server": f"{self.host}:{self.port}", "saved": time.time()}
        ).encode(), durable=True)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> BinlogSource:
        """Find the position (or restart from the current one, see :meth:`restart`) and start
        reading. A replica that does not answer does not stop the node: it is logged, shown
        in :meth:`status`, and the reader keeps trying."""
        position, why = self.load_position()
        self._position, self._restart_why = position or "", "" if position else why
        if self._restart_why:
            try:
                self._position, self._restart_why = self.restart(why), ""
            except pymysql.MySQLError as exc:
                self.connected, self.error = False, f"replica {mask_url(self.url)}: {exc}"
                log.warning("binlog: %s; retrying", self.error)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._read_loop, name="tenantkit-binlog-read",
                                          daemon=True),
                         threading.Thread(target=self._purge_loop,
                                          name="tenantkit-binlog-purge", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                self._wake_reader()  # again: the stream may connect after the first call
                thread.join(0.05)
        self._threads = []

    def _wake_reader(self) -> None:
        """Wake the reader blocked in recv() on the stream (closing it would not)."""
        stream = self._stream
        sock = getattr(getattr(stream, "_stream_connection", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> BinlogSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading --------------------------------------------------------------------------

    def _connect_stream(self, **kwargs: Any) -> Any:
        """The reader's connections: pymysql.connect without the deprecated ``db``/``passwd``
        names it passes, and none once stopping (the reader reconnects by itself after a
        lost connection, which :meth:`stop` causes to wake it)."""
        if self._stop.is_set():
            raise pymysql.err.InterfaceError("binlog source stopped")
        if "db" in kwargs:
            kwargs["database"] = kwargs.pop("db")
        if "passwd" in kwargs:
            kwargs["password"] = kwargs.pop("passwd")
        conn = pymysql.connect(**kwargs)
        self.connected, self.error = True, ""
        return conn

    def _open(self, position: str) -> BinLogStreamReader:
        schemas = sorted({schema for schema, _ in self._maps()})
        return BinLogStreamReader(
            connection_settings=self._connect_args(), server_id=self.server_id,
            is_mariadb=True, auto_position=position or None, blocking=True,
            resume_stream=True, only_schemas=schemas or None, slave_heartbeat=5,
            only_events=[MariadbGtidEvent, QueryEvent, XidEvent, WriteRowsEvent,
                         UpdateRowsEvent, DeleteRowsEvent],
            enable_logging=False, pymysql_wrapper=self._connect_stream)

    def _read_loop(self) -> None:
        backoff = 0.1
        down = False
        while not self._stop.is_set():
            try:
                if self._restart_why:  # start() could not reach the replica
                    self._position = self.restart(self._restart_why)
                    self._restart_why = ""
                self._stream = self._open(self._position)
                self._read(self._stream)
            except pymysql.err.OperationalError as exc:
                if self._stop.is_set():
                    break
                self.connected, self.error = False, f"replica {mask_url(self.url)}: {exc}"
                if exc.args and exc.args[0] == _BINLOG_GONE:
                    try:
                        self._position = self.restart(
                            f"binlog position {self._position} is no longer on "
                            f"{self.host}:{self.port} (binlogs purged)")
                        continue
                    except pymysql.MySQLError as again:  # retried below, nothing flushed
                        log.warning("binlog: cannot read the position of %s: %s; retrying",
                                    mask_url(self.url), again)
                        down = True
                if not down:
                    log.warning("binlog: lost %s: %s; retrying", mask_url(self.url), exc)
                    down = True
            except Exception as exc:  # keep reading: one bad event must not stop the node
                if self._stop.is_set():
                    break
                self.connected, self.error = False, f"replica {mask_url(self.url)}: {exc}"
                log.exception("binlog: reading %s failed: %s; reconnecting", mask_url(self.url),
                              exc)
            else:
                down = False
                backoff = 0.1
            finally:
                stream, self._stream = self._stream, None
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _read(self, stream: BinLogStreamReader) -> None:
        maps = self._maps()
        tables = {table for _, table in maps}
        domains = dict(p.split("-", 1) for p in self._position.split(",") if p)
        txn: _Txn | None = None
        standalone = False
        for event in stream:
            if self._stop.is_set():
                return
            if isinstance(event, MariadbGtidEvent):
                domains[str(event.domain_id)] = event.gtid.split("-", 1)[1]
                txn = _Txn(",".join(f"{d}-{rest}" for d, rest in sorted(
                    domains.items(), key=lambda kv: int(kv[0]))))
                standalone = bool(event.flags & 1)
            elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                entry = maps.get((event.schema, event.table))
                if entry is None or txn is None:
                    continue
                site, tmap, kind = entry
                for row in event.rows:
                    self.rows += 1
                    if isinstance(event, UpdateRowsEvent):
                        before, after = row["before_values"], row["after_values"]
                    elif isinstance(event, WriteRowsEvent):
                        before, after = None, row["values"]
                    else:
                        before, after = row["values"], None
                    txn.events.setdefault(site.name, []).extend(
                        tmap.events(kind, before, after))
            elif isinstance(event, QueryEvent):
                query = event.query.strip() if isinstance(event.query, str) else ""
                upper = query.upper()
                if upper == "BEGIN":
                    continue
                if upper != "COMMIT" and txn is not None:  # DDL, TRUNCATE: whole sites
                    schema = event.schema.decode() if isinstance(event.schema, bytes) \
                        else str(event.schema)
                    for table in tables:
                        entry = maps.get((schema, table))
                        if entry is not None and table in query:
                            txn.events.setdefault(entry[0].name, []).append(
                                SiteChanged(entry[0].name))
                if (upper == "COMMIT" or standalone) and txn is not None:
                    self._commit(txn, stream)
                    txn = None
            elif isinstance(event, XidEvent) and txn is not None:
                self._commit(txn, stream)
                txn = None

    def _commit(self, txn: _Txn, stream: BinLogStreamReader) -> None:
        self.transactions += 1
        self._position = txn.position
        # The reader reconnects by itself after a lost connection (2006, 2013), from its
        # auto_position: keep that at the last transaction read, or it replays from the start.
        stream.auto_position = txn.position
        if self._behind_since is None:
            self._behind_since = time.time()
        while not self._stop.is_set():
            try:
                self._queue.put(txn, timeout=0.5)
                return
            except queue.Full:
                continue

    # --- purging --------------------------------------------------------------------------

    def _purge_loop(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_delay
            while len(batch) < 50000:
                remaining = min(self.coalesce, deadline - time.monotonic())
                if remaining <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            try:
                self._apply(batch)
                self.save_position(batch[-1].position)
            except Exception:
                log.exception("binlog: purge failed; flushing every site on %s:%s",
                              self.host, self.port)
                self._flush_all("")
                with contextlib.suppress(OSError):
                    self.save_position(batch[-1].position)
            self.last_purge = time.time()
            if self._queue.empty():
                self._behind_since = None

    def _apply(self, batch: list[_Txn]) -> None:
        per_site: dict[str, list[Event]] = {}
        for txn in batch:
            for name, events in txn.events.items():
                per_site.setdefault(name, []).extend(events)
        sites = self.registry.sites
        for name, events in per_site.items():
            site = sites.get(name)
            if site is None or not events:
                continue
            if site.meta.get("invalidation") == "wordpress" and site.cache.policy != "site":
                events = self._with_terms(site, events)
            flush = False
            tags: dict[str, None] = {}
            for event in events:
                action = action_for(site, event)
                flush = flush or action.flush
                tags.update(dict.fromkeys(action.tags))
            if flush:
                merged = PurgeAction(flush=True)
                self.flushes += 1
            elif tags:
                merged = PurgeAction(tags=tuple(tags))
            else:
                continue
            purge(self.caches.get(site), site, merged)
            self.purges += 1
            NodeCounters.for_dir(self.settings.cache_dir).add(
                FLUSHES if merged.flush else PURGES, site.name)
            if self.on_purge is not None:
                self.on_purge(None, site, merged)

    def _with_terms(self, site: Site, events: list[Event]) -> list[Event]:
        """PostEdited events with their posts' terms as ``term:N`` (term ids, asked of the
        replica, which has the rows already); the site is flushed when that fails."""
        posts = {e.post_id for e in events if isinstance(e, PostEdited) and e.post_id}
        taxonomy_ids = {t for e in events if isinstance(e, PostEdited) for t in e.terms}
        if not posts and not taxonomy_ids:
            return events
        prefix = site.database.table_prefix or "wp_"
        schema = make_url(site_servers(site, self.settings).primary).database or ""
        terms: dict[int, set[int]] = {}
        extra: set[int] = set()
        try:
            with contextlib.closing(self._control()) as conn, conn.cursor() as cur:
                if posts:
                    cur.execute(
                        f"SELECT tr.object_id, tt.term_id FROM `{schema}`.`{prefix}"
                        f"term_relationships` tr JOIN `{schema}`.`{prefix}term_taxonomy` tt "
                        "ON tt.term_taxonomy_id = tr.term_taxonomy_id WHERE tr.object_id IN "
                        f"({','.join(['%s'] * len(posts))})", sorted(posts))
                    for object_id, term_id in cur.fetchall():
                        terms.setdefault(int(object_id), set()).add(int(term_id))
                if taxonomy_ids:
                    cur.execute(
                        f"SELECT term_id FROM `{schema}`.`{prefix}term_taxonomy` WHERE "
                        f"term_taxonomy_id IN ({','.join(['%s'] * len(taxonomy_ids))})",
                        sorted(taxonomy_ids))
                    extra = {int(r[0]) for r in cur.fetchall()}
        except pymysql.MySQLError as exc:
            log.warning("binlog: cannot read the terms of site %s: %s; flushing it",
                        site.name, exc)
            return [SiteChanged(site.name)]
        out: list[Event] = []
        for event in events:
            if isinstance(event, PostEdited):
                known = set(terms.get(event.post_id or 0, ()))
                if event.terms:
                    known |= extra
                event = PostEdited(site.name, event.post_id, terms=tuple(sorted(known)),
                                   author=event.author)
            out.append(event)
        return out

    def _flush_all(self, reason: str) -> None:
        if reason:
            log.warning("binlog: %s", reason)
        for site in self.sites():
            try:
                result = purge(self.caches.get(site), site, PurgeAction(flush=True))
            except Exception as exc:
                log.error("binlog: flush of site %s failed: %s", site.name, exc)
                continue
            self.flushes += 1
            NodeCounters.for_dir(self.settings.cache_dir).add(FLUSHES, site.name)
            if self.on_purge is not None and result.flushed:
                self.on_purge(None, site, PurgeAction(flush=True))


#: What the binlog source needs of the replica it reads (server variable -> value); the one
#: table ``tenantkit check`` and :func:`check_replica` go by.
REPLICA_NEEDS = {
    "log_bin": "ON",                # the replica writes a binlog at all
    "log_slave_updates": "ON",      # ... including what it applies from the primary
    "binlog_format": "ROW",         # rows, not statements
    "binlog_row_metadata": "FULL",  # column names (else UNKNOWN_COL0...)
}
#: The privilege the reading user needs (``GRANT REPLICATION SLAVE ON *.* TO ...``).
REPLICA_GRANT = "REPLICATION SLAVE"
_GRANT = re.compile(r"^GRANT (?P<privileges>.+?) ON (?P<on>\S+) TO ", re.IGNORECASE)


def _has_grant(grants: list[str]) -> bool:
    """Whether ``SHOW GRANTS`` lines give :data:`REPLICA_GRANT` on ``*.*``."""
    for grant in grants:
        match = _GRANT.match(grant)
        if match and match["on"] == "*.*" and {p.strip().upper() for p in match[
                "privileges"].split(",")} & {REPLICA_GRANT, "ALL PRIVILEGES"}:
            return True
    return False


def check_replica(url: str) -> list[str]:
    """What the replica at ``url`` lacks for the binlog source, one message each (empty:
    nothing). Raises :class:`~tenantkit.errors.BusError` when it does not answer.

    ::

        for problem in check_replica("mysql+pymysql://repl:pw@127.0.0.1:3307/"):
            print(problem)   # binlog_format = MIXED: the binlog source needs ROW (...)
    """
    host, port = _address(url)
    parsed = make_url(url)
    user = parsed.username or "root"
    try:
        conn = pymysql.connect(host=host, port=port, user=user,
                               password=str(parsed.password or ""), connect_timeout=5)
    except pymysql.MySQLError as exc:
        raise BusError(f"binlog: cannot connect to {mask_url(url)}: {exc}") from exc
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("SELECT " + ", ".join(f"@@GLOBAL.{name}" for name in REPLICA_NEEDS))
        row = cur.fetchone() or ()
        cur.execute("SHOW GRANTS")
        grants = [str(g[0]) for g in cur.fetchall()]
    problems = []
    for (name, wanted), value in zip(REPLICA_NEEDS.items(), row, strict=False):
        got = {"1": "ON", "0": "OFF"}.get(str(value), str(value).upper())
        if got != wanted:
            problems.append(f"{name} = {got}: the binlog source needs {name} = {wanted} "
                            f"(set {name} = {wanted} in the replica's my.cnf and restart it)")
    if not _has_grant(grants):
        problems.append(f"user {user!r} has no {REPLICA_GRANT} grant: the binlog source "
                        f"cannot read the binlog (GRANT {REPLICA_GRANT} ON *.* TO "
                        f"'{user}'@'%', or give the reader its own user)")
    return problems
