"""The ``mysql+tenantkit`` SQLAlchemy dialect."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, exc, text
from sqlalchemy.engine import make_url

from tenantkit.db.compress import CompressedConnection
from tenantkit.db.dialect import TenantkitDialect
from tenantkit.testing import MariaDBCluster


def test_entry_point_resolves_the_dialect() -> None:
    engine = create_engine("mysql+tenantkit://u:p@127.0.0.1:1/db")
    try:
        assert isinstance(engine.dialect, TenantkitDialect)
        assert engine.dialect.driver == "tenantkit"
    finally:
        engine.dispose()


def test_query_arguments_are_typed() -> None:
    url = make_url(
        "mysql+tenantkit://u:p@h:3307/db?compress=true&compress_level=9"
        "&compress_min_length=0&connect_timeout=3"
    )
    _, opts = TenantkitDialect().create_connect_args(url)
    assert opts["compress"] is True
    assert opts["compress_level"] == 9
    assert opts["compress_min_length"] == 0
    assert opts["connect_timeout"] == 3
    assert (opts["host"], opts["port"], opts["user"], opts["password"], opts["database"]) == (
        "h", 3307, "u", "p", "db")
    _, opts = TenantkitDialect().create_connect_args(make_url("mysql+tenantkit://u@h/db"))
    assert "compress" not in opts


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("compress=maybe", "compress='maybe' is not valid", id="compress word"),
        pytest.param("compress_level=fast", "compress_level='fast'", id="level word"),
        pytest.param("compress_level=11", "from -1 to 9", id="level too high"),
        pytest.param("compress_level=-2", "from -1 to 9", id="level too low"),
        pytest.param("compress_min_length=-5", "integer >= 0", id="negative min length"),
        pytest.param("compress_min_length=1.5", "compress_min_length='1.5'", id="float min"),
    ],
)
def test_bad_query_arguments_name_the_argument(query: str, message: str) -> None:
    with pytest.raises(exc.ArgumentError, match=message):
        TenantkitDialect().create_connect_args(make_url(f"mysql+tenantkit://u@h/db?{query}"))


def test_engine_speaks_compressed(mariadb_cluster: Callable[..., MariaDBCluster]) -> None:
    server = mariadb_cluster(replicas=0).primary
    engine = create_engine(server.url(driver="tenantkit", query="compress=true&compress_level=6"))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE d (id INT PRIMARY KEY, v TEXT)"))
            conn.execute(text("INSERT INTO d VALUES (:i, :v)"),
                         [{"i": i, "v": f"value {i} " * 50} for i in range(200)])
        with engine.connect() as conn:
            status = conn.execute(text("SHOW SESSION STATUS LIKE 'Compression'")).one()
            assert status[1] == "ON"
            rows = conn.execute(text("SELECT id, v FROM d ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(i, f"value {i} " * 50) for i in range(200)]
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, CompressedConnection) and raw.compressed
            assert raw.wire_stats().received < raw.wire_stats().received_payload / 3
    finally:
        engine.dispose()


def test_engine_without_compress_is_plain(mariadb_cluster: Callable[..., MariaDBCluster]) -> None:
    server = mariadb_cluster(replicas=0).primary
    engine = create_engine(server.url(driver="tenantkit"), pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW SESSION STATUS LIKE 'Compression'")).one()[1] == "OFF"
        with engine.connect() as conn:  # pre-ping goes through the dialect's do_ping
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
