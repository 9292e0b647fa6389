"""The origin pool: health state per origin and the choice of an origin for a request.

Pure state, no I/O: the proxy reports outcomes (passive health), the probes report probe
results (active health, rise/fall), and `pick` applies the configured algorithm to the
origins that are up. Time is injected for the passive-ejection cool-down.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge.config import OriginConfig, PoolConfig

Clock = Callable[[], float]
_VNODES = 64  # ring points per unit of weight for consistent hashing


@dataclass(slots=True)
class Origin:
    """Mutable live state of one origin; `config` is the frozen configured value."""

    config: OriginConfig
    up: bool = True
    active: int = 0  # requests in flight
    fails: int = 0  # consecutive request failures (passive)
    probe_ok: int = 0  # consecutive probe successes while down (rise)
    probe_bad: int = 0  # consecutive probe failures while up (fall)
    ejected_at: float | None = None
    last_probe_status: int | None = None
    last_probe_ok: bool | None = None
    requests: int = 0
    current_weight: int = 0  # smooth weighted round robin state

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def authority(self) -> str:
        return urlsplit(self.config.url).netloc


@dataclass(frozen=True, slots=True)
class OriginStatus:
    url: str
    up: bool
    active: int
    weight: int
    requests: int
    last_probe_ok: bool | None


class OriginPool:
    def __init__(self, config: PoolConfig, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._rr = 0
        self.origins: list[Origin] = []
        self._ring: list[tuple[int, int]] = []
        self._ring_keys: list[int] = []
        self.config = config
        self.update(config)

    # ----------------------------------------------------------------------- configuration

    def update(self, config: PoolConfig) -> None:
        """Apply a (re)loaded pool config, keeping live state of origins that stay."""
        old = {o.url: o for o in self.origins}
        origins = []
        for oc in config.origins:
            prev = old.get(oc.url)
            if prev is not None:
                prev.config = oc
                origins.append(prev)
            else:
                origins.append(Origin(oc))
        self.config = config
        self.origins = origins
        ring: list[tuple[int, int]] = []
        for index, origin in enumerate(origins):
            for v in range(_VNODES * max(origin.weight, 0)):
                ring.append((_hash(f"{origin.url}#{v}"), index))
        ring.sort()
        self._ring = ring
        self._ring_keys = [h for h, _ in ring]

    # ----------------------------------------------------------------------- selection

    def healthy(self) -> list[Origin]:
        self._recover_passive()
        return [o for o in self.origins if o.up and o.weight > 0]

    def pick(self, key: str = "", exclude: Iterable[Origin] = ()) -> Origin | None:
        """An origin for a request keyed by `key` (the URL), or None when none is usable."""
        excluded = {id(o) for o in exclude}
        candidates = [o for o in self.healthy() if id(o) not in excluded]
        if not candidates:
            return None
        algorithm = self.config.algorithm
        if algorithm == "round_robin":
            self._rr += 1
            return candidates[self._rr % len(candidates)]
        if algorithm == "weighted":
            return self._smooth_weighted(candidates)
        if algorithm == "least_conn":
            self._rr += 1
            n = len(candidates)
            rotated = [candidates[(self._rr + i) % n] for i in range(n)]
            return min(rotated, key=lambda o: o.active / o.weight)
        return self._hashed(key, {id(o) for o in candidates})

    def _smooth_weighted(self, candidates: list[Origin]) -> Origin:
        # nginx's smooth weighted round robin: even spread, exact ratios over a cycle.
        total = 0
        best = candidates[0]
        for o in candidates:
            o.current_weight += o.weight
            total += o.weight
            if o.current_weight > best.current_weight:
                best = o
        best.current_weight -= total
        return best

    def _hashed(self, key: str, allowed: set[int]) -> Origin | None:
        if not self._ring:
            return None
        start = bisect.bisect(self._ring_keys, _hash(key))
        n = len(self._ring)
        for i in range(n):
            origin = self.origins[self._ring[(start + i) % n][1]]
            if id(origin) in allowed:
                return origin
        return None

    # ----------------------------------------------------------------------- passive health

    def started(self, origin: Origin) -> None:
        origin.active += 1
        origin.requests += 1

    def finished(self, origin: Origin, ok: bool) -> None:
        origin.active = max(0, origin.active - 1)
        if ok:
            origin.fails = 0
            return
        origin.fails += 1
        if origin.up and origin.fails >= self.config.max_fails:
            # Like nginx with a single server: passive failures never take down the last
            # origin in rotation (that would turn 502s into 503s and block recovery until
            # probes rise); active probes still can.
            if any(o.up and o is not origin and o.weight > 0 for o in self.origins):
                self._mark_down(origin)

    def _mark_down(self, origin: Origin) -> None:
        origin.up = False
        origin.probe_ok = 0
        origin.probe_bad = 0
        origin.ejected_at = self._clock()

    def _recover_passive(self) -> None:
        # Without active probes an ejected origin gets another chance after a cool-down.
        probe = self.config.probe
        if probe.enabled:
            return
        cooldown = probe.interval * probe.rise
        now = self._clock()
        for o in self.origins:
            if not o.up and o.ejected_at is not None and now - o.ejected_at >= cooldown:
                o.up = True
                o.fails = 0

    # ----------------------------------------------------------------------- active health

    def probe_result(self, origin: Origin, ok: bool, status: int | None = None) -> bool:
        """Record a probe outcome; returns True when it changed the origin's up/down state."""
        origin.last_probe_ok = ok
        origin.last_probe_status = status
        probe = self.config.probe
        if ok:
            origin.probe_bad = 0
            if origin.up:
                return False
            origin.probe_ok += 1
            if origin.probe_ok >= probe.rise:
                origin.up = True
                origin.fails = 0
                origin.probe_ok = 0
                origin.ejected_at = None
                return True
            return False
        origin.probe_ok = 0
        if not origin.up:
            return False
        origin.probe_bad += 1
        if origin.probe_bad >= probe.fall:
            self._mark_down(origin)
            return True
        return False

    def status(self) -> list[OriginStatus]:
        self._recover_passive()
        return [
            OriginStatus(o.url, o.up, o.active, o.weight, o.requests, o.last_probe_ok)
            for o in self.origins
        ]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
