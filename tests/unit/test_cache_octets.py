"""Field values as octets (edge.headers.wire_text / octet_text): obs-text must leave the
cache exactly as it came in, and a client's bytes must compare with the origin's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.conditional import evaluate
from edge.headers import client_response_headers, octet_text, origin_request_headers, wire_text

# What aiohttp's client hands us for origin bytes: one character per octet.
_utf8_etag = b'"abcdef\xc3\xbc"'.decode("latin-1")


def _aiohttp_encodes(value: str) -> bytes:
    # aiohttp's header writers encode str values as UTF-8.
    return value.encode("utf-8")


def test_utf8_obs_text_leaves_as_it_came_in() -> None:
    assert _aiohttp_encodes(wire_text(_utf8_etag)) == b'"abcdef\xc3\xbc"'
    out = client_response_headers([("ETag", _utf8_etag)], version=(1, 1), via="e")
    assert _aiohttp_encodes(out["ETag"]) == b'"abcdef\xc3\xbc"'


def test_request_fields_to_the_origin_keep_their_octets() -> None:
    out = origin_request_headers(
        [("X-Name", "\xc3\xbc"), ("If-None-Match", _utf8_etag)],
        client_ip="127.0.0.1",
        proto="http",
        host="h",
        version=(1, 1),
        via="e",
    )
    assert _aiohttp_encodes(out["X-Name"]) == b"\xc3\xbc"
    assert _aiohttp_encodes(out["If-None-Match"]) == b'"abcdef\xc3\xbc"'


def test_client_bytes_compare_with_stored_origin_bytes() -> None:
    # aiohttp's server parser decodes request fields as UTF-8 with surrogateescape.
    parsed = b'"abcdef\xc3\xbc"'.decode("utf-8", "surrogateescape")
    request = [("If-None-Match", octet_text(parsed))]
    assert evaluate("GET", request, [("ETag", _utf8_etag)], 0.0) == 304
    latin1 = b'"abcdef\xfc"'.decode("utf-8", "surrogateescape")
    assert octet_text(latin1) == '"abcdef\xfc"'
    assert (
        evaluate("GET", [("If-None-Match", octet_text(latin1))], [("ETag", _utf8_etag)], 0.0)
        is None
    )


def test_values_aiohttp_cannot_write_byte_exactly_are_left_alone() -> None:
    assert wire_text("abc") == "abc"
    assert wire_text('"abcdef\xfc"') == '"abcdef\xfc"'  # not UTF-8
    assert wire_text("\u20ac") == "\u20ac"  # not octets at all (our own text)


@given(st.binary(max_size=40))
def test_utf8_octets_round_trip(raw: bytes) -> None:
    parsed = raw.decode("utf-8", "surrogateescape")  # as aiohttp's server parses
    octets = octet_text(parsed)
    assert octets == raw.decode("latin-1")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert _aiohttp_encodes(wire_text(octets)) == raw
