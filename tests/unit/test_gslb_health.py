"""The health-and-load store (gslb.health): updates, versions, snapshots, reloads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb.health import HealthError, HealthStore, UnknownEdgeError
from gslb.models import Edge, Pool

A = Edge("a", 0, 0)
B = Edge("b", 10, 10)
POOL = Pool("www.example.test.", (A, B), load_threshold=0.8, hysteresis=0.1)


def test_all_up_at_start_and_version_bumps() -> None:
    h = HealthStore([POOL])
    assert h.state("a").serving and h.state("b").serving
    v = h.version
    h.set_drained("a", True)
    assert h.version == v + 1 and not h.state("a").serving
    h.set_up("b", False)
    assert h.version == v + 2 and not h.state("b").up


def test_unknown_edge_and_bad_load() -> None:
    h = HealthStore([POOL])
    with pytest.raises(UnknownEdgeError, match="unknown edge 'zz'"):
        h.set_up("zz", True)
    for bad in (-0.1, 1.5, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(HealthError):
            h.set_load("a", bad)  # type: ignore[arg-type]
    assert h.state("a").load == 0.0


def test_snapshot_roundtrip_through_json_replica() -> None:
    parent = HealthStore([POOL])
    replica = HealthStore([POOL])
    parent.set_load("a", 0.85)
    parent.set_load("a", 0.75)  # still overloaded: hysteresis
    parent.set_drained("b", True)
    before = replica.version
    replica.apply(json.loads(json.dumps(parent.snapshot())))
    assert replica.version > before
    assert replica.state("a", POOL.name).overloaded
    assert replica.state("a").load == 0.75
    assert replica.state("b").drained
    assert replica.snapshot()["edges"] == parent.snapshot()["edges"]


def test_apply_rejects_garbage() -> None:
    h = HealthStore([POOL])
    with pytest.raises(HealthError):
        h.apply({"edges": {"a": {"up": True}}})
    with pytest.raises(HealthError):
        h.apply({})


def test_reconfigure_keeps_state_of_present_edges() -> None:
    h = HealthStore([POOL])
    h.set_drained("a", True)
    h.set_load("b", 0.85)
    c = Edge("c", 1, 1)
    new_pool = Pool("www.example.test.", (A, c), load_threshold=0.9, hysteresis=0.1)
    h.reconfigure([new_pool])
    assert set(h.edges) == {"a", "c"}
    assert h.state("a").drained and h.state("c").serving
    assert "b" not in h


def test_listener_sees_every_change() -> None:
    h = HealthStore([POOL])
    seen: list[int] = []
    h.add_listener(lambda store: seen.append(store.version))
    h.set_up("a", False)
    h.set_load("b", 0.2)
    assert seen == [h.version - 1, h.version]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_overload_flag_follows_hysteresis(loads: list[float]) -> None:
    h = HealthStore([POOL])
    flag = False
    for load in loads:
        h.set_load("a", load)
        if load >= 0.8:
            flag = True
        elif load < 0.8 - 0.1:
            flag = False
        assert h.state("a", POOL.name).overloaded is flag
