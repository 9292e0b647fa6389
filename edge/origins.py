"""The origin pool: health state per origin and the choice of an origin for a request.

Pure state, no I/O: the proxy reports outcomes (passive health), the probes report probe
results (active health, rise/fall), and `pick` applies the configured algorithm to the
origins that are up. Time is injected for the passive-ejection cool-down.

An origin is in rotation while the probes' verdict is up and this process has not ejected
it passively. The two are kept apart because they have different owners on a node of
several workers: the verdict may come from another worker's probes (edge.nodestats), the
passive ejection never does. Both kinds of probe news, this process's own probe results and
a verdict taken over from the probing worker, reach an origin through `apply_verdict`.
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
    up: bool = True  # in rotation: probe_up and not passively ejected
    active: int = 0  # requests in flight
    fails: int = 0  # consecutive request failures (passive)
    probe_up: bool = True  # the active probes' verdict (rise/fall), whoever probed
    probe_ok: int = 0  # consecutive good probes (rise; the way out of a passive ejection)
    probe_bad: int = 0  # consecutive failed probes (fall)
    probes: int = 0  # probe outcomes this process knows of, its own or the leader's
    ejected_at: float | None = None  # passive ejection by this process
    ejected_probes: int = 0  # `probes` when it was ejected
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
        if not config.probe.enabled:  # a verdict of probes that stopped no longer holds
            for o in origins:
                o.probe_up = True
                o.up = o.ejected_at is None
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

    def connected(self, origin: Origin) -> None:
        """A long-lived use of `origin` began well (a stream's connection): the run of
        consecutive failures ends now, not when the connection does."""
        origin.fails = 0

    def finished(self, origin: Origin, ok: bool) -> bool:
        """Record the outcome of a request; True when it ejected the origin (passive)."""
        origin.active = max(0, origin.active - 1)
        if ok:
            origin.fails = 0
            return False
        origin.fails += 1
        if origin.up and origin.fails >= self.config.max_fails:
            # Like nginx with a single server: passive failures never take down the last
            # origin in rotation (that would turn 502s into 503s and block recovery until
            # probes rise); active probes still can.
            if any(o.up and o is not origin and o.weight > 0 for o in self.origins):
                origin.up = False
                origin.ejected_at = self._clock()
                origin.ejected_probes = origin.probes
                return True
        return False

    def _recover_passive(self) -> None:
        # Without active probes an ejected origin gets another chance after a cool-down.
        probe = self.config.probe
        if probe.enabled:
            return
        cooldown = probe.interval * probe.rise
        now = self._clock()
        for o in self.origins:
            if not o.up and o.ejected_at is not None and now - o.ejected_at >= cooldown:
                o.ejected_at = None
                o.fails = 0
                o.up = o.probe_up

    # ----------------------------------------------------------------------- active health

    def probe_result(self, origin: Origin, ok: bool, status: int | None = None) -> bool:
        """Record one of this process's probe outcomes and decide the verdict with rise/fall;
        returns True when it changed whether the origin is in rotation."""
        origin.last_probe_ok = ok
        origin.last_probe_status = status
        probe = self.config.probe
        if ok:
            origin.probe_ok += 1
            origin.probe_bad = 0
        else:
            origin.probe_ok = 0
            origin.probe_bad += 1
        up = origin.probe_up
        if up and origin.probe_bad >= probe.fall:
            up = False
        elif not up and origin.probe_ok >= probe.rise:
            up = True
        return self.apply_verdict(origin, up, 1, origin.probe_ok)

    def apply_verdict(self, origin: Origin, up: bool, new_probes: int, ok_run: int) -> bool:
        """Take the probes' verdict `up` (rise/fall already applied) after `new_probes`
        probes not reported before, the last `ok_run` of them good in a row. A passive
        ejection ends after `rise` good probes in a row made since it. Returns True when
        the origin went in or out of rotation."""
        origin.probes += new_probes
        origin.probe_up = up
        ejected = origin.ejected_at is not None
        if ejected and min(ok_run, origin.probes - origin.ejected_probes) >= self.config.probe.rise:
            origin.ejected_at = None
            origin.fails = 0
            ejected = False
        was = origin.up
        origin.up = up and not ejected
        if origin.up and not was:
            origin.fails = 0
        return origin.up != was

    def status(self) -> list[OriginStatus]:
        self._recover_passive()
        return [
            OriginStatus(o.url, o.up, o.active, o.weight, o.requests, o.last_probe_ok)
            for o in self.origins
        ]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
