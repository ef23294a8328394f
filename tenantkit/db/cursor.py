"""The DB-API cursor of a routing connection (:mod:`tenantkit.db.session`).

SQLAlchemy executes through it; each statement is routed by the connection, and the results
are then read from the real cursor of the leg the statement ran on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenantkit.db.session import RoutingConnection

__all__ = ["RoutingCursor"]


class RoutingCursor:
    """The DB-API cursor SQLAlchemy sees: executes through the routing connection, then reads
    results from the cursor of the leg the statement ran on."""

    __slots__ = ("args", "conn", "cursor", "kwargs")

    def __init__(self, conn: RoutingConnection, args: tuple[Any, ...],
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

