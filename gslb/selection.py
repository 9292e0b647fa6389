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
(reading every member's state, unit vectors of the edges) is done once per generation of that
pool, and nearest answers are memoized per client coordinate (GeoIP places many networks on
one city's coordinates): a change to an edge of another pool keeps this pool's view, memo
and grid cells. For a small pool a memo miss costs n dot products. A large pool gets a
lazily filled grid of latitude/longitude cells: each cell keeps only the edges that can be
among the `answers` nearest for some point inside it (an edge farther from the cell's centre
than the k-th nearest plus the cell's diameter never is, by the triangle inequality on the
sphere), so a miss ranks a handful of edges and the answer is the same as ranking them all.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass, field

from geo.location import Location
from gslb.models import Edge, EdgeState, HealthView, Policy, Pool, Selection

__all__ = ["select"]

# Effective weights never reach zero, so a fully loaded edge can still be drawn when it is all
# that serves; its share is negligible next to any edge with headroom.
_MIN_EFFECTIVE_WEIGHT = 1e-9
_VIEWS_MAX = 4096  # pools whose derived state is kept
_MEMO_MAX = 65536  # memoized nearest answers per pool view
_MASK64 = (1 << 64) - 1
# Pools with more candidates than this use the cell grid for nearest answers.
_GRID_MIN_EDGES = 48
# Cell sizes in degrees; both divide 180, and a fine cell lies inside one coarse cell.
_CELL_DEGREES = 4.0
_COARSE_DEGREES = 20.0
# Slack for floating-point error in the cell bounds (radians, ~6 m on the Earth: acos near 1
# is ill-conditioned).
_CELL_SLACK = 1e-6

_Candidate = tuple[float, float, float, float, str, Edge]


def select(pool: Pool, where: Location | None, health: HealthView) -> Selection:
    """The edges to answer for `pool` for a client at `where` (None: location unknown)."""
    view = _view(pool, health)
    if view.fixed is not None:
        return view.fixed
    if where is None:
        assert view.untailored is not None
        return view.untailored
    if pool.policy is Policy.WEIGHTED:
        return _weighted(view, where)
    key = (where.latitude, where.longitude)
    memo = view.memo
    hit = memo.get(key)
    if hit is None:
        hit = _nearest(view, where)
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
    # nearest: the candidates with their unit vectors; hot: every serving edge is overloaded
    candidates: list[_Candidate] = field(default_factory=list)
    hot: bool = False
    # nearest, large pools: cell index -> the candidates that can win inside that cell (fine
    # cells are built from the candidates of the coarse cell holding them: cheap to fill)
    cells: dict[int, list[_Candidate]] | None = None
    coarse: dict[int, list[_Candidate]] = field(default_factory=dict)
    # weighted: (edge salt, 1 / effective weight, name, edge)
    weighted: list[tuple[int, float, str, Edge]] = field(default_factory=list)
    memo: dict[tuple[float, float], Selection] = field(default_factory=dict)


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
    view = _build_view(pool, health, slot, generations[slot])
    if len(_VIEWS) >= _VIEWS_MAX:
        _VIEWS.clear()
    _VIEWS[id(pool)] = view
    return view


def _build_view(pool: Pool, health: HealthView, slot: int, generation: int) -> _View:
    view = _View(pool, health, slot, generation)
    serving = [(e, st) for e in pool.edges if (st := health.state(e.name, pool.name)).serving]
    count = max(1, pool.answers)
    if not serving:
        view.fixed = Selection(pool.fallback or pool.edges, tailored=False)
        return view
    policy = pool.policy
    if policy is Policy.FAILOVER:
        view.fixed = Selection(tuple(e for e, _ in serving[:count]), tailored=False)
        return view
    if policy is Policy.ALL:
        view.fixed = Selection(tuple(e for e, _ in serving), tailored=False)
        return view
    if policy is Policy.WEIGHTED:
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
    for e, st in cool or serving:
        x, y, z = _unit(e.latitude, e.longitude)
        view.candidates.append((x, y, z, st.load, e.name, e))
    if not view.hot and len(view.candidates) > max(_GRID_MIN_EDGES, 4 * count):
        view.cells = {}
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


def _nearest(view: _View, where: Location) -> Selection:
    # Ordering by great-circle distance is ordering by the cosine of the central angle, i.e.
    # the dot product of unit vectors (largest first): no trigonometry per edge.
    cx, cy, cz = _unit(where.latitude, where.longitude)
    count = max(1, view.pool.answers)
    candidates = view.candidates
    cells = view.cells
    if cells is not None:
        lat, lon = where.latitude, where.longitude
        cell = _cell_index(lat, lon, _CELL_DEGREES)
        found = cells.get(cell)
        if found is None:
            outer = _cell_index(lat, lon, _COARSE_DEGREES)
            wide = view.coarse.get(outer)
            if wide is None:
                wide = view.coarse[outer] = _cell_candidates(
                    candidates, outer, _COARSE_DEGREES, count
                )
            found = cells[cell] = _cell_candidates(wide, cell, _CELL_DEGREES, count)
        candidates = found
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


def _cell_index(lat: float, lon: float, size: float) -> int:
    rows, cols = int(180 / size), int(360 / size)
    row = min(max(int((lat + 90.0) // size), 0), rows - 1)
    col = int((lon + 180.0) // size) % cols
    return row * cols + col


def _cell_bounds(cell: int, size: float) -> tuple[float, float, float, float]:
    """(south, north, west, east) of a cell, in degrees."""
    row, col = divmod(cell, int(360 / size))
    south = -90.0 + row * size
    west = -180.0 + col * size
    return south, south + size, west, west + size


def _angle(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return math.acos(min(1.0, max(-1.0, dot)))


def _cell_candidates(
    candidates: list[_Candidate], cell: int, size: float, count: int
) -> list[_Candidate]:
    """The candidates that can be among the `count` nearest for some point of `cell`.

    For a point p in the cell with centre c and radius r (the farthest point of a
    latitude/longitude cell from its centre is a corner): the k-th nearest edge to p is at
    most d_k(c) + r away, and an edge e is at least angle(c, e) - r away; so e can rank
    among the k nearest only if angle(c, e) <= d_k(c) + 2r. Edges at exactly that bound are
    kept, so ties (broken by name) come out as they would over all candidates. `candidates`
    may be those of a cell containing this one: they hold every edge that can win in it.
    """
    south, north, west, east = _cell_bounds(cell, size)
    centre = _unit((south + north) / 2, (west + east) / 2)
    radius = max(_angle(centre, _unit(lat, lon)) for lat in (south, north) for lon in (west, east))
    cx, cy, cz = centre
    dots = [c[0] * cx + c[1] * cy + c[2] * cz for c in candidates]
    if count >= len(candidates):
        return list(candidates)
    kth = heapq.nlargest(count, dots)[-1]
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


def _weighted(view: _View, where: Location) -> Selection:
    net = where.network
    seed = _mix((int(net.network_address) ^ (net.prefixlen << 56) ^ (net.version << 62)) & _MASK64)
    count = max(1, view.pool.answers)

    # Weighted rendezvous hashing: score = -ln(u) / w with u uniform in (0, 1) from a hash of
    # (network, edge); the lowest score wins, and edge i comes first with probability
    # w_i / sum(w) over client networks.
    def score(item: tuple[int, float, str, Edge]) -> tuple[float, str]:
        salt, inv_weight, name, _ = item
        u = (_mix(seed ^ salt) + 0.5) / 18446744073709551616.0
        return (-math.log(u) * inv_weight, name)

    ranked = heapq.nsmallest(count, view.weighted, key=score)
    return Selection(tuple(item[3] for item in ranked), tailored=True)
