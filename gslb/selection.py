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

Speed: the result is a pure function of (pool, where, health state), and the health state is
identified by `health.version` (which must change on every update, as HealthView says). So the
per-pool work (reading every member's state, unit vectors of the edges) is done once per
health version, and nearest answers are memoized per client coordinate (GeoIP places many
networks on one city's coordinates). A miss for a pool of n edges costs n dot products.
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
    """What one pool looks like at one health version."""

    pool: Pool
    health: HealthView
    version: int
    fixed: Selection | None = None  # the answer whatever `where` is
    untailored: Selection | None = None  # the answer when `where` is None
    # nearest: the candidates with their unit vectors; hot: every serving edge is overloaded
    candidates: list[tuple[float, float, float, float, str, Edge]] = field(default_factory=list)
    hot: bool = False
    # weighted: (edge salt, 1 / effective weight, name, edge)
    weighted: list[tuple[int, float, str, Edge]] = field(default_factory=list)
    memo: dict[tuple[float, float], Selection] = field(default_factory=dict)


_VIEWS: dict[int, _View] = {}


def _view(pool: Pool, health: HealthView) -> _View:
    version = health.version
    view = _VIEWS.get(id(pool))
    if view is not None and view.pool is pool and view.health is health and view.version == version:
        return view
    view = _build_view(pool, health, version)
    if len(_VIEWS) >= _VIEWS_MAX:
        _VIEWS.clear()
    _VIEWS[id(pool)] = view
    return view


def _build_view(pool: Pool, health: HealthView, version: int) -> _View:
    view = _View(pool, health, version)
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
