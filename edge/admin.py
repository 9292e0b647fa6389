"""Admin port: /__edge/status (JSON for the DNS tier), /metrics (Prometheus) and purge.

The counters are edge.metrics.Metrics, which the proxy updates on every response.
With several worker processes the status document and /metrics describe the whole node:
the answering worker merges the other workers' published records (edge.nodestats) with its
own live numbers (counters and histograms summed, gauges as NODE_GAUGES says).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edge import nodestats
from edge.errors import StoreError
from edge.metrics import NODE_GAUGES

if TYPE_CHECKING:
    from edge.proxy import Proxy  # the admin routes read the proxy; it never imports them

# The most a purge request may ask the edge to wait for its removal ("wait", seconds)
# before the answer; without it the answer waits for the end.
MAX_WAIT = 3600


class _Families(Collector):
    """Metric families already collected, for generate_latest."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


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
    streams: Sequence[dict[str, Any]] = (),
    http: bool = True,
) -> dict[str, Any]:
    """The /__edge/status document for a (merged) node view; pure.

    `healthy` is about what the edge serves: with HTTP listeners (`http`), whether an HTTP
    origin is up, as before streams existed; an edge of streams alone is healthy while any
    of its stream pools has an origin up. Stream pools are listed under "streams" either
    way, so a stream pool that is down on an HTTP edge is visible without taking the
    edge's HTTP traffic out of DNS answers."""
    up = [o.url for o in node.origins if o.up]
    down = [o.url for o in node.origins if not o.up]
    rps = node.requests_per_second
    load = 1.0 if capacity_rps <= 0 else max(0.0, min(1.0, rps / capacity_rps))
    healthy = bool(up) if http else any(s.get("healthy") for s in streams)
    doc: dict[str, Any] = {
        "healthy": healthy,
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
    if streams:
        doc["streams"] = list(streams)
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
    streams: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The edge's status; with `peers` (several workers), for the whole node and with a
    "workers" list, the answering worker first. `streams` is the stream pools' status
    (edge.stream.StreamSet.status; the answering worker's view)."""
    now = time.monotonic() if now is None else now
    node = nodestats.merge(worker_record(proxy, now, samples=False), peers or (), now)
    return build_status(
        node,
        proxy.metrics.capacity_rps,
        proxy.cache_status(),
        per_worker=peers is not None,
        streams=streams,
        http=proxy.config.has_http,
    )


def _bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def add_routes(
    app: web.Application,
    get_proxy: Callable[[], Proxy],
    get_peers: Callable[[], Sequence[nodestats.WorkerRecord]] | None = None,
    get_streams: Callable[[], Sequence[dict[str, Any]]] = tuple,
) -> None:
    """`get_peers`, when given, reads the other workers' fresh records (edge.nodestats);
    `get_streams` the stream pools' status."""

    def refused(request: web.Request, what: str) -> web.Response | None:
        """401 unless the request carries the admin token (always for purges; for the
        status and metrics with admin.private)."""
        admin = get_proxy().config.admin
        if admin.token is None or (what != "purging" and not admin.private):
            return None
        if _bearer_ok(request, admin.token):
            return None
        return web.json_response(
            {"error": f"{what} needs Authorization: Bearer <admin.token_file's token>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="edge"'},
        )

    async def status(request: web.Request) -> web.Response:
        if (no := refused(request, "the status")) is not None:
            return no
        peers = get_peers() if get_peers is not None else None
        return web.json_response(status_document(get_proxy(), peers, streams=get_streams()))

    async def metrics(request: web.Request) -> web.Response:
        if (no := refused(request, "the metrics")) is not None:
            return no
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
        if (no := refused(request, "purging")) is not None:
            return no
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
        wait = doc.get("wait")
        if wait is not None and not (
            isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= MAX_WAIT
        ):
            return web.json_response(
                {"error": f'"wait" must be a number of seconds above 0, at most {MAX_WAIT}'},
                status=400,
            )
        proxy = get_proxy()
        try:
            removed = await proxy.purge(kind, doc[kind], wait)
        except StoreError as exc:
            return web.json_response({"error": f"purge failed: {exc}"}, status=503)
        proxy.metrics.purges.labels(kind).inc()
        if removed is None:
            # Still removing after `wait`: accepted, and going on (CacheLayer.purge).
            return web.json_response(
                {"purged": None, "removing": True, kind: doc[kind]}, status=202
            )
        return web.json_response({"purged": removed, kind: doc[kind]})

    app.router.add_get("/__edge/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/__edge/purge", purge)
