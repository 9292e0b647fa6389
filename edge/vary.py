"""Vary: selecting request headers, their normalisation and variant matching (RFC 9111 §4.1).

A stored response records the *normalised* values of the request headers its Vary names
("selecting headers"). A later request matches when its normalised values are equal.
Normalisation combines repeated lines, drops optional whitespace around list commas,
orders Accept-Language by preference (case-insensitively), and reduces Accept-Encoding to
the coding this edge would choose, so that compressed variants made by the edge line up
with requests (see edge.compression.negotiate).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from edge.cache_control import (
    Headers,
    HeaderTuple,
    field_values,
    list_elements,
    qvalue,
    split_list,
)
from edge.compression import variant_coding

# A request header absent from the request is recorded with this marker, distinct from an
# empty value, so "omitted" never matches "present".
ABSENT = "\x00absent"


def vary_fields(headers: Headers) -> tuple[str, ...] | None:
    """Lower-cased field names listed in Vary, sorted and unique; None for ``Vary: *``."""
    names: set[str] = set()
    for element in list_elements(headers, "vary"):
        name = element.strip().lower()
        if name == "*":
            return None
        if name:
            names.add(name)
    return tuple(sorted(names))


def _normalise_accept_language(value: str) -> str:
    ranked: list[tuple[float, str]] = []
    for element in split_list(value):
        tag, _, params = element.partition(";")
        q = qvalue(params)
        if q > 0:
            ranked.append((-q, tag.strip().lower()))
    ranked.sort()
    return ",".join(f"{tag};q={-negq:g}" if negq != -1.0 else tag for negq, tag in ranked)


def normalise(name: str, values: Sequence[str]) -> str:
    """One canonical string for the request field ``name`` given all its line values."""
    if not values:
        return ABSENT
    lname = name.lower()
    combined = ", ".join(values)
    if lname == "accept-encoding":
        return variant_coding(combined)
    if lname == "accept-language":
        return _normalise_accept_language(combined)
    return ",".join(split_list(combined))


def selecting_headers(fields: Sequence[str], request_headers: Headers) -> HeaderTuple:
    """The normalised (name, value) pairs of the request for the given Vary field names."""
    return tuple((f, normalise(f, field_values(request_headers, f))) for f in fields)


def variant_key(selecting: HeaderTuple) -> str:
    """A short stable id of a variant from its selecting headers ("" when Vary is empty)."""
    if not selecting:
        return ""
    h = hashlib.sha256()
    for name, value in selecting:
        h.update(name.encode("latin-1", "replace"))
        h.update(b"\x00")
        h.update(value.encode("utf-8", "surrogateescape"))
        h.update(b"\x01")
    return h.hexdigest()[:32]


def matches(
    vary: tuple[str, ...] | None, stored_selecting: HeaderTuple, request_headers: Headers
) -> bool:
    """Whether a stored response with this Vary and these stored selecting headers can be
    used for a request with ``request_headers``. ``Vary: *`` (None) never matches."""
    if vary is None:
        return False
    if not vary:
        return True
    stored = dict(stored_selecting)
    for f in vary:
        if stored.get(f, ABSENT) != normalise(f, field_values(request_headers, f)):
            return False
    return True
