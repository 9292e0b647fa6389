"""Edge selection policies (gslb.selection) against a real HealthStore."""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from geo.distance import distance_km
from geo.location import Location
from gslb.health import HealthStore
from gslb.models import Edge, Policy, Pool, Selection
from gslb.selection import Status, Step, explain, select, select_at

FRA = Edge("fra", 50.11, 8.68, ipv4=ipaddress.IPv4Address("127.0.0.11"))
IAD = Edge("iad", 39.04, -77.49, ipv4=ipaddress.IPv4Address("127.0.0.12"))
NRT = Edge("nrt", 35.68, 139.69, ipv4=ipaddress.IPv4Address("127.0.0.13"))
EDGES = (FRA, IAD, NRT)


def loc(lat: float, lon: float, net: str = "192.0.2.0/24") -> Location:
    return Location(lat, lon, None, None, ipaddress.ip_network(net))


LONDON = loc(51.5, -0.12)
NEW_YORK = loc(40.7, -74.0)
TOKYO = loc(35.7, 139.7)


def pool(policy: Policy = Policy.NEAREST, **kw: object) -> Pool:
    return Pool("www.example.test.", kw.pop("edges", EDGES), policy, **kw)  # type: ignore[arg-type]


def test_nearest_picks_closest_and_is_tailored() -> None:
    health = HealthStore([pool()])
    assert select(pool(), LONDON, health).edges == (FRA,)
    assert select(pool(), NEW_YORK, health).edges == (IAD,)
    sel = select(pool(), TOKYO, health)
    assert sel.edges == (NRT,) and sel.tailored


def test_nearest_without_location_is_not_tailored() -> None:
    p = pool(answers=3)
    health = HealthStore([p])
    health.set_load("iad", 0.5)
    sel = select(p, None, health)
    assert not sel.tailored
    assert sel.edges == (FRA, NRT, IAD)  # equal weights: least loaded first


def test_down_and_drained_are_skipped() -> None:
    p = pool()
    health = HealthStore([p])
    health.set_up("fra", False)
    assert select(p, LONDON, health).edges == (IAD,)
    health.set_up("fra", True)
    health.set_drained("fra", True)
    assert select(p, LONDON, health).edges == (IAD,)
    health.set_drained("fra", False)
    assert select(p, LONDON, health).edges == (FRA,)


def test_fallback_all_members_when_nothing_serves() -> None:
    p = pool()
    health = HealthStore([p])
    for e in EDGES:
        health.set_up(e.name, False)
    sel = select(p, LONDON, health)
    assert sel.edges == EDGES and not sel.tailored


def test_configured_fallback() -> None:
    spare = Edge("spare", 0.0, 0.0, ipv4=ipaddress.IPv4Address("127.0.0.99"))
    p = pool(fallback=(spare,))
    health = HealthStore([p])
    for e in EDGES:
        health.set_drained(e.name, True)
    assert select(p, LONDON, health).edges == (spare,)


def test_spill_and_hysteresis_sequence() -> None:
    p = pool(load_threshold=0.8, hysteresis=0.1)
    health = HealthStore([p])
    seq = [
        (0.5, FRA),  # below threshold
        (0.8, IAD),  # at threshold: spill
        (0.75, IAD),  # inside hysteresis band: still spilled
        (0.71, IAD),
        (0.69, FRA),  # below threshold - hysteresis: back
        (0.75, FRA),  # rising again inside the band does not spill
        (0.9, IAD),
    ]
    for load, expected in seq:
        health.set_load("fra", load)
        assert select(p, LONDON, health).edges == (expected,), load


def test_all_overloaded_least_loaded_first() -> None:
    p = pool(answers=2)
    health = HealthStore([p])
    health.set_load("fra", 0.95)
    health.set_load("iad", 0.85)
    health.set_load("nrt", 0.85)
    sel = select(p, LONDON, health)
    assert sel.edges == (IAD, NRT)  # equal load: nearer to London first


def test_hysteresis_is_per_pool() -> None:
    strict = pool(load_threshold=0.5, hysteresis=0.1)
    loose = Pool("api.example.test.", EDGES, load_threshold=0.9, hysteresis=0.1)
    health = HealthStore([strict, loose])
    health.set_load("fra", 0.6)
    assert select(strict, LONDON, health).edges == (IAD,)
    assert select(loose, LONDON, health).edges == (FRA,)
    assert health.state("fra").overloaded  # in some pool


def test_failover_first_serving_in_order() -> None:
    p = pool(Policy.FAILOVER, edges=(NRT, FRA, IAD))
    health = HealthStore([p])
    sel = select(p, LONDON, health)
    assert sel.edges == (NRT,) and not sel.tailored
    health.set_up("nrt", False)
    assert select(p, LONDON, health).edges == (FRA,)


def test_all_policy_returns_every_serving_edge() -> None:
    p = pool(Policy.ALL)
    health = HealthStore([p])
    health.set_drained("iad", True)
    sel = select(p, TOKYO, health)
    assert sel.edges == (FRA, NRT) and not sel.tailored


def test_weighted_follows_weights_over_many_networks() -> None:
    heavy = Edge("heavy", 0, 0, weight=3.0)
    light = Edge("light", 0, 0, weight=1.0)
    p = pool(Policy.WEIGHTED, edges=(heavy, light))
    health = HealthStore([p])
    counts: Counter[str] = Counter()
    for i in range(4000):
        net = ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")
        sel = select(p, Location(0, 0, None, None, net), health)
        assert sel.tailored
        counts[sel.edges[0].name] += 1
    share = counts["heavy"] / 4000
    assert 0.70 < share < 0.80, counts


def test_weighted_is_deterministic_and_load_shifts_share() -> None:
    a = Edge("a", 0, 0, weight=1.0)
    b = Edge("b", 0, 0, weight=1.0)
    p = pool(Policy.WEIGHTED, edges=(a, b))
    health = HealthStore([p])
    where = loc(0, 0, "198.51.100.0/24")
    assert select(p, where, health) == select(p, where, health)
    health.set_load("a", 0.9)
    counts: Counter[str] = Counter()
    for i in range(2000):
        net = ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")
        counts[select(p, Location(0, 0, None, None, net), health).edges[0].name] += 1
    # effective weights 0.1 vs 1.0: about 9% to a
    assert counts["a"] < 400 and counts["b"] > 1600, counts


edge_st = st.builds(
    Edge,
    name=st.text("abcdefgh", min_size=1, max_size=6),
    latitude=st.floats(-90, 90),
    longitude=st.floats(-180, 180),
    weight=st.floats(0.01, 10),
)
edge_state = st.tuples(st.booleans(), st.booleans(), st.floats(0, 1))


def assert_explained(p: Pool, where: Location | None, health: HealthStore, sel: Selection) -> None:
    """`explain` names exactly what `select` answered, ranked, with every member's status."""
    exp = explain(p, where, health)
    assert exp.selection == sel
    ranked = sorted((c for c in exp.candidates if c.rank is not None), key=lambda c: c.rank or 0)
    assert tuple(c.edge for c in ranked) == sel.edges
    assert [c.rank for c in ranked] == list(range(1, len(ranked) + 1))
    assert [c.edge for c in exp.candidates][: len(p.edges)] == list(p.edges)
    for c in exp.candidates:
        st_ = health.state(c.edge.name, p.name)
        if not st_.up:
            assert c.status is Status.DOWN
        elif st_.drained:
            assert c.status is Status.DRAINED
        elif st_.overloaded or st_.load >= p.load_threshold:
            assert c.status is Status.OVERLOADED
        else:
            assert c.status is Status.UP
        assert (c.distance_km is None) == (where is None) and c.note
    if not any(health.state(e.name).serving for e in p.edges):
        assert exp.step is Step.FALLBACK
    elif where is None and p.policy in (Policy.NEAREST, Policy.WEIGHTED):
        assert exp.step is Step.UNLOCATED


@settings(max_examples=300, deadline=None)
@given(
    edges=st.lists(edge_st, min_size=1, max_size=6, unique_by=lambda e: e.name),
    policy=st.sampled_from(list(Policy)),
    answers=st.integers(1, 4),
    states=st.lists(edge_state, min_size=6, max_size=6),
    where=st.none() | st.builds(loc, st.floats(-90, 90), st.floats(-180, 180)),
)
def test_selection_invariants(
    edges: list[Edge],
    policy: Policy,
    answers: int,
    states: list[tuple[bool, bool, float]],
    where: Location | None,
) -> None:
    p = pool(policy, edges=tuple(edges), answers=answers)
    health = HealthStore([p])
    for edge, (up, drained, load) in zip(edges, states, strict=False):
        health.update(edge.name, up=up, drained=drained, load=load)
    sel = select(p, where, health)
    assert sel.edges, "never empty"
    assert_explained(p, where, health, sel)
    serving = [e for e in edges if health.state(e.name).serving]
    if serving:
        assert all(e in serving for e in sel.edges)
        assert len(set(sel.edges)) == len(sel.edges)
        if policy is Policy.ALL:
            assert list(sel.edges) == serving
        else:
            assert len(sel.edges) <= answers
    else:
        assert sel.edges == tuple(edges) and not sel.tailored
    if where is None:
        assert not sel.tailored
    if serving and policy is Policy.NEAREST and where is not None:
        cool = [e for e in serving if not health.state(e.name, p.name).overloaded]
        if cool:
            best = min(
                distance_km(where.latitude, where.longitude, e.latitude, e.longitude) for e in cool
            )
            first = sel.edges[0]
            # within float noise of the closest (near-ties may resolve either way)
            dist = distance_km(where.latitude, where.longitude, first.latitude, first.longitude)
            assert dist <= best + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    where=st.builds(loc, st.floats(-90, 90), st.floats(-180, 180)),
    drained=st.sets(st.sampled_from(["fra", "iad", "nrt"]), max_size=2),
)
def test_memoized_answers_follow_health_changes(where: Location, drained: set[str]) -> None:
    p = pool(answers=3)
    health = HealthStore([p])
    full = select(p, where, health)
    assert select(p, where, health) is full  # memo hit
    for name in drained:
        health.set_drained(name, True)
    after = select(p, where, health)
    assert after.edges == tuple(e for e in full.edges if e.name not in drained)
    for name in drained:
        health.set_drained(name, False)
    assert select(p, where, health).edges == full.edges


def _ranked_by_distance(edges: list[Edge], where: Location, count: int) -> tuple[Edge, ...]:
    """The `count` nearest edges by the exact rule (dot product of unit vectors, then name)."""

    def unit(lat: float, lon: float) -> tuple[float, float, float]:
        p, q = math.radians(lat), math.radians(lon)
        return (math.cos(p) * math.cos(q), math.cos(p) * math.sin(q), math.sin(p))

    cx, cy, cz = unit(where.latitude, where.longitude)

    def key(e: Edge) -> tuple[float, str]:
        x, y, z = unit(e.latitude, e.longitude)
        return (-(x * cx + y * cy + z * cz), e.name)

    return tuple(sorted(edges, key=key)[:count])


def _big_pool(seed: int, size: int, answers: int) -> Pool:
    rnd = random.Random(seed)
    edges = tuple(
        Edge(f"e{i:04d}", round(rnd.uniform(-90, 90), 2), round(rnd.uniform(-180, 180), 2))
        for i in range(size)
    )
    return Pool(f"big{seed}.example.test.", edges, Policy.NEAREST, answers=answers)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    size=st.integers(49, 400),
    answers=st.integers(1, 5),
    points=st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180)), min_size=1, max_size=30),
)
def test_large_pool_grid_matches_ranking_every_edge(
    seed: int, size: int, answers: int, points: list[tuple[float, float]]
) -> None:
    # Large pools answer from per-cell candidate lists: the answer must be exactly the one
    # ranking all edges gives, wherever the client is (cell corners, poles, antimeridian).
    p = _big_pool(seed, size, answers)
    health = HealthStore([p])
    corners = [(-90.0, -180.0), (90.0, 180.0), (0.0, 180.0), (4.0, -176.0), (-86.0, 8.0)]
    for lat, lon in points + corners:
        where = loc(lat, lon)
        assert select(p, where, health).edges == _ranked_by_distance(list(p.edges), where, answers)


def test_large_pool_grid_has_ties_broken_by_name() -> None:
    # Two edges on the same spot: the lower name wins, with or without the grid.
    twins = (Edge("b-twin", 10.0, 10.0), Edge("a-twin", 10.0, 10.0))
    far = tuple(Edge(f"f{i:03d}", -60.0 + i * 0.5, -170.0 + i) for i in range(60))
    p = Pool("twins.example.test.", twins + far, Policy.NEAREST, answers=1)
    health = HealthStore([p])
    assert select(p, loc(12.0, 11.0), health).edges[0].name == "a-twin"


def test_large_pool_grid_follows_health_changes() -> None:
    p = _big_pool(7, 200, 2)
    health = HealthStore([p])
    where = loc(48.0, 2.0)
    first = select(p, where, health).edges
    health.set_up(first[0].name, False)
    rest = [e for e in p.edges if e.name != first[0].name]
    assert select(p, where, health).edges == _ranked_by_distance(rest, where, 2)


def test_views_of_replaced_pools_are_dropped_when_the_health_version_moves() -> None:
    # A reload builds new Pool objects and bumps the health version; the old pools are never
    # asked again, so what selection derived for them (memos of every place seen) must go.
    from gslb import selection

    old = pool(answers=1)
    health = HealthStore([old])
    for lat in range(-60, 61, 2):
        select(old, loc(float(lat), 10.0), health)
    assert any(v.pool is old for v in selection._VIEWS.values())
    new = pool(answers=1)  # the reloaded config's pool
    health.reconfigure([new])
    assert select(new, LONDON, health).edges == (FRA,)
    assert not any(v.pool is old for v in selection._VIEWS.values())
    # a current pool's view survives its own version and is rebuilt after a change
    assert any(v.pool is new for v in selection._VIEWS.values())
    health.set_drained("fra", True)
    assert select(new, LONDON, health).edges == (IAD,)


def test_a_change_in_another_pool_keeps_this_pools_view_and_memo() -> None:
    www = pool(answers=1)
    syd = Edge("syd", -33.87, 151.21)
    other = Pool("other.example.test.", (syd, NRT))
    big = _big_pool(3, 120, 1)  # the grid: its cells are kept too
    health = HealthStore([www, other, big])
    first = select(www, LONDON, health)
    cell = select(big, LONDON, health)
    health.set_drained("syd", True)
    assert select(other, TOKYO, health).edges == (NRT,)
    assert select(www, LONDON, health) is first  # the memoized answer of the same view
    assert select(big, LONDON, health) is cell
    health.set_drained("nrt", True)  # in www and other: both views are rebuilt
    assert select(www, TOKYO, health).edges == (FRA,)
    assert select(other, TOKYO, health).edges == (syd, NRT)  # nothing serves: the fallback
    assert select(www, LONDON, health) is not first
    assert select(www, LONDON, health).edges == (FRA,)
    assert select(big, LONDON, health) is cell


def test_a_load_change_keeps_the_memo_and_cells_while_the_candidates_stay() -> None:
    # Probes move a pool's generation with every load step; while no member crosses the
    # overload threshold (or goes down or drained) the same edges are candidates, and the
    # new view answers from the memo and grid cells of the old one.
    from gslb import selection

    for p in (pool(answers=1), _big_pool(5, 200, 2)):
        health = HealthStore([p])
        first = select(p, LONDON, health)
        (before,) = [v for v in selection._VIEWS.values() if v.pool is p]
        health.set_load(first.edges[0].name, 0.5)  # under the threshold (0.8)
        assert select(p, LONDON, health) is first
        (after,) = [v for v in selection._VIEWS.values() if v.pool is p]
        assert after is not before and after.memo is before.memo
        assert after.cells is before.cells
        health.set_load(first.edges[0].name, 0.95)  # overloaded: the candidates change
        spilled = select(p, LONDON, health)
        assert spilled.edges[0] != first.edges[0]
        assert spilled.edges == _brute_force(p, health, LONDON.latitude, LONDON.longitude)
        (hot,) = [v for v in selection._VIEWS.values() if v.pool is p]
        assert hot.memo is not before.memo


def _brute_force(p: Pool, health: HealthStore, lat: float, lon: float) -> tuple[Edge, ...]:
    """The nearest rule over every member, from scratch: serving members without overload by
    distance (then name); when all serving ones are overloaded, least loaded first."""
    where = loc(lat, lon)
    states = {e.name: health.state(e.name, p.name) for e in p.edges}
    serving = [e for e in p.edges if states[e.name].serving]
    if not serving:
        return p.edges
    cool = [
        e
        for e in serving
        if not (states[e.name].overloaded or states[e.name].load >= p.load_threshold)
    ]
    if cool:
        return _ranked_by_distance(cool, where, p.answers)
    by_distance = _ranked_by_distance(serving, where, len(serving))
    return tuple(sorted(by_distance, key=lambda e: states[e.name].load)[: p.answers])


# Points the grid finds hard: on cell edges and corners (whole degrees, multiples of 4 and
# 20), at the poles and on the antimeridian.
_GRID_POINTS = [
    (-90.0, -180.0),
    (90.0, 180.0),
    (90.0, 0.0),
    (-90.0, 37.0),
    (0.0, 180.0),
    (0.0, -180.0),
    (4.0, -176.0),
    (-86.0, 8.0),
    (20.0, 40.0),
    (-20.0, -40.0),
    (1.0, 1.0),
    (59.999999, 119.999999),
    (89.5, -179.5),
]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    size=st.integers(49, 300),
    answers=st.integers(1, 3),
    states=st.lists(st.tuples(st.sampled_from("udl."), st.floats(0, 1)), min_size=300),
    points=st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180)), max_size=30),
)
def test_grid_cells_answer_as_a_brute_force_search(
    seed: int,
    size: int,
    answers: int,
    states: list[tuple[str, float]],
    points: list[tuple[float, float]],
) -> None:
    # The grid's cells (candidate lists, and whole answers where one edge can win) give the
    # answer a search over every member gives, in every health state, and after a change.
    p = _big_pool(seed, size, answers)
    health = HealthStore([p])
    for edge, (state, load) in zip(p.edges, states, strict=False):
        if state == "u":
            health.set_up(edge.name, False)
        elif state == "d":
            health.set_drained(edge.name, True)
        elif state == "l":
            health.set_load(edge.name, max(load, p.load_threshold))
        else:
            health.set_load(edge.name, load * p.load_threshold * 0.99)
    where = points + _GRID_POINTS
    for lat, lon in where:
        expected = _brute_force(p, health, lat, lon)
        assert select(p, loc(lat, lon), health).edges == expected
        assert select_at(p, lat, lon, health).edges == expected
    # A load that moves (the generation moves; the candidates may stay, and with them the
    # memo and cells, or change where it crosses the overload threshold) answers the same.
    for edge, (_, load) in zip(p.edges[::7], states[::-7], strict=False):
        health.set_load(edge.name, load)
    for lat, lon in where:
        assert select_at(p, lat, lon, health).edges == _brute_force(p, health, lat, lon)
    # A change moves the pool's generation: no cell built before it answers after it.
    first = select(p, loc(*where[0]), health).edges[0]
    health.set_drained(first.name, True)
    for lat, lon in where:
        assert select_at(p, lat, lon, health).edges == _brute_force(p, health, lat, lon)


def test_a_cell_where_one_edge_wins_holds_that_answer_until_the_generation_moves() -> None:
    from gslb import selection

    p = _big_pool(11, 400, 1)
    health = HealthStore([p])
    for lat in range(-80, 81, 7):
        for lon in range(-180, 180, 11):
            select_at(p, lat + 0.3, lon + 0.6, health)
    (view,) = [v for v in selection._VIEWS.values() if v.pool is p]
    assert view.cells is not None
    whole = {k: c for k, c in view.cells.items() if isinstance(c, Selection)}
    assert whole and len(whole) < len(view.cells)
    size = selection._FINEST
    row, col = divmod(min(whole), selection._FINE_COLS)
    south, west = -90.0 + row * size, -180.0 + col * size
    # every point of that cell has that edge as its nearest
    for dlat in (0.0, 0.5, 0.999999):
        for dlon in (0.0, 0.5, 0.999999):
            lat, lon = south + dlat * size, west + dlon * size
            assert _brute_force(p, health, lat, lon) == whole[min(whole)].edges
    lat, lon = south + size / 2, west + size / 2
    winner = whole[min(whole)].edges
    health.set_up(winner[0].name, False)  # the pool's generation moves
    after = select_at(p, lat, lon, health)
    assert after.edges != winner and after.edges == _brute_force(p, health, lat, lon)
    assert not any(v is view for v in selection._VIEWS.values())


def test_a_latitude_out_of_range_is_ranked_against_every_edge() -> None:
    p = _big_pool(5, 100, 1)
    health = HealthStore([p])
    for lat, lon in ((95.0, 10.0), (-91.0, -30.0)):
        assert select_at(p, lat, lon, health).edges == _brute_force(p, health, lat, lon)
