"""Range requests answered from a complete cached object (RFC 9110 §14).

Only the ``bytes`` unit is understood. One satisfiable range gives a 206 with
Content-Range; several ranges are coalesced when they overlap, and if more than one remains
the caller may send multipart/byteranges (``multipart_body``) - or ignore the Range and
send 200, which the RFC allows. A Range no part of which fits gives 416.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from edge.cache_control import Headers, field_values
from edge.conditional import strong_match
from edge.freshness import date_field, parse_http_date

# Guard against range-amplification: more ranges than this and we just send 200.
MAX_RANGES = 16


@dataclass(frozen=True, slots=True)
class Full:
    """Ignore Range: send the whole representation with 200."""


@dataclass(frozen=True, slots=True)
class Partial:
    """A single range: 206 with ``Content-Range: bytes start-end/length`` (inclusive)."""

    start: int
    end: int
    length: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.length}"


@dataclass(frozen=True, slots=True)
class Multi:
    """Several disjoint ranges: 206 multipart/byteranges (or 200 if the caller prefers)."""

    parts: tuple[Partial, ...]


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """416 with ``Content-Range: bytes */length``."""

    length: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.length}"


RangeDecision = Full | Partial | Multi | Unsatisfiable


def parse_range(value: str, length: int) -> list[Partial] | None:
    """Satisfiable ranges of a ``bytes=`` Range value against ``length`` bytes.

    None when the header is invalid or not in bytes (ignore it); [] when valid but nothing
    is satisfiable (416).
    """
    unit, eq, specs = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    out: list[Partial] = []
    any_spec = False
    for raw in specs.split(","):
        spec = raw.strip(" \t")
        if not spec:
            continue
        any_spec = True
        first, dash, last = spec.partition("-")
        if not dash:
            return None
        first, last = first.strip(), last.strip()
        if not first:
            if not last.isdigit():
                return None
            suffix = int(last)
            if suffix == 0 or length == 0:
                continue
            out.append(Partial(max(0, length - suffix), length - 1, length))
            continue
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else length - 1
        if last and end < start:
            return None
        if start >= length:
            continue
        out.append(Partial(start, min(end, length - 1), length))
    if not any_spec:
        return None
    return out


def _coalesce(parts: list[Partial]) -> list[Partial]:
    parts = sorted(parts, key=lambda p: p.start)
    merged: list[Partial] = []
    for p in parts:
        if merged and p.start <= merged[-1].end + 1:
            last = merged[-1]
            merged[-1] = Partial(last.start, max(last.end, p.end), last.length)
        else:
            merged.append(p)
    return merged


def if_range_holds(value: str, stored_headers: Headers) -> bool:
    """If-Range (RFC 9110 §13.1.5): strong ETag match, or an exact Last-Modified date."""
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return any(strong_match(value, e) for e in field_values(stored_headers, "etag")[:1])
    when = parse_http_date(value)
    return when is not None and date_field(stored_headers, "last-modified") == when


def evaluate(
    method: str, status: int, request_headers: Headers, stored_headers: Headers, length: int
) -> RangeDecision:
    """How to answer a request's Range from a stored complete 200 response of ``length``."""
    if method.upper() != "GET" or status != 200:
        return Full()
    ranges = field_values(request_headers, "range")
    if len(ranges) != 1:
        return Full()
    if_range = field_values(request_headers, "if-range")
    if if_range and not if_range_holds(if_range[0], stored_headers):
        return Full()
    parts = parse_range(ranges[0], length)
    if parts is None:
        return Full()
    if not parts:
        return Unsatisfiable(length)
    merged = _coalesce(parts)
    if len(merged) == 1:
        return merged[0]
    if len(parts) > MAX_RANGES:
        return Full()
    return Multi(tuple(merged))


@dataclass(frozen=True, slots=True)
class Span:
    """What a response answering a range decision sends: its status, the body bytes
    `first`..`last` (inclusive; `last` None: to the end), and the fields to set on it
    (Content-Range, Content-Length). A 416 sends no body and no Content-Length."""

    status: int
    first: int = 0
    last: int | None = None
    fields: tuple[tuple[str, str], ...] = ()


def span(decision: RangeDecision, status: int, length: int | None) -> Span:
    """The one place a range decision becomes a response: every path that answers a Range
    (from memory, streamed from disk, from a fill, from the origin's response) applies
    this. `status` is the whole response's; `length` its body's, when known (None: leave
    the Content-Length the response has). Several ranges are answered whole, with 200,
    which RFC 9110 §14.2 allows."""
    if isinstance(decision, Partial):
        fields = (("Content-Range", decision.content_range), ("Content-Length", str(decision.size)))
        return Span(206, decision.start, decision.end, fields)
    if isinstance(decision, Unsatisfiable):
        return Span(416, fields=(("Content-Range", decision.content_range),))
    return Span(status, fields=(("Content-Length", str(length)),) if length is not None else ())


def multipart_body(
    body: bytes, parts: tuple[Partial, ...], content_type: str | None, boundary: str
) -> Iterator[bytes]:
    """The chunks of a multipart/byteranges body (RFC 9110 §14.6); the response's
    Content-Type is ``multipart/byteranges; boundary=<boundary>``."""
    for p in parts:
        head = f"\r\n--{boundary}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: {p.content_range}\r\n\r\n"
        yield head.encode("latin-1")
        yield body[p.start : p.end + 1]
    yield f"\r\n--{boundary}--\r\n".encode("latin-1")
