"""The edge's counters: what /metrics exports and /__edge/status summarises.

The proxy updates a `Metrics` on every response. Each edge has its own prometheus
CollectorRegistry, so several edges can live in one test process; `NODE_GAUGES` says how
a node of several workers combines each gauge (edge.nodestats.merge_families).
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from edge import nodestats

_WINDOW = 10  # seconds of history for requests per second


class _RequestCounts(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "edge_requests",
            "Responses sent to clients by status code and cache status",
            labels=["status", "cache"],
        )
        for (status, cache), n in sorted(self.metrics.counts.items()):
            family.add_metric([str(status), cache], n)
        yield family


class _ScreeningCounts(Collector):
    """edge.screening's counters, kept in a plain Counter on the hot path."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hits = CounterMetricFamily(
            "edge_screening_rule_hits",
            "Requests a screening rule decided, by rule and action (allow, deny, limit, close)",
            labels=["rule", "action"],
        )
        bans = CounterMetricFamily(
            "edge_screening_bans",
            "Temporary bans a rate rule started (ban_after refusals in a row)",
            labels=["rule"],
        )
        for (rule, action), n in sorted(self.metrics.screen_counts.items()):
            if action == "ban":
                bans.add_metric([rule], n)
            else:
                hits.add_metric([rule, action], n)
        yield hits
        yield bans
        banned = self.metrics.banned_keys
        # The node's shared table: every worker reads the same figure (not summed).
        yield GaugeMetricFamily(
            "edge_screening_banned_keys",
            "Rate-limit keys (clients, networks...) under a temporary ban now",
            value=banned() if banned is not None else 0,
        )


class OriginLatency(Collector):
    """edge_origin_latency_seconds by origin: per origin, the count in each bucket (the
    last one +Inf) and the sum, kept in a plain list on the hot path (a bisect finds the
    bucket; prometheus_client's Histogram walks its bounds in Python and takes a lock per
    count) and made a histogram at scrape time."""

    BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
    _LE = (*map(repr, BOUNDS), "+Inf")  # as prometheus_client writes these bounds

    def __init__(self) -> None:
        self._by_origin: dict[str, list[float]] = {}  # counts by bucket, +Inf, then the sum

    def observe(self, origin: str, seconds: float) -> None:
        counts = self._by_origin.get(origin)
        if counts is None:
            counts = self._by_origin[origin] = [0] * (len(self.BOUNDS) + 2)
        counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "edge_origin_latency_seconds",
            "Time from sending a request to an origin to its response headers",
            labels=["origin"],
        )
        for origin, counts in sorted(self._by_origin.items()):
            buckets: list[tuple[str, float]] = []
            seen = 0.0
            for le, n in zip(self._LE, counts[:-1], strict=True):
                seen += n
                buckets.append((le, seen))
            family.add_metric([origin], buckets, sum_value=counts[-1])
        yield family


class Metrics:
    def __init__(self, capacity_rps: float = 1000.0, clock: Callable[[], float] = time.monotonic):
        self.capacity_rps = capacity_rps
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        # Counted in a plain dict on the hot path and turned into a metric at scrape time.
        self.counts: collections.Counter[tuple[int, str]] = collections.Counter()
        self.registry.register(_RequestCounts(self))
        # edge.screening: (rule, action) -> requests it decided; (rule, "ban") -> bans.
        self.screen_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.banned_keys: Callable[[], int] | None = None  # the node's RateTable, once set
        self.registry.register(_ScreeningCounts(self))
        self.origin_latency = OriginLatency()
        self.registry.register(self.origin_latency)
        self.origin_errors = Counter(
            "edge_origin_errors",
            "Failed origin requests (connect, timeout, broken response)",
            ["origin", "kind"],
            registry=self.registry,
        )
        self.probes = Counter(
            "edge_probes", "Health probe results", ["origin", "result"], registry=self.registry
        )
        self.origin_up = Gauge(
            "edge_origin_up", "1 when the origin is in rotation", ["origin"], registry=self.registry
        )
        self.active_gauge = Gauge(
            "edge_active_requests", "Requests in flight", registry=self.registry
        )
        self.cache_bytes = Gauge(
            "edge_cache_bytes", "Bytes held by the disk cache", registry=self.registry
        )
        self.cache_entries = Gauge(
            "edge_cache_entries", "Objects in the disk cache", registry=self.registry
        )
        self.cache_degraded = Gauge(
            "edge_cache_degraded",
            "1 while the cache is not storing (e.g. disk full)",
            registry=self.registry,
        )
        self.cache_resets = Counter(
            "edge_cache_store_resets",
            "Cache stores found corrupt at start, set aside and replaced by an empty one",
            registry=self.registry,
        )
        self.purges = Counter(
            "edge_purges", "Purge requests by kind", ["kind"], registry=self.registry
        )
        self.loops = Counter(
            "edge_loops_detected",
            "Requests answered 508: loop (this node's id in CDN-Loop or Via) or too-many-hops",
            ["reason"],
            registry=self.registry,
        )
        self.active = 0
        self.hits = 0
        self.lookups = 0
        self._buckets: collections.deque[list[int]] = collections.deque(maxlen=_WINDOW + 1)

    def response(self, status: int, cache: str) -> None:
        """Count one response; `cache` is hit, stale, revalidated, miss, bypass or error."""
        self.counts[(status, cache)] += 1
        if cache in ("hit", "stale", "revalidated"):
            self.hits += 1
            self.lookups += 1
        elif cache == "miss":
            self.lookups += 1
        second = int(self._clock())
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])

    def observe_probe(self, origin: str, ok: bool, status: int | None, elapsed: float) -> None:
        self.probes.labels(origin, "ok" if ok else "fail").inc()

    def requests_per_second(self) -> float:
        now = int(self._clock())
        total = sum(n for sec, n in self._buckets if now - _WINDOW <= sec < now)
        return total / _WINDOW

    def hit_ratio(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def load_factor(self) -> float:
        if self.capacity_rps <= 0:
            return 1.0
        return max(0.0, min(1.0, self.requests_per_second() / self.capacity_rps))


# How /metrics combines a gauge over the workers (edge.nodestats.merge_families); the cache
# gauges describe the one disk cache the workers share, so the answering worker's stand.
NODE_GAUGES: dict[str, nodestats.Combine] = {
    "edge_active_requests": sum,
    "edge_origin_up": min,  # in rotation for the node only while every worker has it up
    "edge_cache_degraded": max,
    "edge_stream_active": sum,  # edge.stream_pool.StreamCollector
    "edge_stream_origin_up": min,
}
