"""Node-wide numbers for an edge run as several worker processes.

With `server.workers` > 1 every worker accepts its own share of the connections (SO_REUSEPORT),
the admin port included, so one worker's counters describe about 1/N of the node. Each
worker therefore writes a small JSON record of its counters about once a second into a run
directory the parent created for them (`StatsDir.publish`, atomically by rename), and the
worker that answers /__edge/status or /metrics adds the other workers' fresh records to its
own live numbers (`merge` for the status document, `merge_families` for /metrics).

The same records carry the origin probes' verdicts across the node: only the worker in
slot 0 (the probe leader) probes the origins, and it publishes its verdicts in its record;
the other workers apply them to their own pools (`Follower` decides what to apply, and
when the leader has been silent too long for them to probe themselves).

The record, its JSON codec, the merges and the follower policy are pure; `StatsDir` is the
thin file adapter. Records are plain JSON with a checked shape: nothing read from the
directory is unpickled or trusted beyond its numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from edge.errors import EdgeError

log = logging.getLogger("edge")

PUBLISH_INTERVAL = 1.0  # seconds between a worker's records
MAX_AGE = 3.0  # a record older than this is from a stopped or stuck worker: ignored
_VERSION = 3
MAX_SAMPLES = 50_000  # a record with more metric samples than this is refused
_PREFIX, _SUFFIX = "worker-", ".json"


class RecordError(EdgeError):
    """A worker record is not JSON of the expected shape."""


@dataclass(frozen=True, slots=True)
class OriginState:
    url: str
    up: bool
    active: int
    weight: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The probe leader's verdict on one origin."""

    url: str
    up: bool  # as its probes decided it with rise/fall (its passive ejections left out)
    probes: int  # the probes of this origin it has made: the sequence followers count on
    ok_run: int  # good probes in a row, up to the last one


# One Prometheus sample of a worker's registry: (family, sample name, sorted labels, value).
Sample = tuple[str, str, tuple[tuple[str, str], ...], float]


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker's counters at `time` (time.monotonic: CLOCK_MONOTONIC is one clock for the
    whole host, so the workers' times compare, and unlike wall time it never steps)."""

    pid: int
    time: float
    active_requests: int
    requests_per_second: float
    hits: int
    lookups: int
    counts: tuple[tuple[int, str, int], ...]  # (status, cache status, responses)
    origins: tuple[OriginState, ...]
    samples: tuple[Sample, ...] = ()  # its /metrics registry, for merge_families
    verdicts: tuple[Verdict, ...] | None = None  # the probe leader's; None from the others

    @property
    def requests(self) -> int:
        return sum(n for _, _, n in self.counts)


@dataclass(frozen=True, slots=True)
class NodeStats:
    """The merged view: the answering worker's record plus the fresh records of the others."""

    workers: tuple[WorkerRecord, ...]  # the answering worker first
    active_requests: int
    requests_per_second: float
    hits: int
    lookups: int
    counts: dict[tuple[int, str], int]
    origins: tuple[OriginState, ...]  # the answering worker's pool, up/active over the node

    @property
    def requests(self) -> int:
        return sum(self.counts.values())


def fresh(record: WorkerRecord, now: float, max_age: float = MAX_AGE) -> bool:
    return abs(now - record.time) <= max_age


def _peers(
    own_pid: int, others: Iterable[WorkerRecord], now: float, max_age: float
) -> list[WorkerRecord]:
    """The fresh records of pids other than `own_pid`, the newest per pid, by pid."""
    newest: dict[int, WorkerRecord] = {}
    for rec in others:
        if rec.pid == own_pid or not fresh(rec, now, max_age):
            continue
        if rec.pid not in newest or rec.time > newest[rec.pid].time:
            newest[rec.pid] = rec
    return sorted(newest.values(), key=lambda r: r.pid)


def merge(
    own: WorkerRecord, others: Iterable[WorkerRecord], now: float, max_age: float = MAX_AGE
) -> NodeStats:
    """Sum `own` with the fresh records of other pids (one per pid, the newest).

    An origin is up for the node only while every worker has it up, so `healthy` does not
    depend on which worker answers; origins only a peer knows (a reload not yet applied
    everywhere) are left out, the answering worker's configuration being the one it serves.
    """
    workers = (own, *_peers(own.pid, others, now, max_age))
    counts: dict[tuple[int, str], int] = {}
    for rec in workers:
        for status, cache, n in rec.counts:
            counts[(status, cache)] = counts.get((status, cache), 0) + n
    origins = []
    for o in own.origins:
        up, active = o.up, o.active
        for rec in workers[1:]:
            for peer in rec.origins:
                if peer.url == o.url:
                    up = up and peer.up
                    active += peer.active
                    break
        origins.append(OriginState(o.url, up, active, o.weight))
    return NodeStats(
        workers=workers,
        active_requests=sum(r.active_requests for r in workers),
        requests_per_second=sum(r.requests_per_second for r in workers),
        hits=sum(r.hits for r in workers),
        lookups=sum(r.lookups for r in workers),
        counts=counts,
        origins=tuple(origins),
    )


def registry_samples(families: Iterable[Metric]) -> tuple[Sample, ...]:
    """A worker's Prometheus families (`registry.collect()`) as record samples."""
    return tuple(
        (f.name, s.name, tuple(sorted(s.labels.items())), float(s.value))
        for f in families
        for s in f.samples
    )


Combine = Callable[[list[float]], float]


def merge_families(
    own: Iterable[Metric],
    own_pid: int,
    others: Iterable[WorkerRecord],
    now: float,
    gauges: dict[str, Combine],
    max_age: float = MAX_AGE,
) -> Iterator[Metric]:
    """The answering worker's families with the other workers' fresh samples combined in.

    Counters and histograms are summed (their `_created` timestamps: the earliest). A gauge
    is combined by `gauges[family name]`; a gauge not named there is a figure of something
    the workers share (the disk cache), and the answering worker's value stands alone.
    Label sets only other workers have (an origin only their probes failed) are added.
    """
    theirs: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for rec in _peers(own_pid, others, now, max_age):
        for family, name, labels, value in rec.samples:
            theirs.setdefault(family, {}).setdefault((name, labels), []).append(value)
    for fam in own:
        peer_samples = theirs.get(fam.name, {})
        gauge = gauges.get(fam.name) if fam.type == "gauge" else None
        if not peer_samples or (fam.type == "gauge" and gauge is None):
            yield fam
            continue

        def combine(name: str, values: list[float], gauge: Combine | None = gauge) -> float:
            if gauge is not None:
                return gauge(values)
            return min(values) if name.endswith("_created") else sum(values)

        merged = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        seen = set()
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            seen.add(key)
            value = combine(s.name, [s.value, *peer_samples.get(key, ())])
            merged.add_sample(s.name, s.labels, value, s.timestamp, s.exemplar)
        for (name, labels), values in peer_samples.items():
            if (name, labels) not in seen:
                merged.add_sample(name, dict(labels), combine(name, values))
        yield merged


# -- following the probe leader ---------------------------------------------------------------


def leader_silence_bound(probe_interval: float) -> float:
    """How long followers wait for a fresh record of the probe leader before probing
    themselves: three probe rounds, and never less than three of its records."""
    return 3 * max(probe_interval, PUBLISH_INTERVAL)


@dataclass(frozen=True, slots=True)
class Follow:
    """What a follower does now."""

    leader: int | None  # pid of the fresh probe leader followed; None: no fresh leader
    probe: bool  # probe the origins itself: no fresh leader for longer than the bound
    apply: tuple[tuple[Verdict, int], ...] = ()  # verdicts with their probes not yet applied


class Follower:
    """A follower worker's view of the probe leader, sans I/O (the clock is passed in).

    Each step takes the records read from the run directory. The newest record carrying
    verdicts at most `bound` seconds old is the leader's, and its verdicts are applied
    together with how many of the leader's probes of each origin are new since the last
    step (so a passive ejection ends after `rise` good probes made after it, as it does
    for a worker that probes). Without such a record the follower keeps its state; once
    no leader has been seen for longer than `bound` (counted from its own start), it
    probes by itself until a fresh leader record appears again.
    """

    def __init__(self, started: float) -> None:
        self._last_seen = started  # time of the newest leader record seen, or our start
        self._counted: dict[str, tuple[int, int]] = {}  # url -> (leader pid, its probes)

    def step(self, records: Iterable[WorkerRecord], now: float, bound: float) -> Follow:
        leader: WorkerRecord | None = None
        for rec in records:
            if rec.verdicts is None or not fresh(rec, now, bound):
                continue
            if leader is None or rec.time > leader.time:
                leader = rec
        if leader is None or leader.verdicts is None:
            return Follow(None, now - self._last_seen > bound)
        self._last_seen = max(self._last_seen, leader.time)
        apply = []
        for v in leader.verdicts:
            pid, counted = self._counted.get(v.url, (None, 0))
            # A new leader (or one that dropped and re-added the origin) counts from zero.
            new = v.probes - counted if pid == leader.pid and v.probes >= counted else v.probes
            self._counted[v.url] = (leader.pid, v.probes)
            apply.append((v, new))
        return Follow(leader.pid, False, tuple(apply))


# -- codec ------------------------------------------------------------------------------------


def encode(rec: WorkerRecord) -> bytes:
    return json.dumps(
        {
            "v": _VERSION,
            "pid": rec.pid,
            "time": rec.time,
            "active_requests": rec.active_requests,
            "requests_per_second": rec.requests_per_second,
            "hits": rec.hits,
            "lookups": rec.lookups,
            "counts": [list(c) for c in rec.counts],
            "origins": [[o.url, o.up, o.active, o.weight] for o in rec.origins],
            "samples": [[f, n, [list(kv) for kv in labels], v] for f, n, labels, v in rec.samples],
            "verdicts": None
            if rec.verdicts is None
            else [[v.url, v.up, v.probes, v.ok_run] for v in rec.verdicts],
        },
        separators=(",", ":"),
    ).encode()


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"{what}: expected a non-negative integer")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RecordError(f"{what}: expected a number")
    return float(value)


def decode(data: bytes) -> WorkerRecord:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise RecordError(f"not a version {_VERSION} worker record")
    counts = doc.get("counts")
    origins = doc.get("origins")
    if "verdicts" not in doc:
        raise RecordError("verdicts: missing (null from a worker that does not probe for all)")
    if not isinstance(counts, list) or not isinstance(origins, list):
        raise RecordError("counts and origins must be lists")
    parsed_counts = []
    for c in counts:
        if not (isinstance(c, list) and len(c) == 3 and isinstance(c[1], str)):
            raise RecordError("counts: expected [status, cache, n]")
        parsed_counts.append((_int(c[0], "counts status"), c[1], _int(c[2], "counts n")))
    parsed_origins = []
    for o in origins:
        if not (
            isinstance(o, list) and len(o) == 4 and isinstance(o[0], str) and isinstance(o[1], bool)
        ):
            raise RecordError("origins: expected [url, up, active, weight]")
        parsed_origins.append(
            OriginState(o[0], o[1], _int(o[2], "origin active"), _int(o[3], "origin weight"))
        )
    return WorkerRecord(
        pid=_int(doc.get("pid"), "pid"),
        time=_number(doc.get("time"), "time"),
        active_requests=_int(doc.get("active_requests"), "active_requests"),
        requests_per_second=_number(doc.get("requests_per_second"), "requests_per_second"),
        hits=_int(doc.get("hits"), "hits"),
        lookups=_int(doc.get("lookups"), "lookups"),
        counts=tuple(parsed_counts),
        origins=tuple(parsed_origins),
        samples=_samples(doc.get("samples")),
        verdicts=_verdicts(doc["verdicts"]),
    )


def _verdicts(verdicts: object) -> tuple[Verdict, ...] | None:
    if verdicts is None:
        return None
    if not isinstance(verdicts, list):
        raise RecordError("verdicts must be null or a list")
    out = []
    for v in verdicts:
        if not (
            isinstance(v, list) and len(v) == 4 and isinstance(v[0], str) and isinstance(v[1], bool)
        ):
            raise RecordError("verdicts: expected [url, up, probes, ok_run]")
        out.append(Verdict(v[0], v[1], _int(v[2], "verdict probes"), _int(v[3], "verdict ok_run")))
    return tuple(out)


def _label(pair: object) -> tuple[str, str]:
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
        raise RecordError("samples: a label must be [name, value]")
    return pair[0], pair[1]


def _samples(samples: object) -> tuple[Sample, ...]:
    if not isinstance(samples, list) or len(samples) > MAX_SAMPLES:
        raise RecordError(f"samples must be a list of at most {MAX_SAMPLES}")
    out = []
    for s in samples:
        if not (
            isinstance(s, list)
            and len(s) == 4
            and isinstance(s[0], str)
            and isinstance(s[1], str)
            and isinstance(s[2], list)
        ):
            raise RecordError("samples: expected [family, name, labels, value]")
        labels = tuple(_label(pair) for pair in s[2])
        out.append((s[0], s[1], labels, _number(s[3], "sample value")))
    return tuple(out)


# -- the run directory ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StatsDir:
    """This worker's view of the run directory: its own record file and the others'."""

    def __init__(
        self, path: str, pid: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock
        self._file = os.path.join(path, f"{_PREFIX}{self.pid}{_SUFFIX}")
        self._tmp = os.path.join(path, f".{_PREFIX}{self.pid}.tmp")

    def publish(self, record: WorkerRecord) -> None:
        # A reader sees the old record or the new one, never half of one.
        with open(self._tmp, "wb") as f:
            f.write(encode(record))
        os.replace(self._tmp, self._file)

    def remove(self) -> None:
        for name in (self._file, self._tmp):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    def peers(self, max_age: float = MAX_AGE) -> list[WorkerRecord]:
        """The other live workers' fresh records (unreadable or malformed ones are skipped)."""
        now = self.clock()
        out = []
        try:
            names = os.listdir(self.path)
        except OSError as exc:
            log.warning("worker stats directory %s: %s", self.path, exc)
            return []
        for name in names:
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            if name == os.path.basename(self._file):
                continue
            try:
                with open(os.path.join(self.path, name), "rb") as f:
                    rec = decode(f.read())
            except FileNotFoundError:  # that worker stopped meanwhile
                continue
            except (OSError, RecordError) as exc:
                log.debug("worker record %s skipped: %s", name, exc)
                continue
            if fresh(rec, now, max_age) and _alive(rec.pid):
                out.append(rec)
        return out


async def publish_periodically(
    stats: StatsDir,
    snapshot: Callable[[], WorkerRecord],
    interval: float = PUBLISH_INTERVAL,
) -> None:
    """Publish `snapshot()` now and every `interval` seconds until cancelled."""
    while True:
        try:
            stats.publish(snapshot())
        except OSError as exc:
            log.warning("cannot publish worker stats to %s: %s", stats.path, exc)
        await asyncio.sleep(interval)
