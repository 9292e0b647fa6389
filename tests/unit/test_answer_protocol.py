"""Protocol behaviour of the sans-IO answer engine (gslb.answer.Responder): flags, rcodes,
negative answers, wildcards, delegations, CNAMEs, EDNS, truncation, malformed queries."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from gslb.answer import Responder
from gslb.models import EdgeState
from tests.unit.answer_support import (
    LONDON,
    Recorder,
    addresses,
    ask,
    build,
    make_config,
    query,
    rrs,
)


@pytest.fixture
def responder(geo_db: Path) -> Responder:
    return build(geo_db)[0]


def respond(r: Responder, wire: bytes, *, tcp: bool = False) -> bytes | None:
    return r.respond(wire, ipaddress.ip_address(LONDON), tcp=tcp)


# ---------------------------------------------------------------------- basics


def test_static_answer_is_authoritative(responder: Responder) -> None:
    m = ask(responder, query("static.example.test."))
    assert m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.AA and m.flags & dns.flags.QR
    assert rrs(m.answer) == ["static.example.test. 300 IN A 192.0.2.30"]
    assert m.id == 4242


def test_id_and_rd_are_copied(responder: Responder) -> None:
    with_rd = ask(responder, query("static.example.test.", qid=7))
    without_rd = ask(responder, query("static.example.test.", qid=8, rd=False))
    assert with_rd.id == 7 and with_rd.flags & dns.flags.RD
    assert without_rd.id == 8 and not without_rd.flags & dns.flags.RD
    assert not with_rd.flags & dns.flags.RA


@pytest.mark.parametrize(
    "name", ["StAtIc.ExAmPlE.tEsT.", "STATIC.EXAMPLE.TEST.", "static.example.test."]
)
def test_question_case_is_echoed_exactly(responder: Responder, name: str) -> None:
    # Ask in lower case first so later variants come from the cache and must be patched.
    respond(responder, query("static.example.test."))
    wire = query(name)
    out = respond(responder, wire)
    assert out is not None
    qlen = len(wire) - 12
    assert out[12 : 12 + qlen] == wire[12:]
    assert rrs(dns.message.from_wire(out).answer)[0].endswith("A 192.0.2.30")


def test_nxdomain_has_soa_with_negative_ttl(responder: Responder) -> None:
    m = ask(responder, query("nope.example.test."))
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert m.flags & dns.flags.AA
    assert not m.answer
    (soa,) = m.authority
    assert soa.rdtype == dns.rdatatype.SOA and str(soa.name) == "example.test."
    assert soa.ttl == 60  # min(zone TTL 3600, SOA MINIMUM 60)
    assert soa[0].serial == 7


def test_nodata_has_soa(responder: Responder) -> None:
    m = ask(responder, query("static.example.test.", "AAAA"))
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert not m.answer
    assert [rr.rdtype for rr in m.authority] == [dns.rdatatype.SOA]


@pytest.mark.parametrize(
    "name", ["deep.example.test.", "c.deep.example.test.", "b.c.deep.example.test."]
)
def test_empty_non_terminal_is_nodata_not_nxdomain(responder: Responder, name: str) -> None:
    m = ask(responder, query(name))
    assert m.rcode() == dns.rcode.NOERROR
    assert not m.answer and m.authority[0].rdtype == dns.rdatatype.SOA


def test_outside_our_zones_is_refused_without_aa(responder: Responder) -> None:
    m = ask(responder, query("www.example.com."))
    assert m.rcode() == dns.rcode.REFUSED
    assert not m.flags & dns.flags.AA
    assert not m.answer and not m.authority


def test_other_class_is_refused(responder: Responder) -> None:
    q = dns.message.make_query("static.example.test.", "A", rdclass=dns.rdataclass.CH)
    assert ask(responder, q.to_wire()).rcode() == dns.rcode.REFUSED


def test_second_zone(responder: Responder) -> None:
    m = ask(responder, query("second.test."))
    assert rrs(m.answer) == ["second.test. 3600 IN A 192.0.2.99"]
    nx = ask(responder, query("x.second.test."))
    assert nx.rcode() == dns.rcode.NXDOMAIN and str(nx.authority[0].name) == "second.test."


def test_zone_transfer_is_refused(responder: Responder) -> None:
    assert ask(responder, query("example.test.", "AXFR"), tcp=True).rcode() == dns.rcode.REFUSED


def test_unknown_opcode_is_notimp(responder: Responder) -> None:
    q = dns.message.make_query("static.example.test.", "A")
    q.set_opcode(dns.opcode.STATUS)
    m = ask(responder, q.to_wire())
    assert m.rcode() == dns.rcode.NOTIMP
    assert m.opcode() == dns.opcode.STATUS
    assert m.id == q.id


# ---------------------------------------------------------------------- CNAME and ANY


def test_cname_chain_is_followed_inside_the_zone(responder: Responder) -> None:
    m = ask(responder, query("chain1.example.test."))
    assert rrs(m.answer) == [
        "alias.example.test. 3600 IN CNAME static.example.test.",
        "chain1.example.test. 3600 IN CNAME chain2.example.test.",
        "chain2.example.test. 3600 IN CNAME alias.example.test.",
        "static.example.test. 300 IN A 192.0.2.30",
    ]
    assert m.flags & dns.flags.AA


def test_cname_loop_stops(responder: Responder) -> None:
    m = ask(responder, query("loop1.example.test."))
    assert m.rcode() == dns.rcode.NOERROR
    assert [str(r.name) for r in m.answer] == ["loop1.example.test.", "loop2.example.test."]


def test_cname_out_of_zone_is_not_chased(responder: Responder) -> None:
    m = ask(responder, query("out.example.test."))
    assert rrs(m.answer) == ["out.example.test. 3600 IN CNAME www.elsewhere.test."]
    assert not m.authority


def test_dangling_cname_gives_nxdomain_with_the_cname(responder: Responder) -> None:
    m = ask(responder, query("dangling.example.test."))
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert rrs(m.answer) == ["dangling.example.test. 3600 IN CNAME nothing.example.test."]
    assert m.authority[0].rdtype == dns.rdatatype.SOA


def test_cname_query_returns_the_cname_only(responder: Responder) -> None:
    m = ask(responder, query("alias.example.test.", "CNAME"))
    assert rrs(m.answer) == ["alias.example.test. 3600 IN CNAME static.example.test."]


def test_any_is_minimal(responder: Responder) -> None:
    static = ask(responder, query("static.example.test.", "ANY"))
    assert rrs(static.answer) == ["static.example.test. 300 IN A 192.0.2.30"]
    apex = ask(responder, query("example.test.", "ANY"))
    assert {r.rdtype for r in apex.answer} == {dns.rdatatype.NS}
    pool = ask(responder, query("www.example.test.", "ANY"))
    assert [r.rdtype for r in pool.answer] == [dns.rdatatype.A]
    ent = ask(responder, query("deep.example.test.", "ANY"))
    assert not ent.answer and ent.rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------------- wildcards


def test_wildcard_synthesis(responder: Responder) -> None:
    for name in ("x.wild.example.test.", "X.y.wild.example.test."):
        m = ask(responder, query(name))
        assert m.flags & dns.flags.AA
        (rrset,) = m.answer
        assert str(rrset.name).lower() == name.lower()
        assert [rd.address for rd in rrset] == ["192.0.2.40"]


def test_wildcard_nodata_for_missing_type(responder: Responder) -> None:
    m = ask(responder, query("x.wild.example.test.", "AAAA"))
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert m.authority[0].rdtype == dns.rdatatype.SOA


def test_no_wildcard_under_or_at_existing_names(responder: Responder) -> None:
    exists = ask(responder, query("exists.wild.example.test.", "TXT"))
    assert exists.rcode() == dns.rcode.NOERROR and not exists.answer
    below = ask(responder, query("a.exists.wild.example.test."))
    assert below.rcode() == dns.rcode.NXDOMAIN
    literal = ask(responder, query("*.wild.example.test.", "TXT"))
    assert rrs(literal.answer) == ['*.wild.example.test. 3600 IN TXT "wild"']
    ent = ask(responder, query("wild.example.test."))
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer


# ---------------------------------------------------------------------- delegation


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [("a.sub.example.test.", "A"), ("sub.example.test.", "NS"), ("ns.sub.example.test.", "A")],
)
def test_referral_below_the_apex(responder: Responder, name: str, rdtype: str) -> None:
    m = ask(responder, query(name, rdtype))
    assert m.rcode() == dns.rcode.NOERROR
    assert not m.flags & dns.flags.AA
    assert not m.answer
    assert rrs(m.authority) == [
        "sub.example.test. 3600 IN NS ns.elsewhere.test.",
        "sub.example.test. 3600 IN NS ns.sub.example.test.",
    ]
    assert rrs(m.additional) == ["ns.sub.example.test. 3600 IN A 192.0.2.54"]


def test_ds_at_the_cut_is_answered_by_the_parent(responder: Responder) -> None:
    m = ask(responder, query("sub.example.test.", "DS"))
    assert m.flags & dns.flags.AA
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert m.authority[0].rdtype == dns.rdatatype.SOA


def test_additional_addresses_for_ns_mx_srv(responder: Responder) -> None:
    ns = ask(responder, query("example.test.", "NS"))
    assert rrs(ns.additional) == [
        "ns1.example.test. 3600 IN A 192.0.2.53",
        "ns1.example.test. 3600 IN AAAA 2001:db8::53",
    ]
    mx = ask(responder, query("example.test.", "MX"))
    assert rrs(mx.additional) == ["mail.example.test. 3600 IN A 192.0.2.25"]
    srv = ask(responder, query("_sip._tcp.example.test.", "SRV"))
    assert rrs(srv.additional) == ["sip.example.test. 3600 IN AAAA 2001:db8::5060"]


# ---------------------------------------------------------------------- EDNS


def test_edns_reply_advertises_our_cap_and_echoes_do(responder: Responder) -> None:
    m = ask(responder, query("static.example.test.", edns=0, payload=4096, do=True))
    assert m.edns == 0
    assert m.payload == 1232
    assert m.ednsflags & dns.flags.DO
    plain = ask(responder, query("static.example.test.", edns=0))
    assert not plain.ednsflags & dns.flags.DO
    assert ask(responder, query("static.example.test.")).edns == -1


def test_unknown_edns_version_is_badvers(responder: Responder) -> None:
    m = ask(responder, query("static.example.test.", edns=1))
    assert m.rcode() == dns.rcode.BADVERS
    assert m.edns == 0
    assert not m.answer


def test_unknown_options_are_ignored_and_not_echoed(responder: Responder) -> None:
    q = dns.message.make_query(
        "static.example.test.", "A", use_edns=0, options=[dns.edns.GenericOption(65001, b"x")]
    )
    m = ask(responder, q.to_wire())
    assert m.rcode() == dns.rcode.NOERROR and m.answer
    assert m.options == ()


def test_truncation_over_udp(responder: Responder) -> None:
    wire = query("big1.example.test.", "TXT")
    out = respond(responder, wire)
    assert out is not None and len(out) <= 512
    m = dns.message.from_wire(out)
    assert m.flags & dns.flags.TC
    assert not m.answer
    assert out[12 : len(wire)] == wire[12:]
    small_edns = dns.message.from_wire(
        respond(responder, query("big1.example.test.", "TXT", edns=0, payload=600)) or b""
    )
    assert small_edns.flags & dns.flags.TC and small_edns.edns == 0
    big_edns = respond(responder, query("big1.example.test.", "TXT", edns=0, payload=4096))
    assert big_edns is not None and len(big_edns) <= 1232
    assert not dns.message.from_wire(big_edns).flags & dns.flags.TC


def test_no_truncation_over_tcp(responder: Responder) -> None:
    out = respond(responder, query("big1.example.test.", "TXT"), tcp=True)
    assert out is not None and len(out) > 1000
    m = dns.message.from_wire(out)
    assert not m.flags & dns.flags.TC
    assert len(m.answer[0]) == 3


# ---------------------------------------------------------------------- malformed input


def header(
    qid: int = 1, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x06static\x07example\x04test\x00\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"],
)
def test_no_header_is_dropped(responder: Responder, wire: bytes) -> None:
    assert respond(responder, wire) is None


def test_responses_are_dropped(responder: Responder) -> None:
    assert respond(responder, header(flags=0x8100) + QUESTION) is None


def formerr(responder: Responder, wire: bytes) -> dns.message.Message:
    out = respond(responder, wire)
    assert out is not None
    assert out[:2] == wire[:2]
    assert out[3] & 0x0F == dns.rcode.FORMERR
    assert out[2] & 0x80  # QR
    return dns.message.from_wire(out, continue_on_error=True)


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("qdcount 0", header(qd=0)),
        ("qdcount 2", header(qd=2) + QUESTION + QUESTION),
        ("label 64", header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"),
        ("name over 255", header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"),
        ("pointer in question", header() + b"\xc0\x0c\x00\x01\x00\x01"),
        ("truncated question", header() + QUESTION[:-2]),
        ("two OPT", header(ar=2) + QUESTION + OPT + OPT),
        ("OPT owner not root", header(ar=1) + QUESTION + b"\x01a" + OPT),
        ("truncated OPT", header(ar=1) + QUESTION + OPT[:-3]),
        ("trailing junk", header() + QUESTION + b"junk"),
        ("missing additional", header(ar=1) + QUESTION),
        ("bad option length", header(ar=1) + QUESTION + OPT[:-2] + b"\x00\x08\x00\x08\x00\x01\x18"),
    ],
)
def test_malformed_queries_get_formerr(responder: Responder, name: str, wire: bytes) -> None:
    formerr(responder, wire)


def test_formerr_echoes_a_parsed_question(responder: Responder) -> None:
    m = formerr(responder, header(ar=2) + QUESTION + OPT + OPT)
    assert [str(q.name) for q in m.question] == ["static.example.test."]


def test_opt_as_qtype_is_formerr(responder: Responder) -> None:
    assert ask(responder, query("static.example.test.", 41)).rcode() == dns.rcode.FORMERR


# ---------------------------------------------------------------------- failure containment


class BrokenHealth:
    """A HealthView whose state lookups fail: answering a pool must then SERVFAIL."""

    version = 1
    generations = (0, 1)

    def slot(self, pool: str) -> int:
        return 1

    def state(self, edge: str, pool: str | None = None) -> EdgeState:
        raise RuntimeError("health store unavailable")


def test_exception_while_answering_gives_servfail(geo_db: Path) -> None:
    from geo.locator import GeoIPLocator

    recorder = Recorder()
    r = Responder(make_config(), GeoIPLocator(geo_db), BrokenHealth(), observer=recorder)
    m = ask(r, query("www.example.test.", edns=0))
    assert m.rcode() == dns.rcode.SERVFAIL
    assert m.id == 4242 and [str(q.name) for q in m.question] == ["www.example.test."]
    assert m.edns == 0
    assert recorder.calls[-1]["rcode"] == dns.rcode.SERVFAIL
    # The responder keeps working for everything else.
    assert addresses(ask(r, query("static.example.test."))) == ["192.0.2.30"]


class FailingObserver:
    """An Observer whose sink fails (a query log on a broken pipe)."""

    def __init__(self) -> None:
        self.detailed = True
        self.tally: dict[object, int] = {}
        self.counts: list[int] = []
        self.calls = 0

    def answered(self, **kw: object) -> None:
        self.calls += 1
        raise BrokenPipeError("query log closed")

    def pool_miss(self, pool: str) -> None:
        raise BrokenPipeError("query log closed")

    def slot(self, key: object) -> int:
        return -1  # detailed: nothing is counted by slot


def test_failing_observer_never_costs_a_reply(geo_db: Path) -> None:
    from geo.locator import GeoIPLocator

    observer = FailingObserver()
    cfg = make_config()
    r = Responder(cfg, GeoIPLocator(geo_db), BrokenHealth(), observer=observer)
    bad_version = query("static.example.test.", edns=1)
    notify = bytearray(query("static.example.test."))
    notify[2] |= dns.opcode.NOTIFY << 3
    cases = [
        (query("static.example.test."), dns.rcode.NOERROR),
        (header(qd=2) + QUESTION + QUESTION, dns.rcode.FORMERR),
        (bytes(notify), dns.rcode.NOTIMP),
        (bad_version, dns.rcode.BADVERS),
        (query("www.example.test."), dns.rcode.SERVFAIL),  # BrokenHealth
    ]
    for wire, rcode in cases:
        calls = observer.calls
        m = ask(r, wire)
        assert m.rcode() == rcode
        assert observer.calls == calls + 1


# ---------------------------------------------------------------------- OPT on every reply


def opt_rr(options: bytes = b"", *, do: bool = False, version: int = 0) -> bytes:
    ttl = (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", 41, 4096, ttl, len(options)) + options


def ecs_opt(data: bytes) -> bytes:
    return struct.pack("!HH", 8, len(data)) + data


GOOD_ECS = ecs_opt(b"\x00\x01\x18\x00\xc0\x00\x02")
TXT_RR = b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x00\x00\x02\x01x"


@pytest.mark.parametrize(
    ("wire", "do"),
    [
        (header(ar=1) + QUESTION + opt_rr(ecs_opt(b"\x00\x01\x18\x05\xc0\x00\x02")), False),
        (header(ar=1) + QUESTION + opt_rr(ecs_opt(b"\x00\x03\x18\x00\xc0\x00\x02"), do=True), True),
        (header(ar=1) + QUESTION + opt_rr(GOOD_ECS + GOOD_ECS, do=True), True),
        (header(ar=1) + QUESTION + opt_rr(b"\x00\x08\x00\x08\x00\x01"), False),
        (header(ar=2) + QUESTION + opt_rr(GOOD_ECS) + opt_rr(), False),
        (header(ar=1) + QUESTION + opt_rr(do=True) + b"junk", True),
        (header(ar=2) + QUESTION + opt_rr() + TXT_RR[:-3], False),
    ],
    ids=[
        "ecs-scope",
        "ecs-family",
        "two-ecs",
        "truncated-option",
        "second-opt",
        "trailing-junk",
        "truncated-record-after-opt",
    ],
)
def test_formerr_after_a_parsed_opt_carries_opt(
    responder: Responder, wire: bytes, do: bool
) -> None:
    m = formerr(responder, wire)
    assert m.edns == 0
    assert m.payload == 1232  # ours, not the query's 4096
    assert m.options == ()  # no ECS echoed on an error
    assert bool(m.ednsflags & dns.flags.DO) == do
    assert [str(q.name) for q in m.question] == ["static.example.test."]


@pytest.mark.parametrize(
    "wire",
    [
        header(ar=1) + QUESTION + b"\x01a" + OPT,
        header(ar=1) + QUESTION + OPT[:-3],
        header(ar=1) + QUESTION + opt_rr()[:-1] + b"\x05abc",  # RDLENGTH past the end
        header(ar=1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01" + OPT,
        header() + QUESTION + b"junk",
    ],
    ids=["owner-not-root", "truncated-opt", "rdata-past-end", "bad-question", "no-opt"],
)
def test_formerr_without_a_parsed_opt_has_none(responder: Responder, wire: bytes) -> None:
    out = respond(responder, wire)
    assert out is not None and out[3] & 0x0F == dns.rcode.FORMERR
    assert out[10:12] == b"\0\0"  # ARCOUNT: no OPT


def test_badvers_carries_the_extended_rcode_in_opt(responder: Responder) -> None:
    out = respond(responder, header(ar=1) + QUESTION + opt_rr(GOOD_ECS, do=True, version=1))
    assert out is not None
    assert out[3] & 0x0F == 0  # the lower 4 bits of 16
    assert out[10:12] == b"\0\1"
    opt = out[12 + len(QUESTION) :]
    assert opt == b"\x00\x00\x29\x04\xd0" + b"\x01\x00\x80\x00" + b"\x00\x00"  # ext rcode 1, DO
    assert dns.message.from_wire(out).rcode() == dns.rcode.BADVERS


def test_servfail_carries_opt_with_do(geo_db: Path) -> None:
    from geo.locator import GeoIPLocator

    r = Responder(make_config(), GeoIPLocator(geo_db), BrokenHealth())
    m = ask(r, query("www.example.test.", edns=0, do=True))
    assert m.rcode() == dns.rcode.SERVFAIL
    assert m.edns == 0 and m.ednsflags & dns.flags.DO


# ---------------------------------------------------------------------- opcodes


def with_opcode(wire: bytes, opcode: int) -> bytes:
    return wire[:2] + bytes(((wire[2] & 0x87) | (opcode << 3),)) + wire[3:]


OTHER_OPCODES = [dns.opcode.IQUERY, dns.opcode.STATUS, 3, dns.opcode.NOTIFY, dns.opcode.UPDATE]
OTHER_OPCODES += [6, 7, 15]


@pytest.mark.parametrize("opcode", OTHER_OPCODES)
@pytest.mark.parametrize(
    ("wire", "echoed"),
    [
        (header() + QUESTION, True),
        (header(qd=0), False),
        (header(qd=2) + QUESTION + QUESTION, False),
        (header(qd=1) + b"\xc0\x0c\x00\x01\x00\x01", False),  # a pointer: not echoed
        (header(qd=3) + QUESTION, False),  # QDCOUNT past the end
        (header() + QUESTION + b"junk", True),
    ],
    ids=["one", "none", "two", "pointer", "truncated", "trailing-junk"],
)
def test_other_opcodes_get_notimp_whatever_the_question_count(
    responder: Responder, opcode: int, wire: bytes, echoed: bool
) -> None:
    wire = with_opcode(wire, opcode)
    out = respond(responder, wire)
    assert out is not None
    assert out[:2] == wire[:2]
    assert out[2] & 0x80 and (out[2] >> 3) & 0xF == opcode
    assert out[3] & 0x0F == dns.rcode.NOTIMP
    if echoed:
        assert out[4:6] == b"\0\1" and out[12:] == QUESTION
    else:
        assert out[4:6] == b"\0\0" and len(out) == 12


def notimp(responder: Responder, wire: bytes, opcode: int) -> bytes:
    """The NOTIMP reply to `wire` sent with `opcode`, checked byte by byte (dnspython reads
    an UPDATE reply's question as a zone section and rejects one that is not SOA)."""
    wire = with_opcode(wire, opcode)
    out = respond(responder, wire)
    assert out is not None and out[:2] == wire[:2]
    assert out[2] & 0x80 and (out[2] >> 3) & 0xF == opcode
    assert out[3] & 0x0F == dns.rcode.NOTIMP
    assert out[6:10] == b"\0\0\0\0"  # no answer, no authority
    return out


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE])
def test_notimp_carries_opt_when_the_query_has_one(responder: Responder, opcode: int) -> None:
    for wire, do in (
        (query("static.example.test.", edns=0, do=True), True),
        (query("static.example.test.", edns=1), False),  # NOTIMP, not BADVERS
        (query("www.example.test.", ecs="192.0.2.0"), False),
        (header(qd=0, ar=1) + opt_rr(do=True), True),
        (header(qd=2, ar=1) + QUESTION + QUESTION + opt_rr(do=True), True),
    ):
        out = notimp(responder, wire, opcode)
        assert out[10:12] == b"\0\1"
        # our payload size, no extended rcode, version 0, the DO bit, no options
        assert out[-11:] == b"\x00\x00\x29\x04\xd0\x00\x00" + (b"\x80" if do else b"\x00") + bytes(
            3
        )


def test_no_cache_answers_another_opcode(responder: Responder) -> None:
    """Each cache tier and the parsed-shape memo key on the query bytes with the header flags:
    a NOTIFY or UPDATE that repeats a cached QUERY byte for byte (or in shape, with another
    ECS address) still gets NOTIMP, and the QUERY is still answered afterwards."""
    plain = query("static.example.test.")
    pool = query("www.example.test.", ecs="192.0.2.0")
    other_place = query("www.example.test.", ecs="192.0.2.0").replace(
        b"\xc0\x00\x02", b"\xc6\x33\x64"
    )
    for wire in (plain, pool, plain, pool):  # the second round comes from the caches
        assert ask(responder, wire).rcode() == dns.rcode.NOERROR
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE):
        for wire in (plain, pool, other_place):
            notimp(responder, wire, opcode)
    assert addresses(ask(responder, plain)) == ["192.0.2.30"]
    assert ask(responder, other_place).answer
