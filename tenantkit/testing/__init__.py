"""Real MariaDB and Redis servers for tests, benchmarks and scripts.

The classes need no pytest::

    with MariaDBCluster(replicas=1) as cluster:
        print(cluster.primary_url, cluster.replica_url)

    with RedisServer() as server:
        print(server.url)

Every server is a ``mariadbd`` or ``redis-server`` started from the installed binaries in a
temporary directory on a free loopback port. tenantkit also installs a pytest plugin
(:mod:`tenantkit.testing.plugin`, entry point ``pytest11``) with fixtures over them, shared by
the whole test session and reset between tests::

    def test_reads_from_replica(mariadb_pair):
        engine = create_engine(mariadb_pair.primary_url)
        ...
        mariadb_pair.wait_replicas()          # the replica has everything the primary has

    def test_two_nodes(mariadb_cluster):
        cluster = mariadb_cluster(replicas=2)  # one primary, two replicas

    def test_events(redis_server):
        client = redis.Redis.from_url(redis_server.url)

The modules: :mod:`~tenantkit.testing.net` (ports, :class:`LoopbackProxy`),
:mod:`~tenantkit.testing.process` (finding binaries, the server life cycle),
:mod:`~tenantkit.testing.mariadb`, :mod:`~tenantkit.testing.redis`,
:mod:`~tenantkit.testing.plugin` (the only one that imports pytest).
"""

from __future__ import annotations

from tenantkit.testing.mariadb import (
    DATABASE,
    PASSWORD,
    USER,
    MariaDBCluster,
    MariaDBServer,
)
from tenantkit.testing.net import LoopbackProxy, free_port, wait_port
from tenantkit.testing.process import ServiceMissing, find_binary
from tenantkit.testing.redis import RedisServer

__all__ = [
    "DATABASE",
    "PASSWORD",
    "USER",
    "LoopbackProxy",
    "MariaDBCluster",
    "MariaDBServer",
    "RedisServer",
    "ServiceMissing",
    "find_binary",
    "free_port",
    "wait_port",
]
