"""The health-and-load state store that edge selection reads.

One `HealthStore` per process. Every edge starts up, not drained, with no load. The HTTP API
sets an edge up/down, drained/undrained or its load, and the edge status probes
(gslb.poller) set up/down and load of edges with a status_url; every change bumps `version`.

Cached answers are invalidated per pool: every pool has a slot in `generations` (one list,
changed in place), and a change sets the generation of exactly the pools whose view of a
member changed, i.e. (up, drained, load, the pool's overload flag) of one of their members, to
the new `version`. An edge in several pools moves all of them; an edge that is only a
fallback moves none (selection never reads a fallback's state); an update that changes
nothing moves none. The answer engine and selection keep what they derived for a pool while
its generation stays (gslb.answer, gslb.selection), so a flapping edge in one pool leaves the
cached answers of every other pool alone. Slot 0 belongs to no pool and never moves. A pool
name the store is not configured with still gets a slot (a Responder built from a new config
asks before `reconfigure` runs), and as its members are unknown it moves on every change.

Overload with hysteresis: load thresholds are per pool, so the store keeps an `overloaded`
flag per (pool, edge), updated whenever the edge's load is set: it turns on when load >=
pool.load_threshold and off only when load < load_threshold - hysteresis. `state(edge, pool)`
reports the flag for that pool; `state(edge)` reports whether the edge is overloaded in any pool.

Many workers (`gslb serve --workers N`): the parent process owns the authoritative store and
runs the HTTP API; on every change it sends `snapshot()` (a small JSON-able dict) to each
worker over its multiprocessing pipe (gslb.workers), and sends the full snapshot to a worker
when it starts. A worker's store is a replica: `apply(snapshot)` replaces its state wholesale
(including the per-pool overload flags, so hysteresis is decided once, in the parent), bumps
the replica's own `version` and moves the generations of the pools whose members it changed
(worked out by the replica against its own state: snapshots carry no generations). With one
worker, the single process holds the only store.

Edge probes (gslb.poller) write through `update_many`: one probe round's up/load changes are
applied together and bump `version` once, and only when something actually changed, so a
round that confirms the current state neither drops cached answers nor pushes a snapshot.
A reported load counts as changed when it moved by PROBE_LOAD_STEP or more, or when it flips
an overload flag: an edge's live load wobbles from round to round, and every applied change
drops the cached answers of the edge's pools in every worker, so wobble must not do that.

A config reload calls `reconfigure(pools, edges)`: state is kept for edges still present,
new edges start up, the overload flags are re-evaluated against the new thresholds, and
every pool's generation moves.

Transitions (gslb.transitions): the authoritative store records, logs and counts every edge
going down or up, drained or undrained, overloaded in a pool or recovered there, with the
time (from the injected clock) and a reason: `update(..., source=)` and `update_many(...,
why=, source=)` say where a change came from (an API request, a probe's verdict), and
overload reasons name the load and the pool's thresholds. A replica (a store that has
applied a snapshot) records nothing: the parent already did.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from gslb.errors import GslbError
from gslb.models import Clock, EdgeState, Pool
from gslb.transitions import HISTORY, Kind, Transition, TransitionLog

log = logging.getLogger("gslb.health")

__all__ = ["PROBE_LOAD_STEP", "HealthError", "HealthStore", "UnknownEdgeError"]

# Probe-reported load changes smaller than this (that flip no overload flag) are not applied.
PROBE_LOAD_STEP: Final = 0.05


class HealthError(GslbError, ValueError):
    """A health update is invalid (bad value or snapshot)."""


class UnknownEdgeError(HealthError, KeyError):
    """The named edge is not configured."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown edge"


@dataclass(frozen=True, slots=True)
class _Thresholds:
    threshold: float
    hysteresis: float


Listener = Callable[["HealthStore"], None]


class HealthStore:
    """Live state of every configured edge; implements gslb.models.HealthView."""

    def __init__(
        self,
        pools: Iterable[Pool] = (),
        edges: Iterable[str] = (),
        *,
        clock: Clock = time.time,
        history: int = HISTORY,
    ) -> None:
        self._clock = clock
        self._replica = False  # set by apply(): a replica records no transitions
        self.transitions = TransitionLog(history)
        self._version = 0
        self._states: dict[str, EdgeState] = {}
        self._pools: dict[str, _Thresholds] = {}
        self._members: dict[str, tuple[str, ...]] = {}  # edge -> pools it belongs to
        self._overloaded: dict[tuple[str, str], bool] = {}  # (pool, edge) -> flag
        self._generations: list[int] = [0]  # per pool slot; slot 0: no pool
        self._slots: dict[str, int] = {}  # pool name -> slot, never reassigned
        self._unknown: list[int] = []  # slots of names not configured: moved on every change
        self._listeners: list[Listener] = []
        self._configure(list(pools), list(edges), keep=False)

    # -- HealthView ---------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def generations(self) -> Sequence[int]:
        return self._generations

    def slot(self, pool: str) -> int:
        slot = self._slots.get(pool)
        if slot is None:
            slot = self._slots[pool] = len(self._generations)
            self._generations.append(self._version)
            if pool not in self._pools:
                self._unknown.append(slot)
        return slot

    def state(self, edge: str, pool: str | None = None) -> EdgeState:
        st = self._states.get(edge)
        if st is None:
            return EdgeState()
        if pool is None:
            return st
        flag = self._overloaded.get((pool, edge))
        if flag is None or flag == st.overloaded:
            return st
        return replace(st, overloaded=flag)

    # -- updates --------------------------------------------------------------------------------

    @property
    def edges(self) -> tuple[str, ...]:
        return tuple(self._states)

    def __contains__(self, edge: object) -> bool:
        return edge in self._states

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(store)` after every change (the parent pushes snapshots with it)."""
        self._listeners.append(listener)

    def update_many(
        self,
        updates: Mapping[str, tuple[bool | None, float | None]],
        *,
        why: Mapping[str, str] | None = None,
        source: str = "",
    ) -> bool:
        """Set (up, load) for several edges at once (None leaves that field alone); `drained`
        is never touched. Bumps `version` once when any value changed; returns whether one did.
        Unknown edges raise UnknownEdgeError and nothing is applied. `why[edge]` is the
        reason recorded when that edge goes up or down, `source` where the change came from."""
        checked: dict[str, tuple[bool | None, float | None]] = {}
        for edge, (up, load) in updates.items():
            if edge not in self._states:
                raise UnknownEdgeError(f"unknown edge {edge!r}")
            checked[edge] = (up, _check_load(load) if load is not None else None)
        changed = False
        moved: set[int] = set()
        for edge, (up, load) in checked.items():
            st = self._states[edge]
            before = self._views(edge)
            new = st if up is None or st.up == up else replace(st, up=bool(up))
            if load is not None and self._load_moved(edge, st.load, load):
                new = self._with_load(edge, new, load)
            if new != st:
                self._states[edge] = new
                changed = True
                moved.update(self._moved(edge, before))
                self._note(edge, st, before, (why or {}).get(edge, ""), source)
        if changed:
            self._changed(moved)
        return changed

    def update(
        self,
        edge: str,
        *,
        up: bool | None = None,
        drained: bool | None = None,
        load: float | None = None,
        source: str = "",
    ) -> EdgeState:
        """Set any of up / drained / load for `edge`; returns its new (any-pool) state.
        `source` (e.g. "API request from 127.0.0.1") is the reason recorded for transitions."""
        st = self._states.get(edge)
        if st is None:
            raise UnknownEdgeError(f"unknown edge {edge!r}")
        if load is not None:
            load = _check_load(load)
        before = self._views(edge)
        new = st
        if up is not None:
            new = replace(new, up=bool(up))
        if drained is not None:
            new = replace(new, drained=bool(drained))
        if load is not None:
            new = self._with_load(edge, new, load)
        self._states[edge] = new
        self._note(edge, st, before, "", source)
        self._changed(self._moved(edge, before))
        return new

    def _with_load(self, edge: str, st: EdgeState, load: float) -> EdgeState:
        for pool in self._members.get(edge, ()):
            key = (pool, edge)
            self._overloaded[key] = _next_flag(self._pools[pool], load, self._overloaded[key])
        return replace(st, load=load, overloaded=self._any_overloaded(edge))

    def set_up(self, edge: str, up: bool) -> EdgeState:
        return self.update(edge, up=up)

    def set_drained(self, edge: str, drained: bool) -> EdgeState:
        return self.update(edge, drained=drained)

    def set_load(self, edge: str, load: float) -> EdgeState:
        return self.update(edge, load=load)

    def reconfigure(self, pools: Iterable[Pool], edges: Iterable[str] = ()) -> None:
        """Adopt a reloaded config, keeping the state of edges still present."""
        flags = dict(self._overloaded)
        self._configure(list(pools), list(edges), keep=True)
        for (pool, edge), flag in self._overloaded.items():
            if flag != flags.get((pool, edge), False):
                self._note_load(edge, pool, flag, "config reload")
        self.transitions.forget(set(self._states))
        self._changed(range(1, len(self._generations)))

    # -- replication ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: {"version": n, "edges": {name: {...}}}."""
        edges: dict[str, Any] = {}
        for name, st in self._states.items():
            edges[name] = {
                "up": st.up,
                "drained": st.drained,
                "serving": st.serving,
                "load": st.load,
                "overloaded": st.overloaded,
                "overloaded_in": sorted(
                    p for p in self._members.get(name, ()) if self._overloaded[(p, name)]
                ),
            }
        return {"version": self._version, "edges": edges}

    def apply(self, snapshot: Mapping[str, Any]) -> None:
        """Replace this replica's state with a snapshot from the authoritative store."""
        try:
            edges = snapshot["edges"]
            parsed: dict[str, tuple[EdgeState, list[str]]] = {}
            for name, raw in edges.items():
                st = EdgeState(
                    up=bool(raw["up"]),
                    drained=bool(raw["drained"]),
                    load=_check_load(float(raw["load"])),
                    overloaded=bool(raw["overloaded"]),
                )
                parsed[str(name)] = (st, [str(p) for p in raw.get("overloaded_in", [])])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HealthError(f"bad health snapshot: {exc}") from exc
        self._replica = True
        moved: set[int] = set()
        for name, (st, hot_pools) in parsed.items():
            if name not in self._states:
                continue  # the replica's config does not know it (yet): ignore
            before = self._views(name)
            self._states[name] = st
            hot = set(hot_pools)
            for pool in self._members.get(name, ()):
                self._overloaded[(pool, name)] = pool in hot
            moved.update(self._moved(name, before))
        self._changed(moved)

    # -- internals -----------------------------------------------------------------------------

    def _configure(self, pools: list[Pool], edges: list[str], *, keep: bool) -> None:
        names: list[str] = []
        for p in pools:
            names.extend(e.name for e in (*p.edges, *(p.fallback or ())))
        names.extend(edges)
        old_states = self._states if keep else {}
        old_flags = self._overloaded if keep else {}
        self._states = {name: old_states.get(name, EdgeState()) for name in dict.fromkeys(names)}
        self._pools = {p.name: _Thresholds(p.load_threshold, p.hysteresis) for p in pools}
        members: dict[str, list[str]] = {}
        for p in pools:
            for member in dict.fromkeys(e.name for e in p.edges):
                members.setdefault(member, []).append(p.name)
        self._members = {edge: tuple(ps) for edge, ps in members.items()}
        for p in pools:
            self.slot(p.name)
        self._unknown = [slot for name, slot in self._slots.items() if name not in self._pools]
        self._overloaded = {}
        for edge, ps in self._members.items():
            load = self._states[edge].load
            for pool in ps:
                prev = old_flags.get((pool, edge), False)
                self._overloaded[(pool, edge)] = _next_flag(self._pools[pool], load, prev)
        for edge, st in self._states.items():
            flag = self._any_overloaded(edge)
            if st.overloaded != flag:
                self._states[edge] = replace(st, overloaded=flag)

    def _load_moved(self, edge: str, old: float, load: float) -> bool:
        if abs(load - old) >= PROBE_LOAD_STEP:
            return True
        return any(
            _next_flag(self._pools[p], load, self._overloaded[(p, edge)])
            != self._overloaded[(p, edge)]
            for p in self._members.get(edge, ())
        )

    def _any_overloaded(self, edge: str) -> bool:
        return any(self._overloaded[(p, edge)] for p in self._members.get(edge, ()))

    def _views(self, edge: str) -> list[tuple[bool, bool, float, bool]]:
        """What each pool of `edge` sees of it (selection reads nothing else), in the order
        of `_members[edge]`."""
        st = self._states[edge]
        return [
            (st.up, st.drained, st.load, self._overloaded[(p, edge)])
            for p in self._members.get(edge, ())
        ]

    def _moved(self, edge: str, before: list[tuple[bool, bool, float, bool]]) -> list[int]:
        """The slots of the pools whose view of `edge` differs from `before`."""
        after = self._views(edge)
        pools = self._members.get(edge, ())
        return [self._slots[p] for p, b, a in zip(pools, before, after, strict=True) if b != a]

    def _note(
        self,
        edge: str,
        old: EdgeState,
        before: list[tuple[bool, bool, float, bool]],
        why: str,
        source: str,
    ) -> None:
        """Record the transitions of `edge` from `old` (and its pools' views `before`) to
        its current state."""
        if self._replica:
            return
        new = self._states[edge]
        if old.up != new.up:
            self._record(
                Transition(
                    self._clock(),
                    edge,
                    Kind.UP if new.up else Kind.DOWN,
                    why or source or "state set",
                )
            )
        if old.drained != new.drained:
            kind = Kind.DRAINED if new.drained else Kind.UNDRAINED
            self._record(Transition(self._clock(), edge, kind, source or "state set"))
        pools = self._members.get(edge, ())
        for pool, b, a in zip(pools, before, self._views(edge), strict=True):
            if b[3] != a[3]:
                self._note_load(edge, pool, a[3], source)

    def _note_load(self, edge: str, pool: str, flag: bool, source: str) -> None:
        if self._replica:
            return
        t = self._pools[pool]
        load = self._states[edge].load
        if flag:
            reason = f"load {load:.2f} >= load_threshold {t.threshold:g}"
        else:
            reason = (
                f"load {load:.2f} < {t.threshold - t.hysteresis:g} "
                f"(load_threshold {t.threshold:g} - hysteresis {t.hysteresis:g})"
            )
        if source:
            reason += f" ({source})"
        kind = Kind.OVERLOADED if flag else Kind.RECOVERED
        self._record(Transition(self._clock(), edge, kind, reason, pool))

    def _record(self, t: Transition) -> None:
        self.transitions.add(t)
        level = logging.INFO if t.kind in (Kind.DRAINED, Kind.UNDRAINED) else logging.WARNING
        what = "recovered" if t.kind is Kind.RECOVERED else f"is {t.kind.value}"
        where = f" in pool {t.pool}" if t.pool else ""
        log.log(level, "edge %s %s%s: %s", t.edge, what, where, t.reason)

    def _changed(self, moved: Iterable[int]) -> None:
        self._version += 1
        version = self._version
        generations = self._generations
        for slot in moved:
            generations[slot] = version
        for slot in self._unknown:
            generations[slot] = version
        for listener in self._listeners:
            listener(self)


def _next_flag(t: _Thresholds, load: float, previous: bool) -> bool:
    if load >= t.threshold:
        return True
    if load < t.threshold - t.hysteresis:
        return False
    return previous


def _check_load(load: float) -> float:
    if isinstance(load, bool) or not isinstance(load, int | float):
        raise HealthError(f"load must be a number between 0 and 1, got {load!r}")
    value = float(load)
    if not math.isfinite(value) or value < 0.0 or value > 1.0:
        raise HealthError(f"load must be a number between 0 and 1, got {load!r}")
    return value
