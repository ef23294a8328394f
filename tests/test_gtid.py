from __future__ import annotations

import time

from sqlalchemy import create_engine, text

from tenantkit.db.gtid import last_gtid, wait_for_gtid
from tenantkit.testing import MariaDBCluster


def test_sqlite_has_no_gtid_and_never_waits() -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        assert last_gtid(conn) is None
        assert wait_for_gtid(conn, "0-1-5", timeout=0.1) is True


def test_replica_waits_for_the_primary_commit(mariadb_pair: MariaDBCluster) -> None:
    primary = create_engine(mariadb_pair.primary_url)
    replica = create_engine(mariadb_pair.replica_url)
    try:
        with primary.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INT)"))
        mariadb_pair.wait_replicas()
        mariadb_pair.hold_replica()
        with primary.connect() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.commit()
            gtid = last_gtid(conn)
        assert gtid is not None and gtid.count("-") == 2
        with replica.connect() as conn:
            start = time.monotonic()
            assert wait_for_gtid(conn, gtid, timeout=0.3) is False
            assert time.monotonic() - start < 5
        mariadb_pair.release_replica()
        with replica.connect() as conn:
            assert wait_for_gtid(conn, gtid, timeout=10) is True
            assert conn.execute(text("SELECT COUNT(*) FROM t")).scalar() == 1
    finally:
        primary.dispose()
        replica.dispose()
