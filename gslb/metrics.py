"""Query metrics and the optional JSON query log.

`QueryMetrics` is the answer engine's Observer (see gslb.answer) plus the latency sink of the
server adapters. Per-query work is one list increment and one bisect: without a query log
the engine counts each reply in `counts`, at the slot `slot` gave its key (rcode, qtype,
pool, edges) when the engine made the answer, instead of calling `answered` (a call with
seven arguments cost more than a cached static answer itself), and the counts are folded
into the per-rcode and per-edge counters whenever they are read. Past TALLY_SLOTS distinct
keys a key gets no slot and its replies are counted in the `tally` dict, folded alike. Counters
live in plain dicts and only become Prometheus metric families when /metrics is scraped,
through `MetricsCollector` (a custom prometheus_client Collector on a private registry).

Several workers: each worker's `QueryMetrics.export()` (cumulative, JSON-able) is sent to the
parent over its pipe about once a second (gslb.workers); the parent's collector sums the latest
export of every live worker plus the final totals of workers that exited, so counters stay
monotonic across worker restarts. With one worker the collector reads the local object directly.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gslb.models import Clock, Tally

__all__ = [
    "LATENCY_BUCKETS",
    "MetricsCollector",
    "PoolCollector",
    "ProbeCollector",
    "PurgeCollector",
    "QueryMetrics",
    "TransitionCollector",
    "make_registry",
    "merge_exports",
]

# Distinct reply keys (rcode, qtype, pool, edges) given a slot in `counts`; a large pool
# with several answers per reply has many, and the slots are kept for the process's life.
TALLY_SLOTS: Final = 1 << 16

# Seconds; answers from the encoded-response cache take a few microseconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
)

_RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
    23: "BADCOOKIE",
}


def rcode_name(rcode: int) -> str:
    return _RCODES.get(rcode, str(rcode))


def qtype_name(qtype: int) -> str:
    try:
        from dnslib import QTYPE

        name = QTYPE.get(qtype)
    except Exception:
        return str(qtype)
    return str(name) if name is not None else str(qtype)


class QueryMetrics:
    """Counters of one process; implements gslb.answer.Observer."""

    __slots__ = (
        "_answers",
        "_clock",
        "_log",
        "_queries",
        "_room",
        "_slots",
        "buckets",
        "counts",
        "detailed",
        "dropped",
        "geo_table",
        "latency_sum",
        "pool_misses",
        "rrl_dropped",
        "rrl_slipped",
        "tally",
        "tcp_open",
    )

    def __init__(
        self,
        *,
        query_log: TextIO | None = None,
        clock: Clock = time.time,
        slots: int = TALLY_SLOTS,
    ) -> None:
        self._queries: dict[tuple[int, int, str], int] = {}  # (rcode, qtype, pool or "") -> n
        self._answers: dict[str, int] = {}  # edge -> answers naming it
        # Replies counted by the engine and not yet folded into the two above (see `fold`):
        # by slot (`slot`: key -> its index in counts), and by key past `slots` keys
        self.counts: list[int] = []
        self._room = slots
        self._slots: dict[Tally, int] = {}
        self.tally: dict[Tally, int] = {}
        self.detailed = query_log is not None  # the engine calls `answered` for every reply
        self.pool_misses: dict[str, int] = {}  # pool -> answers no answer cache held
        self.buckets: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)  # last: +Inf
        self.latency_sum = 0.0
        self.dropped = 0
        self.tcp_open = 0  # TCP connections open now (a gauge, kept by the server adapter)
        self.geo_table = 0  # 1 while the GeoIP /24 table answers (a gauge, gslb.service)
        self.rrl_dropped = 0  # UDP replies response rate limiting withheld (gslb.rrl)
        self.rrl_slipped = 0  # ... and sent truncated instead
        self._log = query_log
        self._clock = clock

    def answered(
        self,
        *,
        qname: str,
        qtype: int,
        rcode: int,
        pool: str | None,
        edges: tuple[str, ...],
        client: str,
        ecs: str | None,
    ) -> None:
        key = (rcode, qtype, pool or "")
        queries = self._queries
        queries[key] = queries.get(key, 0) + 1
        if edges:
            answers = self._answers
            for edge in edges:
                answers[edge] = answers.get(edge, 0) + 1
        if self._log is not None:
            record = {
                "ts": round(self._clock(), 6),
                "client": client,
                "ecs": ecs,
                "qname": qname,
                "qtype": qtype_name(qtype),
                "rcode": rcode_name(rcode),
                "pool": pool,
                "edges": list(edges),
            }
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def pool_miss(self, pool: str) -> None:
        misses = self.pool_misses
        misses[pool] = misses.get(pool, 0) + 1

    def slot(self, key: Tally) -> int:
        """The index in `counts` for replies counted by `key` (the same for equal keys, for
        this object's lifetime), or -1 past `slots` keys (TALLY_SLOTS unless told): then
        they go in `tally`."""
        found = self._slots.get(key)
        if found is None:
            if len(self.counts) >= self._room:
                return -1
            found = self._slots[key] = len(self.counts)
            self.counts.append(0)
        return found

    def fold(self) -> None:
        """Add the counts and the tally to the query and edge counters (done by every
        reader of those)."""
        tally, self.tally = self.tally, {}
        counts = self.counts
        for counted, i in self._slots.items():
            n = counts[i]
            if n:
                counts[i] = 0
                tally[counted] = tally.get(counted, 0) + n
        queries = self._queries
        answers = self._answers
        for (rcode, qtype, pool, edges), n in tally.items():
            key = (rcode, qtype, pool)
            queries[key] = queries.get(key, 0) + n
            for edge in edges:
                answers[edge] = answers.get(edge, 0) + n

    @property
    def queries(self) -> dict[tuple[int, int, str], int]:
        """(rcode, qtype, pool or "") -> replies."""
        self.fold()
        return self._queries

    @property
    def answers(self) -> dict[str, int]:
        """edge -> pool answers naming it."""
        self.fold()
        return self._answers

    def set_query_log(self, stream: TextIO | None) -> None:
        self._log = stream
        self.detailed = stream is not None

    @property
    def latency_count(self) -> int:
        return sum(self.buckets)

    def observe_latency(self, seconds: float) -> None:
        # The UDP adapter inlines these two lines (gslb.server): keep them in step.
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def drop(self) -> None:
        self.dropped += 1

    def export(self) -> dict[str, Any]:
        """Cumulative counters as JSON-able data (sent from workers to the parent)."""
        self.fold()
        return {
            "queries": [[r, t, p, n] for (r, t, p), n in self._queries.items()],
            "answers": dict(self._answers),
            "pool_misses": dict(self.pool_misses),
            "buckets": list(self.buckets),
            "latency_sum": self.latency_sum,
            "latency_count": sum(self.buckets),
            "dropped": self.dropped,
            "tcp_open": self.tcp_open,
            "geo_table": self.geo_table,
            "rrl_dropped": self.rrl_dropped,
            "rrl_slipped": self.rrl_slipped,
        }


# The integer totals of an export, summed over the workers.
_SUMMED: Final = (
    "latency_count",
    "dropped",
    "tcp_open",
    "geo_table",
    "rrl_dropped",
    "rrl_slipped",
)


def merge_exports(exports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum several `QueryMetrics.export()` results (malformed parts are skipped)."""
    queries: dict[tuple[int, int, str], int] = {}
    answers: dict[str, int] = {}
    misses: dict[str, int] = {}
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    total: dict[str, float] = {"latency_sum": 0.0, **dict.fromkeys(_SUMMED, 0)}
    for exp in exports:
        try:
            for r, t, p, n in exp.get("queries", ()):
                key = (int(r), int(t), str(p))
                queries[key] = queries.get(key, 0) + int(n)
            for into, field in ((answers, "answers"), (misses, "pool_misses")):
                for name, n in exp.get(field, {}).items():
                    into[str(name)] = into.get(str(name), 0) + int(n)
            for i, n in enumerate(exp.get("buckets", ())[: len(buckets)]):
                buckets[i] += int(n)
            total["latency_sum"] += float(exp.get("latency_sum", 0.0))
            for name in _SUMMED:
                total[name] += int(exp.get(name, 0))
        except (TypeError, ValueError, AttributeError):
            continue
    return {
        "queries": [[r, t, p, n] for (r, t, p), n in queries.items()],
        "answers": answers,
        "pool_misses": misses,
        "buckets": buckets,
        **total,
    }


class MetricsCollector(Collector):
    """Exposes merged query counters; `source()` returns the current merged export."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        data = self._source()
        queries = CounterMetricFamily(
            "gslb_queries",
            "DNS queries answered, by rcode, qtype and pool",
            labels=["rcode", "qtype", "pool"],
        )
        for r, t, p, n in data.get("queries", ()):
            queries.add_metric([rcode_name(int(r)), qtype_name(int(t)), str(p)], float(n))
        yield queries
        answers = CounterMetricFamily(
            "gslb_answers", "Pool answers naming each edge", labels=["edge"]
        )
        for edge, n in sorted(data.get("answers", {}).items()):
            answers.add_metric([edge], float(n))
        yield answers
        misses = CounterMetricFamily(
            "gslb_pool_cache_misses",
            "Pool answers no answer cache held (selection ran); hits are the pool's "
            "gslb_queries minus these",
            labels=["pool"],
        )
        for pool, n in sorted(data.get("pool_misses", {}).items()):
            misses.add_metric([pool], float(n))
        yield misses
        dropped = CounterMetricFamily("gslb_dropped", "Packets dropped without a reply")
        dropped.add_metric([], float(data.get("dropped", 0)))
        yield dropped
        limited = CounterMetricFamily(
            "gslb_rate_limited",
            "UDP replies response rate limiting dropped or sent truncated (slip)",
            labels=["action"],
        )
        limited.add_metric(["drop"], float(data.get("rrl_dropped", 0)))
        limited.add_metric(["slip"], float(data.get("rrl_slipped", 0)))
        yield limited
        tcp = GaugeMetricFamily("gslb_tcp_connections", "DNS TCP connections open now")
        tcp.add_metric([], float(data.get("tcp_open", 0)))
        yield tcp
        table = GaugeMetricFamily(
            "gslb_geo_table_processes",
            "DNS processes placing client /24s from the GeoIP /24 table (built in the "
            "background after a start or a database change; the others walk the tree)",
        )
        table.add_metric([], float(data.get("geo_table", 0)))
        yield table
        raw = list(data.get("buckets", [0] * (len(LATENCY_BUCKETS) + 1)))
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), raw, strict=False):
            running += int(n)
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        latency = HistogramMetricFamily(
            "gslb_answer_latency_seconds", "Time spent building each DNS reply", labels=[]
        )
        latency.add_metric([], cumulative, sum_value=float(data.get("latency_sum", 0.0)))
        yield latency


class HealthCollector(Collector):
    """Per-edge gauges from a health snapshot source."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        snap = self._source()
        serving = GaugeMetricFamily(
            "gslb_edge_serving", "1 when the edge is up and not drained", labels=["edge"]
        )
        up = GaugeMetricFamily(
            "gslb_edge_up",
            "1 when the edge is up (its probes, or the API, say so)",
            labels=["edge"],
        )
        drained = GaugeMetricFamily(
            "gslb_edge_drained", "1 when the edge is drained through the API", labels=["edge"]
        )
        load = GaugeMetricFamily("gslb_edge_load", "Load of the edge, 0..1", labels=["edge"])
        for name, st in sorted(snap.get("edges", {}).items()):
            serving.add_metric([name], 1.0 if st.get("serving") else 0.0)
            up.add_metric([name], 1.0 if st.get("up") else 0.0)
            drained.add_metric([name], 1.0 if st.get("drained") else 0.0)
            load.add_metric([name], float(st.get("load", 0.0)))
        yield serving
        yield up
        yield drained
        yield load


class ProbeCollector(Collector):
    """Edge status probe counters from gslb.poller.EdgePoller.export()."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        probes = CounterMetricFamily(
            "gslb_edge_probes",
            "Edge status probes by result (success, failure) and failure reason",
            labels=["edge", "result", "reason"],
        )
        data = self._source()
        for edge, result, reason, n in data.get("probes", ()):
            probes.add_metric([str(edge), str(result), str(reason)], float(n))
        yield probes
        peers = int(data.get("peers", 0))
        if peers:
            answering = int(data.get("peers_answering", 0))
            gauge = GaugeMetricFamily(
                "gslb_quorum_peers_answering",
                "Peers ([[peers]]) whose probe view joined the last probe round's quorum",
            )
            gauge.add_metric([], float(answering))
            yield gauge
            fallback = GaugeMetricFamily(
                "gslb_quorum_fallback",
                "1 when no peer answered the last probe round and this node's own probe "
                "view decided alone",
            )
            fallback.add_metric([], 1.0 if answering == 0 else 0.0)
            yield fallback


class TransitionCollector(Collector):
    """Edge state transitions by kind, from gslb.transitions.TransitionLog.counts()."""

    def __init__(self, source: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        transitions = CounterMetricFamily(
            "gslb_edge_transitions",
            "Edge state transitions by kind (down, up, drained, undrained, overloaded in a "
            "pool, recovered)",
            labels=["edge", "kind"],
        )
        for (edge, kind), n in sorted(self._source().items()):
            transitions.add_metric([str(edge), str(kind)], float(n))
        yield transitions


class PoolCollector(Collector):
    """Per pool: 1 while no member serves, so answers come from its fallback set."""

    def __init__(self, source: Callable[[], Mapping[str, bool]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        fallback = GaugeMetricFamily(
            "gslb_pool_fallback",
            "1 while no member of the pool is serving (up and not drained), so its answers "
            "name the pool's fallback set",
            labels=["pool"],
        )
        for pool, on in sorted(self._source().items()):
            fallback.add_metric([pool], 1.0 if on else 0.0)
        yield fallback


class PurgeCollector(Collector):
    """Fleet purge results per edge, from gslb.purger.Purger.export()."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        purges = CounterMetricFamily(
            "gslb_edge_purges",
            "Fleet purges (POST /v1/purge) sent to each edge, by result (ok, failed after "
            "its retries)",
            labels=["edge", "result"],
        )
        for edge, result, n in self._source().get("purges", ()):
            purges.add_metric([str(edge), str(result)], float(n))
        yield purges


def make_registry(
    metrics: Callable[[], Mapping[str, Any]],
    health: Callable[[], Mapping[str, Any]],
    probes: Callable[[], Mapping[str, Any]] | None = None,
    transitions: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    *,
    pools: Callable[[], Mapping[str, bool]] | None = None,
    purges: Callable[[], Mapping[str, Any]] | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics))
    registry.register(HealthCollector(health))
    if probes is not None:
        registry.register(ProbeCollector(probes))
    if transitions is not None:
        registry.register(TransitionCollector(transitions))
    if pools is not None:
        registry.register(PoolCollector(pools))
    if purges is not None:
        registry.register(PurgeCollector(purges))
    return registry
