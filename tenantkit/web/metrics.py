"""Prometheus metrics of one shim instance (prometheus-client, one registry per app).

::

    metrics = Metrics()
    metrics.request("blog", 200)
    metrics.cache("blog", "HIT")
    text = metrics.render()          # Prometheus text format

Routing decisions, replica lag, the invalidators' status files
(``tenantkit_invalidation_*``, :mod:`tenantkit.cache.status`) and the node counters
(``tenantkit_node_*_total{site=...}``: flushes, purges, coalesced, renders, stale served by
every process of the node, :mod:`tenantkit.cache.nodecounters`) are read at scrape time. Under
gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` before start (``tenantkit
serve`` does) and each scrape adds up every worker's counters.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from tenantkit.cache.nodecounters import KINDS
from tenantkit.cache.status import InvalidatorStatus

__all__ = ["CONTENT_TYPE", "Metrics", "replica_lag", "routing_stats", "watch_router"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ROUTERS: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_router(router: Any) -> None:
    """Count *router*'s decisions and replica lag in this process's metrics (held weakly)."""
    _ROUTERS.add(router)


def routing_stats() -> dict[tuple[str, str], int]:
    """Decisions of every watched router, summed by (role, reason)."""
    out: dict[tuple[str, str], int] = {}
    for router in list(_ROUTERS):
        for role, reasons in router.stats().items():
            for reason, count in reasons.items():
                out[(role, reason)] = out.get((role, reason), 0) + count
    return out


def replica_lag() -> dict[str, float | None]:
    """The last measured lag of every replica of every watched router (None: unknown)."""
    out: dict[str, float | None] = {}
    for router in list(_ROUTERS):
        for state in router.health.states():
            out[state.name] = state.lag if state.status != "down" else None
    return out


#: Upstream-time histogram buckets (seconds), fine enough for a p50/p99 on the status page.
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, float("inf"))

def _quantile(cumulative: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the first bucket holding the *q* quantile of a cumulative
    histogram (``le`` -> count); None when it is empty."""
    ordered = sorted(cumulative.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    for bound, count in ordered:
        if count >= q * total:
            return bound
    return ordered[-1][0]  # pragma: no cover - the +Inf bucket holds everything


RoutingStats = Callable[[], Mapping[tuple[str, str], int]]
LagStats = Callable[[], Mapping[str, float | None]]
InvalidationStats = Callable[[], Iterable[InvalidatorStatus]]
NodeStats = Callable[[], Mapping[str, Mapping[str, int]]]

#: What each node counter kind means, for the metrics' help text.
NODE_HELP = {
    "flushes": "Whole-site flushes carried out on this node",
    "purges": "Targeted purges carried out on this node (after coalescing)",
    "coalesced": "Purges and flushes merged into another instead of being carried out",
    "renders": "Pages rendered by a backend and stored on this node",
    "stale_served": "Responses served from a stale page on this node",
}


class _Callbacks:
    """Reads routing decisions and replica lag when scraped."""

    def __init__(self, routing: RoutingStats | None, lag: LagStats | None,
                 invalidation: InvalidationStats | None = None,
                 node: NodeStats | None = None) -> None:
        self.routing = routing
        self.lag = lag
        self.invalidation = invalidation
        self.node = node

    def collect(self) -> Iterator[Any]:
        decisions = CounterMetricFamily(
            "tenantkit_routing_decisions", "Statements routed, by role and reason",
            labels=["role", "reason"])
        if self.routing is not None:
            for (role, reason), count in sorted(self.routing().items()):
                decisions.add_metric([role, reason], count)
        yield decisions
        lag = GaugeMetricFamily("tenantkit_replica_lag_seconds",
                                "Replication lag of each replica (NaN: unknown)",
                                labels=["replica"])
        if self.lag is not None:
            for replica, seconds in sorted(self.lag().items()):
                lag.add_metric([replica], float("nan") if seconds is None else seconds)
        yield lag
        yield from self._invalidation()
        yield from self._node()

    def _node(self) -> Iterator[Any]:
        """``tenantkit_node_<kind>_total{site=...}``: every process of the node, added up
        from the counter files."""
        counts = self.node() if self.node is not None else {}
        for kind in KINDS:
            family = CounterMetricFamily(f"tenantkit_node_{kind}", NODE_HELP[kind],
                                         labels=["site"])
            for site, count in sorted(counts.get(kind, {}).items()):
                family.add_metric([site], count)
            yield family

    def _invalidation(self) -> Iterator[Any]:
        """``tenantkit_invalidation_*``: each node's invalidator, from its status file."""
        labels = ["node", "source"]
        up = GaugeMetricFamily("tenantkit_invalidation_up", "1 when the node's invalidator "
                               "reports in time and is connected", labels=labels)
        lag = GaugeMetricFamily("tenantkit_invalidation_lag_seconds", "How far the binlog "
                                "reader is behind (NaN: no binlog source)", labels=labels)
        age = GaugeMetricFamily("tenantkit_invalidation_report_age_seconds",
                                "Seconds since the invalidator last reported", labels=labels)
        last = GaugeMetricFamily("tenantkit_invalidation_last_event_timestamp_seconds",
                                 "Unix time of the node's last purge (NaN: none yet)",
                                 labels=labels)
        handled = CounterMetricFamily("tenantkit_invalidation_events_handled",
                                      "Bus events handled", labels=labels)
        dead = CounterMetricFamily("tenantkit_invalidation_dead_letters",
                                   "Entries moved to a dead letter", labels=labels)
        for status in self.invalidation() if self.invalidation is not None else ():
            key = [status.node, status.source]
            up.add_metric(key, 0.0 if status.problem() else 1.0)
            lag.add_metric(key, float("nan") if status.lag is None else status.lag)
            age.add_metric(key, status.age())
            last.add_metric(key, float("nan") if status.last_event is None
                            else status.last_event)
            handled.add_metric(key, status.handled)
            dead.add_metric(key, status.dead_letters)
        yield from (up, lag, age, last, handled, dead)


def _value(child: Any) -> Any:
    """What ``child.inc(1)`` ends up incrementing: prometheus-client's per-child value
    (``MutexValue``, or the mmap-backed one under ``PROMETHEUS_MULTIPROC_DIR``), else the
    child itself should a future release keep it elsewhere."""
    value = getattr(child, "_value", None)
    return value if callable(getattr(value, "inc", None)) else child


class Metrics:
    """The shim's counters and gauges."""

    def __init__(self, *, routing: RoutingStats | None = routing_stats,
                 lag: LagStats | None = replica_lag,
                 invalidation: InvalidationStats | None = None,
                 node: NodeStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter("tenantkit_requests", "Requests answered, by site and status",
                                ["site", "status"], registry=self.registry)
        self.cache_results = Counter("tenantkit_cache", "Page-cache results by site",
                                     ["site", "result"], registry=self.registry)
        self.reload_errors = Gauge("tenantkit_reload_errors",
                                   "Site files that currently fail to load",
                                   registry=self.registry, multiprocess_mode="max")
        self.sites = Gauge("tenantkit_sites", "Sites loaded", registry=self.registry,
                           multiprocess_mode="max")
        self.upstream_seconds = Histogram(
            "tenantkit_upstream_seconds", "Time the site's backend took to start its answer",
            ["site"], registry=self.registry, buckets=UPSTREAM_BUCKETS)
        self.callbacks = _Callbacks(routing, lag, invalidation, node)
        self.registry.register(self.callbacks)
        # (site, status|result) -> the labelled child's value holder, found once: the label
        # lookup and Counter.inc's argument checks cost more than the count itself.
        self._requests: dict[tuple[str, int], Any] = {}
        self._cache: dict[tuple[str, str], Any] = {}
        self._upstream: dict[str, Any] = {}

    def request(self, site: str, status: int) -> None:
        try:
            self._requests[site, status].inc(1)
        except KeyError:
            value = self._requests[site, status] = _value(
                self.requests.labels(site, str(status)))
            value.inc(1)

    def cache(self, site: str, result: str) -> None:
        try:
            self._cache[site, result].inc(1)
        except KeyError:
            value = self._cache[site, result] = _value(self.cache_results.labels(site, result))
            value.inc(1)

    def upstream(self, site: str, seconds: float) -> None:
        try:
            self._upstream[site].observe(seconds)
        except KeyError:
            child = self._upstream[site] = self.upstream_seconds.labels(site)
            child.observe(seconds)

    def _families(self) -> Iterable[Any]:
        """Every metric family: every worker's under ``PROMETHEUS_MULTIPROC_DIR``, else this
        process's."""
        if self.multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return list(merged.collect())
        return [family for metric in (self.requests, self.cache_results,
                                      self.upstream_seconds) for family in metric.collect()]

    def cache_counts(self) -> dict[str, dict[str, float]]:
        """site -> result -> count, summed over every worker (for the status page)."""
        return {name: dict(stats["cache"]) for name, stats in self.site_stats().items()}

    def site_stats(self) -> dict[str, dict[str, Any]]:
        """Per site, summed over every worker: ``requests``, ``errors`` (5xx), ``cache``
        (result -> count), ``upstream_p50`` and ``upstream_p99`` (seconds, the upper bound of
        the histogram bucket; None without traffic)."""
        out: dict[str, dict[str, Any]] = {}
        buckets: dict[str, dict[float, float]] = {}

        def entry(site: str) -> dict[str, Any]:
            return out.setdefault(site, {"requests": 0.0, "errors": 0.0, "cache": {},
                                         "upstream_p50": None, "upstream_p99": None})

        for family in self._families():
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "tenantkit_requests_total":
                    row = entry(labels["site"])
                    row["requests"] += sample.value
                    if labels["status"].startswith("5"):
                        row["errors"] += sample.value
                elif sample.name == "tenantkit_cache_total":
                    cache = entry(labels["site"])["cache"]
                    cache[labels["result"]] = cache.get(labels["result"], 0.0) + sample.value
                elif sample.name == "tenantkit_upstream_seconds_bucket":
                    per = buckets.setdefault(labels["site"], {})
                    bound = float(labels["le"])
                    per[bound] = per.get(bound, 0.0) + sample.value
        for site, per in buckets.items():
            row = entry(site)
            row["upstream_p50"] = _quantile(per, 0.5)
            row["upstream_p99"] = _quantile(per, 0.99)
        return out

    def render(self) -> bytes:
        if self.multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            merged.register(self.callbacks)
            return generate_latest(merged)
        return generate_latest(self.registry)
