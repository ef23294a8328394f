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
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import select
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from tenantkit.config import Settings
from tenantkit.db.classify import statement_role
from tenantkit.db.gtid import last_gtid_dbapi, wait_for_gtid_dbapi
from tenantkit.db.health import ReplicaHealth, masked
from tenantkit.db.servers import connect_seconds, site_servers
from tenantkit.errors import ConfigError, InvalidToken, PrimaryUnavailable

if TYPE_CHECKING:
    from tenantkit.config import DatabaseSettings
    from tenantkit.sites import Site

__all__ = ["ConsistencyToken", "Router", "TokenScope"]

logger = logging.getLogger(__name__)

Mode = Literal["gtid", "pin", "off"]
Role = Literal["read", "write"]

# DB-API errors that mean "the connection or server is gone", not "the statement is wrong".
_CONNECTION_ERRNOS = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031})
_NOT_SENT_ERRNOS = frozenset({2002, 2003, 2006})  # the statement cannot have run
_SESSION_SET = re.compile(
    r"\s*SET\s+(?!GLOBAL\b|@@GLOBAL\.|PASSWORD\b|ROLE\b|DEFAULT\s+ROLE\b|STATEMENT\b"
    r"|PERSIST|@(?!@))",
    re.IGNORECASE,
)
_MAX_SETTINGS = 32
_TX_CONTROL = re.compile(r"\s*(COMMIT|ROLLBACK)(?:\s+WORK)?\s*;?\s*\Z", re.IGNORECASE)


# --- consistency tokens ---------------------------------------------------------------------

_GTID_MARIADB = r"\d{1,10}-\d{1,10}-\d{1,20}(?:,\d{1,10}-\d{1,10}-\d{1,20})*"
_GTID_MYSQL = (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
               r"(?::\d{1,20}(?:-\d{1,20})?)+")
_GTID = re.compile(rf"(?:{_GTID_MARIADB}|{_GTID_MYSQL}(?:,{_GTID_MYSQL})*)")
_TOKEN = re.compile(r"1\.([0-9a-f]{1,13})\.([0-9A-Za-z:_-]{0,2000})")


@dataclass(frozen=True)
class ConsistencyToken:
    """What a reader must see: a commit's GTID (``None`` on servers without GTIDs) and its
    wall-clock time (``time.time()``, for pinning).

    ``dumps()`` gives a short cookie-safe string (``1.18c2e5f3a10.0-1-42``); ``loads()``
    reads it back and raises :class:`~tenantkit.errors.InvalidToken` for anything else.
    """

    gtid: str | None
    time: float

    def dumps(self) -> str:
        gtid = (self.gtid or "").replace(",", "_")
        return f"1.{max(0, int(self.time * 1000)):x}.{gtid}"

    @classmethod
    def loads(cls, text: str | bytes) -> ConsistencyToken:
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken(
                    "consistency token: not ASCII (expected what ConsistencyToken.dumps() "
                    "wrote, like 1.18c2e5f3a10.0-1-42; drop the cookie)"
                ) from None
        if not isinstance(text, str):
            raise InvalidToken(f"consistency token: expected a string, got {type(text).__name__}")
        match = _TOKEN.fullmatch(text.strip())
        if match is None:
            shown = text[:40] + ("..." if len(text) > 40 else "")
            raise InvalidToken(
                f"consistency token {shown!r}: not in the form 1.<hex milliseconds>.<gtid> "
                "that ConsistencyToken.dumps() writes (a truncated or forged cookie: drop it)"
            )
        gtid = match.group(2).replace("_", ",") or None
        if gtid is not None and not _GTID.fullmatch(gtid):
            raise InvalidToken(
                f"consistency token: {gtid[:60]!r} is not a MariaDB (0-1-42) or MySQL "
                "(uuid:1-5) GTID (drop the cookie)"
            )
        return cls(gtid, int(match.group(1), 16) / 1000)


class TokenScope:
    """The tokens of one unit of work: ``given`` (honoured by its reads, e.g. from a cookie)
    and ``produced`` (the newest token of its own commits)."""

    __slots__ = ("given", "produced")

    def __init__(self, given: ConsistencyToken | None = None) -> None:
        self.given = given
        self.produced: ConsistencyToken | None = None

    @property
    def effective(self) -> ConsistencyToken | None:
        """The token reads must honour: the newer of ``produced`` and ``given``."""
        if self.produced is None:
            return self.given
        if self.given is None or self.produced.time >= self.given.time:
            return self.produced
        return self.given


# --- the router -----------------------------------------------------------------------------


class _Server:
    """One server: its Engine, whether we made it, and what it is."""

    def __init__(self, source: str | URL | Engine, options: Mapping[str, Any],
                 connect_timeout: float) -> None:
        if isinstance(source, Engine):
            self.engine, self.owned = source, False
        else:
            url = make_url(source)
            opts = dict(options)
            if url.get_backend_name() in ("mysql", "mariadb"):
                connect_args = dict(opts.pop("connect_args", {}))
                connect_args.setdefault("connect_timeout", connect_seconds(connect_timeout))
                opts["connect_args"] = connect_args
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
        primary: str | URL | Engine,
        replicas: Sequence[str | URL | Engine] = (),
        *,
        read_your_writes: Mode = "gtid",
        pin_seconds: float = 5.0,
        gtid_wait_timeout: float = 1.0,
        lag_threshold: float = 5.0,
        connect_timeout: float = 2.0,
        dead_host_cooldown: float = 10.0,
        engine_options: Mapping[str, Any] | None = None,
        health_interval: float = 1.0,
        heartbeat_table: str | None = None,
    ) -> None:
        if read_your_writes not in ("gtid", "pin", "off"):
            raise ConfigError(
                f'read_your_writes: expected "gtid", "pin" or "off", got {read_your_writes!r}'
            )
        if isinstance(replicas, str | URL | Engine):
            raise ConfigError("replicas: expected a list of URLs or Engines, got a single one "
                              "(write replicas=[url])")
        self.read_your_writes: Mode = read_your_writes
        self.pin_seconds = pin_seconds
        self.gtid_wait_timeout = gtid_wait_timeout
        self.connect_timeout = connect_timeout
        self.dead_host_cooldown = dead_host_cooldown
        options = dict(engine_options or {})
        self._primary = _Server(primary, options, connect_timeout)
        self._replicas = [_Server(r, options, connect_timeout) for r in replicas]
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
        if self._replicas:
            pool_options = {k: v for k, v in options.items()
                            if k in ("pool_size", "max_overflow", "pool_timeout",
                                     "pool_recycle", "echo", "echo_pool", "logging_name")}
            self._routing = create_engine(
                self._primary.engine.url, creator=lambda: _RoutingConnection(self),
                **pool_options,
            )
            self.health.start()
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
        return cls(
            db.primary, db.replicas, read_your_writes=db.read_your_writes,
            pin_seconds=db.pin_seconds, gtid_wait_timeout=db.gtid_wait_timeout,
            lag_threshold=db.lag_threshold, connect_timeout=db.connect_timeout,
            dead_host_cooldown=db.dead_host_cooldown, **kwargs,
        )

    @classmethod
    def from_site(cls, site: Site, settings: Settings | None = None, **kwargs: Any) -> Router:
        """A Router for *site*: its own primary and replicas, or the settings' servers when
        its ``primary`` is not set (:func:`~tenantkit.db.servers.site_servers`). Timeouts and
        modes come from *settings* (default: the embedded defaults)."""
        servers = site_servers(site, settings)
        db = servers.options
        return cls(
            servers.primary, servers.replicas,
            read_your_writes=db.read_your_writes, pin_seconds=db.pin_seconds,
            gtid_wait_timeout=db.gtid_wait_timeout, lag_threshold=db.lag_threshold,
            connect_timeout=db.connect_timeout, dead_host_cooldown=db.dead_host_cooldown,
            **kwargs,
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
        return self._primary.engine

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
        if self._routing is not self._primary.engine:
            self._routing.dispose()
        for server in (self._primary, *self._replicas):
            if server.owned:
                server.engine.dispose()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        replicas = ", ".join(r.name for r in self._replicas)
        return (f"Router(primary={self._primary.name!r}, replicas=[{replicas}], "
                f"read_your_writes={self.read_your_writes!r})")

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

    def _primary_down(self, exc: BaseException) -> PrimaryUnavailable:
        self._primary_retry_at = time.monotonic() + self.dead_host_cooldown
        logger.warning("primary %s unavailable (retrying after %gs): %s", self._primary.name,
                       self.dead_host_cooldown, exc)
        return PrimaryUnavailable(
            f"primary {self._primary.name} cannot be reached: {_describe(exc)} (writes stop "
            f"until it is back; tried again after {self.dead_host_cooldown:g}s; reads still "
            "go to the replicas)"
        )

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        connection = session.connection()
        routing = connection.connection.dbapi_connection
        if isinstance(routing, _RoutingConnection):
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


def _errno(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if isinstance(exc, OSError | ConnectionError | EOFError):
        return True
    name = type(exc).__name__
    if name == "InterfaceError":
        return True
    return name == "OperationalError" and _errno(exc) in _CONNECTION_ERRNOS


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {orig}".splitlines()[0][:300]


def _socket_closed(dbapi_connection: Any) -> bool:
    """True when the server has closed an idle connection (EOF waiting on its socket), so
    a stale pooled connection is replaced before a statement is lost on it."""
    sock = getattr(dbapi_connection, "_sock", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Leg:
    """A checked-out connection of one server."""

    __slots__ = ("dbapi", "fairy", "index", "used")

    def __init__(self, fairy: Any, index: int) -> None:
        self.fairy = fairy
        self.dbapi = fairy.dbapi_connection
        self.index = index  # -1: the primary; else the replica's position
        self.used = False  # ran a statement in the current transaction


class _RoutingConnection:
    """The DB-API connection SQLAlchemy sees; routes each cursor's statements to a leg."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._primary: _Leg | None = None
        self._replica: _Leg | None = None
        self._settings: list[str] = []
        self._autocommit: bool | None = None
        self._pinned = False  # the rest of this transaction goes to the primary
        self._wrote = False  # a write ran on the primary in this transaction

    # --- DB-API surface ---

    def cursor(self, *args: Any, **kwargs: Any) -> _RoutingCursor:
        return _RoutingCursor(self, args, kwargs)

    def commit(self) -> None:
        primary, replica = self._primary, self._replica
        try:
            if primary is not None and primary.used:
                try:
                    primary.dbapi.commit()
                except Exception as exc:
                    if _is_connection_error(exc):
                        self._drop("primary", invalidate=True)
                        raise self._router._primary_down(exc) from exc
                    raise
                if self._wrote:
                    self._after_write_commit(primary)
            if replica is not None and replica.used:
                try:
                    replica.dbapi.commit()
                except Exception as exc:
                    if not _is_connection_error(exc):
                        raise
                    self._drop("replica", invalidate=True)
        finally:
            self._end_transaction()

    def rollback(self) -> None:
        try:
            for which in ("primary", "replica"):
                leg = self._primary if which == "primary" else self._replica
                if leg is not None and leg.used:
                    try:
                        leg.dbapi.rollback()
                    except Exception as exc:
                        if not _is_connection_error(exc):
                            raise
                        self._drop(which, invalidate=True)
        finally:
            self._end_transaction()

    def close(self) -> None:
        self._drop("primary", invalidate=False)
        self._drop("replica", invalidate=False)

    def autocommit(self, value: bool) -> None:
        self._autocommit = bool(value)
        for leg in (self._primary, self._replica):
            if leg is not None:
                leg.dbapi.autocommit(self._autocommit)

    def get_autocommit(self) -> bool:
        return bool(self._autocommit)

    def ping(self, *args: Any) -> None:
        for leg in (self._primary, self._replica):
            if leg is not None:
                leg.dbapi.ping(*args)

    def __getattr__(self, name: str) -> Any:
        # Driver specifics the dialect asks for (get_server_info, character_set_name, ...):
        # from any open leg, else a read leg.
        leg = self._primary or self._replica or self._read_leg_for_info()
        return getattr(leg.dbapi, name)

    # --- routing ---

    def pin_primary(self) -> None:
        self._pinned = True

    def _end_transaction(self) -> None:
        self._pinned = False
        self._wrote = False
        for leg in (self._primary, self._replica):
            if leg is not None:
                leg.used = False

    def _after_write_commit(self, primary: _Leg) -> None:
        router = self._router
        gtid = None
        if router._primary.mysql:
            try:
                gtid = last_gtid_dbapi(primary.dbapi, mariadb=router._primary.mariadb)
            except Exception as exc:  # the commit is done; a missing GTID means pinning
                logger.warning("could not read the commit's GTID on the primary: %s",
                               _describe(exc))
        router._produced(gtid)

    def _drop(self, which: str, *, invalidate: bool) -> None:
        leg = self._primary if which == "primary" else self._replica
        if leg is None:
            return
        if which == "primary":
            self._primary = None
        else:
            self._replica = None
        with contextlib.suppress(Exception):
            if invalidate:
                leg.fairy.invalidate()
            else:
                leg.fairy.close()

    def _open(self, server: _Server, index: int) -> _Leg:
        fairy = server.engine.raw_connection()
        leg = _Leg(fairy, index)
        try:
            if self._autocommit is not None:
                leg.dbapi.autocommit(self._autocommit)
            if self._settings:
                cursor = leg.dbapi.cursor()
                try:
                    for sql in self._settings:
                        cursor.execute(sql)
                finally:
                    cursor.close()
        except BaseException:
            with contextlib.suppress(Exception):
                fairy.invalidate()
            raise
        return leg

    def _primary_leg(self) -> _Leg:
        router = self._router
        leg = self._primary
        if leg is not None and not leg.used and _socket_closed(leg.dbapi):
            self._drop("primary", invalidate=True)
            leg = None
        if leg is None:
            if time.monotonic() < router._primary_retry_at:
                raise PrimaryUnavailable(
                    f"primary {router._primary.name} is marked down after a failure "
                    f"(tried again {router._primary_retry_at - time.monotonic():.1f}s from "
                    "now; reads still go to the replicas)"
                )
            try:
                leg = self._open(router._primary, -1)
            except Exception as exc:
                if _is_connection_error(exc):
                    raise router._primary_down(exc) from exc
                raise
            self._primary = leg
        return leg

    def _replica_leg(self, exclude: int | None = None, *,
                     ignore_health: bool = False) -> _Leg | None:
        """The replica leg for a read, or None when no replica is usable."""
        router = self._router
        health = router.health
        leg = self._replica
        if leg is not None:
            if leg.used:
                return leg  # stay on it for the rest of the transaction
            if (leg.index != exclude and (ignore_health or health.usable(leg.index))
                    and not _socket_closed(leg.dbapi)):
                return leg
            self._drop("replica", invalidate=_socket_closed(leg.dbapi))
        for index, server in enumerate(router._replicas):
            if index == exclude or not (ignore_health or health.usable(index)):
                continue
            try:
                self._replica = self._open(server, index)
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                router.health.mark_down(index, _describe(exc))
                continue
            return self._replica
        return None

    def _read_leg_for_info(self) -> _Leg:
        leg = self._replica_leg()
        return leg if leg is not None else self._primary_leg()

    def _choose_read(self) -> tuple[_Leg, str]:
        """Where a read goes when the transaction is not pinned to the primary."""
        router = self._router
        scope = router._scope.get()
        token = scope.effective if scope is not None else None
        if token is not None and router.read_your_writes != "off":
            mode = router.read_your_writes if token.gtid else "pin"
            if mode == "pin" and time.time() - token.time < router.pin_seconds:
                self._pinned = True
                return self._primary_or_stale("pinned")
        leg = self._replica_leg()
        if leg is None:
            try:
                return self._primary_leg(), "no-replica"
            except PrimaryUnavailable:
                leg = self._replica_leg(ignore_health=True)  # stale beats nothing
                if leg is None:
                    raise
                return leg, "stale-primary-down"
        if (token is not None and token.gtid and router.read_your_writes == "gtid"
                and not router.health.confirmed(leg.index, token.gtid)):
            if leg.used:
                return self._primary_or_stale("token-mid-transaction")
            if router.health.recently_missed(leg.index, token.gtid,
                                             router.gtid_wait_timeout):
                self._pinned = True
                return self._primary_or_stale("gtid-behind")
            server = router._replicas[leg.index]
            try:
                reached = wait_for_gtid_dbapi(leg.dbapi, token.gtid, router.gtid_wait_timeout,
                                              mariadb=server.mariadb)
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                router.health.mark_down(leg.index, _describe(exc))
                self._drop("replica", invalidate=True)
                return self._choose_read()
            if not reached:
                router.health.missed(leg.index, token.gtid)
                self._pinned = True  # the rest of this transaction reads where the write is
                return self._primary_or_stale("gtid-timeout")
            router.health.confirm(leg.index, token.gtid)
        return leg, "replica"

    def _primary_or_stale(self, reason: str) -> tuple[_Leg, str]:
        try:
            return self._primary_leg(), reason
        except PrimaryUnavailable:
            leg = self._replica_leg() or self._replica_leg(ignore_health=True)
            if leg is None:
                raise
            return leg, "stale-primary-down"

    def execute(self, rc: _RoutingCursor, method: str, statement: str, parameters: Any) -> Any:
        router = self._router
        role = statement_role(statement)
        if role == "write":
            if _SESSION_SET.match(statement):
                return self._setting(rc, method, statement, parameters)
            control = _TX_CONTROL.match(statement)
            if control is not None:  # e.g. the dialect's COMMIT after an isolation change
                rc.cursor = None
                router._count("write", "transaction-control", "every used leg", statement)
                return self.commit() if control.group(1).upper() == "COMMIT" \
                    else self.rollback()
        if role == "write":
            reason = "primary"
        elif self._pinned:
            reason = "after-write"
        elif router._force.get():
            reason = "forced"
        else:
            reason = ""
        if reason:
            leg = self._primary_leg()
            if role == "write" or reason == "forced":
                self._pinned = True
            return self._run(rc, leg, role, reason, method, statement, parameters)
        leg, reason = self._choose_read()
        return self._run(rc, leg, role, reason, method, statement, parameters)

    def _run(self, rc: _RoutingCursor, leg: _Leg, role: str, reason: str, method: str,
             statement: str, parameters: Any, retried: bool = False) -> Any:
        router = self._router
        first = not leg.used
        cursor = leg.dbapi.cursor(*rc.args, **rc.kwargs)
        try:
            result = getattr(cursor, method)(statement, parameters)
        except Exception as exc:
            with contextlib.suppress(Exception):
                cursor.close()
            if not _is_connection_error(exc):
                leg.used = True
                raise
            if leg.index >= 0:  # a replica failed
                router.health.mark_down(leg.index, _describe(exc))
                self._drop("replica", invalidate=True)
                if first and not retried and role == "read":
                    other = self._replica_leg(exclude=leg.index)
                    if other is None:
                        other = self._primary_leg()
                    return self._run(rc, other, role, "retried", method, statement,
                                     parameters, retried=True)
                raise
            self._drop("primary", invalidate=True)
            if first and not retried and (role == "read" or _errno(exc) in _NOT_SENT_ERRNOS):
                return self._run(rc, self._primary_leg(), role, reason, method, statement,
                                 parameters, retried=True)
            raise router._primary_down(exc) from exc
        leg.used = True
        if leg.index < 0 and role == "write":
            self._wrote = True
            if self._autocommit:
                self._after_write_commit(leg)
                self._end_transaction()
        rc.cursor = cursor
        router._count(role, reason, "primary" if leg.index < 0 else
                      router._replicas[leg.index].name, statement)
        return result

    def _setting(self, rc: _RoutingCursor, method: str, statement: str,
                 parameters: Any) -> Any:
        """A session setting: run on every open leg, replayed on legs opened later."""
        if statement not in self._settings:
            self._settings.append(statement)
            del self._settings[:-_MAX_SETTINGS]
        result: Any = None
        for leg in (self._replica, self._primary):
            if leg is None:
                continue
            cursor = leg.dbapi.cursor(*rc.args, **rc.kwargs)
            result = getattr(cursor, method)(statement, parameters)
            rc.cursor = cursor
        self._router._count("write", "session-setting", "every leg", statement)
        return result


class _RoutingCursor:
    """The DB-API cursor SQLAlchemy sees: executes through the routing connection, then reads
    results from the cursor of the leg the statement ran on."""

    __slots__ = ("args", "conn", "cursor", "kwargs")

    def __init__(self, conn: _RoutingConnection, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.conn = conn
        self.args = args
        self.kwargs = kwargs
        self.cursor: Any = None

    def execute(self, statement: str, parameters: Any = None) -> Any:
        return self.conn.execute(self, "execute", statement, parameters)

    def executemany(self, statement: str, parameters: Any) -> Any:
        return self.conn.execute(self, "executemany", statement, parameters)

    @property
    def description(self) -> Any:
        return self.cursor.description if self.cursor is not None else None

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount) if self.cursor is not None else -1

    @property
    def lastrowid(self) -> Any:
        return self.cursor.lastrowid if self.cursor is not None else None

    def fetchone(self) -> Any:
        return self.cursor.fetchone() if self.cursor is not None else None

    def fetchmany(self, size: int | None = None) -> Any:
        if self.cursor is None:
            return []
        return self.cursor.fetchmany() if size is None else self.cursor.fetchmany(size)

    def fetchall(self) -> Any:
        return self.cursor.fetchall() if self.cursor is not None else []

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()

    def __getattr__(self, name: str) -> Any:
        if self.cursor is None:
            raise AttributeError(name)
        return getattr(self.cursor, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.cursor if self.cursor is not None else ())

