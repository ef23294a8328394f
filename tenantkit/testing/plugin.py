"""The pytest plugin (entry point ``pytest11``): fixtures ``mariadb_pair``,
``mariadb_cluster``, ``mariadb_failover_cluster`` and ``redis_server`` over the classes of
:mod:`tenantkit.testing`.

Servers are shared by the whole test session, reset between tests and stopped at the end.
A missing binary skips the tests that need it with a reason naming the package to install,
unless ``TENANTKIT_REQUIRE_SERVICES=1``, which turns the skip into a failure (CI sets it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest

from tenantkit.testing.mariadb import MariaDBCluster
from tenantkit.testing.process import ServiceMissing
from tenantkit.testing.redis import RedisServer

__all__ = ["mariadb_cluster", "mariadb_failover_cluster", "mariadb_pair", "redis_server",
           "service_missing"]


def service_missing(exc: ServiceMissing) -> NoReturn:
    """Skip the test for a missing server, or fail it when TENANTKIT_REQUIRE_SERVICES=1."""
    if os.environ.get("TENANTKIT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{exc} (TENANTKIT_REQUIRE_SERVICES=1 makes this a failure)")
    pytest.skip(str(exc))


class _ClusterPool:
    def __init__(self) -> None:
        self.clusters: dict[int, MariaDBCluster] = {}

    def get(self, replicas: int) -> MariaDBCluster:
        cluster = self.clusters.get(replicas)
        if cluster is None:
            try:
                cluster = MariaDBCluster(replicas).start()
            except ServiceMissing as exc:
                service_missing(exc)
            self.clusters[replicas] = cluster
        else:
            cluster.reset()
        return cluster

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


@pytest.fixture(scope="session")
def _tenantkit_cluster_pool() -> Iterator[_ClusterPool]:
    pool = _ClusterPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def mariadb_cluster(_tenantkit_cluster_pool: _ClusterPool) -> Callable[..., MariaDBCluster]:
    """A factory: ``mariadb_cluster(replicas=N)`` gives a reset :class:`MariaDBCluster`."""
    seen: dict[int, MariaDBCluster] = {}

    def factory(replicas: int = 1) -> MariaDBCluster:
        if replicas not in seen:
            seen[replicas] = _tenantkit_cluster_pool.get(replicas)
        return seen[replicas]

    return factory


@pytest.fixture
def mariadb_failover_cluster() -> Iterator[MariaDBCluster]:
    """A primary and two replicas with semi-synchronous replication, of this test's own
    (a failover changes the topology, so it is never shared), stopped after the test."""
    try:
        cluster = MariaDBCluster(replicas=2, semi_sync=True).start()
    except ServiceMissing as exc:
        service_missing(exc)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def mariadb_pair(mariadb_cluster: Callable[..., MariaDBCluster]) -> MariaDBCluster:
    """A MariaDB primary and one read-only replica, reset for this test."""
    return mariadb_cluster(replicas=1)


@pytest.fixture(scope="session")
def _tenantkit_redis() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except ServiceMissing as exc:
        service_missing(exc)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(_tenantkit_redis: RedisServer) -> RedisServer:
    """An ephemeral Redis, running and empty at the start of the test."""
    _tenantkit_redis.start()
    _tenantkit_redis.flushall()
    return _tenantkit_redis
