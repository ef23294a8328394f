"""Consistency tokens: only GTIDs the servers can parse survive ``loads``."""

from __future__ import annotations

import pymysql
import pytest

from tenantkit.db.tokens import ConsistencyToken
from tenantkit.errors import InvalidToken
from tenantkit.testing import MariaDBCluster

MAX_32 = 2**32 - 1
MAX_64 = 2**64 - 1


@pytest.mark.parametrize(
    "gtid",
    [
        pytest.param(f"{MAX_32 + 1}-1-5", id="domain above 2^32-1"),
        pytest.param(f"0-{MAX_32 + 1}-5", id="server id above 2^32-1"),
        pytest.param(f"0-1-{MAX_64 + 1}", id="sequence above 2^64-1"),
        pytest.param(f"0-1-5,0-1-{10**20 - 1}", id="second domain's sequence"),
        pytest.param("9999999999-1-5", id="ten digits over"),
        pytest.param("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-99999999999999999999",
                     id="mysql gno above 2^63-1"),
        pytest.param("3E11FA47-71CA-11E1-9E33-C80AA9429562:0", id="mysql gno 0"),
    ],
)
def test_loads_rejects_gtids_out_of_range(gtid: str) -> None:
    cookie = ConsistencyToken(gtid, 1.0).dumps()
    with pytest.raises(InvalidToken, match="drop the cookie"):
        ConsistencyToken.loads(cookie)


@pytest.mark.parametrize(
    "gtid",
    [
        pytest.param(f"{MAX_32}-{MAX_32}-{MAX_64}", id="every part at its maximum"),
        pytest.param("0-1-0", id="zeros"),
        pytest.param(f"0-1-5,{MAX_32}-2-7", id="two domains"),
    ],
)
def test_loads_keeps_gtids_in_range(gtid: str) -> None:
    assert ConsistencyToken.loads(ConsistencyToken(gtid, 1.0).dumps()).gtid == gtid


def test_the_server_agrees_on_the_bounds(mariadb_pair: MariaDBCluster) -> None:
    """What loads() keeps, MASTER_GTID_WAIT parses; what it rejects, the server refuses."""
    conn = pymysql.connect(**mariadb_pair.replica.connect_args())
    try:
        with conn.cursor() as cur:
            for gtid in (f"{MAX_32}-{MAX_32}-{MAX_64}", f"0-1-5,{MAX_32}-2-7"):
                ConsistencyToken.loads(ConsistencyToken(gtid, 1.0).dumps())
                cur.execute("SELECT MASTER_GTID_WAIT(%s, 0)", (gtid,))
                assert cur.fetchone()[0] in (0, -1)
            for gtid in (f"{MAX_32 + 1}-1-5", f"0-{MAX_32 + 1}-5", f"0-1-{MAX_64 + 1}"):
                with pytest.raises(pymysql.err.MySQLError):
                    cur.execute("SELECT MASTER_GTID_WAIT(%s, 0)", (gtid,))
                with pytest.raises(InvalidToken):
                    ConsistencyToken.loads(ConsistencyToken(gtid, 1.0).dumps())
    finally:
        conn.close()
