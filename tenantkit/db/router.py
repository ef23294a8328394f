"""Read/write splitting for SQLAlchemy 2: reads from replicas, writes to the primary.

::

    router = Router("mysql+tenantkit://app:pw@db1.internal/blog?compress=true",
                    ["mysql+pymysql://app:pw@127.0.0.1/blog"])
    with router.session() as session:          # ORM: every statement is routed
        post = session.get(Post, 5)            # -> replica
        post.views += 1
        session.commit()                       # flush + commit -> primary
        session.get(Post, 5)                   # -> replica, after it has the commit (GTID)
    with router.connect() as conn:             # Core, routed the same way
        conn.execute(text("SELECT 1"))
    with router.primary():                     # everything in the block -> primary
        ...
    router.engine("read")                      # a plain Engine, for tools
    router.close()

``Router.from_settings(settings)`` and ``Router.from_site(site, settings)`` build one from
the ``[database]`` settings or a site file (a site without its own ``primary`` uses the
settings' servers).

**Failover.** ``Router([url1, url2, ...], replicas)`` (``primaries = [...]`` in the
settings) takes primary candidates: writes go to the one with ``@@read_only = 0``, found off
the request path by a :class:`~tenantkit.db.primaries.PrimaryFinder` (on first use, every
``primary_check_interval`` seconds, and at once after a write fails because its server went
read-only or away). More than one writable: :class:`~tenantkit.errors.SplitBrain`, writes
refused, reads go on. ``router.primary_state()`` is the verdict; ``router.primary_outage()``
is true while writes cannot proceed and the site's ``on_primary_down`` is ``"read_only"``
(the page cache then serves stale pages). One candidate: exactly the single-primary router.

**How it routes.** The Engine behind ``session()`` and ``connect()`` hands SQLAlchemy one
DB-API connection that holds up to two real ones ("legs", checked out of one Engine per
server): the primary and one replica. Each ``cursor.execute`` is routed on its final SQL
text, so Core, ORM and ``text()`` are treated alike:

- a write (:func:`~tenantkit.db.classify.statement_role`), any statement during an ORM flush,
  any statement inside ``with router.primary():``, and every statement after the first of
  those in a transaction go to the primary, until ``commit()``/``rollback()``;
- other reads go to the first usable replica (in the order given: list the local one first),
  else to the primary;
- session settings (``SET NAMES``, ``SET SESSION ...``, ``SET sql_mode = ...`` without user
  variables) are applied to every leg, now and when it is opened;
- ``COMMIT``/``ROLLBACK`` sent as SQL end the transaction on every leg it used;
- a read that fails on a replica with a connection error, as the first statement of that
  replica's transaction, marks it down and is retried once elsewhere;
- a write never goes to a replica: when the primary cannot be reached it raises
  :class:`~tenantkit.errors.PrimaryUnavailable` within ``connect_timeout`` (at once during
  the ``dead_host_cooldown`` after a failure), while reads keep going to the replicas.

**Read-your-writes.** After a commit that wrote, the router reads the GTID on the same
primary connection (MariaDB ``@@last_gtid``, MySQL ``@@gtid_executed``) and keeps a
:class:`ConsistencyToken` for the current context (thread or asyncio task). Reads in that
context, and in any block under ``with router.with_token(token):``, first have the replica
wait for that GTID (``MASTER_GTID_WAIT``, at most ``gtid_wait_timeout``) and read from the
primary if it does not arrive (and so does the rest of that transaction; for
``gtid_wait_timeout`` after such a miss, reads with that token go to the primary without
waiting again). With ``read_your_writes="pin"`` (or a token without a GTID)
they read from the primary for ``pin_seconds`` after the commit instead; ``"off"`` does
neither. The web shim carries the token between requests::

    token = ConsistencyToken.loads(cookie) if cookie else None   # InvalidToken if forged
    with router.with_token(token) as scope:
        handle_request()
    if scope.produced:                        # the writes of this unit of work
        set_cookie(scope.produced.dumps())    # short, cookie-safe

``router.last_token()`` gives the same outside such a block (the newest token produced in
the current context). **Counting.** ``router.stats()`` counts every decision by role and
reason (``{"read": {"replica": 10, "after-write": 1}, "write": {"primary": 2}}``); each is
also logged at DEBUG. Passwords never appear in logs or ``repr``.

**One server.** With no replicas (SQLite, the embedded default) every API works the same and
everything goes to the one server.

**Where the parts live.** This module: the Router (its servers, the public API, counting).
:mod:`tenantkit.db.session`: the routing DB-API connection, which chooses a leg per statement
(:mod:`tenantkit.db.cursor`: its cursor). :mod:`tenantkit.db.tokens`: the tokens.
:mod:`tenantkit.db.failures`: which driver errors mean a dead server.
:mod:`tenantkit.db.servers`: which servers a site uses.
:mod:`tenantkit.db.primaries`: which primary candidate takes writes now.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from tenantkit.config import Settings
from tenantkit.db.classify import statement_role
from tenantkit.db.failures import describe
from tenantkit.db.health import ReplicaHealth, masked
from tenantkit.db.primaries import PrimaryFinder, PrimaryState
from tenantkit.db.servers import connect_args, site_servers
from tenantkit.db.session import RoutingConnection
from tenantkit.db.tokens import ConsistencyToken, TokenScope
from tenantkit.errors import ConfigError, PrimaryUnavailable

if TYPE_CHECKING:
    from tenantkit.config import DatabaseSettings
    from tenantkit.sites import Site

# ConsistencyToken and TokenScope live in tenantkit.db.tokens; re-exported for old imports.
__all__ = ["ConsistencyToken", "Router", "TokenScope"]

logger = logging.getLogger(__name__)

Mode = Literal["gtid", "pin", "off"]
Role = Literal["read", "write"]


# --- the router -----------------------------------------------------------------------------


class _Server:
    """One server: its Engine, whether we made it, and what it is."""

    def __init__(self, source: str | URL | Engine, options: Mapping[str, Any],
                 connect_timeout: float, read_timeout: float, write_timeout: float) -> None:
        if isinstance(source, Engine):
            self.engine, self.owned = source, False
        else:
            url = make_url(source)
            opts = dict(options)
            bounded = connect_args(url, connect_timeout, read_timeout=read_timeout,
                                   write_timeout=write_timeout)
            if bounded:
                opts["connect_args"] = bounded | dict(opts.get("connect_args", {}))
            self.engine, self.owned = create_engine(url, **opts), True
        self.name = masked(self.engine.url)
        self.mysql = self.engine.dialect.name in ("mysql", "mariadb")

    @property
    def mariadb(self) -> bool:
        # Known once the engine has connected (the dialect reads the server version).
        return bool(getattr(self.engine.dialect, "is_mariadb", False))


class Router:
    """Routes each statement to the primary or a replica; see the module docstring."""

    def __init__(
        self,
        primary: str | URL | Engine | Sequence[str | URL | Engine],
        replicas: Sequence[str | URL | Engine] = (),
        *,
        read_your_writes: Mode = "gtid",
        pin_seconds: float = 5.0,
        gtid_wait_timeout: float = 1.0,
        lag_threshold: float = 5.0,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        replica_read_timeout: float = 10.0,
        write_timeout: float = 30.0,
        dead_host_cooldown: float = 10.0,
        engine_options: Mapping[str, Any] | None = None,
        health_interval: float = 1.0,
        heartbeat_table: str | None = None,
        on_primary_down: Literal["error", "read_only"] = "error",
        primary_check_interval: float = 2.0,
    ) -> None:
        if read_your_writes not in ("gtid", "pin", "off"):
            raise ConfigError(
                f'read_your_writes: expected "gtid", "pin" or "off", got {read_your_writes!r}'
            )
        if isinstance(replicas, str | URL | Engine):
            raise ConfigError("replicas: expected a list of URLs or Engines, got a single one "
                              "(write replicas=[url])")
        if replica_read_timeout <= gtid_wait_timeout:
            raise ConfigError(
                f"replica_read_timeout ({replica_read_timeout:g}s) must be longer than "
                f"gtid_wait_timeout ({gtid_wait_timeout:g}s): a replica waiting for a GTID "
                "would be taken for a hung one (raise replica_read_timeout)"
            )
        self.read_your_writes: Mode = read_your_writes
        self.pin_seconds = pin_seconds
        self.gtid_wait_timeout = gtid_wait_timeout
        self.connect_timeout = connect_timeout
        self.dead_host_cooldown = dead_host_cooldown
        options = dict(engine_options or {})
        self.read_timeout = read_timeout
        self.replica_read_timeout = replica_read_timeout
        self.write_timeout = write_timeout
        if on_primary_down not in ("error", "read_only"):
            raise ConfigError(f'on_primary_down: expected "error" or "read_only", got '
                              f"{on_primary_down!r}")
        self.on_primary_down = on_primary_down
        candidates = ([primary] if isinstance(primary, str | URL | Engine) else list(primary))
        if not candidates:
            raise ConfigError("primary: expected a URL or a list of candidate URLs, got []")
        self._candidates = [_Server(c, options, connect_timeout, read_timeout, write_timeout)
                            for c in candidates]
        # Probes on connections of their own, bounded by connect_timeout (a hung candidate
        # must not hold the finder for a whole read_timeout); an Engine given is used as is.
        self.finder = PrimaryFinder([c.engine.url if c.owned else c.engine
                                     for c in self._candidates],
                                    connect_timeout=connect_timeout,
                                    interval=primary_check_interval)
        self._down_server: _Server | None = None
        self._replicas = [_Server(r, options, connect_timeout, replica_read_timeout,
                                  write_timeout) for r in replicas]
        self.health = ReplicaHealth(
            [r.engine for r in self._replicas], lag_threshold=lag_threshold,
            dead_host_cooldown=dead_host_cooldown, interval=health_interval,
            connect_timeout=connect_timeout, heartbeat_table=heartbeat_table,
        )
        self._primary_retry_at = 0.0
        self._force: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"tenantkit_router_force_{id(self)}", default=False)
        self._scope: contextvars.ContextVar[TokenScope | None] = contextvars.ContextVar(
            f"tenantkit_router_scope_{id(self)}", default=None)
        self._stats: dict[tuple[str, str], int] = {}
        self._stats_lock = threading.Lock()
        self._closed = False
        if self._replicas or not self.finder.single:
            pool_options = {k: v for k, v in options.items()
                            if k in ("pool_size", "max_overflow", "pool_timeout",
                                     "pool_recycle", "echo", "echo_pool", "logging_name")}
            self._routing = create_engine(
                self._primary.engine.url, creator=lambda: RoutingConnection(self),
                **pool_options,
            )
            self.health.start()
            self.finder.start()
        else:
            self._routing = self._primary.engine
            event.listen(self._routing, "before_cursor_execute", self._one_server_execute)
            event.listen(self._routing, "commit", self._one_server_commit)
            event.listen(self._routing, "rollback", self._one_server_rollback)
        self._sessionmaker = self.sessionmaker()

    # --- construction from settings --------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings | DatabaseSettings, **kwargs: Any) -> Router:
        """A Router for the ``[database]`` settings (a ``Settings`` or its ``database``)."""
        db = settings.database if isinstance(settings, Settings) else settings
        kwargs.setdefault("on_primary_down", db.on_primary_down)
        return cls(
            list(db.candidates), db.replicas, read_your_writes=db.read_your_writes,
            pin_seconds=db.pin_seconds, gtid_wait_timeout=db.gtid_wait_timeout,
            lag_threshold=db.lag_threshold, connect_timeout=db.connect_timeout,
            read_timeout=db.read_timeout, replica_read_timeout=db.replica_read_timeout,
            write_timeout=db.write_timeout, dead_host_cooldown=db.dead_host_cooldown, **kwargs,
        )

    @classmethod
    def from_site(cls, site: Site, settings: Settings | None = None, **kwargs: Any) -> Router:
        """A Router for *site*: its own primary and replicas, or the settings' servers when
        its ``primary`` is not set (:func:`~tenantkit.db.servers.site_servers`). Timeouts and
        modes come from *settings* (default: the embedded defaults)."""
        servers = site_servers(site, settings)
        db = servers.options
        kwargs.setdefault("on_primary_down", servers.on_primary_down)
        return cls(
            list(servers.primaries), servers.replicas,
            read_your_writes=db.read_your_writes, pin_seconds=db.pin_seconds,
            gtid_wait_timeout=db.gtid_wait_timeout, lag_threshold=db.lag_threshold,
            connect_timeout=db.connect_timeout, read_timeout=db.read_timeout,
            replica_read_timeout=db.replica_read_timeout, write_timeout=db.write_timeout,
            dead_host_cooldown=db.dead_host_cooldown, **kwargs,
        )

    # --- public API ---------------------------------------------------------------------

    def sessionmaker(self, **kw: Any) -> sessionmaker[Session]:
        """A ``sessionmaker`` whose Sessions route each statement (ORM flushes: primary)."""
        maker: sessionmaker[Session] = sessionmaker(bind=self._routing, **kw)
        if self._replicas:
            event.listen(maker, "before_flush", self._before_flush)
        return maker

    def session(self, **kw: Any) -> Session:
        """A new routing Session (``with router.session() as s: ...``)."""
        return self.sessionmaker(**kw)() if kw else self._sessionmaker()

    def connect(self) -> Connection:
        """A Core Connection that routes each statement."""
        return self._routing.connect()

    @contextlib.contextmanager
    def primary(self) -> Iterator[None]:
        """Send every statement in the block (and the rest of a transaction begun in it) to
        the primary."""
        reset = self._force.set(True)
        try:
            yield
        finally:
            self._force.reset(reset)

    def engine(self, role: Role = "write") -> Engine:
        """A plain Engine: the primary's for ``"write"``, the first usable replica's (else
        the primary's) for ``"read"``."""
        if role == "read":
            for index, server in enumerate(self._replicas):
                if self.health.usable(index):
                    return server.engine
            return self._primary.engine
        if role != "write":
            raise ValueError(f'role: expected "read" or "write", got {role!r}')
        return self._writable_primary().engine

    @property
    def routing_engine(self) -> Engine:
        """The Engine behind :meth:`session` and :meth:`connect`."""
        return self._routing

    @contextlib.contextmanager
    def with_token(self, token: ConsistencyToken | str | None = None) -> Iterator[TokenScope]:
        """A unit of work whose reads honour *token* (or its serialised form); the yielded
        :class:`TokenScope` collects the token of the block's own commits in ``produced``."""
        if isinstance(token, str):
            token = ConsistencyToken.loads(token)
        scope = TokenScope(token)
        reset = self._scope.set(scope)
        try:
            yield scope
        finally:
            self._scope.reset(reset)

    def last_token(self) -> ConsistencyToken | None:
        """The newest token produced by commits in the current context (or ``with_token``
        block); ``None`` when nothing was written."""
        scope = self._scope.get()
        return scope.produced if scope is not None else None

    def stats(self) -> dict[str, dict[str, int]]:
        """Decisions so far, by role and reason."""
        out: dict[str, dict[str, int]] = {}
        with self._stats_lock:
            for (role, reason), count in self._stats.items():
                out.setdefault(role, {})[reason] = count
        return out

    def close(self) -> None:
        """Stop the health thread and dispose the Engines this router created."""
        if self._closed:
            return
        self._closed = True
        self.health.close()
        self.finder.close()
        if self._routing is not self._primary.engine:
            self._routing.dispose()
        for server in (*self._candidates, *self._replicas):
            if server.owned:
                server.engine.dispose()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        replicas = ", ".join(r.name for r in self._replicas)
        if self.finder.single:
            primary = f"primary={self._primary.name!r}"
        else:
            primary = f"primaries=[{', '.join(c.name for c in self._candidates)}]"
        return (f"Router({primary}, replicas=[{replicas}], "
                f"read_your_writes={self.read_your_writes!r})")

    # --- the primary now (failover) -------------------------------------------------------

    @property
    def _primary(self) -> _Server:
        """The primary of the last verdict (the first candidate before any)."""
        index = self.finder.state().index
        return self._candidates[index if index is not None else 0]

    def _writable_primary(self) -> _Server:
        """The one writable candidate now; SplitBrain or PrimaryUnavailable otherwise."""
        return self._candidates[self.finder.writable()]

    def primary_state(self) -> PrimaryState:
        """Which candidate is the primary, since when, and a split brain
        (:class:`~tenantkit.db.primaries.PrimaryState`)."""
        return self.finder.state()

    def primary_outage(self) -> bool:
        """True while writes cannot proceed (no writable candidate, a split brain, or the
        primary marked down after a failure) and ``on_primary_down`` is ``"read_only"``: the
        page cache serves stale pages instead of errors then."""
        if self.on_primary_down != "read_only":
            return False
        state = self.finder.state()
        if state.known and state.index is None:
            return True
        return (self._down_server is self._primary
                and time.monotonic() < self._primary_retry_at)

    # --- internals shared with the routing connection ---------------------------------------

    def _count(self, role: str, reason: str, target: str, statement: str) -> None:
        key = (role, reason)
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("route %s -> %s (%s): %.120s", role, target, reason,
                         " ".join(statement.split()))

    def _current_scope(self, create: bool) -> TokenScope | None:
        scope = self._scope.get()
        if scope is None and create:
            scope = TokenScope()
            self._scope.set(scope)
        return scope

    def _produced(self, gtid: str | None) -> None:
        token = ConsistencyToken(gtid, time.time())
        scope = self._current_scope(create=True)
        assert scope is not None
        scope.produced = token
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("commit on primary: token %s", token.dumps())

    def _primary_down(self, exc: BaseException,
                      server: _Server | None = None) -> PrimaryUnavailable:
        server = server or self._primary
        self.finder.suspect()
        now = time.monotonic()
        # One primary: skip it for the cooldown. Candidates: the finder decides where writes
        # go; pause this one only until the finder's next probe (logged once per outage).
        single = self.finder.single
        pause = self.dead_host_cooldown if single else min(self.dead_host_cooldown,
                                                           self.finder.outage_interval)
        if single or self._down_server is not server or now >= self._primary_retry_at:
            logger.warning("primary %s unavailable (retrying after %gs): %s", server.name,
                           pause, describe(exc))
        self._down_server = server
        self._primary_retry_at = now + pause
        return PrimaryUnavailable(
            f"primary {server.name} cannot be reached: {describe(exc)} (writes stop "
            f"until it is back; tried again after {self.dead_host_cooldown:g}s; reads still "
            "go to the replicas)"
        )

    def _read_only_primary(self, exc: BaseException, server: Any) -> PrimaryUnavailable:
        """The primary refused a write as read-only: a switchover or failover is under way.
        Probe the candidates now; this write fails (it did not run) and the next goes to the
        new primary if there is one."""
        self.finder.recheck(time.time())
        name = server.name if isinstance(server, _Server) else self._primary.name
        return PrimaryUnavailable(
            f"primary {name} refused the write, it is read-only now ({describe(exc)}): a "
            "failover? The candidates are being checked; retry the write in a moment"
        )

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        connection = session.connection()
        routing = connection.connection.dbapi_connection
        if isinstance(routing, RoutingConnection):
            routing.pin_primary()

    # One-server mode: everything goes to the one server; count, log and make tokens anyway.

    def _one_server_execute(self, conn: Connection, cursor: Any, statement: str,
                            parameters: Any, context: Any, executemany: bool) -> None:
        role = statement_role(statement)
        self._count(role, "one-server", self._primary.name, statement)
        if role == "write":
            conn.info["tenantkit_wrote"] = True

    def _one_server_commit(self, conn: Connection) -> None:
        if conn.info.pop("tenantkit_wrote", False):
            self._produced(None)

    def _one_server_rollback(self, conn: Connection) -> None:
        conn.info.pop("tenantkit_wrote", None)
