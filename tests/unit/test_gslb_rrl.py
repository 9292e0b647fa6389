"""Response rate limiting as pure code: token buckets per client network and response class,
slip, exemptions, the bounded table, and the truncated reply, on replies built by dnspython."""

from __future__ import annotations

import ipaddress
import re

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gslb.config import ConfigError, RrlConfig, parse_config
from gslb.rrl import Action, RateLimiter, truncated

A = ipaddress.ip_address("192.0.2.7")
A_NEIGHBOUR = ipaddress.ip_address("192.0.2.200")  # same /24
B = ipaddress.ip_address("198.51.100.7")
V6 = ipaddress.ip_address("2001:db8:0:1::1")
V6_NEIGHBOUR = ipaddress.ip_address("2001:db8:0:ff::2")  # same /56
V6_OTHER = ipaddress.ip_address("2001:db8:0:100::1")  # next /56


def reply(
    name: str = "www.example.test.", qtype: str = "A", rcode: int = 0, answer: bool = True
) -> bytes:
    query = dns.message.make_query(name, qtype)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if answer and rcode == 0:
        response.answer.append(dns.rrset.from_text(name, 60, "IN", qtype, _rdata(qtype)))
    wire: bytes = response.to_wire()
    return wire


def _rdata(qtype: str) -> str:
    return {"A": "192.0.2.1", "AAAA": "2001:db8::1", "TXT": '"x"'}[qtype]


def limiter(**kw: object) -> RateLimiter:
    return RateLimiter(RrlConfig(enabled=True, **kw))  # type: ignore[arg-type]


def actions(rl: RateLimiter, client: object, wire: bytes, n: int, now: float = 0.0) -> list[str]:
    return [rl.check(client, wire, now).value for _ in range(n)]  # type: ignore[arg-type]


def test_a_burst_then_every_second_limited_reply_slips() -> None:
    rl = limiter(rate=3, slip=2)
    assert actions(rl, A, reply(), 9) == ["send"] * 3 + ["drop", "slip"] * 3


def test_slip_0_drops_all_and_slip_1_truncates_all() -> None:
    assert actions(limiter(rate=1, slip=0), A, reply(), 4) == ["send"] + ["drop"] * 3
    assert actions(limiter(rate=1, slip=1), A, reply(), 4) == ["send"] + ["slip"] * 3


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    rl = limiter(rate=2, burst=4)
    wire = reply()
    assert actions(rl, A, wire, 5, now=0.0).count("send") == 4
    assert actions(rl, A, wire, 3, now=1.0).count("send") == 2  # 1 s at 2/s
    assert actions(rl, A, wire, 10, now=100.0).count("send") == 4  # capped at the burst


def test_a_network_shares_a_bucket_and_other_networks_do_not() -> None:
    rl = limiter(rate=2)
    wire = reply()
    assert actions(rl, A, wire, 2) == ["send", "send"]
    assert rl.check(A_NEIGHBOUR, wire, 0.0) is not Action.SEND
    assert rl.check(B, wire, 0.0) is Action.SEND
    assert actions(rl, V6, wire, 2) == ["send", "send"]
    assert rl.check(V6_NEIGHBOUR, wire, 0.0) is not Action.SEND
    assert rl.check(V6_OTHER, wire, 0.0) is Action.SEND


def test_prefix_lengths_are_configurable() -> None:
    rl = limiter(rate=1, ipv4_prefix=32, ipv6_prefix=64)
    wire = reply()
    assert rl.check(A, wire, 0.0) is Action.SEND
    assert rl.check(A_NEIGHBOUR, wire, 0.0) is Action.SEND
    assert rl.check(V6, wire, 0.0) is Action.SEND
    assert rl.check(V6_NEIGHBOUR, wire, 0.0) is Action.SEND


def test_response_classes() -> None:
    rl = limiter(rate=1)
    # Answers: per name and type, whatever the case of the name.
    assert rl.check(A, reply("www.example.test."), 0.0) is Action.SEND
    assert rl.check(A, reply("WWW.Example.TEST."), 0.0) is not Action.SEND
    assert rl.check(A, reply("www.example.test.", "AAAA"), 0.0) is Action.SEND
    assert rl.check(A, reply("static.example.test."), 0.0) is Action.SEND
    # NODATA: per name, apart from the answers for that name.
    assert rl.check(A, reply("www.example.test.", "TXT", answer=False), 0.0) is Action.SEND
    assert rl.check(A, reply("www.example.test.", "MX", answer=False), 0.0) is not Action.SEND
    # Every NXDOMAIN of a network in one bucket: a random-subdomain flood is one flood.
    nx = dns.rcode.NXDOMAIN
    assert rl.check(A, reply("a1.example.test.", rcode=nx), 0.0) is Action.SEND
    assert rl.check(A, reply("b2.example.test.", rcode=nx), 0.0) is not Action.SEND
    # Errors likewise, in a bucket of their own.
    assert rl.check(A, reply("x.other.", rcode=dns.rcode.REFUSED), 0.0) is Action.SEND
    assert rl.check(A, reply("y.other.", rcode=dns.rcode.SERVFAIL), 0.0) is not Action.SEND


def test_exempt_networks_are_never_limited() -> None:
    rl = limiter(rate=1, exempt=(ipaddress.ip_network("192.0.2.0/28"),))
    wire = reply()
    assert actions(rl, A, wire, 50) == ["send"] * 50
    assert actions(rl, A_NEIGHBOUR, wire, 2) == ["send", "drop"]  # outside the /28
    assert len(rl) == 1  # the exempt client left no bucket


def test_the_table_is_bounded_idle_buckets_go_first() -> None:
    rl = limiter(rate=1, table_size=16)
    wire = reply()
    busy = ipaddress.ip_address("203.0.113.1")
    assert actions(rl, busy, wire, 2, now=0.0) == ["send", "drop"]
    for i in range(200):  # many networks, one reply each: their buckets soon refill
        rl.check(ipaddress.ip_address(f"10.{i}.0.1"), wire, now=float(i))
        assert len(rl) <= 16
    # A network still over its rate when the table fills is kept while idle ones go.
    rl = limiter(rate=1, table_size=16)
    assert actions(rl, busy, wire, 5, now=0.0)[0] == "send"
    for i in range(15):
        rl.check(ipaddress.ip_address(f"10.{i}.0.1"), wire, now=0.5)
    assert rl.check(busy, wire, 0.6) is not Action.SEND  # still flooded: no tokens
    rl.check(ipaddress.ip_address("10.200.0.1"), wire, now=0.6)  # the table is full
    assert len(rl) <= 16
    assert rl.check(busy, wire, 0.6) is not Action.SEND


def test_runts_are_passed_through() -> None:
    assert limiter(rate=1).check(A, b"\x12\x34", 0.0) is Action.SEND


def test_truncated_keeps_id_question_and_rcode_and_sets_tc() -> None:
    wire = reply("www.example.test.", "A")
    cut = dns.message.from_wire(truncated(wire))
    full = dns.message.from_wire(wire)
    assert cut.id == full.id
    assert cut.flags & dns.flags.TC
    assert cut.flags & dns.flags.QR
    assert cut.question == full.question
    assert not cut.answer and not cut.authority and not cut.additional
    nx = dns.message.from_wire(truncated(reply("nx.example.test.", rcode=dns.rcode.NXDOMAIN)))
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.TC


@given(st.binary(max_size=80))
def test_any_bytes_get_a_decision_and_a_header_sized_truncation(data: bytes) -> None:
    rl = limiter(rate=1)
    assert isinstance(rl.check(A, data, 0.0), Action)
    if len(data) >= 12:
        cut = truncated(data)
        assert len(cut) >= 12 and cut[2] & 0x02
        assert cut[:2] == data[:2]


ZONE = """
[[zone]]
origin = "example.test."
soa = { mname = "ns1", rname = "hostmaster" }
records = ["@ NS ns1", "ns1 A 192.0.2.53"]
"""


def test_config_is_validated_with_file_and_key() -> None:
    ok = parse_config(
        '[rrl]\nenabled = true\nrate = 5\nslip = 1\nexempt = ["10.0.0.0/8", "fd00::/8"]\n' + ZONE,
        "g.toml",
    )
    assert ok.rrl.enabled and ok.rrl.rate == 5.0 and ok.rrl.slip == 1
    assert [str(n) for n in ok.rrl.exempt] == ["10.0.0.0/8", "fd00::/8"]
    assert parse_config(ZONE, "g.toml").rrl == RrlConfig()
    for text, key in [
        ("[rrl]\nrate = 0\n", "rrl.rate"),
        ("[rrl]\nslip = 11\n", "rrl.slip"),
        ("[rrl]\nipv4_prefix = 33\n", "rrl.ipv4_prefix"),
        ('[rrl]\nexempt = ["10.0.0.0/33"]\n', "rrl.exempt[0]"),
        ("[rrl]\nexempt = [10]\n", "rrl.exempt[0]"),
        ("[rrl]\nburst = 0.5\n", "rrl.burst"),
        ("[rrl]\nwindow = 15\n", "rrl.window"),
    ]:
        with pytest.raises(ConfigError, match=rf"^g\.toml: {re.escape(key)}: "):
            parse_config(text + ZONE, "g.toml")


def _signed_denial(name: str, types: str) -> bytes:
    """A NOERROR reply with no answer, the zone's SOA and an NSEC at `name` (RFC 9824)."""
    query = dns.message.make_query(name, "A", want_dnssec=True)
    response = dns.message.make_response(query)
    response.authority.append(
        dns.rrset.from_text("example.test.", 300, "IN", "SOA", "ns1. h. 1 2 3 4 300")
    )
    response.authority.append(dns.rrset.from_text(name, 300, "IN", "NSEC", f"\\000.{name} {types}"))
    wire: bytes = response.to_wire()
    return wire


def test_a_signed_nxdomain_counts_with_the_nxdomains() -> None:
    rl = limiter(rate=1)
    nxname = "RRSIG NSEC TYPE128"  # RFC 9824 compact denial: the name does not exist
    assert rl.check(A, _signed_denial("a1.example.test.", nxname), 0.0) is Action.SEND
    assert rl.check(A, _signed_denial("b2.example.test.", nxname), 0.0) is not Action.SEND
    assert rl.check(A, reply("c3.example.test.", rcode=dns.rcode.NXDOMAIN), 0.0) is not (
        Action.SEND
    )
    # NODATA (the name exists, other types): per name, as unsigned.
    nodata = "A RRSIG NSEC"
    assert rl.check(A, _signed_denial("d4.example.test.", nodata), 0.0) is Action.SEND
    assert rl.check(A, _signed_denial("e5.example.test.", nodata), 0.0) is Action.SEND
    assert rl.check(A, _signed_denial("e5.example.test.", nodata), 0.0) is not Action.SEND
