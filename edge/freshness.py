"""Freshness lifetime and age of a stored response (RFC 9111 §4.2, RFC 5861, RFC 9213).

Pure code: every function takes the times it needs; nothing reads a clock. ``compute`` runs
once when a response is stored (and again when a 304 updates it) and yields a ``Freshness``
value, so the hit path only does arithmetic.
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import re
import time
from dataclasses import dataclass

from edge.cache_control import (
    DELTA_SECONDS_MAX,
    Directives,
    Headers,
    cache_control,
    field_values,
    split_list,
)

# RFC 9110 §15.1: statuses cacheable by default (heuristically cacheable).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_WKDAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF = re.compile(rf"{_WKDAY}, (\d\d) ([a-z]{{3}}) (\d{{4}}) {_TIME} gmt", re.I)
_RFC850 = re.compile(rf"{_WEEKDAY}, (\d\d)-([a-z]{{3}})-(\d\d) {_TIME} gmt", re.I)
_ASCTIME = re.compile(rf"{_WKDAY} ([a-z]{{3}}) ([ \d]\d) {_TIME} (\d{{4}})", re.I)


def parse_http_date(value: str, now: float | None = None) -> float | None:
    """Seconds since the epoch for an HTTP-date (RFC 9110 §5.6.7), None if invalid.

    Accepts IMF-fixdate, the obsolete RFC 850 and asctime forms, case-insensitively.
    A two-digit RFC 850 year more than 50 years in the future (relative to ``now``, or
    the year 2000 era when ``now`` is None) is taken as the past century.
    """
    if now is None and len(value) <= _REMEMBERED_MAX:
        return _parse_http_date(value)
    return _parse(value, now)


# No HTTP-date is longer (with some whitespace around it): longer values are not remembered,
# so the memo holds at most 1024 short strings whatever an origin sends.
_REMEMBERED_MAX = 48


@functools.lru_cache(maxsize=1024)
def _parse_http_date(value: str) -> float | None:
    # Remembered: a response's Date changes once a second, and its Last-Modified and
    # Expires repeat across the objects of an origin; each is read several times a miss.
    return _parse(value, None)


def _parse(value: str, now: float | None) -> float | None:
    value = value.strip(" \t")
    try:
        if m := _IMF.fullmatch(value):
            day, mon, year, hh, mm, ss = m.groups()
            return _timestamp(int(year), mon, int(day), int(hh), int(mm), int(ss))
        if m := _RFC850.fullmatch(value):
            day, mon, yy, hh, mm, ss = m.groups()
            cur = time.gmtime(now).tm_year if now is not None else 2026
            year = (cur // 100) * 100 + int(yy)
            if year > cur + 50:
                year -= 100
            elif year < cur - 50:
                year += 100
            return _timestamp(year, mon, int(day), int(hh), int(mm), int(ss))
        if m := _ASCTIME.fullmatch(value):
            mon, day, hh, mm, ss, year = m.groups()
            return _timestamp(int(year), mon, int(day.strip()), int(hh), int(mm), int(ss))
    except (ValueError, OverflowError):
        return None
    return None


def _timestamp(year: int, mon: str, day: int, hh: int, mm: int, ss: int) -> float | None:
    month = _MONTHS.get(mon.lower())
    if month is None or not (1 <= day <= 31) or hh > 23 or mm > 59 or ss > 60:
        return None
    if day > calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))


def format_http_date(t: float) -> str:
    """IMF-fixdate for ``t`` seconds since the epoch."""
    return _second_date(int(t))


@functools.lru_cache(maxsize=4)
def _second_date(second: int) -> str:
    # A response's Date is formatted per second, not per request (a few µs each).
    return email.utils.formatdate(second, usegmt=True)


def age_header(headers: Headers) -> int:
    """The received Age value (RFC 9111 §5.1): first line, first element, 0 if invalid.

    Leading digits before a ``;`` parameter are used; a negative, fractional or non-numeric
    value is ignored (0). Huge values clamp to 2^31.
    """
    values = field_values(headers, "age")
    if not values:
        return 0
    first = next(split_list(values[0]), "")
    first = first.split(";", 1)[0].strip()
    if not first.isascii() or not first.isdigit():
        return 0
    return min(int(first), DELTA_SECONDS_MAX)


def date_field(headers: Headers, name: str) -> float | None:
    """The time in a date field (Date, Expires, Last-Modified, ...); None unless it has
    exactly one line holding a valid HTTP-date."""
    values = field_values(headers, name)
    if len(values) != 1:
        return None
    return parse_http_date(values[0])


def origin_date(headers: Headers, response_time: float) -> float:
    """The origin's Date, or ``response_time`` when it is missing or invalid."""
    date = date_field(headers, "date")
    return response_time if date is None else date


def initial_age(
    headers: Headers, request_time: float, response_time: float, date: float | None = None
) -> float:
    """corrected_initial_age of RFC 9111 §4.2.3, as of ``response_time``; ``date``: the
    origin_date when the caller has it already."""
    if date is None:
        date = origin_date(headers, response_time)
    apparent_age = max(0.0, response_time - date)
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_header(headers) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(initial: float, response_time: float, now: float) -> float:
    """current_age = corrected_initial_age + resident_time (RFC 9111 §4.2.3)."""
    return initial + max(0.0, now - response_time)


@dataclass(frozen=True, slots=True)
class Freshness:
    """What the cache needs to know to decide, at any later time, how to use a response.

    ``lifetime`` is the freshness lifetime in seconds (0: stale on arrival, e.g. an invalid
    max-age or Expires). ``no_cache``: every reuse must be validated first.
    ``must_revalidate``: once stale it must never be served without validation, not even
    under max-stale, stale-while-revalidate or stale-if-error (must-revalidate,
    proxy-revalidate, s-maxage in a shared cache).
    """

    lifetime: float
    initial_age: float
    explicit: bool = True
    heuristic: bool = False
    no_cache: bool = False
    must_revalidate: bool = False
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    targeted: bool = False  # decided by CDN-Cache-Control rather than Cache-Control


_SF_INT_DIRECTIVES = frozenset(
    {"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale", "min-fresh"}
)
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_BARE_ITEM = re.compile(
    r'-?\d{1,15}(?:\.\d{1,3})?|"(?:[^"\\]|\\.)*"|[A-Za-z*][\w:/!#$%&\'*+\-.^`|~]*|\?[01]|:[A-Za-z0-9+/=]*:'
)


def parse_targeted(values: list[str]) -> Directives | None:
    """Parse a targeted cache-control field (RFC 9213) as a Structured Field Dictionary.

    Returns None if the field is not a valid dictionary (then it must be ignored, RFC 9213
    §2.1), or if a known delta directive does not carry an Integer. Keys are compared
    case-insensitively (being lenient with ``MaX-aGe``); parameters are ignored.
    """
    items: list[tuple[str, str | None]] = []
    for value in values:
        for element in split_list(value):
            member = element.split(";", 1)[0]
            key, eq, raw = member.partition("=")
            lkey = key.lower()
            if not _SF_KEY.fullmatch(lkey):
                return None
            if not eq:
                items.append((lkey, None))
                continue
            if not _SF_BARE_ITEM.fullmatch(raw):
                return None
            if lkey in _SF_INT_DIRECTIVES:
                if not raw.isdigit():
                    return None
                items.append((lkey, raw))
            elif raw.startswith('"'):
                items.append((lkey, raw[1:-1]))
            else:
                items.append((lkey, raw))
    return Directives(tuple(items)) if items else None


def response_directives(
    headers: Headers, targeted_fields: tuple[str, ...]
) -> tuple[Directives, bool]:
    """The directives that govern this cache: (directives, True if from a targeted field)."""
    for name in targeted_fields:
        values = field_values(headers, name)
        if values:
            parsed = parse_targeted(values)
            if parsed is not None:
                return parsed, True
    return cache_control(headers), False


def _window(cc: Directives, name: str) -> float:
    v = cc.delta(name)
    return float(v) if v is not None and v >= 0 else 0.0


@dataclass(frozen=True, slots=True)
class Rules:
    """How this cache computes freshness (edge.cache_policy.PolicyConfig extends it).

    ``shared``: a shared cache (s-maxage, proxy-revalidate apply). ``heuristic_fraction``
    and ``heuristic_max``: the Last-Modified heuristic. ``default_ttl``: lifetime of
    responses with neither explicit nor heuristic freshness (None: none).
    ``targeted_fields``: RFC 9213 targeted cache-control fields in precedence order; ()
    ignores CDN-Cache-Control.
    """

    shared: bool = True
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    default_ttl: float | None = None
    targeted_fields: tuple[str, ...] = ("cdn-cache-control",)


def compute(
    status: int,
    headers: Headers,
    request_time: float,
    response_time: float,
    rules: Rules = Rules(),
) -> Freshness:
    """Freshness of a response received between ``request_time`` and ``response_time``.

    Order (RFC 9111 §4.2.1, RFC 9213): a targeted field (CDN-Cache-Control) replaces
    Cache-Control and Expires entirely; then s-maxage (shared caches) > max-age >
    Expires - Date > heuristic ``heuristic_fraction`` x (Date - Last-Modified), capped at
    ``heuristic_max``, for heuristically cacheable statuses or ``public`` responses; then
    ``default_ttl`` (a configured rule) if given. An invalid max-age / s-maxage / Expires
    makes the response stale (lifetime 0), as RFC 9111 encourages.
    """
    shared = rules.shared
    cc, targeted = response_directives(headers, rules.targeted_fields)
    date = origin_date(headers, response_time)
    init = initial_age(headers, request_time, response_time, date)
    must_revalidate = (
        "must-revalidate" in cc
        or (shared and "proxy-revalidate" in cc)
        or (shared and "s-maxage" in cc)
    )
    lifetime, explicit, heuristic = _lifetime(status, headers, cc, targeted, date, rules)
    return Freshness(
        lifetime=lifetime,
        initial_age=init,
        explicit=explicit,
        heuristic=heuristic,
        no_cache=cc.field_names("no-cache") == (),
        must_revalidate=must_revalidate,
        stale_while_revalidate=_window(cc, "stale-while-revalidate"),
        stale_if_error=_window(cc, "stale-if-error"),
        targeted=targeted,
    )


def _lifetime(
    status: int,
    headers: Headers,
    cc: Directives,
    targeted: bool,
    date: float,
    rules: Rules,
) -> tuple[float, bool, bool]:
    """(freshness lifetime, explicit, heuristic) for ``compute``; ``date``: origin_date."""
    for name in ("s-maxage", "max-age") if rules.shared else ("max-age",):
        v = cc.delta(name)
        if v is not None:
            return float(max(v, 0)), True, False

    if not targeted:
        if field_values(headers, "expires"):
            exp = date_field(headers, "expires")
            if exp is None:
                return 0.0, True, False
            return max(0.0, exp - date), True, False

    if status in HEURISTIC_STATUSES or "public" in cc:
        lm = date_field(headers, "last-modified")
        if lm is not None and date > lm:
            return min(rules.heuristic_fraction * (date - lm), rules.heuristic_max), False, True

    if rules.default_ttl is not None:
        return rules.default_ttl, False, False
    return 0.0, False, False


__all__ = [
    "DELTA_SECONDS_MAX",
    "HEURISTIC_STATUSES",
    "Freshness",
    "Rules",
    "age_header",
    "compute",
    "current_age",
    "date_field",
    "format_http_date",
    "initial_age",
    "origin_date",
    "parse_http_date",
    "parse_targeted",
    "response_directives",
]
