"""GTID helpers shared by the router (read-your-writes) and the invalidator (replica-safe purge).

::

    with engine.connect() as conn:
        gtid = last_gtid(conn)                    # after a commit on the primary
    with replica_engine.connect() as conn:
        if wait_for_gtid(conn, gtid, timeout=1.0):
            ...                                   # the replica has the commit

MariaDB GTIDs look like ``0-1-42`` (domain-server-sequence, comma-separated per domain);
MySQL's like ``3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5``. SQLite and other single-server
databases have none: :func:`last_gtid` returns ``None`` and :func:`wait_for_gtid` is true at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

__all__ = ["is_mariadb", "last_gtid", "last_gtid_dbapi", "wait_for_gtid", "wait_for_gtid_dbapi"]

_LAST_GTID_MARIADB = "SELECT @@last_gtid"
_LAST_GTID_MYSQL = "SELECT @@GLOBAL.gtid_executed"
_WAIT_MARIADB = "SELECT MASTER_GTID_WAIT(%s, %s)"
_WAIT_MYSQL = "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)"


def is_mariadb(conn: Connection) -> bool:
    return bool(getattr(conn.dialect, "is_mariadb", False))


def _is_mysql_family(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def last_gtid(conn: Connection) -> str | None:
    """The GTID of this session's last commit (MariaDB ``@@last_gtid``), or the primary's
    executed set (MySQL ``@@gtid_executed``); ``None`` where there are no GTIDs."""
    if not _is_mysql_family(conn):
        return None
    sql = _LAST_GTID_MARIADB if is_mariadb(conn) else _LAST_GTID_MYSQL
    value = conn.execute(text(sql)).scalar()
    return str(value) if value else None


def wait_for_gtid(conn: Connection, gtid: str | None, timeout: float) -> bool:
    """Wait up to *timeout* seconds until the server behind *conn* has applied *gtid*.

    True when it has (or there is nothing to wait for), False on timeout. Uses
    ``MASTER_GTID_WAIT`` on MariaDB and ``WAIT_FOR_EXECUTED_GTID_SET`` on MySQL.
    """
    if not gtid or not _is_mysql_family(conn):
        return True
    if is_mariadb(conn):
        result = conn.execute(
            text("SELECT MASTER_GTID_WAIT(:gtid, :timeout)"), {"gtid": gtid, "timeout": timeout}
        ).scalar()
        return result == 0
    result = conn.execute(
        text("SELECT WAIT_FOR_EXECUTED_GTID_SET(:gtid, :timeout)"),
        {"gtid": gtid, "timeout": timeout},
    ).scalar()
    return result == 0


def last_gtid_dbapi(dbapi_connection: Any, *, mariadb: bool) -> str | None:
    """:func:`last_gtid` on a raw DB-API connection (``format`` paramstyle: PyMySQL,
    mysqlclient) of a MariaDB (*mariadb*) or MySQL server, as the router needs it right after
    the DB-API ``commit()`` on that same connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_LAST_GTID_MARIADB if mariadb else _LAST_GTID_MYSQL)
        row = cursor.fetchone()
    finally:
        cursor.close()
    value = row[0] if row else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value) if value else None


def wait_for_gtid_dbapi(dbapi_connection: Any, gtid: str | None, timeout: float, *,
                        mariadb: bool) -> bool:
    """:func:`wait_for_gtid` on a raw DB-API connection (``format`` paramstyle)."""
    if not gtid:
        return True
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_WAIT_MARIADB if mariadb else _WAIT_MYSQL, (gtid, timeout))
        row = cursor.fetchone()
    finally:
        cursor.close()
    return bool(row) and row[0] == 0
