"""Reading an edge's `/__edge/status` probe, sans-IO: result -> observation -> up/down.

gslb.poller does the HTTP; this module decides what a reply means, so it is pure and tested
without sockets:

- `interpret(result, capacity)` turns one `ProbeResult` (an HTTP status and body, or the
  error that prevented one) into an `Observation`: whether the edge answered, whether it is
  healthy, and its load 0..1. It never raises: whatever the edge sends, a reply that is not
  a 200 with a JSON object whose `healthy` is a boolean (and whose load fields, when present,
  are numbers) is a failure with a reason.
- `step(tracker, ok, rise, fall)` is the rise/fall state machine of one edge. The first
  observation decides (nothing is known before it: the store reports new edges up, and a
  first failure takes the edge down at once, as HAProxy does for a server it has not checked
  yet); after that an up edge goes down only after `fall` consecutive failures and a down edge
  comes up only after `rise` consecutive successes.
- `detection_bound(interval, timeout, jitter, probes)` is the longest an edge can be in a
  new state (dead, hung, healthy again) before `probes` probes in a row have seen it, which
  is when the store changes its state: `fall` probes to take it out of answers, `rise` to
  bring it back (docs/failover.md draws the timeline).

The status document is edge.admin.status_document: {"healthy": bool, "load_factor": 0..1,
"requests_per_second": n, "capacity_rps": n, ...}. The load is `load_factor`, clamped to 0..1;
without one, `requests_per_second` / the edge's configured capacity.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MAX_BODY",
    "Observation",
    "ProbeResult",
    "Reason",
    "Tracker",
    "detection_bound",
    "interpret",
    "step",
]

MAX_BODY: Final = 1 << 20  # a status document is a few KiB; more is not one


class Reason(enum.StrEnum):
    """Why a probe counted as it did (the `reason` label of gslb_edge_probes_total)."""

    OK = ""
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # no HTTP reply: refused, reset, DNS, TLS, ...
    HTTP_STATUS = "http_status"  # a reply other than 200
    MALFORMED = "malformed"  # a 200 whose body is not a status document
    UNHEALTHY = "unhealthy"  # the edge says "healthy": false (no origin up)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw: an HTTP `status` and `body`, or `error` when there was no reply."""

    status: int | None = None
    body: bytes = b""
    error: str | None = None
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    reachable: bool  # an HTTP reply came back
    healthy: bool  # counts as a success for rise/fall
    load: float | None  # 0..1; None when the probe gave none (the stored load is kept)
    reason: Reason
    detail: str = ""  # for logs and the API's "last_error"


@dataclass(frozen=True, slots=True)
class Tracker:
    """Rise/fall state of one probed edge; `up` is None until the first observation."""

    up: bool | None = None
    streak: int = 0  # consecutive observations disagreeing with `up`


def step(tracker: Tracker, ok: bool, rise: int, fall: int) -> Tracker:
    """The tracker after one more observation (`ok`: the probe succeeded)."""
    if tracker.up is None:
        return Tracker(up=ok)
    if ok == tracker.up:
        return Tracker(up=tracker.up) if tracker.streak else tracker
    streak = tracker.streak + 1
    if streak >= (rise if ok else fall):
        return Tracker(up=ok)
    return Tracker(up=tracker.up, streak=streak)


def detection_bound(interval: float, timeout: float, jitter: float, probes: int) -> float:
    """Seconds from an edge's change to the end of the `probes`-th probe that sees it, at
    worst. APScheduler 3 (gslb.poller) schedules each round `interval` plus a random
    0..`jitter` after the previous round's start, so rounds are at most interval + jitter
    apart. A change just after a round started (and got its reply) is first seen by the next
    round; the `probes`-th round that sees it starts at most probes x (interval + jitter)
    after the change and ends at most `timeout` later (a hung edge uses the whole timeout, a
    dead one refuses at once). Event-loop latency and applying the verdict (microseconds on
    an idle machine) are not counted."""
    return probes * (interval + jitter) + timeout


def interpret(result: ProbeResult, capacity: float) -> Observation:
    """What `result` says about the edge (see the module docstring). Never raises."""
    if result.status is None:
        reason = Reason.TIMEOUT if result.timed_out else Reason.UNREACHABLE
        return Observation(False, False, None, reason, result.error or reason.value)
    if result.status != 200:
        return Observation(True, False, None, Reason.HTTP_STATUS, f"HTTP {result.status}")
    doc, problem = _document(result.body)
    if doc is None:
        return Observation(True, False, None, Reason.MALFORMED, problem)
    healthy = doc.get("healthy")
    if not isinstance(healthy, bool):
        return Observation(True, False, None, Reason.MALFORMED, '"healthy" is not a boolean')
    load, problem = _load(doc, capacity)
    if problem:
        return Observation(True, False, None, Reason.MALFORMED, problem)
    if not healthy:
        return Observation(True, False, load, Reason.UNHEALTHY, "the edge reports unhealthy")
    return Observation(True, True, load, Reason.OK)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _document(body: bytes) -> tuple[dict[str, Any] | None, str]:
    if len(body) > MAX_BODY:
        return None, f"body larger than {MAX_BODY} bytes"
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return None, f"body is not JSON: {str(exc)[:100]}"
    if not isinstance(doc, dict):
        return None, "body is not a JSON object"
    return doc, ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return math.inf if value > 0 else -math.inf
    return number if not math.isnan(number) else None


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _load(doc: dict[str, Any], capacity: float) -> tuple[float | None, str]:
    raw = doc.get("load_factor")
    if raw is not None:
        load = _number(raw)
        if load is None:
            return None, '"load_factor" is not a number'
        return _clamp(load), ""
    raw = doc.get("requests_per_second")
    if raw is not None:
        rps = _number(raw)
        if rps is None:
            return None, '"requests_per_second" is not a number'
        if capacity > 0 and math.isfinite(capacity):
            return _clamp(rps / capacity), ""
    return None, ""
