"""Token buckets and temporary bans in a bounded table that the workers of a node share.

The screening rules (edge.screening) of kind `rate` take one token per request from a bucket
keyed by rule and client (address or prefix), header value or path. The buckets live in a
`RateTable`: a fixed number of slots in one flat buffer, so it never grows. With several
workers the buffer is a shared memory mapping made by the parent before it forks (see
edge.cli), and every update of a slot happens under an fcntl lock on the mapped file, so
the workers draw on one budget per key: the node's, not N times it. A worker that dies
holding the lock releases it (the kernel drops fcntl locks of a dead process). A single
process uses the same code on a private mapping without a lock.

The table is set-associative: a key hashes to one set of `WAYS` slots. A key not in its set
takes an empty slot there, or else the least useful one: a bucket that is full again by now
(forgetting it changes nothing), then the least recently used bucket, and a running ban only
when every slot of the set holds one (then the one ending first). So a flood of new keys
evicts idle clients first and cannot grow memory; the cost of a full table is that an
evicted key starts again with a full bucket.

A key with plenty of tokens left lends a process a few of them at a time (`Leases`), so
the hot path of a generous limit rarely touches the table or its lock.

The same slots count requests in flight for the rules with a `concurrency` (`enter`,
`leave`): a slot has one counter per worker (`column`), and the key's count is their sum, so
the limit holds for the node. A worker counts only in its own column; a worker killed
(kill -9) before it could `leave` leaves its counts behind, until its replacement, which
takes the same column, zeroes it (`claim`): the damage is bounded by what one worker held,
for as long as the parent takes to replace it. A key with requests in flight is evicted only
after the idle keys and unbanned buckets of its set (its counts are then forgotten: it may
admit more than its limit, never fewer).

Approximations: CLOCK_MONOTONIC is one clock for every process of the host, so workers'
times compare; tokens a lease leaves unspent are lost (see `Leases`); a key whose 64-bit
hash collides with another's shares its bucket (odds of about 2**-64 per pair). Time is
injected: `take` is pure given the table's contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

WAYS = 8  # slots per set: a key lives in one of them
_FIELDS = 6  # per slot: tokens, stamp (last use), violations, last violation, ban end, full at
_TOKENS, _STAMP, _VIOLATIONS, _LAST_VIOLATION, _BAN_END, _FULL_AT = range(_FIELDS)
SLOT_BYTES = 8 + 8 * _FIELDS
COUNT_BYTES = 4  # per slot and worker: requests in flight (concurrency)
_IDLE = 0.0  # _FULL_AT of a concurrency key with nothing in flight: forgetting it is free
_BUSY = float("inf")  # _FULL_AT of one with requests in flight


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: `per_second` tokens a second up to `burst`, and a ban of `ban_seconds`
    after `ban_after` refusals, each within `ban_window` seconds of the one before (0: no ban)."""

    per_second: float
    burst: int
    ban_after: int = 0
    ban_seconds: float = 0.0
    ban_window: float = 60.0

    @property
    def window(self) -> float:
        """Seconds an empty bucket takes to fill: the RateLimit-Policy window."""
        return self.burst / self.per_second


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    retry_after: float  # seconds until a request may pass again (0 when allowed)
    banned: bool = False  # refused because a ban runs
    ban_started: bool = False  # this refusal started a ban
    spare: int = 0  # tokens taken besides this request's (a `Leases` lease)


ALLOWED: Final = Outcome(True, 0.0)  # one value for the common case: nothing to allocate


class Lock(Protocol):
    def acquire(self) -> None: ...
    def release(self) -> None: ...


class _FileLock:
    """An fcntl lock on the whole file: shared between processes, released by their death."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def acquire(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


def table_key(*parts: str) -> int:
    """The table key of a bucket (rule name, key kind, value): a stable 64-bit hash, never 0
    (0 marks an empty slot). Stable across processes, unlike hash() of a str."""
    digest = hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(digest.digest(), "little") or 1


class RateTable:
    """`slots` buckets (rounded up to a multiple of WAYS) in `buffer`, updated under `lock`,
    with a counter of requests in flight per slot for each of `workers` processes."""

    def __init__(self, buffer: mmap.mmap, slots: int, lock: Lock | None, workers: int = 1) -> None:
        self.slots = slots
        self.workers = workers
        self.column = 0  # this process's counters of requests in flight (see `claim`)
        self._buffer = buffer
        self._keys = memoryview(buffer)[: 8 * slots].cast("Q")
        self._values = memoryview(buffer)[8 * slots : SLOT_BYTES * slots].cast("d")
        self._counts = memoryview(buffer)[SLOT_BYTES * slots : _size(slots, workers)].cast("i")
        self._sets = slots // WAYS
        self._lock = lock

    @classmethod
    def private(cls, slots: int) -> RateTable:
        """A table for one process (anonymous memory: pages cost nothing until used)."""
        slots = _round(slots)
        return cls(mmap.mmap(-1, _size(slots, 1)), slots, None)

    @classmethod
    def shared(cls, slots: int, workers: int, directory: str | None = None) -> RateTable:
        """A table for the `workers` processes this one will fork: a mapping of an unlinked
        file (nothing to clean up) whose fcntl lock serialises the updates."""
        slots = _round(slots)
        size = _size(slots, workers)
        fd, path = tempfile.mkstemp(prefix="geoedge-rates-", dir=directory)
        os.unlink(path)
        os.ftruncate(fd, size)
        buffer = mmap.mmap(fd, size, mmap.MAP_SHARED)
        return cls(buffer, slots, _FileLock(fd), workers)

    def claim(self, column: int) -> None:
        """Count this process's requests in flight in `column` (its worker slot), forgetting
        what a previous holder of the column left there: a worker that died holding them."""
        if not 0 <= column < self.workers:
            raise ValueError(f"worker column {column} outside 0..{self.workers - 1}")
        self.column = column
        with self._locked():
            counts, values, workers = self._counts, self._values, self.workers
            for slot, n in enumerate(counts[column::workers]):
                if n:
                    counts[slot * workers + column] = 0
                    if not self._inflight(slot):
                        values[slot * _FIELDS + _FULL_AT] = _IDLE

    def enter(self, key: int, limit: int, now: float) -> bool:
        """Count a request in flight for `key` when it has fewer than `limit` (node-wide):
        True then, and the caller must `leave` once the request ends."""
        with self._locked():
            slot = self._slot(key, now)
            v = slot * _FIELDS
            self._values[v + _STAMP] = now
            if self._inflight(slot) >= limit:
                return False
            self._counts[slot * self.workers + self.column] += 1
            self._values[v + _FULL_AT] = _BUSY
            return True

    def leave(self, key: int) -> None:
        """A request `enter` counted for `key` ended (nothing when the key was evicted)."""
        with self._locked():
            slot = self._lookup(key)
            if slot is None:
                return
            i = slot * self.workers + self.column
            if self._counts[i] > 0:
                self._counts[i] -= 1
            if not self._inflight(slot):
                self._values[slot * _FIELDS + _FULL_AT] = _IDLE

    def inflight(self, key: int) -> int:
        """Requests in flight for `key` on the node, read without the lock (aligned 4-byte
        counters: each is read whole, the sum may be a moment old): a look for the fast hit
        path, which counts nothing; `enter` decides under the lock."""
        slot = self._lookup(key)
        return 0 if slot is None else self._inflight(slot)

    def _lookup(self, key: int) -> int | None:
        base = (key % self._sets) * WAYS
        for slot in range(base, base + WAYS):
            if self._keys[slot] == key:
                return slot
        return None

    def _inflight(self, slot: int) -> int:
        w = self.workers
        return sum(self._counts[slot * w : slot * w + w])

    def _slot(self, key: int, now: float) -> int:
        """The slot of `key`, taken for it (as a concurrency key) when it had none."""
        slot = self._find(key, (key % self._sets) * WAYS, now)
        if self._keys[slot] != key:
            self._keys[slot] = key
            self._reset(slot, [0.0, now, 0.0, 0.0, 0.0, _IDLE])
        return slot

    def _reset(self, slot: int, fields: list[float]) -> None:
        values = self._values
        v = slot * _FIELDS
        for field, value in enumerate(fields):
            values[v + field] = value
        w = self.workers
        for i in range(slot * w, slot * w + w):
            self._counts[i] = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._lock
        if lock is None:
            yield
            return
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def take(self, key: int, rate: Rate, now: float, lease: int = 0) -> Outcome:
        """Take a token for `key` from its bucket at time `now`: allowed when there was one.
        A refusal counts as a violation towards a ban; during a ban nothing is taken. With
        `lease`, up to that many tokens more are taken (`Outcome.spare`) while the bucket
        holds LEASE_SHARE times as many: never the last ones."""
        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            keys = self._keys
            slot = (key % self._sets) * WAYS
            if keys[slot] != key:  # not in the first way of its set: look further
                slot = self._find(key, slot, now)
            values = self._values
            v = slot * _FIELDS
            if keys[slot] != key:
                keys[slot] = key
                self._reset(slot, _fresh(rate, now))
            burst = rate.burst
            tokens = values[v + _TOKENS]
            elapsed = now - values[v + _STAMP]
            if elapsed > 0.0:
                tokens += elapsed * rate.per_second
                if tokens > burst:
                    tokens = float(burst)
                values[v + _STAMP] = now
            ban_end = values[v + _BAN_END]
            if ban_end > now:
                outcome = Outcome(False, ban_end - now, banned=True)
            elif tokens >= 1.0:
                tokens -= 1.0
                spare = min(lease, int(tokens / LEASE_SHARE))
                if spare > 0:
                    tokens -= spare
                    outcome = Outcome(True, 0.0, spare=spare)
                else:
                    outcome = ALLOWED
            else:
                outcome = self._violation(v, rate, now, tokens)
            values[v + _TOKENS] = tokens
            values[v + _FULL_AT] = now + (burst - tokens) / rate.per_second
            return outcome
        finally:
            if lock is not None:
                lock.release()

    def _violation(self, v: int, rate: Rate, now: float, tokens: float) -> Outcome:
        values = self._values
        recent = now - values[v + _LAST_VIOLATION] <= rate.ban_window
        count = (values[v + _VIOLATIONS] if recent else 0.0) + 1.0
        values[v + _LAST_VIOLATION] = now
        if rate.ban_after and count >= rate.ban_after:
            values[v + _VIOLATIONS] = 0.0
            values[v + _BAN_END] = now + rate.ban_seconds
            return Outcome(False, rate.ban_seconds, banned=True, ban_started=True)
        values[v + _VIOLATIONS] = count
        return Outcome(False, (1.0 - tokens) / rate.per_second)

    def _find(self, key: int, base: int, now: float) -> int:
        """The slot of set `base` holding `key`, or the one it is to take (see the module
        docstring)."""
        keys = self._keys
        for slot in range(base, base + WAYS):
            if keys[slot] == key:
                return slot
        values = self._values
        best = base
        best_score: tuple[bool, bool, float] | None = None
        for slot in range(base, base + WAYS):
            if keys[slot] == 0:
                return slot
            v = slot * _FIELDS
            ban_end = values[v + _BAN_END]
            banned = ban_end > now
            score = (banned, values[v + _FULL_AT] > now, ban_end if banned else values[v + _STAMP])
            if best_score is None or score < best_score:
                best, best_score = slot, score
        return best

    def bans(self, now: float) -> int:
        """Keys under a ban at `now` (a scan of the table: for /metrics, not per request)."""
        return sum(1 for end in self._values[_BAN_END::_FIELDS] if end > now)

    def used(self) -> int:
        return sum(1 for k in self._keys if k)


LEASE_SHARE: Final = 16  # a lease takes at most 1/16 of the tokens left
LEASE_MAX: Final = 32  # tokens per lease
LEASE_SECONDS: Final = 0.1  # a lease not used up by then is forgotten


class Leases:
    """Tokens a process takes from the table ahead of use, for keys with plenty left.

    A key whose bucket holds at least LEASE_SHARE tokens more than the request needs lends
    this process up to LEASE_MAX of them (1/LEASE_SHARE of what is left), which it spends
    without touching the table (or its lock) for LEASE_SECONDS. Leased tokens are gone from
    the bucket, so the node never admits more than its budget; what a lease leaves unspent
    is lost, so a key can get up to LEASE_MAX x workers fewer requests in a window than its
    budget. A bucket near empty lends nothing: the last tokens, refusals and bans are
    always decided in the table itself, exactly."""

    def __init__(self, table: RateTable) -> None:
        self.table = table
        self._held: dict[int, list[float]] = {}  # key -> [tokens, until]

    def take(self, key: int, rate: Rate, now: float) -> Outcome:
        held = self._held.get(key)
        if held is not None and held[0] >= 1.0 and now < held[1]:
            held[0] -= 1.0
            return ALLOWED
        out = self.table.take(key, rate, now, LEASE_MAX)
        if out.spare:
            if held is None and len(self._held) >= 4096:
                self._held.clear()
            self._held[key] = [float(out.spare), now + LEASE_SECONDS]
        return out


def _fresh(rate: Rate, now: float) -> list[float]:
    return [float(rate.burst), now, 0.0, 0.0, 0.0, now]


def _size(slots: int, workers: int) -> int:
    return (SLOT_BYTES + COUNT_BYTES * workers) * slots


def _round(slots: int) -> int:
    return max(WAYS, -(-slots // WAYS) * WAYS)
