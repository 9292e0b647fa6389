"""Property tests of the answer engine: no input makes it raise, and every valid query gets a
reply with the query's ID and its question byte for byte (0x20 case included)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.edns
import dns.message
import dns.name
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.answer import Responder
from tests.unit.answer_support import build, query

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

LABELS = [
    "www",
    "static",
    "alias",
    "x",
    "wild",
    "sub",
    "deep",
    "c",
    "cdn",
    "geo",
    "loop1",
    "*",
    "nope",
]
ZONES = ["example.test", "second.test", "example.com", ""]
QTYPES = [1, 2, 5, 6, 15, 16, 28, 33, 43, 255, 257, 65, 99, 251, 252, 253, 41, 0]
CLIENTS = ["192.0.2.1", "198.51.100.7", "203.0.113.9", "10.0.0.1", "2001:db8::1", "::1"]


@pytest.fixture(scope="module")
def responder(geo_db: Path) -> Responder:
    return build(geo_db)[0]


def mixed_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips, strict=True))


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    labels = draw(st.lists(st.sampled_from(LABELS), max_size=3))
    zone = draw(st.sampled_from(ZONES))
    name = mixed_case(draw, ".".join([*labels, zone]).strip(".") + ".")
    qtype = draw(st.sampled_from(QTYPES))
    edns = draw(st.sampled_from([None, 0]))
    ecs = None
    prefix = None
    if edns == 0 and draw(st.booleans()):
        ecs = draw(st.sampled_from(["192.0.2.0", "198.51.100.128", "203.0.113.0", "2001:db8::"]))
        prefix = draw(st.integers(0, 32 if ":" not in ecs else 128))
    return query(
        name,
        qtype,
        edns=edns,
        payload=draw(st.integers(0, 65535)),
        ecs=ecs,
        prefix=prefix,
        do=draw(st.booleans()),
        qid=draw(st.integers(0, 65535)),
        rd=draw(st.booleans()),
    )


@SETTINGS
@given(wire=st.binary(max_size=600), client=st.sampled_from(CLIENTS), tcp=st.booleans())
def test_arbitrary_bytes_never_raise(
    responder: Responder, wire: bytes, client: str, tcp: bool
) -> None:
    out = responder.respond(wire, ipaddress.ip_address(client), tcp=tcp)
    assert out is None or isinstance(out, bytes)
    if out is not None:
        assert out[:2] == wire[:2]
        assert out[2] & 0x80


@SETTINGS
@given(wire=queries(), client=st.sampled_from(CLIENTS), tcp=st.booleans())
def test_valid_queries_get_a_matching_reply(
    responder: Responder, wire: bytes, client: str, tcp: bool
) -> None:
    out = responder.respond(wire, ipaddress.ip_address(client), tcp=tcp)
    assert out is not None
    reply = dns.message.from_wire(out)
    assert reply.id == int.from_bytes(wire[:2], "big")
    qend = 12 + len(dns.name.from_wire(wire, 12)[0].to_wire()) + 4
    assert out[12:qend] == wire[12:qend]
    asked = dns.message.from_wire(wire)
    if tcp:
        limit = 65535
    elif asked.edns >= 0:
        limit = min(max(asked.payload, 512), 1232)
    else:
        limit = 512
    assert len(out) <= limit


@SETTINGS
@given(
    wire=queries(),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_queries_never_raise(
    responder: Responder, wire: bytes, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(wire)
    for pos, value in flips:
        data[pos % len(data)] = value
    out = responder.respond(bytes(data), ipaddress.ip_address("192.0.2.1"), tcp=False)
    assert out is None or out[:2] == bytes(data[:2])
