"""Pool answers from the answer engine: geo decisions, EDNS Client Subnet, address families,
health changes reaching cached answers, and the observer hook."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from gslb.answer import Responder
from gslb.health import HealthStore
from tests.unit.answer_support import (
    FRANKFURT6,
    LONDON,
    NEW_YORK,
    TOKYO,
    UNKNOWN,
    Recorder,
    addresses,
    ask,
    build,
    ecs_option,
    query,
    rrs,
)

FRA, IAD, NRT = "127.0.0.11", "127.0.0.12", "127.0.0.13"


@pytest.fixture
def setup(geo_db: Path) -> tuple[Responder, HealthStore, Recorder]:
    recorder = Recorder()
    responder, health = build(geo_db, recorder)
    return responder, health, recorder


@pytest.mark.parametrize(
    ("subnet", "expected"), [(LONDON, FRA), (NEW_YORK, IAD), (TOKYO, NRT), ("192.0.2.200", FRA)]
)
def test_ecs_decides_and_sets_scope(
    setup: tuple[Responder, HealthStore, Recorder], subnet: str, expected: str
) -> None:
    responder = setup[0]
    m = ask(responder, query("www.example.test.", ecs=subnet), client=TOKYO)
    assert addresses(m) == [expected]
    assert m.flags & dns.flags.AA
    assert m.answer[0].ttl == 30
    opt = ecs_option(m)
    assert opt is not None
    assert opt.srclen == 24 and opt.scopelen == 24  # fixture networks are /24s
    assert ipaddress.ip_network(f"{opt.address}/24") == ipaddress.ip_network(
        f"{subnet}/24", strict=False
    )


def test_resolver_address_is_used_without_ecs(
    setup: tuple[Responder, HealthStore, Recorder],
) -> None:
    responder = setup[0]
    for client, expected in ((LONDON, FRA), (NEW_YORK, IAD), (TOKYO, NRT)):
        m = ask(responder, query("www.example.test.", edns=0), client=client)
        assert addresses(m) == [expected]
        assert ecs_option(m) is None


def test_ipv6_and_mapped_clients(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder = setup[0]
    assert addresses(ask(responder, query("www.example.test."), client=FRANKFURT6)) == [FRA]
    assert addresses(ask(responder, query("www.example.test."), client="::ffff:" + TOKYO)) == [NRT]
    m = ask(
        responder, query("www.example.test.", ecs="2001:db8:1234:5600::", prefix=56), client=TOKYO
    )
    assert addresses(m) == [FRA]
    opt = ecs_option(m)
    assert opt is not None and opt.srclen == 56 and opt.scopelen == 32


def test_long_source_prefix_is_capped_but_echoed(
    setup: tuple[Responder, HealthStore, Recorder],
) -> None:
    responder = setup[0]
    m = ask(responder, query("www.example.test.", ecs="198.51.100.77", prefix=32), client=TOKYO)
    assert addresses(m) == [IAD]
    opt = ecs_option(m)
    assert opt is not None
    assert (opt.address, opt.srclen, opt.scopelen) == ("198.51.100.77", 32, 24)


def test_scope_never_claims_more_than_the_capped_prefix_the_decision_saw(
    setup: tuple[Responder, HealthStore, Recorder],
) -> None:
    # The fixture splits 100.64.0.0/24 into Sydney .0/25 and Auckland .128/25. A /32 in
    # Auckland is looked up as 100.64.0.0 (the /24 cap): Sydney's /25. Scope /25 would tell
    # the resolver the answer holds for .128/25 too; the decision only saw the /24.
    responder = setup[0]
    m = ask(responder, query("www.example.test.", ecs="100.64.0.200", prefix=32), client=TOKYO)
    assert addresses(m) == [NRT]
    opt = ecs_option(m)
    assert opt is not None
    assert (opt.address, opt.srclen, opt.scopelen) == ("100.64.0.200", 32, 24)
    m = ask(responder, query("www.example.test.", ecs="100.64.0.0", prefix=25), client=TOKYO)
    assert ecs_option(m).scopelen == 24  # type: ignore[union-attr]


def test_scope_zero_when_not_tailored(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder = setup[0]
    unknown = ask(responder, query("www.example.test.", ecs=UNKNOWN), client=TOKYO)
    assert len(addresses(unknown)) == 1
    assert ecs_option(unknown).scopelen == 0  # type: ignore[union-attr]
    every = ask(responder, query("all.example.test.", ecs=LONDON))
    assert addresses(every) == [FRA, IAD, NRT]
    assert every.answer[0].ttl == 20
    assert ecs_option(every).scopelen == 0  # type: ignore[union-attr]
    static = ask(responder, query("static.example.test.", ecs=LONDON))
    assert ecs_option(static).scopelen == 0  # type: ignore[union-attr]
    nx = ask(responder, query("nope.example.test.", ecs=LONDON))
    assert nx.rcode() == dns.rcode.NXDOMAIN and ecs_option(nx).scopelen == 0  # type: ignore[union-attr]


def test_source_prefix_zero_uses_the_resolver_with_scope_zero(
    setup: tuple[Responder, HealthStore, Recorder],
) -> None:
    responder = setup[0]
    m = ask(responder, query("www.example.test.", ecs="0.0.0.0", prefix=0), client=NEW_YORK)
    assert addresses(m) == [IAD]
    opt = ecs_option(m)
    assert opt is not None and (opt.srclen, opt.scopelen) == (0, 0)


def test_answers_count_and_wildcard_pool(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder = setup[0]
    two = ask(responder, query("two.example.test.", ecs=LONDON))
    assert len(addresses(two)) == 2 and FRA in addresses(two)
    cdn = ask(responder, query("img.CDN.example.test.", ecs=TOKYO))
    assert addresses(cdn) == [NRT]
    assert str(cdn.answer[0].name) == "img.CDN.example.test."


def test_cname_into_a_pool_is_tailored(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder = setup[0]
    m = ask(responder, query("geo.example.test.", ecs=NEW_YORK))
    assert rrs(m.answer) == [
        "geo.example.test. 3600 IN CNAME www.example.test.",
        f"www.example.test. 30 IN A {IAD}",
    ]
    assert ecs_option(m).scopelen == 24  # type: ignore[union-attr]


def test_address_families(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder = setup[0]
    # Tokyo's nearest edge has no IPv6: AAAA comes from the nearest edge that has one.
    aaaa = ask(responder, query("www.example.test.", "AAAA", ecs=TOKYO))
    assert addresses(aaaa) == ["2001:db8:f::11"]
    none = ask(responder, query("noaaaa.example.test.", "AAAA"))
    assert none.rcode() == dns.rcode.NOERROR and not none.answer
    assert none.authority[0].rdtype == dns.rdatatype.SOA
    mixed_a = ask(responder, query("mixed.example.test."))
    assert not mixed_a.answer and mixed_a.rcode() == dns.rcode.NOERROR
    mixed_txt = ask(responder, query("mixed.example.test.", "TXT"))
    assert rrs(mixed_txt.answer) == ['mixed.example.test. 3600 IN TXT "beside a pool"']


def test_health_changes_reach_cached_answers(
    setup: tuple[Responder, HealthStore, Recorder],
) -> None:
    responder, health, _ = setup
    ecs_query = query("www.example.test.", ecs=LONDON)
    plain_query = query("www.example.test.")
    assert addresses(ask(responder, ecs_query)) == [FRA]
    assert addresses(ask(responder, plain_query, client=LONDON)) == [FRA]
    health.set_up("fra", False)
    assert addresses(ask(responder, ecs_query)) == [IAD]  # London: Ashburn is next nearest
    assert addresses(ask(responder, plain_query, client=LONDON)) == [IAD]
    health.set_up("fra", True)
    health.set_drained("iad", True)
    assert addresses(ask(responder, ecs_query)) == [FRA]
    assert addresses(ask(responder, query("www.example.test.", ecs=NEW_YORK))) == [FRA]


def test_every_member_down_falls_back_to_all(
    setup: tuple[Responder, HealthStore, Recorder],
) -> None:
    responder, health, _ = setup
    for edge in ("fra", "iad", "nrt"):
        health.set_up(edge, False)
    m = ask(responder, query("www.example.test.", ecs=LONDON))
    assert m.rcode() == dns.rcode.NOERROR
    assert addresses(m) == [FRA, IAD, NRT]  # the fallback set: every member
    assert ecs_option(m).scopelen == 0  # type: ignore[union-attr]


def test_cached_answers_patch_id_and_case(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder = setup[0]
    first = ask(responder, query("www.example.test.", ecs=TOKYO, qid=1))
    wire = query("WwW.ExAmPlE.TeSt.", ecs="203.0.113.200", qid=2)
    out = responder.respond(wire, ipaddress.ip_address(LONDON), tcp=False)
    assert out is not None
    again = dns.message.from_wire(out)
    assert again.id == 2 and first.id == 1
    assert str(again.question[0].name) == "WwW.ExAmPlE.TeSt."
    assert addresses(again) == addresses(first) == [NRT]
    assert ecs_option(again).address == "203.0.113.0"  # type: ignore[union-attr]


def test_observer_sees_every_reply(setup: tuple[Responder, HealthStore, Recorder]) -> None:
    responder, _, recorder = setup
    wire = query("www.example.test.", ecs=NEW_YORK)
    for _ in range(3):  # the 2nd and 3rd come from the caches
        ask(responder, wire, client=TOKYO)
    assert len(recorder.calls) == 3
    for call in recorder.calls:
        assert call == {
            "qname": "www.example.test.",
            "qtype": 1,
            "rcode": 0,
            "pool": "www.example.test.",
            "edges": ("iad",),
            "client": TOKYO,
            "ecs": "198.51.100.0/24",
        }
    ask(responder, query("static.example.test."))
    ask(responder, query("static.example.test."))
    assert recorder.calls[-1]["pool"] is None and recorder.calls[-1]["edges"] == ()
    assert recorder.calls[-1]["qname"] == "static.example.test."


def test_truncated_pool_answer_over_udp(geo_db: Path) -> None:
    responder, _ = build(geo_db)
    # 3 A records always fit in 512 octets; a TC reply would have no answer.
    m = ask(responder, query("all.example.test."))
    assert not m.flags & dns.flags.TC and len(addresses(m)) == 3


@pytest.mark.parametrize("drained", [(), ("fra",), ("fra", "iad", "nrt")])
def test_template_answers_are_byte_identical_to_whole_renders(
    geo_db: Path, drained: tuple[str, ...]
) -> None:
    # Pool answers are copied from a per-shape template with the addresses written in; a
    # responder whose templates are disabled renders every answer with dnslib. Same bytes.
    fast, fast_health = build(geo_db)
    slow, slow_health = build(geo_db)
    slow._template = lambda *args: (b"", None)  # type: ignore[method-assign]
    for name in drained:
        fast_health.set_drained(name, True)
        slow_health.set_drained(name, True)
    names = ["www", "two", "all", "geo", "noaaaa", "mixed", "x.cdn", "WwW"]
    subnets = [None, LONDON, NEW_YORK, TOKYO, "192.0.2.200", FRANKFURT6, UNKNOWN]
    for name in names:
        for rdtype in ("A", "AAAA"):
            for subnet in subnets:
                for tcp in (False, True):
                    wire = query(f"{name}.example.test.", rdtype, ecs=subnet, edns=0)
                    client = ipaddress.ip_address(TOKYO)
                    a = fast.respond(wire, client, tcp=tcp)
                    b = slow.respond(wire, client, tcp=tcp)
                    assert a == b, (name, rdtype, subnet, tcp)
    small = query("all.example.test.", "A", edns=0, payload=512)
    assert fast.respond(small, ipaddress.ip_address(LONDON), tcp=False) == slow.respond(
        small, ipaddress.ip_address(LONDON), tcp=False
    )
