"""Conditional requests around the cache (RFC 9110 §13, RFC 9111 §3.2, §4.3).

Three jobs, all pure: build the validators for revalidating a stored response with the
origin; fold a 304 from the origin into the stored header set; and answer a client's own
conditional request (If-None-Match / If-Modified-Since, plus If-Match /
If-Unmodified-Since) from a stored response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edge.cache_control import (
    Fields,
    Headers,
    HeaderTuple,
    field_values,
    header_pairs,
    split_list,
)
from edge.freshness import date_field, parse_http_date

# RFC 9110 §7.6.1 plus the classic ones: never stored, never merged.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Never taken from a 304 into the stored response (RFC 9111 §3.2): the stored body is the
# one described by these. Content-Encoding is the RFC's own example of a field the stored
# bytes depend on (a variant the edge compressed is brotli whatever a 304 says).
NOT_UPDATED_FROM_304 = frozenset({"content-length", "content-encoding"})

# Fields a cache-generated 304 leaves out: they describe the body it does not send.
_NOT_IN_304 = frozenset(
    {
        "content-length",
        "content-range",
        "content-type",
        "content-encoding",
        "content-language",
        "content-md5",
        "content-disposition",
    }
)


def strip_hop_by_hop(headers: Headers) -> Fields:
    """The fields without hop-by-hop ones, including every name listed in Connection.

    Fields in, Fields out (``headers`` itself when nothing is hop-by-hop)."""
    if type(headers) is Fields:
        return headers.end_to_end(HOP_BY_HOP)
    # Read once (a client's request, an origin's response passed straight on): no index.
    pairs = header_pairs(headers)
    names = [k.lower() for k, _ in pairs]
    if HOP_BY_HOP.isdisjoint(names):
        return Fields(pairs)
    drop = set(HOP_BY_HOP)
    for (_, v), lk in zip(pairs, names, strict=True):
        if lk == "connection":
            drop.update(e.lower() for e in split_list(v))
    return Fields(p for p, lk in zip(pairs, names, strict=True) if lk not in drop)


def normalise_etag(tag: str) -> str:
    """An entity-tag in its quoted form: ``abc`` -> ``"abc"``, ``W/abc`` -> ``W/"abc"``.

    Origins and clients sometimes send tags without the quotes RFC 9110 §8.8.3 requires;
    a recipient may recover such a tag (RFC 9110 §2.2), and quoting it lets ``abc`` and
    ``"abc"`` compare equal when the cache answers a conditional request itself.
    """
    tag = tag.strip()
    prefix = "W/" if tag.startswith("W/") else ""
    body = tag[len(prefix) :]
    if body.startswith('"') and body.endswith('"') and len(body) > 1:
        return tag
    return prefix + '"' + body.strip('"') + '"'


def parse_etags(value: str) -> list[str] | None:
    """Entity-tags of an If-None-Match / If-Match value, quoted; None means ``*``."""
    tags: list[str] = []
    rest = value.strip()
    while rest:
        if rest.startswith(","):
            rest = rest[1:].lstrip()
            continue
        if rest.startswith("*"):
            return None
        weak = rest.startswith("W/")
        body = rest[2:] if weak else rest
        if not body.startswith('"'):
            # Be lenient with unquoted tags: take up to the next comma.
            tag, _, rest = rest.partition(",")
            tags.append(normalise_etag(tag))
            rest = rest.lstrip()
            continue
        end = body.find('"', 1)
        if end < 0:
            tags.append(rest)
            break
        tags.append(("W/" if weak else "") + body[: end + 1])
        rest = body[end + 1 :].lstrip()
    return tags


def opaque(tag: str) -> str:
    tag = normalise_etag(tag)
    return tag[2:] if tag.startswith("W/") else tag


def weak_match(a: str, b: str) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, weakness ignored."""
    return opaque(a) == opaque(b)


def strong_match(a: str, b: str) -> bool:
    """Strong comparison (RFC 9110 §8.8.3.2): neither tag weak, opaque tags equal."""
    a, b = normalise_etag(a), normalise_etag(b)
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def validators(entries_headers: Iterable[Headers]) -> HeaderTuple:
    """Request fields to revalidate stored responses with the origin (RFC 9111 §4.3.1).

    All stored ETags go into one If-None-Match (so the origin can pick any variant); a
    Last-Modified (from the first entry that has one) gives If-Modified-Since when no ETag
    is known.
    """
    etags: list[str] = []
    last_modified: str | None = None
    for headers in entries_headers:
        for v in field_values(headers, "etag")[:1]:
            # Verbatim, quotes or not: an origin that sent an unquoted tag most likely
            # compares If-None-Match with it as a plain string.
            tag = v.strip()
            if tag and tag not in etags:
                etags.append(tag)
        if last_modified is None:
            lm = field_values(headers, "last-modified")
            if lm and parse_http_date(lm[0]) is not None:
                last_modified = lm[0].strip()
    out: list[tuple[str, str]] = []
    if etags:
        out.append(("If-None-Match", ", ".join(etags)))
    if last_modified is not None:
        out.append(("If-Modified-Since", last_modified))
    return tuple(out)


def select_for_update(candidates: Sequence[tuple[int, Headers]], headers_304: Headers) -> list[int]:
    """Which stored responses (given as (index, headers)) a 304 freshens (RFC 9111 §4.3.4).

    A strong ETag in the 304 selects the stored responses with that strong ETag; else a
    Last-Modified selects those with the same Last-Modified; else, if there is exactly one
    candidate and neither side has validators, that one; otherwise none.
    """
    etag = next(iter(field_values(headers_304, "etag")), None)
    if etag is not None:
        match = weak_match if etag.strip().startswith("W/") else strong_match
        return [i for i, h in candidates if any(match(etag, e) for e in field_values(h, "etag"))]
    lm = next(iter(field_values(headers_304, "last-modified")), None)
    if lm is not None:
        lm = lm.strip()
        return [
            i for i, h in candidates if lm in (x.strip() for x in field_values(h, "last-modified"))
        ]
    if len(candidates) == 1:
        return [candidates[0][0]]
    return []


def merge_headers(stored: Headers, new: Headers, *, keep_set_cookie: bool = False) -> HeaderTuple:
    """Stored fields updated from a 304 or HEAD response (RFC 9111 §3.2).

    Every field in ``new`` replaces all lines of the same name in ``stored``, except
    hop-by-hop fields, Content-Length, Content-Encoding, and Set-Cookie (unless
    ``keep_set_cookie``); fields only in ``stored`` stay. The obsolete Set-Cookie2 (RFC
    6265 retired it; user agents ignore it) is an ordinary field here, updated like any
    other, as RFC 9111 §3.2 asks.
    """
    new_pairs = strip_hop_by_hop(new)
    skip = set(NOT_UPDATED_FROM_304)
    if not keep_set_cookie:
        skip.add("set-cookie")
    updates = [(k, v) for k, v in new_pairs if k.lower() not in skip]
    # A variant the edge compressed carries the weak form of the origin's ETag; a 304
    # naming the strong form must not make the compressed bytes look byte-identical.
    stored_tags = field_values(stored, "etag")
    if stored_tags and stored_tags[0].strip().startswith("W/"):
        weak = stored_tags[0].strip()
        updates = [
            (k, weak if k.lower() == "etag" and "W/" + v.strip() == weak else v) for k, v in updates
        ]
    replaced = {k.lower() for k, _ in updates}
    kept = [(k, v) for k, v in header_pairs(stored) if k.lower() not in replaced]
    return tuple(kept + updates)


def evaluate(
    method: str,
    request_headers: Headers,
    stored_headers: Headers,
    stored_time: float,
) -> int | None:
    """Evaluate a client's preconditions against a stored response (RFC 9110 §13.2.2).

    Returns 304 (Not Modified), 412 (Precondition Failed) or None (send the stored
    response). ``stored_time`` is when the response was received, used as the
    modification date of a response without Last-Modified or Date (RFC 9111 §4.3.2).
    """
    return evaluate_validators(
        method, request_headers, *stored_validators(stored_headers, stored_time)
    )


def stored_validators(stored_headers: Headers, stored_time: float) -> tuple[list[str], float]:
    """A stored response's validators as `evaluate` compares them: its entity-tag (none or
    one) and its modification date (Last-Modified, else Date, else ``stored_time``)."""
    etags = [e.strip() for e in field_values(stored_headers, "etag")[:1]]
    last_modified = date_field(stored_headers, "last-modified")
    if last_modified is None:
        last_modified = date_field(stored_headers, "date")
    if last_modified is None:
        last_modified = stored_time
    return etags, last_modified


def evaluate_validators(
    method: str, request_headers: Headers, etags: list[str], last_modified: float
) -> int | None:
    """`evaluate` against a stored response's `stored_validators`."""
    safe = method.upper() in ("GET", "HEAD")
    if_match = field_values(request_headers, "if-match")
    if if_match:
        tags = parse_etags(", ".join(if_match))
        ok = bool(etags) if tags is None else any(strong_match(t, e) for t in tags for e in etags)
        if not ok:
            return 412
    else:
        ius = field_values(request_headers, "if-unmodified-since")
        if len(ius) == 1:
            when = parse_http_date(ius[0])
            if when is not None and last_modified > when:
                return 412

    inm = field_values(request_headers, "if-none-match")
    if inm:
        tags = parse_etags(", ".join(inm))
        hit = True if tags is None else any(weak_match(t, e) for t in tags for e in etags)
        if hit:
            return 304 if safe else 412
        return None
    if safe:
        ims = field_values(request_headers, "if-modified-since")
        if len(ims) == 1:
            return modified_since(ims[0], last_modified)
    return None


def modified_since(value: str, last_modified: float) -> int | None:
    """The verdict of one If-Modified-Since field `value` on a safe request against a
    stored response last modified at `last_modified` (none of the other conditions
    present): 304, or None when the date is later or not a date."""
    when = parse_http_date(value)
    return 304 if when is not None and last_modified <= when else None


def not_modified_headers(stored_headers: Headers) -> HeaderTuple:
    """The stored fields a cache-generated 304 carries (RFC 9110 §15.4.5)."""
    return tuple((k, v) for k, v in header_pairs(stored_headers) if k.lower() not in _NOT_IN_304)
