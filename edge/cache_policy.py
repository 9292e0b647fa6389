"""The shared-cache policy of the edge (RFC 9111, RFC 5861, RFC 9213, RFC 9211), sans-IO.

Nothing here touches a socket, a disk or a clock: callers pass the request, the stored
entries and ``now``, and get a decision back.

- ``CacheRequest`` / ``CacheEntry``: what a request and a stored response look like.
- ``storability`` / ``make_entry``: may this response be stored, and the entry to store.
- ``lookup``: Fresh (serve), Stale (forward, maybe serving stale meanwhile) or Miss;
  ``plain_fresh`` is its answer for a request without cache directives, the one every hit
  path (the raw fast path, the full handler, ``lookup`` itself) decides a plain hit with.
- ``stale_on_error_ok``: may a stale entry answer when the origin failed.
- ``freshen``: fold a 304 (or a HEAD response) into a stored entry.
- ``age_value``: the Age field of a response served from the cache.
- ``invalidation_keys``: what an unsafe request invalidates (RFC 9111 §4.4).
- ``cache_status``: the Cache-Status field value (RFC 9211).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import orjson

from edge import freshness as fr
from edge import vary as vy
from edge.cache_control import (
    DELTA_SECONDS_MAX,
    Fields,
    Headers,
    HeaderTuple,
    as_fields,
    cache_control,
    field_values,
    header_pairs,
    list_elements,
    parse_delta_seconds,
)
from edge.conditional import merge_headers, strip_hop_by_hop
from edge.errors import CacheMetadataError

_KNOWN_STATUSES = frozenset(int(s) for s in HTTPStatus)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class PolicyConfig(fr.Rules):
    """Knobs of the cache policy; one per configured route is fine.

    Besides the freshness rules (edge.freshness.Rules: ``shared``, the heuristic,
    ``default_ttl``, ``targeted_fields``): ``name`` for Cache-Status. ``store_set_cookie``:
    store responses carrying Set-Cookie as RFC 9111 allows, Set-Cookie included, so every
    client of that entry gets the cookie (False, the default: such responses are not
    stored, and a 304 never adds a Set-Cookie to a stored entry).
    ``stale_when_disconnected``: how stale an entry may be served when the origin cannot
    be reached at all (RFC 9111 §4.2.4), without a stale-if-error from the origin; 0
    disables.
    """

    name: str = "GeoEdge"
    store_set_cookie: bool = False
    stale_when_disconnected: float = 0.0


def cache_key(scheme: str, authority: str, target: str) -> str:
    """Primary cache key: ``scheme://host[:port]/path?query``, normalised.

    Scheme and host are lower-cased, a default port is dropped, the fragment is removed
    and an empty path becomes ``/``. The method is not part of it: only GET responses are
    stored and HEAD is answered from them.
    """
    scheme = scheme.lower()
    host = authority.strip().lower()
    if host.endswith(f":{_DEFAULT_PORTS.get(scheme, '')}") and not host.endswith("]"):
        host = host.rsplit(":", 1)[0]
    target = target.split("#", 1)[0] or "/"
    if not target.startswith("/") and target != "*":
        target = "/" + target
    return f"{scheme}://{host}{target}"


@dataclass(frozen=True, slots=True)
class CacheRequest:
    method: str
    scheme: str
    authority: str
    target: str  # path and query as received
    headers: HeaderTuple = ()
    key: str = field(init=False, repr=False, compare=False)  # cache_key, computed once

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", cache_key(self.scheme, self.authority, self.target))


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Metadata of one stored response (one Vary variant of one primary key).

    ``vary`` is the normalised Vary list; ``selecting`` the normalised request fields it
    names (edge.vary). ``freshness`` is derived from ``headers`` and the times and is
    recomputed whenever headers change (freshen).
    """

    key: str
    variant: str
    status: int
    reason: str
    headers: HeaderTuple
    vary: tuple[str, ...]
    selecting: HeaderTuple
    request_time: float
    response_time: float
    body_length: int
    sha256: str
    surrogate_keys: tuple[str, ...]
    stored_at: float
    freshness: fr.Freshness = field(default_factory=lambda: fr.Freshness(0.0, 0.0))

    def age(self, now: float) -> float:
        return fr.current_age(self.freshness.initial_age, self.response_time, now)

    def ttl(self, now: float) -> float:
        return self.freshness.lifetime - self.age(now)

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes) -> CacheEntry:
        try:
            return entry_from_dict(orjson.loads(data))
        except (ValueError, TypeError, KeyError) as e:
            raise CacheMetadataError(f"bad cache entry metadata: {e}") from e


def entries_json(entries: Iterable[CacheEntry]) -> bytes:
    """A key's variant list as its metadata row holds it: a JSON array of entries, each an
    object of its fields as ``dataclasses.asdict`` gives them (tuples as arrays).

    Written by orjson, which serialises the dataclasses as they are: the standard
    library's encoder took 17-29 µs an entry on the commit's thread, about a fifth of a
    fill's commit, orjson 3. Every float in an entry is finite (orjson would write null
    for another; config refuses non-finite durations)."""
    return orjson.dumps(entries if isinstance(entries, list | tuple) else list(entries))


def entries_from_json(data: bytes) -> list[CacheEntry]:
    """A variant list from its metadata row (``entries_json``'s document, or any JSON);
    raises ValueError, TypeError or KeyError for what is not one. Read by orjson: 2 µs for
    an entry of three fields, the standard library's json.loads 9 (on every hit the index
    does not hold)."""
    doc = orjson.loads(data)
    if not isinstance(doc, list):
        raise TypeError("list expected")
    return [entry_from_dict(d) for d in doc]


def _pairs(v: Any) -> HeaderTuple:
    if type(v) is not list:
        raise TypeError("header list expected")
    out = []
    for p in v:
        if type(p) is not list or len(p) != 2:
            raise TypeError("header pair expected")
        name, value = p
        if type(name) is not str or type(value) is not str:
            raise TypeError("header pair expected")
        out.append((name, value))
    return tuple(out)


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("string list expected")
    return tuple(v)


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise TypeError("number expected")
    return float(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("integer expected")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("string expected")
    return v


# Decoders by field annotation, so the stored form follows the dataclasses' fields.
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "str": _str,
    "int": _int,
    "float": _num,
    "bool": bool,
    "HeaderTuple": _pairs,
    "tuple[str, ...]": _strs,
}


def _field_decoders(
    cls: Any, last: str | None = None
) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """Each field of ``cls`` (but its last one, named ``last``, decoded apart) and its
    decoder, in the order of its constructor's arguments."""
    given = fields(cls)
    if last is not None and given[-1].name != last:
        raise TypeError(f"{cls.__name__}.{last} must be its last field")
    return tuple((f.name, _DECODERS[str(f.type)]) for f in given if f.name != last)


# Built by position: 7.5 µs an entry, against 11.3 by keyword (on every hit the index does not
# hold, and for every entry a purge reads).
_FRESHNESS_FIELDS = _field_decoders(fr.Freshness)
_ENTRY_FIELDS = _field_decoders(CacheEntry, last="freshness")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def entry_from_dict(d: Any) -> CacheEntry:
    """Validate and build an entry from decoded JSON (raises TypeError/KeyError)."""
    if not isinstance(d, dict):
        raise TypeError("object expected")
    fresh = d["freshness"]
    if not isinstance(fresh, dict):
        raise TypeError("Freshness object expected")
    args = [check(d[name]) for name, check in _ENTRY_FIELDS]
    args.append(fr.Freshness(*[check(fresh[name]) for name, check in _FRESHNESS_FIELDS]))
    entry = CacheEntry(*args)
    if _SHA256_HEX.fullmatch(entry.sha256) is None:
        raise TypeError("sha256 must be 64 lower-case hex digits")
    if entry.body_length < 0:
        raise TypeError("negative body length")
    return entry


# --- storability -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Storability:
    storable: bool
    reason: str  # "ok" or why not, usable as a Cache-Status detail
    # The response's freshness, when the decision computed it (make_entry's `known`).
    freshness: fr.Freshness | None = None


def storability(
    request: CacheRequest,
    status: int,
    headers: Headers,
    config: PolicyConfig = PolicyConfig(),
    *,
    request_time: float = 0.0,
    response_time: float = 0.0,
) -> Storability:
    """May this response to ``request`` be stored (RFC 9111 §3)?

    Pass the response's fields as ``Fields`` (edge.cache_control) to have them parsed once
    for this decision and the entry ``make_entry`` then makes of them."""
    if request.method.upper() != "GET":
        return Storability(False, "method")
    if "no-store" in cache_control(request.headers):
        return Storability(False, "request-no-store")
    if not 200 <= status <= 599 or status in (206, 304):
        return Storability(False, "status")
    headers = as_fields(headers)
    cc, _targeted = fr.response_directives(headers, config.targeted_fields)
    if "must-understand" in cc:
        # RFC 9111 §5.2.2.3: store only statuses we understand, and then no-store yields.
        if status not in _KNOWN_STATUSES:
            return Storability(False, "status")
    elif "no-store" in cc:
        return Storability(False, "no-store")
    if config.shared and cc.field_names("private") == ():
        return Storability(False, "private")
    if config.shared and field_values(request.headers, "authorization"):
        if not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
            return Storability(False, "authorization")
    if field_values(headers, "set-cookie") and not config.store_set_cookie:
        return Storability(False, "set-cookie")
    if vy.vary_fields(headers) is None:
        return Storability(False, "vary-star")
    if field_values(headers, "content-range"):
        return Storability(False, "partial")
    f = fr.compute(status, headers, request_time, response_time, config)
    return stored_for_freshness(f, has_validator(headers))


def has_validator(headers: Headers) -> bool:
    """Whether the response carries a validator (ETag or Last-Modified)."""
    return bool(field_values(headers, "etag") or field_values(headers, "last-modified"))


def stored_for_freshness(f: fr.Freshness, validator: bool) -> Storability:
    """``storability``'s last word, once nothing else refused the response: its freshness
    ``f``, and whether it carries a validator."""
    if f.lifetime > 0:
        return Storability(True, "ok", f)
    if (f.explicit or f.no_cache) and validator:
        return Storability(True, "ok", f)
    return Storability(False, "no-freshness", f)


def bodyless(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` has no body."""
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


def delimited(headers: Headers) -> bool:
    """Whether the response's body has an end of its own (chunked, or a Content-Length):
    one delimited by the connection's close looks complete when cut short, and is never
    stored."""
    te = ",".join(field_values(headers, "transfer-encoding")).lower()
    return "chunked" in te or bool(field_values(headers, "content-length"))


def declared_length(method: str, headers: Headers) -> int | None:
    """The body length a GET response's Content-Length declares, or None."""
    declared = field_values(headers, "content-length")
    if declared and method == "GET" and (length := declared[0].strip()).isdigit():
        return int(length)
    return None


def _with_date(pairs: Fields, response_time: float) -> Fields:
    # RFC 9110 §6.6.1: a recipient caching a response without Date adds one.
    if field_values(pairs, "date"):
        return pairs
    return pairs.plus("Date", fr.format_http_date(response_time))


def _stored_headers(headers: Headers, response_time: float) -> Fields:
    pairs = strip_hop_by_hop(headers)
    drop = unstored(pairs)
    if drop:
        pairs = pairs.without(drop)
    return _with_date(pairs, response_time)


def unstored(end_to_end: Headers) -> set[str]:
    """The lower-cased names of the fields a response's qualified private and no-cache
    keep out of the cache (``end_to_end``: its fields, hop-by-hop ones stripped)."""
    cc = cache_control(end_to_end)
    return {n for d in ("private", "no-cache") for n in cc.field_names(d) or ()}


def surrogate_keys(headers: Headers) -> tuple[str, ...]:
    """Tags from ``Surrogate-Key`` (space-separated, several lines allowed)."""
    keys: list[str] = []
    for v in field_values(headers, "surrogate-key"):
        for k in v.split():
            if k not in keys:
                keys.append(k)
    return tuple(keys)


def make_entry(
    request: CacheRequest,
    status: int,
    reason: str,
    headers: Headers,
    *,
    request_time: float,
    response_time: float,
    body_length: int,
    sha256: str,
    now: float,
    config: PolicyConfig = PolicyConfig(),
    known: fr.Freshness | None = None,
) -> CacheEntry:
    """The entry to store for a response that ``storability`` accepted.

    Hop-by-hop fields and fields named by qualified private/no-cache are dropped; a Date
    is added if missing. ``known``: the freshness ``storability`` computed for these
    `headers`, status, times and `config`; used when storing them drops and adds none of
    the fields freshness depends on.
    """
    stored = _stored_headers(headers, response_time)
    if known is None or not _same_for_freshness(as_fields(headers), stored, config):
        known = fr.compute(status, stored, request_time, response_time, config)
    return assemble_entry(
        request,
        status,
        reason,
        stored,
        vy.vary_fields(stored) or (),
        surrogate_keys(stored),
        request_time=request_time,
        response_time=response_time,
        body_length=body_length,
        sha256=sha256,
        now=now,
        freshness=known,
    )


def assemble_entry(
    request: CacheRequest,
    status: int,
    reason: str,
    stored: Iterable[tuple[str, str]],
    vary: tuple[str, ...],
    surrogate: tuple[str, ...],
    *,
    request_time: float,
    response_time: float,
    body_length: int,
    sha256: str,
    now: float,
    freshness: fr.Freshness,
) -> CacheEntry:
    """The entry of the fields ``stored``, with their Vary list ``vary`` and surrogate keys
    ``surrogate`` (``make_entry`` and edge.head_shapes decide them), for ``request``."""
    selecting = vy.selecting_headers(vary, request.headers)
    return CacheEntry(
        key=request.key,
        variant=vy.variant_key(selecting),
        status=status,
        reason=reason,
        headers=tuple(stored),  # a plain tuple: the index is not kept with the entry
        vary=vary,
        selecting=selecting,
        request_time=request_time,
        response_time=response_time,
        body_length=body_length,
        sha256=sha256,
        surrogate_keys=surrogate,
        stored_at=now,
        freshness=freshness,
    )


# The fields fr.compute reads, besides a configuration's targeted fields.
FRESHNESS_INPUTS = ("cache-control", "expires", "date", "age", "last-modified")


def _same_for_freshness(a: Fields, b: Fields, rules: fr.Rules) -> bool:
    """Whether `a` and `b` have the same lines of every field fr.compute reads."""
    ia, ib = a.by_name, b.by_name
    for name in (*FRESHNESS_INPUTS, *rules.targeted_fields):
        if ia.get(name.lower()) != ib.get(name.lower()):
            return False
    return True


def freshen(
    entry: CacheEntry,
    new_headers: Headers,
    *,
    request_time: float,
    response_time: float,
    config: PolicyConfig = PolicyConfig(),
) -> CacheEntry:
    """The entry updated from a 304 (RFC 9111 §4.3.4) or a HEAD response (§4.3.5).

    The stored fields are replaced by those in ``new_headers`` (Content-Length excepted),
    the response times become those of the validation exchange, and freshness is
    recomputed. A 304 without Date gets one for ``response_time``.
    """
    new = _with_date(strip_hop_by_hop(new_headers), response_time)
    if not field_values(new, "age"):
        # An Age from the original response no longer applies to this exchange.
        base = tuple((k, v) for k, v in entry.headers if k.lower() != "age")
    else:
        base = entry.headers
    merged = merge_headers(base, new, keep_set_cookie=config.store_set_cookie)
    return replace(
        entry,
        headers=merged,
        request_time=request_time,
        response_time=response_time,
        surrogate_keys=surrogate_keys(merged),
        freshness=fr.compute(entry.status, merged, request_time, response_time, config),
    )


# --- lookup ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fresh:
    """Serve ``entry`` from the cache. ``ttl`` < 0 when the client allowed staleness."""

    entry: CacheEntry
    age: float
    ttl: float


@dataclass(frozen=True, slots=True)
class Stale:
    """A stored response matched but cannot be served as is: revalidate it.

    ``fwd`` is "stale" (it is stale, or marked no-cache) or "request" (the request's
    directives refused it). ``background``: stale-while-revalidate allows serving
    ``entry`` now and revalidating in the background.
    """

    entry: CacheEntry
    age: float
    ttl: float
    fwd: Literal["stale", "request"]
    background: bool = False


@dataclass(frozen=True, slots=True)
class Miss:
    """Nothing usable. ``only_if_cached``: answer 504 instead of going to the origin."""

    fwd: Literal["uri-miss", "vary-miss", "request"]
    only_if_cached: bool = False


Decision = Fresh | Stale | Miss


def _request_delta(cc_value: int | None) -> int | None:
    # An invalid request delta is taken as 0: the conservative reading.
    if cc_value is None:
        return None
    return max(cc_value, 0)


def select(entries: Sequence[CacheEntry], request_headers: Headers) -> list[CacheEntry]:
    """The stored variants matching the request's selecting fields, newest first."""
    matching = [e for e in entries if vy.matches(e.vary, e.selecting, request_headers)]
    matching.sort(key=lambda e: e.response_time, reverse=True)
    return matching


def plain_fresh(entries: Sequence[CacheEntry], now: float) -> Fresh | None:
    """``lookup``'s decision for a GET or HEAD without cache directives (no Cache-Control,
    no Pragma) when it is a hit on the one stored variant, without Vary, that is fresh and
    not marked no-cache; None when ``lookup`` must decide. Every hit path calls this."""
    if len(entries) != 1 or entries[0].vary:
        return None
    return _fresh_hit(entries[0], now)


def fresh_variant(
    entries: Sequence[CacheEntry], request_headers: Headers, now: float
) -> Fresh | None:
    """What ``plain_fresh`` decides, for a key whose responses vary (Vary): ``lookup``'s
    decision for a GET or HEAD without cache directives when the newest stored variant the
    request's selecting fields match is fresh and not marked no-cache; None when
    ``lookup`` must decide."""
    matching = select(entries, request_headers)
    return _fresh_hit(matching[0], now) if matching else None


def _fresh_hit(entry: CacheEntry, now: float) -> Fresh | None:
    """`entry` as a hit when it is fresh and not marked no-cache, else None."""
    f = entry.freshness
    if f.no_cache:
        return None
    age = entry.age(now)
    ttl = f.lifetime - age
    return Fresh(entry, age, ttl) if ttl > 0 else None


def lookup(
    request: CacheRequest,
    entries: Sequence[CacheEntry],
    now: float,
    config: PolicyConfig = PolicyConfig(),
) -> Decision:
    """Decide how to answer ``request`` given the stored variants of its key."""
    req_cc = cache_control(request.headers)
    oic = "only-if-cached" in req_cc
    if request.method.upper() not in ("GET", "HEAD"):
        return Miss("request")
    if not req_cc and not field_values(request.headers, "pragma"):
        fresh = plain_fresh(entries, now)
        if fresh is not None:
            return fresh
    if not entries:
        return Miss("uri-miss", oic)
    matching = select(entries, request.headers)
    if not matching:
        return Miss("vary-miss", oic)
    entry = matching[0]
    f = entry.freshness
    age = entry.age(now)
    ttl = f.lifetime - age

    no_cache = "no-cache" in req_cc or (
        not req_cc and "no-cache" in list_elements(request.headers, "pragma")
    )
    refused = no_cache
    max_age = _request_delta(req_cc.delta("max-age"))
    if max_age is not None and age > max_age:
        refused = True
    min_fresh = _request_delta(req_cc.delta("min-fresh"))
    if min_fresh is not None and ttl < min_fresh:
        refused = True

    def forward(fwd: Literal["stale", "request"], background: bool = False) -> Decision:
        if oic:
            return Miss("request" if fwd == "request" else "uri-miss", True)
        return Stale(entry, age, ttl, fwd, background)

    if refused:
        return forward("request")
    if f.no_cache:
        return forward("stale")
    if ttl > 0:
        return Fresh(entry, age, ttl)
    if not f.must_revalidate:
        if "max-stale" in req_cc:
            # Bare max-stale: any staleness; an invalid value allows none.
            raw = req_cc.get("max-stale")
            allowed = parse_delta_seconds(raw) if raw is not None else DELTA_SECONDS_MAX
            if allowed is not None and -ttl <= allowed:
                return Fresh(entry, age, ttl)
        if f.stale_while_revalidate > 0 and -ttl <= f.stale_while_revalidate:
            return forward("stale", background=True)
    return forward("stale")


FetchOutcome = Literal[
    "choose-variant", "freshen", "freshen-from-head", "serve-stale", "refetch-range", "stream"
]


def after_fetch(
    *,
    method: str,
    status: int,
    revalidating: bool,
    offered_variants: bool,
    stale_if_error: bool,
    ranged: bool,
    too_big: bool,
) -> FetchOutcome:
    """What to do with an origin's answer to a cache's request (the cache layer's _fetch):

    - "choose-variant": a 304 to a vary-miss that offered the stored variants' validators
      (RFC 9111 §4.3.1): serve the variant it selects, freshened (§4.3.4);
    - "freshen": a 304 to a revalidation: freshen the stale entry and serve it;
    - "freshen-from-head": a 200 to a HEAD that revalidated: freshen from its fields (§4.3.5);
    - "serve-stale": a 5xx while the stale entry may serve on error (RFC 5861 §4);
    - "refetch-range": a 200 to a whole-object request made for a client's Range, of an
      object too big to store: ask the origin for the range instead (cutting it from the
      whole object would make the origin send everything before it, every time);
    - "stream": pass the response on, storing it when it may be.

    `revalidating`: the request carried a stale entry's validators; `offered_variants`:
    those of non-matching variants; `stale_if_error`: the stale entry may serve on error
    (stale_on_error_ok); `ranged`: the client's Range was not sent on; `too_big`: the
    response declares a length over max_object_bytes.
    """
    if status == 304 and offered_variants and not revalidating:
        return "choose-variant"
    if status == 304 and revalidating:
        return "freshen"
    if revalidating and method == "HEAD" and status == 200:
        return "freshen-from-head"
    if revalidating and status >= 500 and stale_if_error:
        return "serve-stale"
    if ranged and status == 200 and too_big:
        return "refetch-range"
    return "stream"


def stale_on_error_ok(
    entry: CacheEntry,
    request_headers: Headers,
    now: float,
    *,
    disconnected: bool,
    config: PolicyConfig = PolicyConfig(),
) -> bool:
    """May a stale ``entry`` answer because the origin failed (RFC 5861 §4, RFC 9111 §4.2.4)?

    ``disconnected``: the origin could not be reached (connect error, timeout, no healthy
    origin) rather than answering 5xx. Never under must-revalidate / proxy-revalidate /
    s-maxage or no-cache.
    """
    f = entry.freshness
    if f.must_revalidate or f.no_cache:
        return False
    staleness = -(f.lifetime - entry.age(now))
    if staleness <= 0:
        return True
    window = f.stale_if_error
    req = cache_control(request_headers).delta("stale-if-error")
    if req is not None and req > 0:
        window = max(window, float(req))
    if disconnected:
        window = max(window, config.stale_when_disconnected)
    return staleness <= window


def age_value(age: float) -> int:
    """The Age value for a current age in seconds (capped as RFC 9111 §1.2.2 says)."""
    return min(int(age), DELTA_SECONDS_MAX)


# --- invalidation ------------------------------------------------------------------------


def invalidation_keys(
    request: CacheRequest, status: int, response_headers: Headers
) -> tuple[str, ...]:
    """Keys an unsafe request invalidates once its response is non-error (RFC 9111 §4.4).

    The request URI, and Location / Content-Location when they have the same origin.
    """
    if request.method.upper() in _SAFE_METHODS or not (200 <= status < 400):
        return ()
    base = request.key
    origin = urlsplit(base)
    keys = [base]
    for name in ("location", "content-location"):
        for value in field_values(response_headers, name)[:1]:
            target = urlsplit(urljoin(base, value.strip()))
            if (target.scheme, target.netloc.lower()) != (origin.scheme, origin.netloc):
                continue
            path = target.path or "/"
            if target.query:
                path += "?" + target.query
            k = cache_key(target.scheme, target.netloc, path)
            if k not in keys:
                keys.append(k)
    return tuple(keys)


# --- Cache-Status ------------------------------------------------------------------------


def _sf_string(s: str) -> str:
    clean = "".join(c for c in s if 0x20 <= ord(c) < 0x7F)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cache_status(
    name: str = "GeoEdge",
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    key: str | None = None,
    detail: str | None = None,
) -> str:
    """A Cache-Status member (RFC 9211), e.g. ``GeoEdge; hit; ttl=12`` or
    ``GeoEdge; fwd=uri-miss; fwd-status=200; stored``."""
    parts = [name]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={int(fwd_status)}")
    if ttl is not None:
        parts.append(f"ttl={math.floor(ttl)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if key is not None:
        parts.append(f"key={_sf_string(key)}")
    if detail is not None:
        parts.append(f"detail={_sf_string(detail)}")
    return "; ".join(parts)


def decision_status(decision: Decision, name: str = "GeoEdge") -> str:
    """Cache-Status for a decision answered without (or before) talking to the origin."""
    if isinstance(decision, Fresh):
        return cache_status(name, hit=True, ttl=decision.ttl)
    if isinstance(decision, Stale):
        if decision.background:
            return cache_status(name, hit=True, ttl=decision.ttl, detail="stale-while-revalidate")
        return cache_status(name, fwd=decision.fwd, ttl=decision.ttl)
    return cache_status(name, fwd=decision.fwd)


__all__ = [
    "FRESHNESS_INPUTS",
    "CacheEntry",
    "CacheRequest",
    "Decision",
    "Fresh",
    "Miss",
    "PolicyConfig",
    "Stale",
    "Storability",
    "after_fetch",
    "age_value",
    "assemble_entry",
    "bodyless",
    "cache_key",
    "cache_status",
    "decision_status",
    "declared_length",
    "delimited",
    "freshen",
    "has_validator",
    "header_pairs",
    "invalidation_keys",
    "lookup",
    "make_entry",
    "plain_fresh",
    "select",
    "stale_on_error_ok",
    "storability",
    "stored_for_freshness",
    "surrogate_keys",
    "unstored",
]
