"""A stream's pool and counters (edge.stream_pool): the algorithms map onto OriginPool's,
connect failures eject, the status entry and the Prometheus families."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from edge.config import from_mapping
from edge.stream_pool import StreamCollector, StreamPool


def _pool(**keys: Any) -> StreamPool:
    stream = {
        "name": "s",
        "listen": "tcp://127.0.0.1:7000",
        "origins": ["127.0.0.1:7001", "127.0.0.1:7002"],
        "probe": {"enabled": False},
        **keys,
    }
    (config,) = from_mapping({"stream": [stream]}, "<test>").streams
    now = [0.0]
    return StreamPool(config, clock=lambda: now[0])


def test_round_robin_spreads_and_honours_weights() -> None:
    sp = _pool(origins=["127.0.0.1:7001", {"address": "127.0.0.1:7002", "weight": 3}])
    picks = Counter(str(sp.address(o)) for o in (sp.pick("10.0.0.1") for _ in range(8)) if o)
    assert picks == {"127.0.0.1:7001": 2, "127.0.0.1:7002": 6}


def test_hash_keeps_a_client_on_its_origin() -> None:
    sp = _pool(algorithm="hash")
    for client in ("10.0.0.1", "10.0.0.2", "192.0.2.7"):
        first = sp.pick(client)
        assert all(sp.pick(client) is first for _ in range(5))


def test_least_connections_prefers_the_idle_origin() -> None:
    sp = _pool(algorithm="least_connections")
    busy = sp.pool.origins[0]
    sp.connected(busy)
    assert all(sp.pick("10.0.0.1") is sp.pool.origins[1] for _ in range(4))
    sp.closed(busy)
    assert busy.active == 0


def test_connect_failures_eject_but_never_the_last_origin() -> None:
    sp = _pool(max_fails=2)
    a, b = sp.pool.origins
    sp.connect_failed(a, "connect")
    assert a.up
    sp.connect_failed(a, "connect_timeout")
    assert not a.up and sp.pick("10.0.0.1", ()) is b
    for _ in range(5):
        sp.connect_failed(b, "connect")
    assert b.up  # the last origin in rotation stays, like nginx with one server
    assert sp.stats.origin(a.url).errors == {"connect": 1, "connect_timeout": 1}


def test_a_connection_ends_the_failure_run() -> None:
    sp = _pool(max_fails=2)
    a = sp.pool.origins[0]
    sp.connect_failed(a, "connect")
    sp.connected(a)
    sp.connect_failed(a, "connect")
    assert a.up


def test_status_entry() -> None:
    sp = _pool()
    sp.connect_failed(sp.pool.origins[0], "connect")
    for _ in range(3):
        sp.pool.probe_result(sp.pool.origins[1], ok=False)
    doc = sp.status()
    assert doc["name"] == "s" and doc["listen"] == ["tcp://127.0.0.1:7000"]
    assert doc["healthy"] is True  # one failure of 7001 is below max_fails
    assert doc["up"] == ["tcp://127.0.0.1:7001"] and doc["down"] == ["tcp://127.0.0.1:7002"]
    assert doc["detail"][0] == {"url": "tcp://127.0.0.1:7001", "up": True, "active": 0, "weight": 1}


def test_collector_families() -> None:
    sp = _pool()
    a = sp.pool.origins[0]
    sp.connected(a)
    counts = sp.stats.origin(a.url)
    counts.bytes_in += 10
    counts.bytes_out += 20
    sp.stats.refused["limit"] += 1
    sp.stats.active = 1
    registry = CollectorRegistry()
    registry.register(StreamCollector(lambda: [sp]))
    text = generate_latest(registry).decode()
    for line in (
        'edge_stream_connections_total{origin="tcp://127.0.0.1:7001",stream="s"} 1.0',
        'edge_stream_bytes_total{direction="in",origin="tcp://127.0.0.1:7001",stream="s"} 10.0',
        'edge_stream_bytes_total{direction="out",origin="tcp://127.0.0.1:7001",stream="s"} 20.0',
        'edge_stream_refused_total{reason="limit",stream="s"} 1.0',
        'edge_stream_active{stream="s"} 1.0',
        'edge_stream_origin_up{origin="tcp://127.0.0.1:7002",stream="s"} 1.0',
    ):
        assert line in text
