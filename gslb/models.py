"""Values shared across the GSLB server: edges, pools, live edge state and selections.

Everything here is frozen; config.py builds these once at load, selection.py and answer.py
only read them.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Clock = Callable[[], float]
# What a reply is counted by in the query metrics: rcode, qtype, pool ("" for none), the
# edges it names (see gslb.answer.Observer)
Tally = tuple[int, int, str, tuple[str, ...]]
# A Tally with its slot in the observer's counts (-1: none, it is counted in the tally dict)
Counted = tuple[Tally, int]


class Policy(enum.StrEnum):
    NEAREST = "nearest"
    WEIGHTED = "weighted"
    FAILOVER = "failover"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Edge:
    name: str
    latitude: float
    longitude: float
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    weight: float = 1.0
    capacity: float = 1000.0
    # The edge's /__edge/status URL; None: its state is set only through the HTTP API.
    status_url: str | None = None
    # The base URL of the edge's admin API (fleet purges POST to ADMIN_URL/__edge/purge):
    # `admin_url` as configured, else the scheme and authority of `status_url`; None: none.
    admin_url: str | None = None
    # The bearer token the edge's admin API wants for purges (from a token file); never
    # printed, and no part of an edge's identity.
    admin_token: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Pool:
    name: str  # absolute, lower-case owner name, e.g. "www.example.test."
    edges: tuple[Edge, ...]
    policy: Policy = Policy.NEAREST
    answers: int = 1
    ttl: int = 30
    load_threshold: float = 0.8
    hysteresis: float = 0.1
    fallback: tuple[Edge, ...] | None = None  # None: all members


@dataclass(frozen=True, slots=True)
class EdgeState:
    """Live state of one edge as the selection sees it."""

    up: bool = True
    drained: bool = False
    load: float = 0.0  # 0..1 against the edge's capacity
    # Load reached the pool's load_threshold and has not yet fallen below threshold - hysteresis.
    # Thresholds are per pool, so the store keeps this per (pool, edge); see HealthView.state.
    overloaded: bool = False

    @property
    def serving(self) -> bool:
        return self.up and not self.drained


class HealthView(Protocol):
    """Read side of the health-and-load state.

    `version` changes on every update. Answers are cached per pool, so each pool also has a
    *generation*: `generations[slot(pool)]`, which changes whenever the state of one of the
    pool's members (as `state(edge, pool)` reports it) changes, and only then (a pool the view
    does not know the members of changes on every update). `generations` is one list for the
    view's whole life, changed in place, so a hot path can keep it and compare one index;
    `generations[0]` belongs to no pool and never changes (for answers that depend on no
    health state). A pool keeps its slot for the view's life, also across reloads."""

    @property
    def version(self) -> int: ...

    @property
    def generations(self) -> Sequence[int]: ...

    def slot(self, pool: str) -> int:
        """The index of `pool`'s generation in `generations` (stable, never 0)."""
        ...

    def state(self, edge: str, pool: str | None = None) -> EdgeState:
        """The state of `edge`; with `pool`, `overloaded` uses that pool's threshold and
        hysteresis, without it `overloaded` is True when the edge is overloaded in any pool.
        Unknown edges are reported up, not drained, with no load."""
        ...


@dataclass(frozen=True, slots=True)
class Selection:
    """The edges one answer names; `tailored` is False when the client's location did not matter."""

    edges: tuple[Edge, ...]
    tailored: bool = field(default=True)
