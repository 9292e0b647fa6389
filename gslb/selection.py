"""Edge selection: which edges of a pool one DNS answer names (pure, no I/O, no clock).

`select(pool, where, health)` reads the live state of each member from a `HealthView` and
applies the pool's policy:

- ``nearest`` (default): serving edges (up and not drained) ordered by great-circle distance
  from `where`. Overloaded edges are skipped (spill to the next nearest) unless every serving
  edge is overloaded, then the least loaded come first (nearest among equals). Whether an edge
  is overloaded is decided by the health store *per (pool, edge)* when the load is set, with
  hysteresis: load >= pool.load_threshold marks it, and it stays marked until the load falls
  below load_threshold - hysteresis. Selection also treats load >= threshold as overloaded by
  itself, so a view that tracks no hysteresis still spills. Without `where` the answer is not
  tailored and serving edges are ordered by weight x (1 - load).
- ``weighted``: a deterministic weighted choice among serving edges with effective weight
  weight x (1 - load). DNS answers are cached by resolvers, so a per-query random choice would
  not spread traffic; instead the client network (`where.network`) seeds weighted rendezvous
  hashing, so different networks spread in proportion to the weights and one network keeps
  its edge while the member set is stable. Without `where`: highest effective weight first.
- ``failover``: the first serving edges in configured order.
- ``all``: every serving edge, in configured order (`answers` does not cap it).

When no member is serving, the pool's fallback set (pool.fallback, or every member when None)
is answered, so an answer is never empty. `Selection.tailored` is True only when the decision
depended on `where` (the DNS side then uses the GeoIP network's prefix as the ECS scope).
"""

from __future__ import annotations

import hashlib
import math

from geo.distance import distance_km
from geo.location import Location
from gslb.models import Edge, EdgeState, HealthView, Policy, Pool, Selection

__all__ = ["select"]

# Effective weights never reach zero, so a fully loaded edge can still be drawn when it is all
# that serves; its share is negligible next to any edge with headroom.
_MIN_EFFECTIVE_WEIGHT = 1e-9


def select(pool: Pool, where: Location | None, health: HealthView) -> Selection:
    """The edges to answer for `pool` for a client at `where` (None: location unknown)."""
    states = [(edge, health.state(edge.name, pool.name)) for edge in pool.edges]
    serving = [(edge, st) for edge, st in states if st.serving]
    if not serving:
        return Selection(_fallback(pool), tailored=False)
    policy = pool.policy
    if policy is Policy.NEAREST:
        return _nearest(pool, where, serving)
    if policy is Policy.WEIGHTED:
        return _weighted(pool, where, serving)
    if policy is Policy.FAILOVER:
        return Selection(tuple(edge for edge, _ in serving[: max(1, pool.answers)]), False)
    # Policy.ALL
    return Selection(tuple(edge for edge, _ in serving), tailored=False)


def _fallback(pool: Pool) -> tuple[Edge, ...]:
    if pool.fallback:
        return pool.fallback
    return pool.edges


def _overloaded(pool: Pool, st: EdgeState) -> bool:
    return st.overloaded or st.load >= pool.load_threshold


def _effective_weight(edge: Edge, st: EdgeState) -> float:
    load = min(max(st.load, 0.0), 1.0)
    return max(edge.weight * (1.0 - load), _MIN_EFFECTIVE_WEIGHT)


def _nearest(
    pool: Pool, where: Location | None, serving: list[tuple[Edge, EdgeState]]
) -> Selection:
    count = max(1, pool.answers)
    cool = [(edge, st) for edge, st in serving if not _overloaded(pool, st)]
    if where is None:
        ranked = cool or serving
        ranked = sorted(ranked, key=lambda es: (-_effective_weight(*es), es[0].name))
        return Selection(tuple(edge for edge, _ in ranked[:count]), tailored=False)
    lat, lon = where.latitude, where.longitude

    def dist(edge: Edge) -> float:
        return distance_km(lat, lon, edge.latitude, edge.longitude)

    if cool:
        ranked_cool = sorted(cool, key=lambda es: (dist(es[0]), es[0].name))
        return Selection(tuple(edge for edge, _ in ranked_cool[:count]), tailored=True)
    # Every serving edge is overloaded: least loaded first, the nearest among equals.
    ranked_hot = sorted(serving, key=lambda es: (es[1].load, dist(es[0]), es[0].name))
    return Selection(tuple(edge for edge, _ in ranked_hot[:count]), tailored=True)


def _unit_hash(key: bytes) -> float:
    """A stable value in (0, 1) for `key` (the same in every process, unlike hash())."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def _weighted(
    pool: Pool, where: Location | None, serving: list[tuple[Edge, EdgeState]]
) -> Selection:
    count = max(1, pool.answers)
    if where is None:
        ranked = sorted(serving, key=lambda es: (-_effective_weight(*es), es[0].name))
        return Selection(tuple(edge for edge, _ in ranked[:count]), tailored=False)
    seed = where.network.with_prefixlen.encode() + b"|"

    # Weighted rendezvous hashing: score = -ln(u) / w; the lowest score wins, and edge i comes
    # first with probability w_i / sum(w) over the hash of the client network.
    def score(es: tuple[Edge, EdgeState]) -> tuple[float, str]:
        edge, st = es
        u = _unit_hash(seed + edge.name.encode())
        return (-math.log(u) / _effective_weight(edge, st), edge.name)

    ranked = sorted(serving, key=score)
    return Selection(tuple(edge for edge, _ in ranked[:count]), tailored=True)
