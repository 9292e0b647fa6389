"""Fleet-wide purges, the pure half: what to send to which edge, when to retry, the verdict.

`POST /v1/purge` on the gslb API (gslb.api) purges a URL, a prefix or a tag from every
configured edge through the edges' admin APIs (`POST ADMIN_URL/__edge/purge`, edge.admin).
This module decides everything without I/O; gslb.purger does the requests:

- `parse_request(body)` checks the API's JSON body: exactly one of {"url": ...},
  {"prefix": ...}, {"tag": ...} (an edge calls a tag a surrogate key);
- `plan(config)` lists one `PurgeTarget` per configured edge: its purge URL and bearer
  token, or why it cannot be purged (no admin_url and no status_url to derive one from);
- `judge(outcome)` classifies one attempt's outcome: done (2xx; a 202 when the edge is
  still removing after the share of the timeout it was told to wait, `EDGE_WAIT_SHARE`),
  give up (a 4xx the edge will answer again: a bad token, a bad request) or retry (no
  connection, no reply in time, 5xx, 429); `backoff(attempt)` says how long to wait
  before the next attempt;
- `EdgeResult` per edge and `verdict(results)` for the whole fleet: "ok" when every edge
  purged, "partial" when some did, "failed" when none did.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from gslb.config import GslbConfig, PurgeConfig
from gslb.errors import PurgeError

__all__ = [
    "EDGE_WAIT_SHARE",
    "KINDS",
    "Attempt",
    "EdgeResult",
    "Judgement",
    "PurgeRequest",
    "PurgeTarget",
    "backoff",
    "judge",
    "parse_request",
    "plan",
    "report",
    "verdict",
]

# The API's field -> the edge admin API's field (edge.admin's purge route).
KINDS: Final = {"url": "url", "prefix": "prefix", "tag": "surrogate_key"}
PURGE_PATH: Final = "/__edge/purge"
MAX_VALUE: Final = 8192  # characters in a purged URL, prefix or tag
# The share of purge.timeout an edge is asked to wait for its removal ("wait") before it
# answers 202: removing 100,000 objects takes an edge about 10 s, and a purge that runs
# past the timeout would be reported failed and asked again on top of the first.
EDGE_WAIT_SHARE: Final = 0.8


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    kind: str  # url, prefix or tag
    value: str

    def edge_body(self, wait: float | None = None) -> dict[str, Any]:
        """The JSON body for an edge's admin API; `wait`: the seconds the edge may take for
        its removal before it answers 202 (accepted, and going on) instead."""
        body: dict[str, Any] = {KINDS[self.kind]: self.value}
        if wait is not None:
            body["wait"] = wait
        return body

    def describe(self) -> dict[str, str]:
        return {self.kind: self.value}


def parse_request(body: Any) -> PurgeRequest:
    """The purge asked for by a decoded JSON body. Raises PurgeError (status 400)."""
    expected = 'expected exactly one of {"url": "..."}, {"prefix": "..."}, {"tag": "..."}'
    if not isinstance(body, dict):
        raise PurgeError(f"body must be a JSON object: {expected}")
    unknown = sorted(set(body) - set(KINDS))
    if unknown:
        raise PurgeError(f"unknown field(s) {', '.join(unknown)}: {expected}")
    kinds = [k for k in KINDS if k in body]
    if len(kinds) != 1:
        raise PurgeError(expected)
    kind = kinds[0]
    value = body[kind]
    if not isinstance(value, str) or not value.strip():
        raise PurgeError(f'"{kind}" must be a non-empty string')
    if len(value) > MAX_VALUE or any(c.isspace() for c in value.strip()):
        raise PurgeError(f'"{kind}" must be at most {MAX_VALUE} characters without spaces')
    if kind in ("url", "prefix") and not value.startswith(("http://", "https://")):
        raise PurgeError(f'"{kind}" must be an absolute http(s) URL, e.g. http://host/path')
    return PurgeRequest(kind, value.strip())


@dataclass(frozen=True, slots=True)
class PurgeTarget:
    """One edge to purge: `url` is None when it has no admin API (`problem` says why)."""

    edge: str
    url: str | None
    token: str | None = field(default=None, repr=False)
    problem: str = ""


def plan(config: GslbConfig) -> tuple[PurgeTarget, ...]:
    """One target per configured edge, in config order."""
    out = []
    for edge in config.edges:
        if edge.admin_url is None:
            out.append(PurgeTarget(edge.name, None, problem="no admin_url or status_url"))
        else:
            out.append(PurgeTarget(edge.name, edge.admin_url + PURGE_PATH, edge.admin_token))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request to an edge gave: an HTTP status (and the edge's JSON reply, when it
    sent one) or the error that prevented a reply."""

    status: int | None = None
    body: Any = None
    error: str = ""
    timed_out: bool = False


class Judgement(enum.Enum):
    DONE = "done"  # purged
    GIVE_UP = "give up"  # asking again would get the same answer
    RETRY = "retry"


def judge(attempt: Attempt) -> Judgement:
    status = attempt.status
    if status is None:
        return Judgement.RETRY
    if 200 <= status < 300:
        return Judgement.DONE
    if status == 429 or status >= 500:
        return Judgement.RETRY
    return Judgement.GIVE_UP


def backoff(settings: PurgeConfig, attempts: int) -> float | None:
    """Seconds to wait after `attempts` failed attempts before the next one, or None when
    no attempt is left."""
    if attempts >= settings.attempts:
        return None
    return float(min(settings.backoff * 2 ** (attempts - 1), settings.backoff_max))


@dataclass(frozen=True, slots=True)
class EdgeResult:
    edge: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    purged: int | None = None  # objects the edge removed, as it reported
    url: str | None = None
    removing: bool = False  # accepted (202), still removing when it answered


def result(target: PurgeTarget, attempts: list[Attempt]) -> EdgeResult:
    """An edge's result from its attempts (the last one decides)."""
    if target.url is None or not attempts:
        return EdgeResult(target.edge, False, 0, error=target.problem or "not attempted")
    last = attempts[-1]
    ok = judge(last) is Judgement.DONE
    purged = None
    if ok and isinstance(last.body, Mapping) and isinstance(last.body.get("purged"), int):
        purged = int(last.body["purged"])
    removing = ok and isinstance(last.body, Mapping) and last.body.get("removing") is True
    error = None
    if not ok:
        error = last.error or f"HTTP {last.status}"
        if isinstance(last.body, Mapping) and isinstance(last.body.get("error"), str):
            error += f": {last.body['error']}"
    return EdgeResult(
        target.edge, ok, len(attempts), last.status, error, purged, target.url, removing
    )


def verdict(results: Iterable[EdgeResult]) -> str:
    oks = [r.ok for r in results]
    if oks and all(oks):
        return "ok"
    return "partial" if any(oks) else "failed"


def report(request: PurgeRequest, results: Iterable[EdgeResult]) -> dict[str, Any]:
    """The API's reply: the verdict, counts and every edge's result."""
    rows = list(results)
    return {
        "verdict": verdict(rows),
        "request": request.describe(),
        "edges_ok": sum(1 for r in rows if r.ok),
        "edges_failed": sum(1 for r in rows if not r.ok),
        "edges": [asdict(r) for r in rows],
    }
