"""Property tests of the answer engine: no input makes it raise, and every valid query gets a
reply with the query's ID and its question byte for byte (0x20 case included). The zone
example.test is signed (DNSSEC, fixed clock) in the responders here, so DO=1 queries meet
signed answers; signatures are deterministic (RFC 6979), so replies still compare byte for
byte."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geo.locator import GeoIPLocator
from gslb.answer import Responder
from gslb.dnssec import write_new_key
from gslb.health import HealthStore
from gslb.wire import add_option
from tests.unit.answer_support import make_config, query

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


NOW = 1_800_000_000.0  # signatures depend on the signing epoch: keep the clock still


def clock() -> float:
    return NOW


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "example.test.pem"
    write_new_key(path)
    return path


@pytest.fixture(scope="module", params=["unsigned", "signed"])
def responder(request: pytest.FixtureRequest, geo_db: Path, key_file: Path) -> Responder:
    cfg = make_config(key_file=key_file if request.param == "signed" else None)
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    return Responder(cfg, GeoIPLocator(geo_db), health, clock=clock)


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


# Pools that share some members and not others, so a health change invalidates some pools'
# cached answers and must leave the rest alone: www, two, all and x.cdn hold fra, iad, nrt;
# east holds nrt and syd; west (weighted) holds fra and iad; far (failover) syd, then iad.
MORE_POOLS = """
[[edge]]
name = "syd"
ipv4 = "127.0.0.14"
ipv6 = "2001:db8:f::14"
latitude = -33.87
longitude = 151.21

[[pool]]
name = "east.example.test."
edges = ["nrt", "syd"]

[[pool]]
name = "west.example.test."
edges = ["fra", "iad"]
policy = "weighted"

[[pool]]
name = "far.example.test."
edges = ["syd", "iad"]
policy = "failover"
"""
CHANGED_EDGES = ["fra", "iad", "nrt", "syd"]


@pytest.fixture(scope="module")
def engines(geo_db: Path, key_file: Path) -> tuple[Any, ...]:
    """(config, locator, health, one long-lived Responder over them, the same config parsed
    again for reference responders)."""
    cfg = make_config(MORE_POOLS, key_file=key_file)
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    locator = GeoIPLocator(geo_db)
    cached = Responder(cfg, locator, health, clock=clock)
    return cfg, locator, health, cached, make_config(MORE_POOLS, key_file=key_file)


@st.composite
def pool_queries(draw: st.DrawFn) -> bytes:
    """Queries that reach the fast paths often: pool names and static ones, mostly with ECS."""
    names = ["www", "two", "all", "x.cdn", "geo", "static", "east", "west", "far"]
    name = mixed_case(draw, draw(st.sampled_from(names)))
    ecs, prefix = None, None
    if draw(st.integers(0, 3)):
        ecs = draw(st.sampled_from(["192.0.2.0", "198.51.100.0", "100.64.0.128", "2001:db8::"]))
        prefix = draw(st.sampled_from([0, 16, 24, 24, 25, 32] if ":" not in ecs else [0, 48, 56]))
    return query(
        f"{name}.example.test.",
        draw(st.sampled_from(["A", "AAAA"])),
        edns=draw(st.sampled_from([None, 0])) if ecs is None else 0,
        payload=draw(st.sampled_from([0, 512, 1232, 4096])),
        ecs=ecs,
        prefix=prefix,
        do=draw(st.booleans()),
        qid=draw(st.integers(0, 65535)),
        rd=draw(st.booleans()),
    )


@SETTINGS
@given(
    wire=queries() | pool_queries(),
    tail=st.none() | st.binary(min_size=3, max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=2),
    client=st.sampled_from(CLIENTS),
    tcp=st.booleans(),
    changes=st.lists(st.tuples(st.sampled_from(CHANGED_EDGES), st.integers(0, 4)), max_size=3),
    replicate=st.booleans(),
)
def test_fast_paths_answer_like_a_fresh_responder(
    engines: tuple[Any, ...],
    wire: bytes,
    tail: bytes | None,
    flips: list[tuple[int, int]],
    client: str,
    tcp: bool,
    changes: list[tuple[str, int]],
    replicate: bool,
) -> None:
    # One long-lived responder (every cache tier, the parsed-shape memo) against a new one per
    # query over the same locator and health state: byte for byte the same reply. The query is
    # asked, the health state changed (some edges, so some pools), the query asked again (from
    # the caches), and then with its last 3 octets replaced by `tail` (another /24 ECS address
    # when it ends with one). The health state lives as long as the responder, so changes and
    # queries interleave across examples; a change is made on the store directly or, as in a
    # worker, on a parent store whose snapshot the responder's replica store applies.
    # The reference shares nothing derived from health state with the cached responder:
    # selection keeps views per (Pool object, store), so it gets pools of its own (the config
    # parsed again) and a new store holding the current state.
    cfg, locator, health, cached, again = engines
    address = ipaddress.ip_address(client)

    def same(wire: bytes) -> None:
        now = HealthStore(again.pools, [e.name for e in again.edges])
        now.apply(health.snapshot())
        want = Responder(again, locator, now, clock=clock).respond(wire, address, tcp=tcp)
        assert cached.respond(wire, address, tcp=tcp) == want

    data = bytearray(wire)
    for pos, value in flips:
        data[pos % len(data)] = value
    same(bytes(data))
    store = health
    if replicate:
        store = HealthStore(cfg.pools, [e.name for e in cfg.edges])
        store.apply(health.snapshot())
    for edge, what in changes:
        if what == 0:
            store.set_drained(edge, not store.state(edge).drained)
        elif what == 1:
            store.set_up(edge, not store.state(edge).up)
        else:
            store.set_load(edge, (0.0, 0.75, 0.9)[what - 2])
    if replicate:
        health.apply(store.snapshot())
    same(bytes(data))
    if tail is not None and len(data) >= 16:
        same(bytes(data[:-3]) + tail)


CLIENT_COOKIE = bytes.fromhex("0123456789abcdef")


@SETTINGS
@given(
    wire=queries(),
    client=st.sampled_from(CLIENTS),
    tcp=st.booleans(),
    cookie_first=st.booleans(),
)
def test_a_cookie_changes_nothing_but_the_cookie(
    responder: Responder, wire: bytes, client: str, tcp: bool, cookie_first: bool
) -> None:
    """Differential: the reply to a query with a COOKIE option is the reply to the same
    query without it plus our cookie (the cookie path answers through the same caches),
    unless the cookie made it too big for UDP (then it is truncated)."""
    with_cookie = add_option(wire, 10, CLIENT_COOKIE)
    assume(with_cookie is not None and dns.message.from_wire(wire).edns == 0)
    assert with_cookie is not None
    address = ipaddress.ip_address(client)
    order = [with_cookie[0], wire] if cookie_first else [wire, with_cookie[0]]
    replies = dict(zip(order, [responder.respond(w, address, tcp=tcp) for w in order], strict=True))
    plain, cookied = replies[wire], replies[with_cookie[0]]
    assert plain is not None and cookied is not None
    reply = dns.message.from_wire(cookied)
    cookies = [o for o in reply.options if o.otype == dns.edns.OptionType.COOKIE]
    if not cookies:  # BADVERS: a cookie is read only with EDNS version 0
        assert cookied == plain
        return
    assert len(cookies) == 1 and cookies[0].to_wire()[:8] == CLIENT_COOKIE
    if reply.flags & dns.flags.TC and not dns.message.from_wire(plain).flags & dns.flags.TC:
        assert not tcp  # only the UDP size limit can have cut it
        return
    # Take the 28 octets of the option off the end and its length off the OPT's RDLENGTH.
    opt_start = _opt_offset(plain)
    expected_rdlen = int.from_bytes(plain[opt_start + 9 : opt_start + 11], "big") + 28
    assert cookied[opt_start + 9 : opt_start + 11] == expected_rdlen.to_bytes(2, "big")
    assert cookied[: opt_start + 9] == plain[: opt_start + 9]
    assert cookied[opt_start + 11 : -28] == plain[opt_start + 11 :]


def _opt_offset(reply: bytes) -> int:
    found = add_option(reply, 65001, b"")
    assert found is not None
    return found[1]
