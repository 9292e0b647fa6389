"""The plain-GET recogniser of the cache-hit fast path (edge.fasthit): strict, never wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.fasthit import SimpleGet, parse_simple_get


def _req(*fields: str, line: str = "GET /a?b=1 HTTP/1.1") -> bytes:
    return (line + "\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()


def test_a_plain_get_is_recognised() -> None:
    got = parse_simple_get(
        _req("Host: example.com", "User-Agent: wrk/4", "Accept: */*", "Connection: keep-alive")
    )
    assert got == SimpleGet(
        target="/a?b=1",
        host="example.com",
        user_agent="wrk/4",
        fields=4,
        field_bytes=(4 + 12 + 4) + (10 + 6 + 4) + (6 + 4 + 4) + (10 + 11 + 4),
        headers=(
            ("host", "example.com"),
            ("user-agent", "wrk/4"),
            ("accept", "*/*"),
            ("connection", "keep-alive"),
        ),
        raw=(
            ("Host", "example.com"),
            ("User-Agent", "wrk/4"),
            ("Accept", "*/*"),
            ("Connection", "keep-alive"),
        ),
    )
    assert got.header("accept") == "*/*" and got.header("x-absent") is None


@pytest.mark.parametrize("value", ["close", "Close", "CLOSE"])
@pytest.mark.parametrize("name", ["Connection", "Proxy-Connection"])  # aiohttp reads both
def test_connection_close_is_taken_and_flagged(name: str, value: str) -> None:
    got = parse_simple_get(_req("Host: h", f"{name}: {value}"))
    assert got is not None and got.close
    for kept in (_req("Host: h"), _req("Host: h", "Connection: keep-alive")):
        plain = parse_simple_get(kept)
        assert plain is not None and not plain.close


def test_repeated_fields_are_joined_for_the_screening_rules() -> None:
    got = parse_simple_get(_req("Host: h", "X-Tag: a", "x-tag: b"))
    assert got is not None and got.header("x-tag") == "a, b"


def test_field_values_lose_their_surrounding_whitespace() -> None:
    got = parse_simple_get(_req("host:\t h.test \t", "user-agent:ua"))
    assert got is not None
    assert (got.host, got.user_agent) == ("h.test", "ua")


@pytest.mark.parametrize(
    "data",
    [
        _req("Host: h", line="HEAD / HTTP/1.1"),
        _req("Host: h", line="POST / HTTP/1.1"),
        _req("Host: h", line="GET / HTTP/1.0"),
        _req("Host: h", line="GET http://h/ HTTP/1.1"),  # absolute form
        _req("Host: h", line="GET * HTTP/1.1"),
        _req("Host: h", line="GET /a#frag HTTP/1.1"),
        _req("Host: h", line="GET /a b HTTP/1.1"),
        _req("Host: h", line="GET /\x7f HTTP/1.1"),
        _req("Host: h", line="get / HTTP/1.1"),
        _req(),  # no Host
        _req("Host: a", "Host: b"),
        _req("Host: h", "Content-Length: 0"),
        _req("Host: h", "Transfer-Encoding: chunked"),
        _req("Host: h", "Expect: 100-continue"),
        _req("Host: h", "Upgrade: websocket", "Connection: Upgrade"),
        _req("Host: h", "Connection: keep-alive, X-Secret"),
        _req("Host: h", "Connection: close, X-Secret"),
        _req("Host: h", "Connection: close", "Connection: keep-alive"),  # aiohttp reads one
        _req("Host: h", "Connection: close", "Connection: close"),
        _req("Host: h", "Connection: keep-alive", "Proxy-Connection: close"),
        _req("Host: h", "Proxy-Connection: X-Secret"),
        _req("Host: h", "Cache-Control: no-cache"),
        _req("Host: h", "Pragma: no-cache"),
        _req("Host: h", "Range: bytes=0-1", "If-Range: x"),
        _req("Host: h", "Range: bytes=0-1", "Range: bytes=5-9"),  # two Range lines
        _req("Host: h", "If-Range: x"),
        _req("Host: h", "If-Match: x"),
        _req("Host: h", "If-Unmodified-Since: x"),
        _req("Host: h", " X-Folded: x"),  # leading whitespace / obs-fold
        _req("Host: h", "X Bad: x"),
        _req("Host: h", "X-Bin: caf\u00e9"),  # obs-text
        b"GET / HTTP/1.1\nHost: h\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: h\r\n",  # incomplete
        _req("Host: h") + b"GET / HTTP/1.1\r\n",  # a pipelined partial request
        _req("Host: h") * 2,  # two requests in one segment
        _req("Host: h") + b"x",
        b"",
    ],
)
def test_anything_else_is_left_to_the_full_handler(data: bytes) -> None:
    assert parse_simple_get(data) is None


def test_one_range_is_taken_for_a_hit_to_answer() -> None:
    plain = parse_simple_get(_req("Host: h"))
    ranged = parse_simple_get(_req("Host: h", "Range: bytes=0-1, 5-"))
    assert plain is not None and plain.range is None
    assert ranged is not None and ranged.range == "bytes=0-1, 5-"
    assert ("range", "bytes=0-1, 5-") in ranged.headers


def test_if_none_match_and_if_modified_since_are_taken_for_a_hit_to_answer() -> None:
    req = parse_simple_get(
        _req("Host: h", 'If-None-Match: "a", "b"', "if-modified-since: x", 'If-None-Match: "c"')
    )
    assert req is not None
    assert req.conditions == (
        ("if-none-match", '"a", "b"'),
        ("if-modified-since", "x"),
        ("if-none-match", '"c"'),
    )
    assert parse_simple_get(_req("Host: h", 'If-None-Match: "a"', 'If-Match: "a"')) is None


def test_big_segments_are_left_to_the_full_handler() -> None:
    data = _req("Host: h", "X-Pad: " + "p" * 200)
    assert parse_simple_get(data, max_bytes=len(data)) is not None
    assert parse_simple_get(data, max_bytes=len(data) - 1) is None


_token = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
_path = st.text("abcXYZ019-._~!$&'()*+,;=:@/?%", max_size=30).map(lambda s: "/" + s)


@given(
    path=_path,
    host=_value,
    extra=st.lists(st.tuples(_token.map(lambda t: "x-" + t), _value), max_size=5),
)
def test_recognised_requests_report_what_was_sent(
    path: str, host: str, extra: list[tuple[str, str]]
) -> None:
    fields = [f"Host: {host}", *(f"{k}: {v}" for k, v in extra)]
    got = parse_simple_get(_req(*fields, line=f"GET {path} HTTP/1.1"))
    assert got is not None
    assert (got.target, got.host, got.fields) == (path, host, len(fields))
    assert got.field_bytes >= sum(len(f) + 2 for f in fields)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    got = parse_simple_get(data)
    assert got is None or got.target.startswith("/")


@given(st.binary(min_size=1, max_size=40))
def test_nothing_may_follow_the_request(junk: bytes) -> None:
    # Whatever follows (a pipelined request, a body) belongs to aiohttp's parser.
    assert parse_simple_get(_req("Host: h") + junk) is None
