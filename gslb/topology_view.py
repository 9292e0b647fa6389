"""What the API's /v1/topology shows: edges, pools and this DNS node as JSON-able data.

Pure: it reads a config, the authoritative health store (state, recent transitions) and
what the probes last saw, and builds dicts; gslb.api serves them and the status page draws
them. Every edge is listed in config order with where it is, its addresses, the pools it
belongs to (and those it is only a fallback of), its live state with one summary word
(`status`: down, drained, overloaded in some pool, or up), the thresholds of each of its
pools and its last transition (time, kind, reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gslb.config import GslbConfig
from gslb.health import HealthStore
from gslb.models import Edge, Pool

__all__ = ["edge_facts", "edge_status", "pool_doc", "topology"]


def edge_status(state: Mapping[str, Any]) -> str:
    """One word for an edge's state in `HealthStore.snapshot()` form (the status page's
    colour): down, drained, overloaded (in any pool) or up."""
    if not state.get("up", True):
        return "down"
    if state.get("drained", False):
        return "drained"
    if state.get("overloaded", False):
        return "overloaded"
    return "up"


def pool_doc(pool: Pool) -> dict[str, Any]:
    return {
        "name": pool.name,
        "policy": pool.policy.value,
        "members": [e.name for e in pool.edges],
        "answers": pool.answers,
        "ttl": pool.ttl,
        "load_threshold": pool.load_threshold,
        "hysteresis": pool.hysteresis,
        "fallback": "all" if pool.fallback is None else [e.name for e in pool.fallback],
    }


def edge_facts(edge: Edge, config: GslbConfig) -> dict[str, Any]:
    """What the config says about `edge`: addresses, place, weight and pools."""
    addresses = [str(a) for a in (edge.ipv4, edge.ipv6) if a is not None]
    return {
        "ipv4": str(edge.ipv4) if edge.ipv4 is not None else None,
        "ipv6": str(edge.ipv6) if edge.ipv6 is not None else None,
        "addresses": addresses,
        "latitude": edge.latitude,
        "longitude": edge.longitude,
        "weight": edge.weight,
        "capacity": edge.capacity,
        "status_url": edge.status_url,
        "pools": [p.name for p in config.pools if any(e.name == edge.name for e in p.edges)],
        "fallback_for": [
            p.name
            for p in config.pools
            if p.fallback is not None and any(e.name == edge.name for e in p.fallback)
        ],
    }


def topology(
    config: GslbConfig,
    health: HealthStore,
    probed: Mapping[str, Mapping[str, Any]],
    node: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    snap = health.snapshot()
    thresholds = {
        p.name: {"load_threshold": p.load_threshold, "hysteresis": p.hysteresis}
        for p in config.pools
    }
    edges = []
    for edge in config.edges:
        state = snap["edges"].get(edge.name, {})
        facts = edge_facts(edge, config)
        last = health.transitions.last(edge.name)
        doc: dict[str, Any] = {
            "name": edge.name,
            **facts,
            **state,
            "status": edge_status(state),
            "thresholds": {p: thresholds[p] for p in facts["pools"]},
            "last_change": None if last is None else last.as_dict(),
        }
        if edge.name in probed:
            doc["probe"] = dict(probed[edge.name])
        edges.append(doc)
    return {
        "version": snap["version"],
        "time": now,
        "node": dict(node),
        "edges": edges,
        "pools": [pool_doc(p) for p in config.pools],
        "transitions": [t.as_dict() for t in reversed(list(health.transitions))],
    }
