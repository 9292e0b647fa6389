"""Admin port: /__edge/status (JSON for the DNS tier), /metrics (Prometheus) and purge.

`Metrics` is the edge's counter set; the proxy updates it on every response. Each edge has
its own prometheus CollectorRegistry so several edges can live in one test process.
With several worker processes the status document and /metrics describe the whole node:
the answering worker merges the other workers' published records (edge.nodestats) with its
own live numbers (counters and histograms summed, gauges as NODE_GAUGES says).
"""

from __future__ import annotations

import collections
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edge import nodestats
from edge.errors import StoreError

if TYPE_CHECKING:
    from edge.proxy import Proxy

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


class _Families(Collector):
    """Metric families already collected, for generate_latest."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Metrics:
    def __init__(self, capacity_rps: float = 1000.0, clock: Callable[[], float] = time.monotonic):
        self.capacity_rps = capacity_rps
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        # Counted in a plain dict on the hot path and turned into a metric at scrape time.
        self.counts: collections.Counter[tuple[int, str]] = collections.Counter()
        self.registry.register(_RequestCounts(self))
        self.origin_latency = Histogram(
            "edge_origin_latency_seconds",
            "Time from sending a request to an origin to its response headers",
            ["origin"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
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
}


def worker_record(
    proxy: Proxy, now: float, pid: int | None = None, *, samples: bool = True
) -> nodestats.WorkerRecord:
    """This worker's counters as a record: what it publishes (with its /metrics samples),
    and its share of the status (`samples=False`)."""
    metrics = proxy.metrics
    if samples:
        proxy.refresh_gauges()
    return nodestats.WorkerRecord(
        pid=os.getpid() if pid is None else pid,
        time=now,
        active_requests=metrics.active,
        requests_per_second=metrics.requests_per_second(),
        hits=metrics.hits,
        lookups=metrics.lookups,
        counts=tuple((status, cache, n) for (status, cache), n in metrics.counts.items()),
        origins=tuple(
            nodestats.OriginState(o.url, o.up, o.active, o.weight) for o in proxy.pool.status()
        ),
        samples=nodestats.registry_samples(metrics.registry.collect()) if samples else (),
    )


def build_status(
    node: nodestats.NodeStats,
    capacity_rps: float,
    cache: dict[str, Any],
    *,
    per_worker: bool = False,
) -> dict[str, Any]:
    """The /__edge/status document for a (merged) node view; pure."""
    up = [o.url for o in node.origins if o.up]
    down = [o.url for o in node.origins if not o.up]
    rps = node.requests_per_second
    load = 1.0 if capacity_rps <= 0 else max(0.0, min(1.0, rps / capacity_rps))
    doc: dict[str, Any] = {
        "healthy": bool(up),
        "origins": {
            "up": up,
            "down": down,
            "detail": [
                {"url": o.url, "up": o.up, "active": o.active, "weight": o.weight}
                for o in node.origins
            ],
        },
        "active_requests": node.active_requests,
        "requests_per_second": round(rps, 3),
        "capacity_rps": capacity_rps,
        "load_factor": round(load, 4),
        "hit_ratio": round(node.hits / node.lookups if node.lookups else 0.0, 4),
        "cache": cache,
    }
    if per_worker:
        doc["workers"] = [
            {
                "pid": w.pid,
                "requests": w.requests,
                "active_requests": w.active_requests,
                "requests_per_second": round(w.requests_per_second, 3),
            }
            for w in node.workers
        ]
    return doc


def status_document(
    proxy: Proxy,
    peers: Sequence[nodestats.WorkerRecord] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The edge's status; with `peers` (several workers), for the whole node and with a
    "workers" list, the answering worker first."""
    now = time.monotonic() if now is None else now
    node = nodestats.merge(worker_record(proxy, now, samples=False), peers or (), now)
    return build_status(
        node, proxy.metrics.capacity_rps, proxy.cache_status(), per_worker=peers is not None
    )


def _bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def add_routes(
    app: web.Application,
    get_proxy: Callable[[], Proxy],
    get_peers: Callable[[], Sequence[nodestats.WorkerRecord]] | None = None,
) -> None:
    """`get_peers`, when given, reads the other workers' fresh records (edge.nodestats)."""

    async def status(request: web.Request) -> web.Response:
        peers = get_peers() if get_peers is not None else None
        return web.json_response(status_document(get_proxy(), peers))

    async def metrics(request: web.Request) -> web.Response:
        proxy = get_proxy()
        proxy.refresh_gauges()
        m = proxy.metrics
        if get_peers is None:
            body = generate_latest(m.registry)
        else:
            families = nodestats.merge_families(
                m.registry.collect(), os.getpid(), get_peers(), time.monotonic(), NODE_GAUGES
            )
            body = generate_latest(_Families(list(families)))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def purge(request: web.Request) -> web.Response:
        token = get_proxy().config.admin.token
        if token is not None and not _bearer_ok(request, token):
            return web.json_response(
                {"error": "purging needs Authorization: Bearer <admin.token_file's token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="edge"'},
            )
        try:
            doc = json.loads(await request.read() or b"{}")
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "body must be JSON"}, status=400)
        kinds = [
            k for k in ("url", "prefix", "surrogate_key") if isinstance(doc, dict) and k in doc
        ]
        if len(kinds) != 1 or not isinstance(doc[kinds[0]], str) or not doc[kinds[0]]:
            return web.json_response(
                {"error": 'expected exactly one of {"url"|"prefix"|"surrogate_key": "..."}'},
                status=400,
            )
        kind = kinds[0]
        proxy = get_proxy()
        try:
            removed = await proxy.purge(kind, doc[kind])
        except StoreError as exc:
            return web.json_response({"error": f"purge failed: {exc}"}, status=503)
        proxy.metrics.purges.labels(kind).inc()
        return web.json_response({"purged": removed, kind: doc[kind]})

    app.router.add_get("/__edge/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/__edge/purge", purge)
