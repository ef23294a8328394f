"""SQLAlchemy dialect ``mysql+tenantkit``: mysql+pymysql over :class:`CompressedConnection`.

Registered through the ``sqlalchemy.dialects`` entry point, so after installing tenantkit::

    from sqlalchemy import create_engine

    engine = create_engine(
        "mysql+tenantkit://app:secret@db.example.com/blog"
        "?compress=true&compress_level=6&compress_min_length=50"
    )

Query arguments are typed here: ``compress`` is a boolean (``true``/``false``/``1``/``0``),
``compress_level`` an integer from -1 to 9, ``compress_min_length`` an integer >= 0; every
other argument is what ``mysql+pymysql`` accepts. A wrong value raises
``sqlalchemy.exc.ArgumentError`` naming the argument. Without ``compress=true`` the engine
behaves exactly as ``mysql+pymysql``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from sqlalchemy import exc, util
from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql
from sqlalchemy.engine.interfaces import ConnectArgsType
from sqlalchemy.engine.url import URL

from tenantkit.db.compress import CompressedConnection

__all__ = ["TenantkitDialect"]


def _typed_int(opts: MutableMapping[str, Any], key: str, low: int, high: int | None) -> None:
    if key not in opts:
        return
    raw = opts[key]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value < low or (high is not None and value > high):
        allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        raise exc.ArgumentError(
            f"mysql+tenantkit URL: {key}={raw!r} is not valid; it must be {allowed} "
            f"(for example ?{key}={low if high is None else max(low, min(6, high))})"
        )
    opts[key] = value


class TenantkitDialect(MySQLDialect_pymysql):
    """mysql+pymysql whose connections are :class:`CompressedConnection`."""

    driver = "tenantkit"
    supports_statement_cache = True

    def create_connect_args(
        self, url: URL, _translate_args: dict[str, Any] | None = None
    ) -> ConnectArgsType:
        raw = dict(url.query)
        if "compress" in raw:
            try:
                util.asbool(raw["compress"])
            except ValueError:
                raise exc.ArgumentError(
                    f"mysql+tenantkit URL: compress={raw['compress']!r} is not valid; "
                    "write compress=true or compress=false"
                ) from None
        args, opts = super().create_connect_args(url, _translate_args)
        _typed_int(opts, "compress_level", -1, 9)
        _typed_int(opts, "compress_min_length", 0, None)
        return args, opts

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        return CompressedConnection(*cargs, **cparams)


dialect = TenantkitDialect
