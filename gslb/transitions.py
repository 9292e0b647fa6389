"""Edge state transitions: what changed, when and why (no I/O, no clock of its own).

The authoritative `HealthStore` (gslb.health) records one `Transition` whenever an edge goes
down or up, is drained or undrained, or becomes overloaded in a pool or recovers there, with
the reason its caller gave (a probe's verdict, an API request, a config reload) or, for
overload, the load and the pool's thresholds. `TransitionLog` keeps the most recent ones in a
bounded list (the API's /v1/topology and the status page show them), the last one per edge
(kept beyond the list's bound, so an edge that changed long ago still says when and why) and
a counter per (edge, kind) that /metrics exports as gslb_edge_transitions_total.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["HISTORY", "Kind", "Transition", "TransitionLog"]

HISTORY: Final = 200  # recent transitions kept


class Kind(enum.StrEnum):
    """What happened to the edge (the `kind` label of gslb_edge_transitions_total)."""

    DOWN = "down"
    UP = "up"
    DRAINED = "drained"
    UNDRAINED = "undrained"
    OVERLOADED = "overloaded"  # in one pool: its load reached the pool's load_threshold
    RECOVERED = "recovered"  # ... and fell below load_threshold - hysteresis again


# The aspect of the edge's state each kind moves: (from, to).
_STATES: Final = {
    Kind.DOWN: ("up", "down"),
    Kind.UP: ("down", "up"),
    Kind.DRAINED: ("undrained", "drained"),
    Kind.UNDRAINED: ("drained", "undrained"),
    Kind.OVERLOADED: ("normal", "overloaded"),
    Kind.RECOVERED: ("overloaded", "normal"),
}


@dataclass(frozen=True, slots=True)
class Transition:
    time: float  # seconds since the epoch
    edge: str
    kind: Kind
    reason: str
    pool: str | None = None  # overloaded / recovered: the pool whose threshold it crossed

    @property
    def before(self) -> str:
        return _STATES[self.kind][0]

    @property
    def after(self) -> str:
        return _STATES[self.kind][1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "edge": self.edge,
            "kind": self.kind.value,
            "from": self.before,
            "to": self.after,
            "pool": self.pool,
            "reason": self.reason,
        }


class TransitionLog:
    """The recent transitions (oldest first), the last one per edge, counts per (edge, kind)."""

    def __init__(self, size: int = HISTORY) -> None:
        self._recent: deque[Transition] = deque(maxlen=max(1, size))
        self._last: dict[str, Transition] = {}
        self._counts: dict[tuple[str, Kind], int] = {}

    def add(self, transition: Transition) -> None:
        self._recent.append(transition)
        self._last[transition.edge] = transition
        key = (transition.edge, transition.kind)
        self._counts[key] = self._counts.get(key, 0) + 1

    def __iter__(self) -> Iterator[Transition]:
        return iter(tuple(self._recent))

    def __len__(self) -> int:
        return len(self._recent)

    def last(self, edge: str) -> Transition | None:
        return self._last.get(edge)

    def counts(self) -> dict[tuple[str, str], int]:
        """{(edge, kind): transitions} since the store was made."""
        return {(edge, kind.value): n for (edge, kind), n in self._counts.items()}

    def forget(self, keep: set[str]) -> None:
        """Drop the last transition of edges no longer configured (their counts stay: a
        Prometheus counter never goes backwards)."""
        for edge in [e for e in self._last if e not in keep]:
            del self._last[edge]
