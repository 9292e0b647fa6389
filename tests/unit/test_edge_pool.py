"""The origin pool as pure state: algorithms, passive ejection, probe rise/fall, and the
probe leader's verdicts applied by a follower worker."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from edge.config import OriginConfig, PoolConfig, ProbeConfig
from edge.nodestats import Verdict
from edge.origins import OriginPool
from edge.probes import verdicts


def _pool(algorithm: str = "round_robin", weights: tuple[int, ...] = (1, 1, 1), **kw) -> OriginPool:  # type: ignore[no-untyped-def]
    origins = tuple(OriginConfig(f"http://10.0.0.{i}:80", w) for i, w in enumerate(weights))
    return OriginPool(PoolConfig(origins=origins, algorithm=algorithm, **kw))


@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6))
def test_weighted_round_robin_is_exact_over_a_cycle(weights: list[int]) -> None:
    pool = _pool("weighted", tuple(weights))
    cycle = sum(weights)
    picks = Counter(pool.pick().url for _ in range(cycle * 3))  # type: ignore[union-attr]
    assert picks == Counter({o.url: o.weight * 3 for o in pool.origins})


@given(st.text(min_size=1, max_size=40))
def test_consistent_hash_is_stable_and_moves_only_the_failed_share(key: str) -> None:
    pool = _pool("consistent_hash", (1, 1, 1, 1))
    first = pool.pick(key)
    assert first is not None
    assert pool.pick(key) is first
    other = pool.origins[0] if first is not pool.origins[0] else pool.origins[1]
    other.up = False  # another origin failing does not move this key
    assert pool.pick(key) is first
    first.up = False
    moved = pool.pick(key)
    assert moved is not None and moved is not first


def test_round_robin_skips_down_and_excluded_origins() -> None:
    pool = _pool()
    pool.origins[1].up = False
    seen = {pool.pick().url for _ in range(10)}  # type: ignore[union-attr]
    assert seen == {pool.origins[0].url, pool.origins[2].url}
    assert pool.pick(exclude=[pool.origins[0], pool.origins[2]]) is None


def test_least_conn_prefers_idle_origin() -> None:
    pool = _pool("least_conn", (1, 1))
    busy = pool.origins[0]
    pool.started(busy)
    assert all(pool.pick() is pool.origins[1] for _ in range(5))
    pool.finished(busy, ok=True)
    assert {pool.pick().url for _ in range(4)} == {o.url for o in pool.origins}  # type: ignore[union-attr]


def test_passive_ejection_then_probe_rise_and_fall() -> None:
    pool = _pool(weights=(1, 1), max_fails=2, probe=ProbeConfig(rise=2, fall=2))
    origin, other = pool.origins
    for _ in range(2):
        pool.started(origin)
        pool.finished(origin, ok=False)
    assert not origin.up and pool.pick() is other
    for _ in range(5):  # the last origin in rotation is never ejected passively
        pool.started(other)
        pool.finished(other, ok=False)
    assert other.up
    assert pool.probe_result(origin, True, 200) is False
    assert pool.probe_result(origin, True, 200) is True
    assert origin.up
    assert pool.probe_result(origin, False, 503) is False
    assert pool.probe_result(origin, True, 200) is False  # a good probe resets the fall count
    assert pool.probe_result(origin, False, None) is False
    assert pool.probe_result(origin, False, None) is True
    assert not origin.up


def test_passive_recovery_without_probes_uses_a_cooldown() -> None:
    now = [100.0]
    origins = (OriginConfig("http://10.0.0.1:80"), OriginConfig("http://10.0.0.2:80"))
    probe = ProbeConfig(enabled=False, interval=5.0, rise=2)
    config = PoolConfig(origins=origins, max_fails=1, probe=probe, algorithm="consistent_hash")
    pool = OriginPool(config, clock=lambda: now[0])
    origin = pool.pick("k")
    assert origin is not None
    pool.started(origin)
    pool.finished(origin, ok=False)
    assert pool.pick("k") is not origin
    now[0] += 9.9
    assert pool.pick("k") is not origin
    now[0] += 0.2
    assert pool.pick("k") is origin


def test_update_keeps_state_of_remaining_origins() -> None:
    pool = _pool(weights=(1, 1))
    pool.origins[0].up = False
    kept_url = pool.origins[0].url
    new = PoolConfig(origins=(OriginConfig(kept_url, 5), OriginConfig("http://10.0.0.9:80")))
    pool.update(new)
    assert [o.url for o in pool.origins] == [kept_url, "http://10.0.0.9:80"]
    assert pool.origins[0].up is False and pool.origins[0].weight == 5


def _eject(pool: OriginPool, index: int = 0) -> None:
    origin = pool.origins[index]
    for _ in range(pool.config.max_fails):
        pool.started(origin)
        pool.finished(origin, ok=False)
    assert not origin.up


def test_a_leaders_verdict_is_taken_as_decided_without_rise_and_fall_again() -> None:
    pool = _pool(weights=(1, 1), probe=ProbeConfig(rise=2, fall=3))
    origin = pool.origins[0]
    assert pool.apply_verdict(origin, False, 3, 0) is True
    assert not origin.up and pool.pick(exclude=[pool.origins[1]]) is None
    assert pool.apply_verdict(origin, False, 1, 1) is False
    assert pool.apply_verdict(origin, True, 1, 2) is True
    assert origin.up


def test_a_passive_ejection_ends_after_rise_good_probes_of_the_leader_made_since() -> None:
    pool = _pool(weights=(1, 1), max_fails=1, probe=ProbeConfig(rise=2, fall=3))
    origin = pool.origins[0]
    assert pool.apply_verdict(origin, True, 10, 10) is False  # the leader's probes say up
    _eject(pool)
    # The leader's verdict stays up, but only good probes made after the ejection count.
    assert pool.apply_verdict(origin, True, 0, 10) is False
    assert pool.apply_verdict(origin, True, 1, 11) is False
    assert pool.apply_verdict(origin, True, 1, 12) is True
    assert origin.up
    # A probe failing in between (not enough for the leader to fall) starts the count over.
    _eject(pool)
    assert pool.apply_verdict(origin, True, 1, 0) is False
    assert pool.apply_verdict(origin, True, 1, 1) is False
    assert pool.apply_verdict(origin, True, 1, 2) is True
    # Taken out by the leader meanwhile: back when its verdict is up with rise good probes.
    _eject(pool)
    assert pool.apply_verdict(origin, False, 3, 0) is False
    assert pool.apply_verdict(origin, True, 2, 2) is True


def test_the_published_verdict_leaves_the_leaders_passive_ejections_out() -> None:
    pool = _pool(weights=(1, 1), max_fails=1, probe=ProbeConfig(rise=2, fall=2))
    origin = pool.origins[0]
    pool.probe_result(origin, True, 200)
    _eject(pool)
    assert verdicts(pool)[0] == Verdict(origin.url, True, 1, 1)
    pool.probe_result(origin, False, 503)
    pool.probe_result(origin, False, None)
    assert [(v.up, v.probes, v.ok_run) for v in verdicts(pool)] == [(False, 3, 0), (True, 0, 0)]
    pool.probe_result(origin, True, 200)
    pool.probe_result(origin, True, 200)
    assert origin.up and verdicts(pool)[0].up


def test_disabling_probes_lets_go_of_their_verdict() -> None:
    pool = _pool(weights=(1, 1), probe=ProbeConfig(fall=1))
    origin = pool.origins[0]
    assert pool.probe_result(origin, False, 503) is True
    pool.update(replace(pool.config, probe=ProbeConfig(enabled=False)))
    assert origin.up
