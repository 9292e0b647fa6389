"""Shared set-up for the answer-engine unit tests: a test config, a real GeoIP locator over
the fixture database, a real HealthStore, and dnspython to build queries and read replies."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from geo.locator import GeoIPLocator
from gslb.answer import Responder
from gslb.config import GslbConfig, parse_config
from gslb.health import HealthStore

CONFIG = """
[server]
max_udp_payload = 1232

[[zone]]
origin = "example.test."
ttl = 3600
soa = { mname = "ns1", rname = "hostmaster", serial = 7, minimum = 60 }
records = [
  "@            NS    ns1",
  "@            NS    ns2.elsewhere.test.",
  "ns1          A     192.0.2.53",
  "ns1          AAAA  2001:db8::53",
  "@            MX    10 mail",
  "@            MX    20 mx.elsewhere.test.",
  "mail         A     192.0.2.25",
  "@            TXT   \\"hello world\\"",
  "_sip._tcp    SRV   10 60 5060 sip",
  "sip          AAAA  2001:db8::5060",
  "static  300  A     192.0.2.30",
  "static       TXT   \\"static text\\"",
  "alias        CNAME static",
  "chain1       CNAME chain2",
  "chain2       CNAME alias",
  "loop1        CNAME loop2",
  "loop2        CNAME loop1",
  "out          CNAME www.elsewhere.test.",
  "dangling     CNAME nothing",
  "geo          CNAME www",
  "*.wild       A     192.0.2.40",
  "*.wild       TXT   \\"wild\\"",
  "exists.wild  A     192.0.2.41",
  "a.b.c.deep   A     192.0.2.42",
  "sub          NS    ns.sub",
  "sub          NS    ns.elsewhere.test.",
  "ns.sub       A     192.0.2.54",
  "big1         TXT   \\"XXX\\" \\"YYY\\"",
  "big1         TXT   \\"ZZZ\\" \\"VVV\\"",
  "big1         TXT   \\"WWW\\"",
]

[[zone]]
origin = "second.test."
soa = { mname = "ns1.example.test.", rname = "hostmaster.example.test." }
records = ["@ NS ns1.example.test.", "@ A 192.0.2.99"]

[[edge]]
name = "fra"
ipv4 = "127.0.0.11"
ipv6 = "2001:db8:f::11"
latitude = 50.11
longitude = 8.68

[[edge]]
name = "iad"
ipv4 = "127.0.0.12"
ipv6 = "2001:db8:f::12"
latitude = 39.04
longitude = -77.49

[[edge]]
name = "nrt"
ipv4 = "127.0.0.13"
latitude = 35.68
longitude = 139.69

[[edge]]
name = "v6only"
ipv6 = "2001:db8:f::99"
latitude = 0.0
longitude = 0.0

[[pool]]
name = "www.example.test."
edges = ["fra", "iad", "nrt"]
ttl = 30

[[pool]]
name = "all.example.test."
edges = ["fra", "iad", "nrt"]
policy = "all"
ttl = 20

[[pool]]
name = "two.example.test."
edges = ["fra", "iad", "nrt"]
answers = 2

[[pool]]
name = "noaaaa.example.test."
edges = ["nrt"]

[[pool]]
name = "*.cdn.example.test."
edges = ["fra", "iad", "nrt"]

[[pool]]
name = "mixed.example.test."
edges = ["v6only"]
"""

LONDON = "192.0.2.1"
NEW_YORK = "198.51.100.7"
TOKYO = "203.0.113.9"
FRANKFURT6 = "2001:db8::1"
UNKNOWN = "10.1.2.3"


def make_config(
    extra: str = "", *, key_file: Path | None = None, records: tuple[str, ...] = ()
) -> GslbConfig:
    """The test config, with `extra` (TOML tables: more edges, pools) appended; with
    `key_file`, example.test is signed with that key; `records` are added to example.test."""
    # The mixed pool's name carries static MX/TXT beside it: allowed.
    text = CONFIG + extra
    if key_file is not None:
        text = text.replace(
            "minimum = 60 }\n", f"minimum = 60 }}\ndnssec = {{ key_file = {str(key_file)!r} }}\n", 1
        )
    for line in records:
        text = text.replace("records = [\n", f"records = [\n  {line!r},\n", 1)
    text = text.replace(
        '"a.b.c.deep   A     192.0.2.42",',
        '"a.b.c.deep   A     192.0.2.42",\n  "mixed TXT \\"beside a pool\\"",',
    )
    for mark in ("XXX", "YYY", "ZZZ", "VVV", "WWW"):
        text = text.replace(mark, mark[0].lower() * 200)
    return parse_config(text, "test.toml", base=Path("."))


class Recorder:
    """A real Observer that keeps what it is told (detailed: every reply through answered)."""

    def __init__(self) -> None:
        self.detailed = True
        self.tally: dict[Any, int] = {}
        self.counts: list[int] = []
        self.calls: list[dict[str, Any]] = []
        self.misses: list[str] = []  # pools whose answer no cache held, in order

    def answered(self, **kw: Any) -> None:
        self.calls.append(kw)

    def pool_miss(self, pool: str) -> None:
        self.misses.append(pool)

    def slot(self, key: Any) -> int:
        return -1  # detailed: nothing is counted by slot


def build(geo_db: Path, observer: Recorder | None = None) -> tuple[Responder, HealthStore]:
    cfg = make_config()
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    locator = GeoIPLocator(geo_db)
    return Responder(cfg, locator, health, observer=observer), health


def query(
    name: str,
    rdtype: str | int = "A",
    *,
    edns: int | None = None,
    payload: int = 1232,
    ecs: str | None = None,
    prefix: int | None = None,
    do: bool = False,
    qid: int = 4242,
    rd: bool = True,
) -> bytes:
    options = []
    if ecs is not None:
        if prefix is None:
            prefix = 24 if ":" not in ecs else 56
        options.append(dns.edns.ECSOption(ecs, prefix))
        if edns is None:
            edns = 0
    q = dns.message.make_query(
        dns.name.from_text(name),
        dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype,
        use_edns=edns if edns is not None else False,
        payload=payload,
        options=options,
        want_dnssec=do,
        id=qid,
    )
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def ask(
    responder: Responder, wire: bytes, client: str = LONDON, *, tcp: bool = False
) -> dns.message.Message:
    out = responder.respond(wire, ipaddress.ip_address(client), tcp=tcp)
    assert out is not None
    return dns.message.from_wire(out)


def rrs(section: list[Any]) -> list[str]:
    """Each record as "owner ttl IN type rdata", sorted."""
    return sorted(line for rrset in section for line in rrset.to_text().splitlines())


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype in (1, 28) for rd in rrset)


def ecs_option(msg: dns.message.Message) -> dns.edns.ECSOption | None:
    for opt in msg.options:
        if isinstance(opt, dns.edns.ECSOption):
            return opt
    return None
