"""Node-wide status from worker records: the merge and the status document as pure code,
the record codec, and the run directory adapter on a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from edge import nodestats as ns
from edge.admin import build_status
from edge.metrics import NODE_GAUGES, Metrics

A, B = "http://10.0.0.1:80", "http://10.0.0.2:80"


def _record(
    pid: int,
    time: float = 100.0,
    *,
    rps: float = 0.0,
    active: int = 0,
    hits: int = 0,
    lookups: int = 0,
    counts: tuple[tuple[int, str, int], ...] = (),
    origins: tuple[ns.OriginState, ...] = (ns.OriginState(A, True, 0, 1),),
    samples: tuple[ns.Sample, ...] = (),
) -> ns.WorkerRecord:
    return ns.WorkerRecord(pid, time, active, rps, hits, lookups, counts, origins, samples)


def _doc(own: ns.WorkerRecord, peers: list[ns.WorkerRecord], now: float = 100.0, **kw):  # type: ignore[no-untyped-def]
    return build_status(ns.merge(own, peers, now), kw.pop("capacity", 100.0), {}, **kw)


def test_one_worker_alone_is_its_own_numbers() -> None:
    own = _record(1, rps=25.0, active=3, hits=3, lookups=4, counts=((200, "hit", 3),))
    doc = _doc(own, [])
    assert doc == {
        "healthy": True,
        "origins": {
            "up": [A],
            "down": [],
            "detail": [{"url": A, "up": True, "active": 0, "weight": 1}],
        },
        "active_requests": 3,
        "requests_per_second": 25.0,
        "capacity_rps": 100.0,
        "load_factor": 0.25,
        "hit_ratio": 0.75,
        "cache": {},
    }


def test_workers_are_summed_and_the_load_is_against_the_node_capacity() -> None:
    own = _record(1, rps=30.0, active=2, hits=6, lookups=8, counts=((200, "hit", 6),))
    peer = _record(
        2,
        99.5,
        rps=40.0,
        active=5,
        hits=2,
        lookups=12,
        counts=((200, "hit", 2), (502, "miss", 10)),
    )
    node = ns.merge(own, [peer], 100.0)
    assert node.counts == {(200, "hit"): 8, (502, "miss"): 10}
    assert node.requests == 18
    doc = build_status(node, 100.0, {}, per_worker=True)
    assert doc["active_requests"] == 7
    assert doc["requests_per_second"] == 70.0
    assert doc["load_factor"] == 0.7
    assert doc["hit_ratio"] == 0.4
    assert doc["workers"] == [
        {"pid": 1, "requests": 6, "active_requests": 2, "requests_per_second": 30.0},
        {"pid": 2, "requests": 12, "active_requests": 5, "requests_per_second": 40.0},
    ]
    assert _doc(own, [peer], capacity=50.0)["load_factor"] == 1.0


def test_stale_future_duplicate_and_own_records_are_left_out() -> None:
    own = _record(1, counts=((200, "hit", 1),))
    peers = [
        _record(2, 100.0 - ns.MAX_AGE - 0.1, counts=((200, "hit", 100),)),  # stopped long ago
        _record(3, 100.0 + ns.MAX_AGE + 0.1, counts=((200, "hit", 100),)),  # not this clock
        _record(1, 99.9, counts=((200, "hit", 100),)),  # our own published record
        _record(4, 99.0, counts=((200, "hit", 5),)),
        _record(4, 99.8, counts=((200, "hit", 7),)),  # the newest of pid 4 counts
    ]
    node = ns.merge(own, peers, 100.0)
    assert [w.pid for w in node.workers] == [1, 4]
    assert node.requests == 8


def test_an_origin_is_up_for_the_node_only_while_every_worker_has_it_up() -> None:
    own = _record(1, origins=(ns.OriginState(A, True, 1, 2), ns.OriginState(B, True, 0, 1)))
    peer = _record(
        2,
        origins=(
            ns.OriginState(A, True, 4, 2),
            ns.OriginState(B, False, 0, 1),
            ns.OriginState("http://10.0.0.9:80", True, 9, 1),  # not (yet) in our pool
        ),
    )
    doc = _doc(own, [peer])
    assert doc["healthy"] is True
    assert doc["origins"]["up"] == [A]
    assert doc["origins"]["down"] == [B]
    assert doc["origins"]["detail"][0] == {"url": A, "up": True, "active": 5, "weight": 2}
    all_down = _record(2, origins=(ns.OriginState(A, False, 0, 2), ns.OriginState(B, False, 0, 1)))
    assert _doc(own, [all_down])["healthy"] is False
    # A stale record has no say in health either.
    assert _doc(own, [_record(2, 50.0, origins=all_down.origins)])["healthy"] is True


_records = st.builds(
    ns.WorkerRecord,
    pid=st.integers(min_value=1, max_value=2**22),
    time=st.floats(min_value=0, max_value=1e9),
    active_requests=st.integers(min_value=0, max_value=10**6),
    requests_per_second=st.floats(min_value=0, max_value=1e6),
    hits=st.integers(min_value=0, max_value=10**12),
    lookups=st.integers(min_value=0, max_value=10**12),
    counts=st.lists(
        st.tuples(st.integers(100, 599), st.sampled_from(["hit", "miss", "none"]), st.integers(0))
    ).map(tuple),
    origins=st.lists(
        st.builds(
            ns.OriginState,
            url=st.text(max_size=30),
            up=st.booleans(),
            active=st.integers(min_value=0, max_value=1000),
            weight=st.integers(min_value=0, max_value=100),
        )
    ).map(tuple),
    samples=st.lists(
        st.tuples(
            st.text(max_size=20),
            st.text(max_size=20),
            st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3).map(tuple),
            st.floats(allow_nan=False),
        )
    ).map(tuple),
    verdicts=st.none()
    | st.lists(
        st.builds(
            ns.Verdict,
            url=st.text(max_size=30),
            up=st.booleans(),
            probes=st.integers(min_value=0, max_value=2**40),
            ok_run=st.integers(min_value=0, max_value=2**40),
        )
    ).map(tuple),
)


@given(_records)
def test_records_round_trip_through_json(rec: ns.WorkerRecord) -> None:
    assert ns.decode(ns.encode(rec)) == rec


_VALID = {
    "v": 3,
    "pid": 1,
    "time": 1,
    "active_requests": 0,
    "requests_per_second": 0,
    "hits": 0,
    "lookups": 0,
    "counts": [],
    "origins": [],
    "samples": [],
    "verdicts": None,
}


def _json(**changes: object) -> bytes:
    """A record valid but for `changes` (a value of ... drops the key)."""
    doc = {k: v for k, v in {**_VALID, **changes}.items() if v is not ...}
    return json.dumps(doc).encode()


def test_the_base_of_the_malformed_records_is_valid() -> None:
    assert ns.decode(_json()).verdicts is None
    assert ns.decode(_json(verdicts=[[A, False, 7, 0]])).verdicts == (ns.Verdict(A, False, 7, 0),)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x04pickle",
        b"[]",
        b'{"v": 3}',
        # a version 1 record (before samples): from a worker of an older release
        b'{"v":1,"pid":1,"time":1,"active_requests":0,"requests_per_second":0,"hits":0,'
        b'"lookups":0,"counts":[],"origins":[]}',
        # a version 2 record (before probe verdicts), otherwise valid
        _json(v=2, verdicts=...),
        _json(counts=[[200, "hit"]]),
        _json(pid=-1),
        _json(time="now"),
        _json(origins=[["u", "yes", 0, 1]]),
        _json(samples=[["f", "f_total", [["a"]], 1]]),
        _json(samples=[["f", "f_total", [], "1"]]),
        _json(samples={}),
        _json(samples=...),
        _json(verdicts=...),
        _json(verdicts={}),
        _json(verdicts=[[A, "up", 1, 1]]),
        _json(verdicts=[[A, True, -1, 0]]),
        _json(verdicts=[[A, True, 1, 1.5]]),
        _json(verdicts=[[A, True, 1]]),
    ],
)
def test_malformed_records_are_refused(data: bytes) -> None:
    with pytest.raises(ns.RecordError):
        ns.decode(data)


def _dead_pid() -> int:
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(proc.stdout)


def test_the_run_directory_gives_the_other_live_workers_fresh_records(tmp_path: Path) -> None:
    now = [100.0]
    me = ns.StatsDir(str(tmp_path), pid=1, clock=lambda: now[0])
    live = ns.StatsDir(str(tmp_path), pid=os.getpid())
    dead = ns.StatsDir(str(tmp_path), pid=_dead_pid())
    me.publish(_record(1, 100.0))
    live.publish(_record(os.getpid(), 99.0, counts=((200, "hit", 3),)))
    dead.publish(_record(dead.pid, 99.0))
    (tmp_path / "worker-77.json").write_bytes(b"not json")
    (tmp_path / ".worker-78.tmp").write_bytes(b"half a rec")
    assert [r.pid for r in me.peers()] == [os.getpid()]
    live.publish(_record(os.getpid(), 99.5, counts=((200, "hit", 4),)))
    assert [r.requests for r in me.peers()] == [4]
    now[0] = 99.5 + ns.MAX_AGE + 1
    assert me.peers() == []
    live.remove()
    me.remove()
    assert sorted(os.listdir(tmp_path)) == sorted(
        [".worker-78.tmp", "worker-77.json", f"worker-{dead.pid}.json"]
    )


def _scrape(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    class Collected(Collector):
        def collect(self) -> Iterator[Metric]:
            return iter(families)

    text = generate_latest(Collected()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_are_merged_counters_summed_and_gauges_by_their_rule() -> None:
    own, peer = Metrics(), Metrics()
    own.response(200, "hit")
    for _ in range(3):
        peer.response(200, "hit")
    peer.response(502, "error")
    own.origin_latency.observe(A, 0.003)
    peer.origin_latency.observe(A, 0.2)
    peer.origin_latency.observe(B, 0.02)  # an origin only the peer has used
    own.probes.labels(A, "ok").inc(2)
    peer.probes.labels(A, "ok").inc(5)
    peer.probes.labels(A, "fail").inc()
    own.active_gauge.set(2)
    peer.active_gauge.set(3)
    own.origin_up.labels(A).set(1)
    peer.origin_up.labels(A).set(0)
    own.cache_bytes.set(4096)
    peer.cache_bytes.set(1024)  # the same shared disk cache, read a moment earlier
    own.cache_degraded.set(0)
    peer.cache_degraded.set(1)
    peer_rec = _record(2, samples=ns.registry_samples(peer.registry.collect()))
    stale = _record(3, 50.0, samples=peer_rec.samples)
    merged = list(
        ns.merge_families(own.registry.collect(), 1, [peer_rec, stale], 100.0, NODE_GAUGES)
    )
    got = _scrape(merged)
    assert got[("edge_requests_total", (("cache", "hit"), ("status", "200")))] == 4
    assert got[("edge_requests_total", (("cache", "error"), ("status", "502")))] == 1
    assert got[("edge_probes_total", (("origin", A), ("result", "ok")))] == 7
    assert got[("edge_probes_total", (("origin", A), ("result", "fail")))] == 1
    assert got[("edge_origin_latency_seconds_count", (("origin", A),))] == 2
    assert got[("edge_origin_latency_seconds_sum", (("origin", A),))] == pytest.approx(0.203)
    assert got[("edge_origin_latency_seconds_bucket", (("le", "0.005"), ("origin", A)))] == 1
    assert got[("edge_origin_latency_seconds_bucket", (("le", "0.25"), ("origin", A)))] == 2
    assert got[("edge_origin_latency_seconds_bucket", (("le", "+Inf"), ("origin", B)))] == 1
    assert got[("edge_active_requests", ())] == 5
    assert got[("edge_origin_up", (("origin", A),))] == 0
    assert got[("edge_cache_bytes", ())] == 4096
    assert got[("edge_cache_degraded", ())] == 1
    # Alone, a worker's own numbers pass through unchanged.
    alone = _scrape(list(ns.merge_families(own.registry.collect(), 1, [], 100.0, NODE_GAUGES)))
    assert alone[("edge_requests_total", (("cache", "hit"), ("status", "200")))] == 1
    assert alone[("edge_active_requests", ())] == 2


def _leader(pid: int, time: float, *verdicts: ns.Verdict) -> ns.WorkerRecord:
    return ns.WorkerRecord(pid, time, 0, 0.0, 0, 0, (), (), (), verdicts)


def test_a_follower_applies_the_fresh_leaders_verdicts_with_the_probes_new_to_it() -> None:
    follower = ns.Follower(started=100.0)
    other = _record(11, 100.9)  # a follower's record: no verdicts
    a_up, b_down = ns.Verdict(A, True, 4, 4), ns.Verdict(B, False, 4, 0)
    step = follower.step([other, _leader(10, 100.5, a_up, b_down)], 101.0, 3.0)
    assert step == ns.Follow(10, False, ((a_up, 4), (b_down, 4)))
    first = _leader(10, 100.5, a_up, b_down)
    again = follower.step([first, other], 101.2, 3.0)  # the same record: nothing new
    assert [new for _, new in again.apply] == [0, 0]
    later = _leader(10, 101.5, ns.Verdict(A, True, 6, 6), ns.Verdict(B, True, 6, 2))
    assert [new for _, new in follower.step([later], 101.6, 3.0).apply] == [2, 2]
    # The leader dropped B and added it again (a reload): its count of B starts over.
    readded = _leader(10, 102.5, ns.Verdict(A, True, 11, 11), ns.Verdict(B, True, 1, 1))
    assert [new for _, new in follower.step([readded], 102.6, 3.0).apply] == [5, 1]
    # A replacement leader (another pid) counts from zero.
    a_down = ns.Verdict(A, False, 3, 0)
    replacement = _leader(12, 103.0, a_down)
    assert follower.step([readded, replacement], 103.1, 3.0).apply == ((a_down, 3),)


def test_a_follower_keeps_its_state_while_the_leader_is_silent_then_probes_itself() -> None:
    follower = ns.Follower(started=100.0)
    # No leader record since the start: keep the state, up to the bound.
    assert follower.step([_record(11, 100.5)], 101.0, 3.0) == ns.Follow(None, False)
    assert follower.step([], 103.0, 3.0) == ns.Follow(None, False)
    assert follower.step([], 103.1, 3.0) == ns.Follow(None, True)
    a_up = ns.Verdict(A, True, 1, 1)
    leader = _leader(10, 104.0, a_up)
    assert follower.step([leader], 105.0, 3.0) == ns.Follow(10, False, ((a_up, 1),))  # back
    # Its record ages past the bound: silent for longer than the bound since then.
    assert follower.step([leader], 106.9, 3.0) == ns.Follow(10, False, ((a_up, 0),))
    assert follower.step([leader], 107.1, 3.0) == ns.Follow(None, True)
    # Of two leader records (one from a leader that just died), the newest is followed.
    dead, live = _leader(10, 107.0), _leader(13, 107.5, ns.Verdict(A, False, 2, 0))
    assert follower.step([live, dead], 107.6, 3.0).leader == 13
    assert follower.step([dead, live], 107.6, 3.0).leader == 13
