"""What a driver failure means: "the connection or server is gone" or "the statement is wrong".

::

    try:
        cursor.execute(sql)
    except Exception as exc:
        if is_connection_error(exc, engine.dialect):   # mark the server down, retry elsewhere
            ...
        if error_code(exc) in NOT_SENT:                # the statement cannot have run
            ...
    describe(exc)              # "OperationalError: (2003, ...)": one line, for logs and errors
    timed_out(exc)             # the server stopped answering (read_timeout/write_timeout)
    socket_closed(dbapi_conn)  # the server closed this idle connection (EOF on its socket)

The verdict is :data:`CONNECTION_LOST` (MySQL's and MariaDB's "connection lost" errors,
which SQLAlchemy's ``dialect.is_disconnect`` also knows) and ``dialect.is_disconnect`` (a
closed connection and the like), plus what a router also counts
as a dead host and the dialect does not, because SQLAlchemy handles connect errors apart:
the server cannot be reached (2002, 2003), is shutting down (1053), a socket error, and any
``InterfaceError``.

:data:`CONNECTION_LOST` is the one list of those codes: ``contrib/wp-db-router.php`` carries
a generated copy (``python -m tenantkit.db.phpkeywords`` writes it), so the PHP drop-in
reconnects on exactly the errors the Python router does.
"""

from __future__ import annotations

import select
from typing import Any, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect

__all__ = ["CONNECTION_LOST", "NOT_SENT", "describe", "error_code", "is_connection_error",
           "socket_closed", "timed_out"]

# Connect-time errors, which Dialect.is_disconnect leaves to the pool's connect handling.
_CANNOT_CONNECT = frozenset({2002, 2003, 1053})
# The driver error classes a lost connection's number comes in (as in is_disconnect).
_LOST_CLASSES = frozenset({"OperationalError", "ProgrammingError"})
NOT_SENT = frozenset({2002, 2003, 2006})  # the statement cannot have run
#: The connection was lost (the statement, if sent, may or may not have run): 2006 server
#: gone away, 2013 lost during query, 2014 commands out of sync, 2045 and 2055 lost while
#: reading/writing, 1927 connection killed, 4031 disconnected by the server for inactivity.
#: A read is retried once on a new connection; a write fails (unless it was NOT_SENT).
CONNECTION_LOST = frozenset({1927, 2006, 2013, 2014, 2045, 2055, 4031})


def error_code(exc: BaseException) -> int | None:
    """The driver's error number (MySQL's ``args[0]``) of *exc* or of the error it wraps."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_connection_error(exc: BaseException, dialect: Dialect) -> bool:
    """True when *exc* means the connection or server is gone, not that the statement is
    wrong. *dialect* is the failing server's (its Engine's ``dialect``)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if isinstance(exc, OSError | ConnectionError | EOFError):
        return True
    name = type(exc).__name__
    if name == "InterfaceError":
        return True
    if name == "OperationalError" and error_code(exc) in _CANNOT_CONNECT:
        return True
    if name in _LOST_CLASSES and error_code(exc) in CONNECTION_LOST:
        return True
    dbapi = dialect.dbapi
    if dbapi is None or not isinstance(exc, dbapi.Error):
        return False
    try:
        return bool(dialect.is_disconnect(cast(Any, exc), None, None))
    except (IndexError, TypeError):  # a driver error without the usual (errno, message) args
        return False


def timed_out(exc: BaseException) -> bool:
    """True when *exc* comes from a read or write that timed out: the host stopped answering
    without closing the connection (hung, partitioned), so a new connection would wait too."""
    seen: BaseException | None = exc
    for _ in range(8):  # the driver's error, its cause, the socket's TimeoutError
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else (seen.__cause__ or seen.__context__)
    return False


def describe(exc: BaseException) -> str:
    """One line naming the driver error: ``OperationalError: (2003, "Can't connect ...")``."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {orig}".splitlines()[0][:300]


def socket_closed(dbapi_connection: Any) -> bool:
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
