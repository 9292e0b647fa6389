"""Edge selection: which edges of a pool one DNS answer names (no I/O, no clock).

`select(pool, where, health)` reads the live state of each member from a `HealthView` and
applies the pool's policy:

- ``nearest`` (default): serving edges (up and not drained) ordered by great-circle distance
  from `where`. Overloaded edges are skipped (spill to the next nearest) unless every serving
  edge is overloaded, then the least loaded come first (nearest among equals). Whether an edge
  is overloaded is decided by the health store *per (pool, edge)* when the load is set, with
  hysteresis: load >= pool.load_threshold marks it, and it stays marked until the load falls
  below load_threshold - hysteresis. Selection also treats load >= threshold as overloaded by
  itself, so a view that tracks no hysteresis still spills. Without `where` the answer is not
  tailored and serving edges are ordered by weight x (1 - load). When fewer edges than
  `answers` have headroom, only those are named.
- ``weighted``: a deterministic weighted choice among serving edges with effective weight
  weight x (1 - load). DNS answers are cached by resolvers, so a per-query random choice would
  not spread traffic; instead the client network (`where.network`) seeds weighted rendezvous
  hashing, so different networks spread in proportion to the weights and one network keeps
  its edge while the member set is stable. Without `where`: highest effective weight first.
- ``failover``: the first `answers` serving edges in configured order.
- ``all``: every serving edge, in configured order (`answers` does not cap it).

When no member is serving, the pool's fallback set (pool.fallback, or every member when None)
is answered, so an answer is never empty. `Selection.tailored` is True only when the decision
depended on `where` (the DNS side then uses the GeoIP network's prefix as the ECS scope).

Speed: the result is a pure function of (pool, where, the state of the pool's members), and
that state is identified by the pool's generation (`health.generations[health.slot(name)]`,
which changes whenever a member's state changes, as HealthView says). So the per-pool work
(reading every member's state, unit vectors of the edges) is done once per generation of
that pool, and nearest answers are memoized per client coordinate (GeoIP places many
networks on one city's coordinates): a change to an edge of another pool keeps this pool's
view, memo and grid cells, and a change in this pool that leaves its candidates as they were
(a load moving below the overload threshold, as probes report every round) keeps the memo
and cells in the new view (`_carry`). For a small pool a memo miss costs n dot products. A
large pool gets a lazily filled grid of latitude/longitude cells: each cell keeps only the
edges that can be among the `answers` nearest for some point inside it (an edge farther from
the cell's centre than the k-th nearest plus the cell's diameter never is, by the triangle
inequality on the sphere), so a miss ranks a handful of edges and the answer is the same as
ranking them all. The grid has three levels (20, 4 and 2 degree cells), each cell built from
the one holding it a level up, and a new coordinate looks up its 2-degree cell only: with
one edge per answer, some of those can be won by a single edge and hold the answer itself,
so a new coordinate there costs an index and a dict lookup, less than a small pool's n dot
products. (1-degree cells answer a little faster once built, but a server's first minutes
build so many more of them that they cost more than they save.)

Explanations: `explain(pool, where, health)` returns the very `Selection` that `select` does
(it runs the same view and the same per-client choice, memo included) together with an
`Explanation`, a frozen value saying which step decided (`Step`: nearest, load spill, least
loaded, unlocated, weighted, failover, all, fallback) and, for every member, its state,
load, distance from the client, effective weight, weighted score and why it was or was not
named. The step is what the view recorded while it was built; the per-edge notes only read
state. The DNS path never builds explanations: the API's /v1/explain and `gslb explain` do.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import itertools
import math
from dataclasses import dataclass, field, replace

from geo.distance import distance_km
from geo.location import Location
from gslb.models import Edge, EdgeState, HealthView, Policy, Pool, Selection

__all__ = [
    "Candidate",
    "Explanation",
    "Status",
    "Step",
    "explain",
    "on_fallback",
    "placement_epoch",
    "select",
    "serving_members",
]

# Effective weights never reach zero, so a fully loaded edge can still be drawn when it is all
# that serves; its share is negligible next to any edge with headroom.
_MIN_EFFECTIVE_WEIGHT = 1e-9
_VIEWS_MAX = 4096  # pools whose derived state is kept
_MEMO_MAX = 65536  # memoized nearest answers per pool view
_MASK64 = (1 << 64) - 1
# Pools with more candidates than this use the cell grid for nearest answers.
_GRID_MIN_EDGES = 48
# Cell sizes in degrees, coarse to fine: each divides 180 and the size before it, so a cell
# lies inside one cell of every coarser level.
_CELL_SIZES = (20.0, 4.0, 2.0)
_FINEST = _CELL_SIZES[-1]
_FINE_ROWS, _FINE_COLS = int(180 / _FINEST), int(360 / _FINEST)
# the coarser levels: (size, finest cells per side of one of its cells, its columns)
_COARSER = tuple((size, int(size / _FINEST), int(360 / size)) for size in _CELL_SIZES[:-1])
# Slack for floating-point error in the cell bounds (radians, ~6 m on the Earth: acos near 1
# is ill-conditioned).
_CELL_SLACK = 1e-6

_Candidate = tuple[float, float, float, float, str, Edge]
_EPOCHS: itertools.count[int] = itertools.count()  # of placement_epoch


class Step(enum.StrEnum):
    """Which rule decided an answer."""

    NEAREST = "nearest"  # the nearest serving edge(s) with headroom
    SPILL = "load_spill"  # ... where a nearer serving edge is overloaded
    LEAST_LOADED = "least_loaded"  # every serving member is overloaded
    UNLOCATED = "unlocated"  # nearest or weighted without a client location: by weight
    WEIGHTED = "weighted"  # weighted rendezvous hashing of the client network
    FAILOVER = "failover"  # the first serving members in configured order
    ALL = "all"  # every serving member
    FALLBACK = "fallback"  # no member serving: the pool's fallback set


class Status(enum.StrEnum):
    """An edge's state as one pool sees it."""

    UP = "up"
    DOWN = "down"
    DRAINED = "drained"
    OVERLOADED = "overloaded"  # serving, with load over the pool's threshold (hysteresis)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One edge considered for an answer."""

    edge: Edge
    status: Status
    load: float
    distance_km: float | None  # from the client; None when its location is unknown
    weight: float  # effective weight: weight x (1 - load)
    rank: int | None  # 1-based position in the answer; None: not named
    note: str  # why it was or was not named
    score: float | None = None  # weighted: the rendezvous score (lowest first)
    member: bool = True  # False: only in the pool's fallback set


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why `selection` is the answer of `pool` for a client at `where`."""

    pool: Pool
    where: Location | None
    selection: Selection
    step: Step
    reason: str
    candidates: tuple[Candidate, ...]


def select(pool: Pool, where: Location | None, health: HealthView) -> Selection:
    """The edges to answer for `pool` for a client at `where` (None: location unknown)."""
    return _choose(_view(pool, health), where)


def placement_epoch(pool: Pool, health: HealthView) -> int:
    """A number that stays the same while `select_at`'s answer for every coordinate does:
    across the generations of a nearest pool whose candidates stay the same edges (see
    `_carry`). Callers that keep answers by place (gslb.answer's cold path) may keep them
    while it holds, though the pool's generation moves with every probed load step."""
    return _view(pool, health).epoch


def select_at(pool: Pool, latitude: float, longitude: float, health: HealthView) -> Selection:
    """`select` for a client at these coordinates, for a `nearest` pool (whose answer depends
    on the coordinates alone): the DNS cold path, which has no Location to hand."""
    if pool.policy is Policy.WEIGHTED:
        raise ValueError(f"pool {pool.name!r}: a weighted pool's answer needs the network")
    view = _view(pool, health)
    return view.fixed if view.fixed is not None else _at(view, latitude, longitude)


def _choose(view: _View, where: Location | None) -> Selection:
    """The per-client half of a decision: what `select` and `explain` both run."""
    pool = view.pool
    if view.fixed is not None:
        return view.fixed
    if where is None:
        assert view.untailored is not None
        return view.untailored
    if pool.policy is Policy.WEIGHTED:
        return _weighted(view, where)
    return _at(view, where.latitude, where.longitude)


def _at(view: _View, latitude: float, longitude: float) -> Selection:
    """The nearest-policy answer at these coordinates, memoized per view."""
    key = (latitude, longitude)
    memo = view.memo
    hit = memo.get(key)
    if hit is None:
        hit = _nearest(view, latitude, longitude)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = hit
    return hit


@dataclass(slots=True)
class _View:
    """What one pool looks like at one generation of its members' state."""

    pool: Pool
    health: HealthView
    slot: int  # of the pool in health.generations
    generation: int
    fixed: Selection | None = None  # the answer whatever `where` is
    untailored: Selection | None = None  # the answer when `where` is None
    step: Step = Step.NEAREST  # the rule that decides (nearest: before spill is told apart)
    # nearest: the candidates with their unit vectors; hot: every serving edge is overloaded
    candidates: list[_Candidate] = field(default_factory=list)
    hot: bool = False
    # nearest, large pools: per cell of the finest level, the candidates that can win inside
    # it, or the answer itself where only one can (one edge per answer); `coarser`: the same
    # for the coarser levels, each cell built from the candidates of the cell holding it one
    # level up, so filling a cell ranks a handful of edges
    cells: dict[int, list[_Candidate] | Selection] | None = None
    coarser: list[dict[int, list[_Candidate]]] = field(default_factory=list)
    # weighted: (edge salt, 1 / effective weight, name, edge)
    weighted: list[tuple[int, float, str, Edge]] = field(default_factory=list)
    memo: dict[tuple[float, float], Selection] = field(default_factory=dict)
    # placement_epoch: new with every view, kept by _carry with the memo
    epoch: int = field(default_factory=lambda: next(_EPOCHS))


_VIEWS: dict[int, _View] = {}
# id(health) -> the version views were last swept at. A view whose pool's generation moved on
# is dead weight: a current pool's view is rebuilt on its next use, and the pools of a config
# that a reload replaced (the reload moves every generation) are never asked again, so their
# views, memos included, would otherwise stay until _VIEWS fills up. So once per health
# version (the first time a view has to be built under it) the stale views are dropped.
_SWEPT: dict[int, int] = {}


def _view(pool: Pool, health: HealthView) -> _View:
    generations = health.generations
    view = _VIEWS.get(id(pool))
    if (
        view is not None
        and view.pool is pool
        and view.health is health
        and view.generation == generations[view.slot]
    ):
        return view
    version = health.version
    if _SWEPT.get(id(health)) != version:
        for key in [
            k
            for k, v in _VIEWS.items()
            if v.health is health and v.generation != generations[v.slot]
        ]:
            del _VIEWS[key]
        if len(_SWEPT) >= _VIEWS_MAX:
            _SWEPT.clear()
        _SWEPT[id(health)] = version
    slot = health.slot(pool.name)
    old, view = view, _build_view(pool, health, slot, generations[slot])
    if old is not None and old.pool is pool and old.health is health:
        _carry(old, view)
    if len(_VIEWS) >= _VIEWS_MAX:
        _VIEWS.clear()
    _VIEWS[id(pool)] = view
    return view


def _carry(old: _View, new: _View) -> None:
    """Give `new` what it can take from `old`, the view of the same pool at an earlier
    generation: a nearest answer with headroom depends on where the candidates are (the
    serving edges without overload), not on their loads, so while the candidates are the
    same edges the memo and the grid cells still hold. A pool's generation moves whenever a
    member's probed load moves by a step, which in a pool of many edges is nearly every
    probe round; without this each round would start its memo and cells over."""
    if new.pool.policy is not Policy.NEAREST:
        return
    if old.hot or new.hot or old.fixed is not None or new.fixed is not None:
        return  # least loaded first (loads decide), or one answer for every place
    before, after = old.candidates, new.candidates
    if len(before) != len(after) or any(
        a[5] is not b[5] for a, b in zip(before, after, strict=True)
    ):
        return
    new.memo = old.memo
    new.cells, new.coarser = old.cells, old.coarser
    new.epoch = old.epoch


def serving_members(pool: Pool, health: HealthView) -> list[tuple[Edge, EdgeState]]:
    """The pool's members that are up and not drained, with their state, in pool order."""
    return [(e, st) for e in pool.edges if (st := health.state(e.name, pool.name)).serving]


def on_fallback(pool: Pool, health: HealthView) -> bool:
    """True when no member serves, so answers come from the pool's fallback set."""
    return not serving_members(pool, health)


def _build_view(pool: Pool, health: HealthView, slot: int, generation: int) -> _View:
    view = _View(pool, health, slot, generation)
    serving = serving_members(pool, health)
    count = max(1, pool.answers)
    if not serving:
        view.fixed = Selection(pool.fallback or pool.edges, tailored=False)
        view.step = Step.FALLBACK
        return view
    policy = pool.policy
    if policy is Policy.FAILOVER:
        view.fixed = Selection(tuple(e for e, _ in serving[:count]), tailored=False)
        view.step = Step.FAILOVER
        return view
    if policy is Policy.ALL:
        view.fixed = Selection(tuple(e for e, _ in serving), tailored=False)
        view.step = Step.ALL
        return view
    if policy is Policy.WEIGHTED:
        view.step = Step.WEIGHTED
        ranked = sorted(serving, key=lambda es: (-_effective_weight(*es), es[0].name))
        view.untailored = Selection(tuple(e for e, _ in ranked[:count]), tailored=False)
        view.weighted = [
            (_salt(e.name), 1.0 / _effective_weight(e, st), e.name, e) for e, st in serving
        ]
        return view
    # Policy.NEAREST
    cool = [(e, st) for e, st in serving if not _overloaded(pool, st)]
    pool_ranked = sorted(cool or serving, key=lambda es: (-_effective_weight(*es), es[0].name))
    view.untailored = Selection(tuple(e for e, _ in pool_ranked[:count]), tailored=False)
    view.hot = not cool
    view.step = Step.LEAST_LOADED if view.hot else Step.NEAREST
    for e, st in cool or serving:
        x, y, z = _unit(e.latitude, e.longitude)
        view.candidates.append((x, y, z, st.load, e.name, e))
    if not view.hot and len(view.candidates) > max(_GRID_MIN_EDGES, 4 * count):
        view.cells = {}
        view.coarser = [{} for _ in _COARSER]
    return view


def _overloaded(pool: Pool, st: EdgeState) -> bool:
    return st.overloaded or st.load >= pool.load_threshold


def _effective_weight(edge: Edge, st: EdgeState) -> float:
    load = min(max(st.load, 0.0), 1.0)
    return max(edge.weight * (1.0 - load), _MIN_EFFECTIVE_WEIGHT)


def _unit(lat: float, lon: float) -> tuple[float, float, float]:
    p, q = math.radians(lat), math.radians(lon)
    c = math.cos(p)
    return (c * math.cos(q), c * math.sin(q), math.sin(p))


def _nearest(view: _View, lat: float, lon: float) -> Selection:
    count = max(1, view.pool.answers)
    candidates = view.candidates
    cells = view.cells
    if cells is not None:
        # the finest cell holding the point (the last row holds the north pole, and the
        # antimeridian is the west edge of the first column)
        row = min(int((lat + 90.0) // _FINEST), _FINE_ROWS - 1)
        col = int((lon + 180.0) // _FINEST) % _FINE_COLS
        found = cells.get(row * _FINE_COLS + col)
        if found is None:
            # (a latitude out of range is in no cell: ranked against every candidate)
            found = _fill_cell(view, cells, row, col, count) if -90 <= lat <= 90 else candidates
        if isinstance(found, Selection):  # one edge can win anywhere in this cell
            return found
        candidates = found
    # Ordering by great-circle distance is ordering by the cosine of the central angle, i.e.
    # the dot product of unit vectors (largest first): no trigonometry per edge.
    cx, cy, cz = _unit(lat, lon)
    if view.hot:  # every serving edge is overloaded: least loaded first, nearest among equals
        ranked = heapq.nsmallest(
            count,
            candidates,
            key=lambda c: (c[3], -(c[0] * cx + c[1] * cy + c[2] * cz), c[4]),
        )
        return Selection(tuple(c[5] for c in ranked), tailored=True)
    if count == 1:
        best = candidates[0]
        best_dot = best[0] * cx + best[1] * cy + best[2] * cz
        for c in candidates:
            dot = c[0] * cx + c[1] * cy + c[2] * cz
            if dot > best_dot or (dot == best_dot and c[4] < best[4]):
                best, best_dot = c, dot
        return Selection((best[5],), tailored=True)
    ranked = heapq.nsmallest(
        count, candidates, key=lambda c: (-(c[0] * cx + c[1] * cy + c[2] * cz), c[4])
    )
    return Selection(tuple(c[5] for c in ranked), tailored=True)


def _fill_cell(
    view: _View, cells: dict[int, list[_Candidate] | Selection], row: int, col: int, count: int
) -> list[_Candidate] | Selection:
    """The finest cell at (row, col), built from the coarser cells holding it (each built
    too where missing): its candidates, or the answer when only one edge can win in it."""
    candidates = view.candidates
    for (size, per, cols), coarse in zip(_COARSER, view.coarser, strict=True):
        crow, ccol = row // per, col // per
        key = crow * cols + ccol
        wide = coarse.get(key)
        if wide is None:
            wide = coarse[key] = _cell_candidates(candidates, crow, ccol, size, count)
        candidates = wide
    ranked = _cell_candidates(candidates, row, col, _FINEST, count)
    found: list[_Candidate] | Selection = ranked
    if count == 1 and len(ranked) == 1:  # one edge wins anywhere in the cell
        found = Selection((ranked[0][5],), tailored=True)
    cells[row * _FINE_COLS + col] = found
    return found


def _angle(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return math.acos(min(1.0, max(-1.0, dot)))


# (cell size, row) -> (cos, sin) of the latitude of the row's centre, and the radius of its
# cells: the angle from a cell's centre to its farthest point, a corner (a cell is symmetric
# about its central meridian, so every cell of a row has the same)
_ROWS: dict[tuple[float, int], tuple[float, float, float]] = {}


def _row(size: float, row: int) -> tuple[float, float, float]:
    key = (size, row)
    found = _ROWS.get(key)
    if found is None:
        south = -90.0 + row * size
        middle = math.radians(south + size / 2)
        centre = _unit(south + size / 2, size / 2)
        radius = max(_angle(centre, _unit(lat, 0.0)) for lat in (south, south + size))
        found = _ROWS[key] = (math.cos(middle), math.sin(middle), radius)
    return found


def _cell_candidates(
    candidates: list[_Candidate], row: int, col: int, size: float, count: int
) -> list[_Candidate]:
    """The candidates that can be among the `count` nearest for some point of the cell at
    (row, col) of the grid of `size` degrees.

    For a point p in the cell with centre c and radius r (the farthest point of a
    latitude/longitude cell from its centre is a corner): the k-th nearest edge to p is at
    most d_k(c) + r away, and an edge e is at least angle(c, e) - r away; so e can rank
    among the k nearest only if angle(c, e) <= d_k(c) + 2r. Edges at exactly that bound are
    kept, so ties (broken by name) come out as they would over all candidates. `candidates`
    may be those of a cell containing this one: they hold every edge that can win in it.
    """
    if count >= len(candidates):
        return list(candidates)
    cos_lat, sin_lat, radius = _row(size, row)
    lon = math.radians(-180.0 + (col + 0.5) * size)
    cx, cy, cz = cos_lat * math.cos(lon), cos_lat * math.sin(lon), sin_lat
    dots = [c[0] * cx + c[1] * cy + c[2] * cz for c in candidates]
    kth = max(dots) if count == 1 else heapq.nlargest(count, dots)[-1]
    limit = math.acos(min(1.0, max(-1.0, kth))) + 2 * radius + _CELL_SLACK
    if limit >= math.pi:
        return list(candidates)
    floor = math.cos(limit)
    return [c for c, dot in zip(candidates, dots, strict=True) if dot >= floor]


def _salt(name: str) -> int:
    """A stable 64-bit value per edge name (the same in every process, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """splitmix64's finalizer: a cheap, well-spread 64-bit mix."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _seed(where: Location) -> int:
    net = where.network
    return _mix((int(net.network_address) ^ (net.prefixlen << 56) ^ (net.version << 62)) & _MASK64)


def _score(seed: int, item: tuple[int, float, str, Edge]) -> tuple[float, str]:
    # Weighted rendezvous hashing: score = -ln(u) / w with u uniform in (0, 1) from a hash of
    # (network, edge); the lowest score wins, and edge i comes first with probability
    # w_i / sum(w) over client networks.
    salt, inv_weight, name, _ = item
    u = (_mix(seed ^ salt) + 0.5) / 18446744073709551616.0
    return (-math.log(u) * inv_weight, name)


def _weighted(view: _View, where: Location) -> Selection:
    seed = _seed(where)
    count = max(1, view.pool.answers)
    ranked = heapq.nsmallest(count, view.weighted, key=lambda item: _score(seed, item))
    return Selection(tuple(item[3] for item in ranked), tailored=True)


# ----------------------------------------------------------------------------- explanations


def explain(pool: Pool, where: Location | None, health: HealthView) -> Explanation:
    """The answer `select` gives, with why (see the module docstring)."""
    view = _view(pool, health)
    selection = _choose(view, where)
    step = view.step
    if where is None and view.fixed is None:
        step = Step.UNLOCATED
    rank = {e.name: i for i, e in enumerate(selection.edges, 1)}
    dist = {
        e.name: distance_km(where.latitude, where.longitude, e.latitude, e.longitude)
        for e in (*pool.edges, *(pool.fallback or ()))
        if where is not None
    }
    seed = _seed(where) if where is not None and step is Step.WEIGHTED else None
    scores = {} if seed is None else {item[2]: _score(seed, item)[0] for item in view.weighted}
    states = {e.name: health.state(e.name, pool.name) for e in pool.edges}
    status = {name: _status(pool, st) for name, st in states.items()}
    if step is Step.NEAREST and where is not None:
        # Spill: a serving edge nearer than the farthest one named was left out for load.
        farthest = max(dist[e.name] for e in selection.edges)
        if any(status[e.name] is Status.OVERLOADED and dist[e.name] < farthest for e in pool.edges):
            step = Step.SPILL
    candidates = [
        Candidate(
            edge=e,
            status=status[e.name],
            load=states[e.name].load,
            distance_km=dist.get(e.name),
            weight=_effective_weight(e, states[e.name]),
            rank=rank.get(e.name) if step is not Step.FALLBACK else None,
            note=_note(step, status[e.name], rank.get(e.name), pool),
            score=scores.get(e.name),
        )
        for e in pool.edges
    ]
    if step is Step.FALLBACK:
        members = {e.name: i for i, e in enumerate(pool.edges)}
        for e in selection.edges:
            i = members.get(e.name)
            if i is not None:
                c = candidates[i]
                note = f"named: in the fallback set, although {c.status.value}"
                candidates[i] = replace(c, rank=rank[e.name], note=note)
                continue
            st = health.state(e.name, pool.name)
            candidates.append(
                Candidate(
                    edge=e,
                    status=_status(pool, st),
                    load=st.load,
                    distance_km=dist.get(e.name),
                    weight=_effective_weight(e, st),
                    rank=rank[e.name],
                    note="named: in the pool's fallback set",
                    member=False,
                )
            )
    reason = _reason(step, pool, where, selection, status)
    return Explanation(pool, where, selection, step, reason, tuple(candidates))


def _status(pool: Pool, st: EdgeState) -> Status:
    if not st.up:
        return Status.DOWN
    if st.drained:
        return Status.DRAINED
    if _overloaded(pool, st):
        return Status.OVERLOADED
    return Status.UP


_LEFT_OUT = {
    Status.DOWN: "not named: down",
    Status.DRAINED: "not named: drained",
}


def _note(step: Step, status: Status, rank: int | None, pool: Pool) -> str:
    if step is Step.FALLBACK:
        return f"not named: {status.value}, and not in the fallback set"
    if status in _LEFT_OUT:
        return _LEFT_OUT[status]
    spills = pool.policy is Policy.NEAREST and status is Status.OVERLOADED
    if rank is not None:
        if spills:
            return f"answer #{rank}: overloaded, but no serving member has headroom"
        return f"answer #{rank}"
    if spills and step is not Step.LEAST_LOADED:
        return f"not named: overloaded (load_threshold {pool.load_threshold:g})"
    return {
        Step.NEAREST: "not named: farther away",
        Step.SPILL: "not named: farther away",
        Step.LEAST_LOADED: "not named: more loaded (or farther among equals)",
        Step.UNLOCATED: "not named: less weight x (1 - load)",
        Step.WEIGHTED: "not named: higher rendezvous score for this network",
        Step.FAILOVER: "not named: after the first serving members in configured order",
    }.get(step, "not named")


def _reason(
    step: Step,
    pool: Pool,
    where: Location | None,
    selection: Selection,
    status: dict[str, Status],
) -> str:
    names = ", ".join(e.name for e in selection.edges)
    count = max(1, pool.answers)
    if step is Step.NEAREST:
        return f"{names}: the nearest serving edge(s) with headroom ({count} per answer)"
    if step is Step.SPILL:
        hot = ", ".join(n for n, s in status.items() if s is Status.OVERLOADED)
        return (
            f"{names}: nearer edge(s) {hot} are overloaded (load at or over "
            f"{pool.load_threshold:g}, back below {pool.load_threshold - pool.hysteresis:g}): "
            "spilled to the next nearest"
        )
    if step is Step.LEAST_LOADED:
        return f"{names}: every serving member is overloaded: least loaded first"
    if step is Step.UNLOCATED:
        return f"{names}: the client's location is unknown: highest weight x (1 - load) first"
    if step is Step.WEIGHTED:
        net = where.network if where is not None else "?"
        return (
            f"{names}: weighted rendezvous hash of the client network {net} "
            "(weight x (1 - load)); another network may get another edge"
        )
    if step is Step.FAILOVER:
        return f"{names}: the first {count} serving member(s) in configured order"
    if step is Step.ALL:
        return f"{names}: every serving member"
    which = "the listed fallback edges" if pool.fallback else "every member (fallback all)"
    return f"{names}: no member is serving (down or drained): answering {which}"
