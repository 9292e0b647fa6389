"""A stream's origin pool and counters: the decisions and numbers behind edge.stream.

The choice of an origin and its health are edge.origins.OriginPool's, the same code as the
HTTP pool's: a `[[stream]]` table is translated to a PoolConfig (`pool_config`), its
algorithms map onto the pool's (round_robin is smooth weighted round robin, so weights
hold; least_connections is least_conn; hash is the consistent hash ring keyed by the
client's IP address), and a connect failure is a failed request for passive ejection.

The counters are plain numbers bumped on the data path and turned into Prometheus families
at scrape time (`StreamCollector`), like edge.metrics' request counts.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edge.config import Address, OriginConfig, PoolConfig, ProbeConfig, StreamConfig
from edge.origins import Clock, Origin, OriginPool

_ALGORITHMS = {
    "round_robin": "weighted",
    "least_connections": "least_conn",
    "hash": "consistent_hash",
}


def origin_url(stream: StreamConfig, address: Address) -> str:
    """How an origin of a stream is named in the pool, the status and the metrics."""
    return f"{stream.protocol}://{address}"


def pool_config(stream: StreamConfig) -> PoolConfig:
    """The OriginPool configuration of a stream."""
    probe = stream.probe
    return PoolConfig(
        origins=tuple(
            OriginConfig(url=origin_url(stream, o.address), weight=o.weight) for o in stream.origins
        ),
        algorithm=_ALGORITHMS[stream.algorithm],
        connect_timeout=stream.connect_timeout,
        max_fails=stream.max_fails,
        probe=ProbeConfig(
            enabled=probe.enabled,
            interval=probe.interval,
            timeout=probe.timeout,
            rise=probe.rise,
            fall=probe.fall,
            jitter=probe.jitter,
        ),
    )


@dataclass(slots=True)
class OriginCounts:
    connections: int = 0  # TCP connections made, UDP flows opened
    bytes_in: int = 0  # client -> origin
    bytes_out: int = 0  # origin -> client
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    probes: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(slots=True)
class StreamStats:
    """One stream's counters; per origin by its URL."""

    name: str
    origins: dict[str, OriginCounts] = field(default_factory=dict)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    closed: collections.Counter[str] = field(default_factory=collections.Counter)
    active: int = 0  # open connections (TCP) or flows (UDP)

    def origin(self, url: str) -> OriginCounts:
        counts = self.origins.get(url)
        if counts is None:
            counts = self.origins[url] = OriginCounts()
        return counts


class StreamPool:
    """A stream's OriginPool plus the address to connect to for each origin."""

    def __init__(self, stream: StreamConfig, clock: Clock = time.monotonic) -> None:
        self.stream = stream
        self.pool = OriginPool(pool_config(stream), clock)
        self.stats = StreamStats(stream.name)
        self._addresses: dict[str, Address] = {}
        self.bound: list[Address] = []  # where the listener is (port 0 resolved)
        self.update(stream)

    def update(self, stream: StreamConfig) -> None:
        self.stream = stream
        self.pool.update(pool_config(stream))
        self._addresses = {origin_url(stream, o.address): o.address for o in stream.origins}

    def address(self, origin: Origin) -> Address:
        return self._addresses[origin.url]

    def pick(self, client_ip: str, exclude: Iterable[Origin] = ()) -> Origin | None:
        return self.pool.pick(client_ip, exclude)

    def connected(self, origin: Origin) -> None:
        """A connection (or flow) to `origin` opened: it is in use, and its failure run ends."""
        self.pool.started(origin)
        self.pool.connected(origin)
        self.stats.origin(origin.url).connections += 1

    def connect_failed(self, origin: Origin, kind: str) -> None:
        """A connect to `origin` failed (`kind`: refused, timeout...): passive health."""
        self.stats.origin(origin.url).errors[kind] += 1
        self.pool.started(origin)
        self.pool.finished(origin, ok=False)

    def closed(self, origin: Origin, ok: bool = True) -> None:
        self.pool.finished(origin, ok)

    def status(self) -> dict[str, Any]:
        origins = self.pool.status()
        return {
            "name": self.stream.name,
            "listen": [f"{self.stream.protocol}://{a}" for a in self.bound] or [self.stream.url],
            "healthy": any(o.up and o.weight > 0 for o in origins),
            "active": self.stats.active,
            "up": [o.url for o in origins if o.up],
            "down": [o.url for o in origins if not o.up],
            "detail": [
                {"url": o.url, "up": o.up, "active": o.active, "weight": o.weight} for o in origins
            ],
        }


class StreamCollector(Collector):
    """The streams' counters and gauges as Prometheus families, read at scrape time."""

    def __init__(self, pools: Callable[[], Iterable[StreamPool]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        families = {
            name: (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                f"edge_stream_{name}", doc, labels=["stream", *labels]
            )
            for name, (kind, doc, labels) in _FAMILIES.items()
        }
        for sp in self.pools():
            stats = sp.stats
            name = stats.name
            families["active"].add_metric([name], stats.active)
            for reason, n in sorted(stats.refused.items()):
                families["refused"].add_metric([name, reason], n)
            for reason, n in sorted(stats.closed.items()):
                families["closed"].add_metric([name, reason], n)
            for o in sp.pool.origins:
                families["origin_up"].add_metric([name, o.url], 1.0 if o.up else 0.0)
            for url, c in sorted(stats.origins.items()):
                families["connections"].add_metric([name, url], c.connections)
                families["bytes"].add_metric([name, url, "in"], c.bytes_in)
                families["bytes"].add_metric([name, url, "out"], c.bytes_out)
                for kind, n in sorted(c.errors.items()):
                    families["errors"].add_metric([name, url, kind], n)
                for result, n in sorted(c.probes.items()):
                    families["probes"].add_metric([name, url, result], n)
        yield from families.values()


# edge_stream_<name>: (type, help, labels after "stream")
_FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    "connections": (
        "counter",
        "Connections (TCP) or flows (UDP) opened to an origin",
        ["origin"],
    ),
    "bytes": (
        "counter",
        "Bytes relayed: in from clients to an origin, out from an origin to clients",
        ["origin", "direction"],
    ),
    "errors": (
        "counter",
        "Failures with an origin: connect, connect_timeout, refused (ICMP), send, dropped",
        ["origin", "kind"],
    ),
    "probes": ("counter", "Stream health probe results", ["origin", "result"]),
    "refused": (
        "counter",
        "Clients turned away: limit (over max_connections), no_origin (none up or reachable)",
        ["reason"],
    ),
    "closed": (
        "counter",
        "Connections or flows the edge ended: idle (idle_timeout), evicted (UDP table full)",
        ["reason"],
    ),
    "active": ("gauge", "Open connections (TCP) or flows (UDP)", []),
    "origin_up": ("gauge", "1 when the origin is in rotation", ["origin"]),
}
