"""A health quorum across DNS nodes: whether an edge is up, from every node's own probes.

Each DNS node probes every edge itself (gslb.poller), so a partition between one node and
one edge would make that node alone answer differently. With `[[peers]]` configured, each
probe round also reads every peer's own probe view (its `/v1/edges`, field `probe.probed_up`:
what that node's probes say, never its quorum verdict, so views do not feed on each other)
and `decide` combines them with this node's: an edge is down when at least `quorum` of the
vantage points that have a view of it see it down; `quorum` 0 means a majority of them.
A node whose peers all failed to answer this round falls back to its own view (`fallback`),
which gslb.poller reports in /v1/edges and /metrics.

Pure: views in, a verdict out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Verdict", "decide", "peer_views"]


@dataclass(frozen=True, slots=True)
class Verdict:
    up: bool | None  # None: no vantage point has a view yet
    views: int  # vantage points with a view of the edge, this node included
    down: int  # ... of which see it down
    fallback: bool  # peers are configured but none answered: this node's view alone


def decide(
    own: bool | None, peers: Sequence[bool | None], quorum: int, *, peers_answered: bool
) -> Verdict:
    """The verdict on one edge from this node's view `own` and the views of the peers that
    answered (None: that peer has no view of the edge yet)."""
    if not peers_answered:
        views = 0 if own is None else 1
        return Verdict(own, views, int(own is False), fallback=True)
    votes = [v for v in (own, *peers) if v is not None]
    if not votes:
        return Verdict(None, 0, 0, fallback=False)
    down = votes.count(False)
    need = quorum if quorum > 0 else len(votes) // 2 + 1
    return Verdict(down < min(need, len(votes)), len(votes), down, fallback=False)


def peer_views(body: object) -> dict[str, bool | None]:
    """A peer's own probe view per edge, read from its `/v1/edges` reply (edges it does not
    probe, and anything malformed, are left out)."""
    out: dict[str, bool | None] = {}
    edges = body.get("edges") if isinstance(body, Mapping) else None
    if not isinstance(edges, Mapping):
        return out
    for name, state in edges.items():
        probe = state.get("probe") if isinstance(state, Mapping) else None
        if isinstance(name, str) and isinstance(probe, Mapping):
            value = probe.get("probed_up")
            if value is None or isinstance(value, bool):
                out[name] = value
    return out
