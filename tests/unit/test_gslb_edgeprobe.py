"""Reading edge status probes (gslb.edgeprobe): interpretation of replies and rise/fall."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gslb.edgeprobe import (
    MAX_BODY,
    Observation,
    ProbeResult,
    Reason,
    Tracker,
    interpret,
    step,
)
from gslb.health import PROBE_LOAD_STEP, HealthStore
from gslb.models import Edge, Pool

STATUS = {
    "healthy": True,
    "origins": {"up": ["http://127.0.0.1:9000"], "down": [], "detail": []},
    "active_requests": 3,
    "requests_per_second": 250.0,
    "capacity_rps": 1000.0,
    "load_factor": 0.25,
    "hit_ratio": 0.9,
    "cache": {},
}


def reply(doc: Any, status: int = 200) -> ProbeResult:
    return ProbeResult(status=status, body=json.dumps(doc).encode())


def test_a_healthy_edge_with_its_load() -> None:
    obs = interpret(reply(STATUS), capacity=500.0)
    assert obs == Observation(True, True, 0.25, Reason.OK)


def test_load_is_clamped_and_falls_back_to_rps_over_capacity() -> None:
    assert interpret(reply({**STATUS, "load_factor": 1.7}), 1000.0).load == 1.0
    assert interpret(reply({**STATUS, "load_factor": -2}), 1000.0).load == 0.0
    without = {k: v for k, v in STATUS.items() if k != "load_factor"}
    assert interpret(reply(without), capacity=500.0).load == 0.5
    assert interpret(reply({**without, "requests_per_second": 9e9}), 500.0).load == 1.0
    bare = {"healthy": True}
    assert interpret(reply(bare), 500.0) == Observation(True, True, None, Reason.OK)


def test_unhealthy_edges_still_report_their_load() -> None:
    obs = interpret(reply({**STATUS, "healthy": False}), 1000.0)
    assert (obs.reachable, obs.healthy, obs.load, obs.reason) == (
        True,
        False,
        0.25,
        Reason.UNHEALTHY,
    )


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (ProbeResult(error="ClientConnectorError: refused"), Reason.UNREACHABLE),
        (ProbeResult(error="no reply within 2s", timed_out=True), Reason.TIMEOUT),
        (reply(STATUS, status=503), Reason.HTTP_STATUS),
        (reply(STATUS, status=301), Reason.HTTP_STATUS),
        (ProbeResult(status=200, body=b"<html>ok</html>"), Reason.MALFORMED),
        (ProbeResult(status=200, body=b"\xff\xfe"), Reason.MALFORMED),
        (ProbeResult(status=200, body=b'{"healthy": true, "load_factor": NaN}'), Reason.MALFORMED),
        (ProbeResult(status=200, body=b"[" * 100_000 + b"]" * 100_000), Reason.MALFORMED),
        (ProbeResult(status=200, body=b" " * (MAX_BODY + 1)), Reason.MALFORMED),
        (reply([STATUS]), Reason.MALFORMED),
        (reply({**STATUS, "healthy": "yes"}), Reason.MALFORMED),
        (reply({**STATUS, "healthy": 1}), Reason.MALFORMED),
        (reply({k: v for k, v in STATUS.items() if k != "healthy"}), Reason.MALFORMED),
        (reply({**STATUS, "load_factor": "0.5"}), Reason.MALFORMED),
        (reply({**STATUS, "load_factor": True}), Reason.MALFORMED),
        (reply({"healthy": True, "requests_per_second": [1]}), Reason.MALFORMED),
    ],
)
def test_failures(result: ProbeResult, reason: Reason) -> None:
    obs = interpret(result, 1000.0)
    assert not obs.healthy and obs.reason is reason
    assert obs.reachable is (result.status is not None)
    assert obs.detail


@given(st.integers(0, 999), st.binary(max_size=300), st.floats(1e-9, 1e12))
def test_arbitrary_bodies_never_raise(status: int, body: bytes, capacity: float) -> None:
    obs = interpret(ProbeResult(status=status, body=body), capacity)
    assert obs.load is None or 0.0 <= obs.load <= 1.0
    if status != 200:
        assert not obs.healthy


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "healthy": JSON,
        "load_factor": JSON,
        "requests_per_second": JSON,
        "capacity_rps": JSON,
    },
)


@given(FIELDS | JSON, st.floats(1e-9, 1e12))
def test_arbitrary_documents_never_raise(doc: Any, capacity: float) -> None:
    try:
        body = json.dumps(doc).encode()
    except ValueError:  # infinities are not JSON; the encoder refuses them
        return
    obs = interpret(ProbeResult(status=200, body=body), capacity)
    assert obs.load is None or 0.0 <= obs.load <= 1.0
    if obs.healthy:
        assert isinstance(doc, dict) and doc.get("healthy") is True
    if not isinstance(doc, dict) or not isinstance(doc.get("healthy"), bool):
        assert obs.reason is Reason.MALFORMED


# -- rise / fall ---------------------------------------------------------------------------------


def run(observations: list[bool], rise: int, fall: int) -> list[bool]:
    tracker = Tracker()
    states = []
    for ok in observations:
        tracker = step(tracker, ok, rise, fall)
        assert tracker.up is not None
        states.append(tracker.up)
    return states


def test_first_observation_decides_then_thresholds_apply() -> None:
    assert run([False], 2, 3) == [False]
    assert run([True, False, False, False], 2, 3) == [True, True, True, False]
    assert run([False, True, False, True, True], 2, 3) == [False, False, False, False, True]
    assert run([True, False, True, False, False, True], 2, 2) == [True] * 4 + [False] * 2


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_no_flapping_below_thresholds(observations: list[bool], rise: int, fall: int) -> None:
    states = run(observations, rise, fall)
    assert states[0] == observations[0]
    for i in range(1, len(states)):
        if states[i] != states[i - 1]:
            # a change needs `rise` (or `fall`) agreeing observations in a row, ending here
            need = rise if states[i] else fall
            assert observations[max(0, i - need + 1) : i + 1] == [states[i]] * need
        run_start = i
        while run_start > 0 and observations[run_start - 1] == observations[i]:
            run_start -= 1
        streak = i - run_start + 1
        # ... and that many agreeing observations always produce the change
        if streak >= (rise if observations[i] else fall):
            assert states[i] == observations[i]


# -- the store side ------------------------------------------------------------------------------

A, B = Edge("a", 0, 0), Edge("b", 10, 10)
POOL = Pool("www.example.test.", (A, B), load_threshold=0.8, hysteresis=0.1)


def test_update_many_bumps_once_and_only_on_change() -> None:
    h = HealthStore([POOL])
    seen: list[int] = []
    h.add_listener(lambda store: seen.append(store.version))
    v = h.version
    assert not h.update_many({"a": (True, 0.0), "b": (None, None)})
    assert h.version == v and seen == []
    assert h.update_many({"a": (False, 0.5), "b": (True, 0.9)})
    assert h.version == v + 1 and seen == [v + 1]
    assert not h.state("a").up and h.state("a").load == 0.5
    assert h.state("b", POOL.name).overloaded
    h.update_many({"b": (None, 0.75)})  # inside the hysteresis band: still overloaded
    assert h.state("b", POOL.name).overloaded
    h.update_many({"b": (None, 0.69)})
    assert not h.state("b", POOL.name).overloaded


def test_probe_load_wobble_below_the_step_is_not_applied() -> None:
    h = HealthStore([POOL])
    assert h.update_many({"a": (True, 0.50)})
    v = h.version
    # wobble: no version bump, so cached answers in every worker stay
    assert not h.update_many({"a": (True, 0.52)}) and not h.update_many({"a": (None, 0.46)})
    assert h.version == v and h.state("a").load == 0.50
    # a move of PROBE_LOAD_STEP or more is applied
    assert h.update_many({"a": (None, 0.50 + PROBE_LOAD_STEP)})
    assert h.version == v + 1 and h.state("a").load == 0.50 + PROBE_LOAD_STEP
    # a small move that crosses the threshold flips the overload flag, so it is applied
    assert h.update_many({"b": (None, 0.78)})
    assert h.update_many({"b": (None, 0.80)})
    assert h.state("b", POOL.name).overloaded
    # ...and a small move back inside the hysteresis band flips nothing: not applied
    assert not h.update_many({"b": (None, 0.78)})


def test_update_many_never_touches_drain() -> None:
    h = HealthStore([POOL])
    h.set_drained("a", True)
    h.update_many({"a": (True, 0.1)})
    assert h.state("a").drained and not h.state("a").serving


def test_detection_bound() -> None:
    from gslb.edgeprobe import detection_bound

    # defaults: interval 5, timeout 2, jitter 0.5, fall 3 -> 18.5 s; rise 2 -> 13 s
    assert detection_bound(5.0, 2.0, 0.5, 3) == 18.5
    assert detection_bound(5.0, 2.0, 0.5, 2) == 13.0
    assert detection_bound(0.25, 0.25, 0.0, 1) == 0.5
