"""Query counters, worker export merging and the JSON query log (gslb.metrics)."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from gslb.metrics import LATENCY_BUCKETS, QueryMetrics, make_registry, merge_exports


def _answer(m: QueryMetrics, rcode: int = 0, edges: tuple[str, ...] = ("fra",)) -> None:
    m.answered(
        qname="www.example.test.",
        qtype=1,
        rcode=rcode,
        pool="www.example.test.",
        edges=edges,
        client="192.0.2.1",
        ecs="192.0.2.0/24",
    )


def test_merge_sums_workers() -> None:
    a, b = QueryMetrics(), QueryMetrics()
    _answer(a)
    _answer(b)
    _answer(b, rcode=3, edges=())
    a.observe_latency(0.001)
    b.drop()
    merged = merge_exports([a.export(), b.export(), {"garbage": True}, {"queries": "x"}])
    queries = {(r, t, p): n for r, t, p, n in merged["queries"]}
    assert queries == {(0, 1, "www.example.test."): 2, (3, 1, "www.example.test."): 1}
    assert merged["answers"] == {"fra": 2}
    assert merged["latency_count"] == 1 and merged["dropped"] == 1
    assert sum(merged["buckets"]) == 1


def test_query_log_is_one_json_line_per_answer() -> None:
    out = io.StringIO()
    m = QueryMetrics(query_log=out, clock=lambda: 1234.5)
    _answer(m)
    record = json.loads(out.getvalue())
    assert record == {
        "ts": 1234.5,
        "client": "192.0.2.1",
        "ecs": "192.0.2.0/24",
        "qname": "www.example.test.",
        "qtype": "A",
        "rcode": "NOERROR",
        "pool": "www.example.test.",
        "edges": ["fra"],
    }


@given(st.lists(st.floats(0, 10, allow_nan=False), max_size=50))
def test_histogram_counts_every_observation_once(values: list[float]) -> None:
    m = QueryMetrics()
    for v in values:
        m.observe_latency(v)
    assert sum(m.buckets) == len(values) == m.latency_count
    assert m.buckets[-1] == sum(1 for v in values if v > LATENCY_BUCKETS[-1])


def test_probe_counters_are_exported() -> None:
    probes = {"probes": [["fra", "success", "", 7], ["fra", "failure", "timeout", 2]]}
    registry = make_registry(QueryMetrics().export, lambda: {"edges": {}}, lambda: probes)
    text = generate_latest(registry).decode()
    assert 'gslb_edge_probes_total{edge="fra",reason="",result="success"} 7.0' in text
    assert 'gslb_edge_probes_total{edge="fra",reason="timeout",result="failure"} 2.0' in text
    without = generate_latest(make_registry(QueryMetrics().export, lambda: {})).decode()
    assert "gslb_edge_probes" not in without


def test_pool_cache_misses_are_summed_over_workers_and_exported() -> None:
    a, b = QueryMetrics(), QueryMetrics()
    a.pool_miss("www.example.test.")
    b.pool_miss("www.example.test.")
    b.pool_miss("cdn.example.test.")
    merged = merge_exports([a.export(), b.export(), {"pool_misses": "x"}])
    assert merged["pool_misses"] == {"www.example.test.": 2, "cdn.example.test.": 1}
    text = generate_latest(make_registry(lambda: merged, lambda: {})).decode()
    assert 'gslb_pool_cache_misses_total{pool="www.example.test."} 2.0' in text
    assert 'gslb_pool_cache_misses_total{pool="cdn.example.test."} 1.0' in text


def test_pool_fallback_gauge_follows_the_members() -> None:
    from gslb.health import HealthStore
    from gslb.models import Edge, Pool
    from gslb.selection import on_fallback

    a, b, spare = Edge("a", 0, 0), Edge("b", 1, 1), Edge("spare", 2, 2)
    pool = Pool("www.example.test.", (a, b), fallback=(spare,))
    other = Pool("other.example.test.", (b,))
    health = HealthStore([pool, other])

    def text() -> str:
        registry = make_registry(
            lambda: {},
            health.snapshot,
            pools=lambda: {p.name: on_fallback(p, health) for p in (pool, other)},
            purges=lambda: {"purges": [["a", "failed", 2]]},
        )
        return generate_latest(registry).decode()

    assert 'gslb_pool_fallback{pool="www.example.test."} 0.0' in text()
    assert 'gslb_edge_purges_total{edge="a",result="failed"} 2.0' in text()
    health.update("a", up=False)
    assert 'gslb_pool_fallback{pool="www.example.test."} 0.0' in text()  # b still serves
    assert 'gslb_edge_up{edge="a"} 0.0' in text() and 'gslb_edge_up{edge="b"} 1.0' in text()
    health.update("b", drained=True)
    assert 'gslb_edge_drained{edge="b"} 1.0' in text() and 'gslb_edge_up{edge="b"} 1.0' in text()
    assert 'gslb_pool_fallback{pool="www.example.test."} 1.0' in text()
    assert 'gslb_pool_fallback{pool="other.example.test."} 1.0' in text()
    health.update("a", up=True)
    assert 'gslb_pool_fallback{pool="www.example.test."} 0.0' in text()


def test_replies_counted_by_slot_are_folded_and_keys_past_the_slots_go_in_the_tally() -> None:
    m = QueryMetrics(slots=2)
    two = (0, 1, "www.example.test.", ("fra", "iad"))
    one = (0, 1, "www.example.test.", ("iad",))
    a, b = m.slot(two), m.slot(one)
    assert (a, b) == (0, 1) and m.slot((0, 1, "www.example.test.", ("fra", "iad"))) == a
    assert m.slot((3, 28, "", ())) == -1  # no room: the engine counts it in the tally
    m.counts[a] += 2
    m.counts[b] += 1
    m.tally[(3, 28, "", ())] = 1
    assert m.queries == {(0, 1, "www.example.test."): 3, (3, 28, ""): 1}
    assert m.counts == [0, 0] and not m.tally
    m.counts[b] += 4  # the slots stay: counted again, folded again
    assert m.answers == {"fra": 2, "iad": 7}


def test_the_tally_is_folded_into_the_counters_whenever_they_are_read() -> None:
    m = QueryMetrics()
    assert not m.detailed  # no query log: the engine counts in the tally
    _answer(m)
    m.tally[(0, 1, "www.example.test.", ("fra", "iad"))] = 2
    m.tally[(3, 28, "", ())] = 1
    assert m.queries == {(0, 1, "www.example.test."): 3, (3, 28, ""): 1} and not m.tally
    m.tally[(0, 1, "www.example.test.", ("iad",))] = 1
    assert m.answers == {"fra": 3, "iad": 3}
    m.tally[(0, 1, "www.example.test.", ())] = 5
    exported = m.export()
    assert [0, 1, "www.example.test.", 9] in exported["queries"] and not m.tally
    m.set_query_log(io.StringIO())
    assert m.detailed
    m.set_query_log(None)
    assert not m.detailed
