"""The health-and-load store (gslb.health): updates, versions, snapshots, reloads."""

from __future__ import annotations

import json
from collections.abc import Callable

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


# -- per-pool generations -------------------------------------------------------------------------

C = Edge("c", 20, 20)
D = Edge("d", 30, 30)
ONE = Pool("one.example.test.", (A, B), load_threshold=0.8, hysteresis=0.1)
TWO = Pool("two.example.test.", (B, C), load_threshold=0.5, hysteresis=0.1, fallback=(D,))


def _moved(h: HealthStore, change: Callable[[], object]) -> set[str]:
    """The pools (and "none" for slot 0) whose generation `change` moved."""
    slots = {"one": h.slot(ONE.name), "two": h.slot(TWO.name), "none": 0}
    before = list(h.generations)
    change()
    return {name for name, s in slots.items() if h.generations[s] != before[s]}


def test_generations_move_only_for_the_pools_holding_the_changed_edge() -> None:
    h = HealthStore([ONE, TWO])
    gens = h.generations
    assert _moved(h, lambda: h.set_drained("a", True)) == {"one"}
    assert _moved(h, lambda: h.set_up("c", False)) == {"two"}
    assert _moved(h, lambda: h.set_load("b", 0.6)) == {"one", "two"}  # b is in both
    version = h.version
    assert _moved(h, lambda: h.set_drained("b", False)) == set()  # no change to the state
    assert h.version == version + 1  # ...though the version (API, acks) moves on every update
    assert _moved(h, lambda: h.set_up("d", False)) == set()  # a fallback only: never read
    assert _moved(h, lambda: h.update_many({"a": (None, 0.02)})) == set()  # load wobble
    assert _moved(h, lambda: h.update_many({"c": (True, None), "d": (True, None)})) == {"two"}
    assert _moved(h, lambda: h.update_many({"a": (None, 0.3), "c": (None, 0.3)})) == {"one", "two"}
    assert _moved(h, lambda: h.reconfigure([ONE, TWO])) == {"one", "two"}
    assert h.generations is gens and gens[0] == 0  # one list, changed in place


def test_a_replica_moves_the_generations_of_the_pools_a_snapshot_changed() -> None:
    parent, replica = HealthStore([ONE, TWO]), HealthStore([ONE, TWO])
    snapshot = json.loads(json.dumps(parent.snapshot()))
    assert _moved(replica, lambda: replica.apply(snapshot)) == set()
    parent.set_drained("c", True)
    snapshot = json.loads(json.dumps(parent.snapshot()))
    assert _moved(replica, lambda: replica.apply(snapshot)) == {"two"}
    parent.set_load("a", 0.85)
    parent.set_load("a", 0.75)  # still overloaded in one: the flag travels in the snapshot
    snapshot = json.loads(json.dumps(parent.snapshot()))
    assert _moved(replica, lambda: replica.apply(snapshot)) == {"one"}
    assert replica.state("a", ONE.name).overloaded


def test_a_pool_the_store_is_not_configured_with_moves_on_every_change() -> None:
    # A Responder built from a reloaded config asks for its pools' slots before the store
    # is reconfigured: the store cannot know their members yet, so any change moves them.
    h = HealthStore([ONE], ["c"])
    new = h.slot("new.example.test.")
    assert new == h.slot("new.example.test.") and new not in (0, h.slot(ONE.name))
    for change in (lambda: h.set_drained("c", True), lambda: h.set_drained("c", True)):
        before = h.generations[new]
        change()
        assert h.generations[new] != before
    h.reconfigure([ONE, Pool("new.example.test.", (C,))])
    assert h.slot("new.example.test.") == new  # a pool keeps its slot
    before = h.generations[new]
    h.set_drained("a", True)
    assert h.generations[new] == before  # now only its own members move it
    h.set_drained("c", False)
    assert h.generations[new] != before
