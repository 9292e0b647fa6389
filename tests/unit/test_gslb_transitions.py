"""Edge state transitions (gslb.transitions) as the health store records, logs and counts them."""

from __future__ import annotations

import logging

import pytest

from gslb.health import HealthStore
from gslb.models import Edge, Pool
from gslb.transitions import Kind, Transition, TransitionLog

A = Edge("a", 0, 0)
B = Edge("b", 10, 10)
WWW = Pool("www.example.test.", (A, B), load_threshold=0.8, hysteresis=0.1)
API = Pool("api.example.test.", (A,), load_threshold=0.5, hysteresis=0.2)


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kinds(h: HealthStore) -> list[tuple[str, str, str | None]]:
    return [(t.edge, t.kind.value, t.pool) for t in h.transitions]


def test_up_down_and_drain_are_recorded_with_time_and_reason() -> None:
    clock = Clock()
    h = HealthStore([WWW], clock=clock)
    h.update_many({"a": (False, None)}, why={"a": "3 failed probe(s), last: HTTP 503"})
    clock.now = 1010.0
    h.update("a", up=True, source="API POST /v1/edges/a from 127.0.0.1")
    h.update("b", drained=True, source="API")
    h.update("b", drained=True, source="API")  # no change: nothing recorded
    assert kinds(h) == [("a", "down", None), ("a", "up", None), ("b", "drained", None)]
    down, up, drained = list(h.transitions)
    assert (down.time, down.before, down.after) == (1000.0, "up", "down")
    assert down.reason == "3 failed probe(s), last: HTTP 503"
    assert up.time == 1010.0 and up.reason == "API POST /v1/edges/a from 127.0.0.1"
    assert drained.as_dict() == {
        "time": 1010.0,
        "edge": "b",
        "kind": "drained",
        "from": "undrained",
        "to": "drained",
        "pool": None,
        "reason": "API",
    }


def test_overload_and_recovery_per_pool_with_hysteresis() -> None:
    h = HealthStore([WWW, API])
    h.update_many({"a": (None, 0.6)}, source="probe")  # over api's 0.5 only
    h.update_many({"a": (None, 0.85)}, source="probe")  # and www's 0.8
    h.update_many({"a": (None, 0.75)}, source="probe")  # inside www's band: no change
    h.update_many({"a": (None, 0.65)}, source="probe")  # below 0.7: www recovers
    h.update_many({"a": (None, 0.25)}, source="probe")  # below 0.3: api recovers
    assert kinds(h) == [
        ("a", "overloaded", "api.example.test."),
        ("a", "overloaded", "www.example.test."),
        ("a", "recovered", "www.example.test."),
        ("a", "recovered", "api.example.test."),
    ]
    reasons = [t.reason for t in h.transitions]
    assert reasons[1] == "load 0.85 >= load_threshold 0.8 (probe)"
    assert reasons[2] == "load 0.65 < 0.7 (load_threshold 0.8 - hysteresis 0.1) (probe)"
    assert h.transitions.counts() == {("a", "overloaded"): 2, ("a", "recovered"): 2}


def test_a_reload_that_moves_a_threshold_records_the_flip() -> None:
    h = HealthStore([WWW])
    h.set_load("a", 0.7)
    tighter = Pool("www.example.test.", (A, B), load_threshold=0.6, hysteresis=0.1)
    h.reconfigure([tighter])
    last = h.transitions.last("a")
    assert last is not None and last.kind is Kind.OVERLOADED
    assert last.reason == "load 0.70 >= load_threshold 0.6 (config reload)"


def test_transitions_are_logged_like_up_and_down(caplog: pytest.LogCaptureFixture) -> None:
    h = HealthStore([WWW])
    with caplog.at_level(logging.INFO, logger="gslb.health"):
        h.update_many({"a": (False, 0.9)}, why={"a": "2 failed probe(s)"}, source="probe")
        h.set_drained("b", True)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "edge a is down: 2 failed probe(s)"),
        (
            logging.WARNING,
            "edge a is overloaded in pool www.example.test.: load 0.90 >= load_threshold 0.8 "
            "(probe)",
        ),
        (logging.INFO, "edge b is drained: state set"),
    ]


def test_a_replica_records_nothing() -> None:
    parent = HealthStore([WWW])
    replica = HealthStore([WWW])
    parent.update("a", up=False, load=0.9)
    replica.apply(parent.snapshot())
    replica.update("b", drained=True)  # (a replica is never updated directly, but even so)
    replica.reconfigure([WWW])
    assert len(parent.transitions) == 2 and len(replica.transitions) == 0


def test_the_log_is_bounded_but_keeps_each_edges_last_change_and_counts() -> None:
    h = HealthStore([WWW], history=4)
    h.set_drained("b", True)
    for i in range(10):
        h.set_up("a", i % 2 == 1)
    assert len(h.transitions) == 4
    assert all(t.edge == "a" for t in h.transitions)
    last_b = h.transitions.last("b")
    assert last_b is not None and last_b.kind is Kind.DRAINED
    assert h.transitions.counts() == {("b", "drained"): 1, ("a", "down"): 5, ("a", "up"): 5}
    h.reconfigure([Pool("www.example.test.", (A,))])  # b is gone
    assert h.transitions.last("b") is None
    assert h.transitions.counts()[("b", "drained")] == 1  # counters never go back


def test_transition_log_alone() -> None:
    log = TransitionLog(2)
    for kind in (Kind.DOWN, Kind.UP, Kind.DOWN):
        log.add(Transition(1.0, "x", kind, "why"))
    assert [t.kind for t in log] == [Kind.UP, Kind.DOWN]
    assert log.counts() == {("x", "down"): 2, ("x", "up"): 1}
