"""DNSSEC online signing (gslb.dnssec through the Responder): every signed reply is checked
with dnspython's validator against the zone's DNSKEY, at the time of the injected clock."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from geo.locator import GeoIPLocator
from gslb.answer import Responder
from gslb.cli import main
from gslb.config import GslbConfig, parse_config
from gslb.dnssec import (
    INCEPTION_SKEW,
    REFRESH,
    VALIDITY,
    Signer,
    next_name,
    nsec_rdata,
    type_bitmap,
    write_new_key,
)
from gslb.errors import ConfigError
from gslb.health import HealthStore
from tests.unit.answer_support import LONDON, NEW_YORK, TOKYO, make_config, query

ORIGIN = dns.name.from_text("example.test.")
NOW = 1_800_000_000.0  # 2027-01-15, in the middle of a signing epoch
NXNAME = 128
DS_AT_SUB = "sub DS 12345 13 2 " + "AB" * 32


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "example.test.pem"
    write_new_key(path)
    return path


def signed(
    geo_db: Path, key_file: Path, clock: Clock | None = None, records: tuple[str, ...] = ()
) -> tuple[Responder, GslbConfig]:
    cfg = make_config(key_file=key_file, records=records)
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    responder = Responder(cfg, GeoIPLocator(geo_db), health, clock=clock or Clock())
    return responder, cfg


@pytest.fixture(scope="module")
def responder(geo_db: Path, key_file: Path) -> Responder:
    return signed(geo_db, key_file)[0]


def ask(
    r: Responder,
    name: str,
    rdtype: str = "A",
    *,
    client: str = LONDON,
    tcp: bool = False,
    **kw: Any,
) -> dns.message.Message:
    kw.setdefault("do", True)
    kw.setdefault("edns", 0)
    out = r.respond(query(name, rdtype, **kw), ipaddress.ip_address(client), tcp=tcp)
    assert out is not None
    return dns.message.from_wire(out)


def dnskeys(r: Responder) -> dict[dns.name.Name, dns.rrset.RRset]:
    reply = ask(r, "example.test.", "DNSKEY")
    rrset = reply.find_rrset(reply.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    return {ORIGIN: rrset}


def validate(
    r: Responder, reply: dns.message.Message, now: float = NOW, *, unsigned: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """Validate every RRset of the reply with its RRSIG; returns the (owner, type) of each
    RRset checked. RRsets named in `unsigned` ("owner TYPE") must have no RRSIG."""
    keys = dnskeys(r)
    checked = []
    for section in (reply.answer, reply.authority, reply.additional):
        sigs = {(s.name, s.covers): s for s in section if s.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            what = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"
            sig = sigs.get((rrset.name, rrset.rdtype))
            if what in unsigned:
                assert sig is None, what
                continue
            assert sig is not None, f"no RRSIG over {what}"
            assert sig[0].signer == ORIGIN
            assert sig.ttl == rrset.ttl and sig[0].original_ttl == rrset.ttl
            dns.dnssec.validate(rrset, sig, keys, now=now)
            checked.append((str(rrset.name), dns.rdatatype.to_text(rrset.rdtype)))
    return checked


def nsec_of(reply: dns.message.Message, section: str = "authority") -> Any:
    rrsets = [s for s in getattr(reply, section) if s.rdtype == dns.rdatatype.NSEC]
    assert len(rrsets) == 1, reply
    return rrsets[0]


def bitmap(nsec: Any) -> set[int]:
    return {
        window * 256 + i * 8 + bit
        for window, bits in nsec[0].windows
        for i, octet in enumerate(bits)
        for bit in range(8)
        if octet & (0x80 >> bit)
    }


# --------------------------------------------------------------------------- positive answers


def test_dnskey_rrset_is_served_and_self_signed(responder: Responder, key_file: Path) -> None:
    reply = ask(responder, "example.test.", "DNSKEY")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    (rrset,) = [s for s in reply.answer if s.rdtype == dns.rdatatype.DNSKEY]
    (key,) = rrset
    assert (key.flags, key.protocol, key.algorithm) == (257, 3, 13)
    assert rrset.ttl == 3600  # the zone's ttl
    private = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert key.key == public[1:]
    assert validate(responder, reply) == [("example.test.", "DNSKEY")]
    # without DO the DNSKEY is served too, unsigned
    plain = ask(responder, "example.test.", "DNSKEY", do=False)
    assert [s.rdtype for s in plain.answer] == [dns.rdatatype.DNSKEY]


@pytest.mark.parametrize(
    ("name", "rdtype", "expect"),
    [
        ("static.example.test.", "A", [("static.example.test.", "A")]),
        ("example.test.", "TXT", [("example.test.", "TXT")]),
        ("example.test.", "SOA", [("example.test.", "SOA")]),
        ("example.test.", "ANY", [("example.test.", "NS")]),  # RFC 8482: lowest type
        # NS/MX targets in the zone ride along in additional, signed
        ("example.test.", "NS", [("example.test.", "NS"), ("ns1.example.test.", "A")]),
        (
            "chain1.example.test.",
            "A",
            [
                ("chain1.example.test.", "CNAME"),
                ("chain2.example.test.", "CNAME"),
                ("alias.example.test.", "CNAME"),
                ("static.example.test.", "A"),
            ],
        ),
        ("_sip._tcp.example.test.", "SRV", [("_sip._tcp.example.test.", "SRV")]),
    ],
)
def test_positive_answers_validate(
    responder: Responder, name: str, rdtype: str, expect: list[tuple[str, str]]
) -> None:
    reply = ask(responder, name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    checked = validate(responder, reply)
    for item in expect:
        assert item in checked


def test_wildcard_answers_are_signed_at_the_query_name(responder: Responder) -> None:
    # The online signer signs the synthesised RRset as if it existed at the query name: the
    # Labels field counts the query name's labels, so no wildcard proof is needed.
    reply = ask(responder, "x.wild.example.test.", "TXT")
    assert validate(responder, reply) == [("x.wild.example.test.", "TXT")]
    sig = next(s for s in reply.answer if s.rdtype == dns.rdatatype.RRSIG)
    assert sig[0].labels == 4
    # the wildcard itself, asked for literally: Labels excludes the '*' (RFC 4034 3.1.3)
    literal = ask(responder, "*.wild.example.test.", "TXT")
    assert validate(responder, literal) == [("*.wild.example.test.", "TXT")]
    assert next(s for s in literal.answer if s.rdtype == dns.rdatatype.RRSIG)[0].labels == 3


def test_pool_answers_are_signed_per_edge_set(geo_db: Path, key_file: Path) -> None:
    r, _ = signed(geo_db, key_file)
    signer = r._signers[b"\x07example\x04test\x00"]
    seen = {}
    for client in (LONDON, NEW_YORK, TOKYO):
        reply = ask(r, "www.example.test.", client=client)
        assert validate(r, reply) == [("www.example.test.", "A")]
        seen[client] = sorted(rd.address for s in reply.answer if s.rdtype == 1 for rd in s)
    assert seen == {LONDON: ["127.0.0.11"], NEW_YORK: ["127.0.0.12"], TOKYO: ["127.0.0.13"]}
    made = signer.made
    # again, from ECS subnets in the same places: the encoded replies (or at least the
    # signatures) are cached, no new signature is made
    for subnet in ("192.0.2.0", "198.51.100.0", "203.0.113.0"):
        reply = ask(r, "www.example.test.", ecs=subnet)
        assert validate(r, reply) == [("www.example.test.", "A")]
    assert signer.made == made
    # a wildcard pool and a pool behind a CNAME
    assert validate(r, ask(r, "x.cdn.example.test.", client=TOKYO)) == [
        ("x.cdn.example.test.", "A")
    ]
    assert validate(r, ask(r, "geo.example.test.", "AAAA")) == [
        ("geo.example.test.", "CNAME"),
        ("www.example.test.", "AAAA"),
    ]


# --------------------------------------------------------------------------- denial


def test_nxdomain_is_compact_denial(responder: Responder) -> None:
    reply = ask(responder, "nope.example.test.")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert not reply.answer
    assert validate(responder, reply) == [("example.test.", "SOA"), ("nope.example.test.", "NSEC")]
    nsec = nsec_of(reply)
    assert nsec.name == dns.name.from_text("nope.example.test.")
    assert nsec[0].next == dns.name.from_text("\\000.nope.example.test.")
    assert bitmap(nsec) == {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, NXNAME}
    assert nsec.ttl == 60  # min(SOA TTL, minimum)
    # without DO: a plain NXDOMAIN, as before
    plain = ask(responder, "nope.example.test.", do=False)
    assert plain.rcode() == dns.rcode.NXDOMAIN
    assert [s.rdtype for s in plain.authority] == [dns.rdatatype.SOA]


def test_nxdomain_at_the_end_of_a_cname_chain(responder: Responder) -> None:
    reply = ask(responder, "dangling.example.test.")
    assert reply.rcode() == dns.rcode.NOERROR
    checked = validate(responder, reply)
    assert ("dangling.example.test.", "CNAME") in checked
    nsec = nsec_of(reply)
    assert nsec.name == dns.name.from_text("nothing.example.test.")
    assert NXNAME in bitmap(nsec)


@pytest.mark.parametrize(
    ("name", "rdtype", "types"),
    [
        ("static.example.test.", "AAAA", {"A", "TXT"}),
        ("deep.example.test.", "A", set()),  # an empty non-terminal exists: no NXNAME
        ("x.wild.example.test.", "MX", {"A", "TXT"}),  # the wildcard's types, at the name
        ("noaaaa.example.test.", "AAAA", {"A"}),  # a pool without IPv6 members
        ("example.test.", "DS", {"NS", "SOA", "MX", "TXT", "DNSKEY"}),
        ("example.test.", "RRSIG", {"NS", "SOA", "MX", "TXT", "DNSKEY"}),
    ],
)
def test_nodata_proof_lists_the_types_at_the_name(
    responder: Responder, name: str, rdtype: str, types: set[str]
) -> None:
    reply = ask(responder, name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    validate(responder, reply)
    nsec = nsec_of(reply)
    assert nsec.name == dns.name.from_text(name)
    want = {dns.rdatatype.from_text(t) for t in types} | {46, 47}
    assert bitmap(nsec) == want
    assert NXNAME not in bitmap(nsec)


def test_nsec_query_is_answered_with_the_nsec(responder: Responder) -> None:
    reply = ask(responder, "nope.example.test.", "NSEC")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.authority
    assert validate(responder, reply) == [("nope.example.test.", "NSEC")]
    assert NXNAME in bitmap(nsec_of(reply, "answer"))
    existing = ask(responder, "static.example.test.", "NSEC")
    assert bitmap(nsec_of(existing, "answer")) == {1, 16, 46, 47}


def test_nsec_query_at_a_cname_stops_at_the_cname(responder: Responder) -> None:
    # Following the CNAME would deny NSEC at the target with an NSEC that lists NSEC: bogus.
    reply = ask(responder, "alias.example.test.", "NSEC")
    assert validate(responder, reply) == [("alias.example.test.", "NSEC")]
    assert bitmap(nsec_of(reply, "answer")) == {dns.rdatatype.CNAME, 46, 47}


def test_an_nxname_query_is_formerr(responder: Responder) -> None:
    reply = ask(responder, "nope.example.test.", NXNAME)  # RFC 9824 section 3.5
    assert reply.rcode() == dns.rcode.FORMERR and not reply.answer and not reply.authority


# --------------------------------------------------------------------------- referrals


def test_insecure_referral_proves_there_is_no_ds(responder: Responder) -> None:
    reply = ask(responder, "host.sub.example.test.")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.AA
    checked = validate(
        responder,
        reply,
        unsigned=("sub.example.test. NS", "ns.sub.example.test. A"),  # NS and glue
    )
    assert checked == [("sub.example.test.", "NSEC")]
    nsec = nsec_of(reply)
    assert bitmap(nsec) == {dns.rdatatype.NS, 46, 47}
    # DS at the delegation point, asked directly: a signed NODATA from the parent
    ds = ask(responder, "sub.example.test.", "DS")
    assert ds.flags & dns.flags.AA and not ds.answer
    validate(responder, ds)
    assert bitmap(nsec_of(ds)) == {dns.rdatatype.NS, 46, 47}


def test_secure_referral_carries_the_signed_ds(geo_db: Path, key_file: Path) -> None:
    r, _ = signed(geo_db, key_file, records=(DS_AT_SUB,))
    reply = ask(r, "host.sub.example.test.")
    checked = validate(r, reply, unsigned=("sub.example.test. NS", "ns.sub.example.test. A"))
    assert checked == [("sub.example.test.", "DS")]
    assert not [s for s in reply.authority if s.rdtype == dns.rdatatype.NSEC]
    ds = ask(r, "sub.example.test.", "DS")
    assert ds.flags & dns.flags.AA
    assert validate(r, ds) == [("sub.example.test.", "DS")]
    # DO=0: the referral is as it always was
    plain = ask(r, "host.sub.example.test.", do=False)
    assert [s.rdtype for s in plain.authority] == [dns.rdatatype.NS]


@pytest.mark.parametrize("with_ds", [True, False])
def test_ds_at_a_served_child_apex_comes_from_the_parent(
    geo_db: Path, key_file: Path, tmp_path: Path, with_ds: bool
) -> None:
    # RFC 4035 section 3.1.4.1: serving both sides of the cut, the DS (or its absence) is
    # answered from the parent, signed with the parent's key; the child would deny it with
    # an NSEC of its own apex (SOA bit set), which validators reject.
    write_new_key(tmp_path / "sub.pem")
    child = f"""
[[zone]]
origin = "sub.example.test."
soa = {{ mname = "ns", rname = "hostmaster" }}
dnssec = {{ key_file = {str(tmp_path / "sub.pem")!r} }}
records = ["@ NS ns", "ns A 192.0.2.54", "www A 192.0.2.55"]
"""
    cfg = make_config(child, key_file=key_file, records=(DS_AT_SUB,) if with_ds else ())
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    r = Responder(cfg, GeoIPLocator(geo_db), health, clock=Clock())
    reply = ask(r, "sub.example.test.", "DS")
    assert reply.flags & dns.flags.AA and reply.rcode() == dns.rcode.NOERROR
    checked = validate(r, reply)  # with the parent's DNSKEY, signer example.test.
    if with_ds:
        assert checked == [("sub.example.test.", "DS")]
    else:
        assert checked == [("example.test.", "SOA"), ("sub.example.test.", "NSEC")]
        assert bitmap(nsec_of(reply)) == {dns.rdatatype.NS, 46, 47}
    plain = ask(r, "sub.example.test.", "DS", do=False)
    assert [s.rdtype for s in plain.answer] == ([dns.rdatatype.DS] if with_ds else [])
    # everything else at the child apex is the child's
    soa = ask(r, "sub.example.test.", "SOA")
    assert soa.flags & dns.flags.AA and soa.answer[0].name == dns.name.from_text(
        "sub.example.test."
    )
    assert soa.answer[1][0].signer == dns.name.from_text("sub.example.test.")


def test_ds_only_at_delegation_points(key_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"records\[0\]: DS at static.example.test., which is"):
        make_config(key_file=key_file, records=("static DS 1 13 2 " + "AB" * 32,))
    with pytest.raises(ConfigError, match="DS digest 'XYZ' is not hexadecimal"):
        make_config(records=("sub DS 1 13 2 XYZ",))
    with pytest.raises(
        ConfigError, match=r"DS digest type 2 takes 32 octets \(64 hex digits\), got 31"
    ):
        make_config(records=("sub DS 1 13 2 " + "AB" * 31,))  # a digit pair lost in a paste


# --------------------------------------------------------------------------- caches, time


def test_signatures_are_remade_each_epoch(geo_db: Path, key_file: Path) -> None:
    clock = Clock()
    r, _ = signed(geo_db, key_file, clock)
    signer: Signer = r._signers[b"\x07example\x04test\x00"]
    first = ask(r, "static.example.test.")
    sig = next(s for s in first.answer if s.rdtype == dns.rdatatype.RRSIG)[0]
    assert sig.inception <= NOW - INCEPTION_SKEW
    assert sig.expiration >= NOW + VALIDITY
    made = signer.made
    clock.now += 3600  # same epoch: from the caches
    again = ask(r, "static.example.test.")
    assert again.answer == first.answer and signer.made == made
    clock.now += REFRESH  # a new epoch: new signatures, later inception and expiration
    later = ask(r, "static.example.test.")
    resigned = next(s for s in later.answer if s.rdtype == dns.rdatatype.RRSIG)[0]
    assert signer.made > made
    assert resigned.inception == sig.inception + REFRESH
    assert resigned.expiration == sig.expiration + REFRESH
    assert resigned.inception <= clock.now - INCEPTION_SKEW
    assert resigned.expiration >= clock.now + VALIDITY
    validate(r, later, clock.now)
    # pool answers (their own cache tiers) follow the epoch too
    pool = ask(r, "www.example.test.", ecs="192.0.2.0")
    validate(r, pool, clock.now)
    clock.now += REFRESH
    pool2 = ask(r, "www.example.test.", ecs="192.0.2.0")
    assert pool2.answer != pool.answer
    validate(r, pool2, clock.now)


def test_do_bit_never_mixes_cached_replies(geo_db: Path, key_file: Path) -> None:
    r, _ = signed(geo_db, key_file)
    for _ in range(2):  # the second round is answered from the caches
        for name, kw in (
            ("static.example.test.", {}),
            ("nope.example.test.", {}),
            ("www.example.test.", {"ecs": "192.0.2.0"}),
            ("www.example.test.", {}),
        ):
            with_do = ask(r, name, **kw)
            without = ask(r, name, do=False, **kw)
            assert any(s.rdtype == dns.rdatatype.RRSIG for s in with_do.answer + with_do.authority)
            assert not any(
                s.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC)
                for s in without.answer + without.authority
            )


def test_do0_replies_are_unchanged_by_signing(geo_db: Path, key_file: Path) -> None:
    plain_cfg = make_config()
    plain = Responder(
        plain_cfg,
        GeoIPLocator(geo_db),
        HealthStore(plain_cfg.pools, [e.name for e in plain_cfg.edges]),
    )
    r, _ = signed(geo_db, key_file)
    for name, rdtype in [
        ("static.example.test.", "A"),
        ("nope.example.test.", "A"),
        ("static.example.test.", "AAAA"),
        ("www.example.test.", "A"),
        ("x.wild.example.test.", "TXT"),
        ("host.sub.example.test.", "A"),
        ("example.test.", "ANY"),
        ("chain1.example.test.", "A"),
    ]:
        for edns in (None, 0):
            wire = query(name, rdtype, edns=edns)
            address = ipaddress.ip_address(LONDON)
            assert r.respond(wire, address, tcp=False) == plain.respond(wire, address, tcp=False)


def test_new_key_new_signatures(geo_db: Path, tmp_path: Path) -> None:
    # A reload builds a new Responder: nothing signed with the old key is served.
    first, second = tmp_path / "a.pem", tmp_path / "b.pem"
    write_new_key(first)
    write_new_key(second)
    old, _ = signed(geo_db, first)
    new, _ = signed(geo_db, second)
    reply = ask(new, "static.example.test.")
    validate(new, reply)
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate(old, reply)


# --------------------------------------------------------------------------- sizes


def test_big_signed_answer_truncates_over_udp_and_is_whole_over_tcp(responder: Responder) -> None:
    small = ask(responder, "big1.example.test.", "TXT", payload=512)
    assert small.flags & dns.flags.TC and not small.answer
    whole = ask(responder, "big1.example.test.", "TXT", tcp=True)
    assert not whole.flags & dns.flags.TC
    assert validate(responder, whole) == [("big1.example.test.", "TXT")]
    assert len(whole.to_wire()) > 512


# --------------------------------------------------------------------------- pieces


def test_next_name_and_bitmap() -> None:
    name = b"\x04nope\x07example\x04test\x00"
    assert next_name(name) == b"\x01\x00" + name
    long = b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3d" + b"d" * 61
    long += b"\x00"
    assert len(long) == 255
    succ = next_name(long)
    assert len(succ) == 255 and succ[1:64] == b"a" * 62 + b"b"
    carry = b"\x3f" + b"a" * 62 + b"\xff" + long[64:]  # 0xff carries: one octet shorter
    assert next_name(carry) == b"\x3e" + b"a" * 61 + b"b" + long[64:]
    at = b"\x3f" + b"a" * 62 + b"@" + long[64:]  # '@' + 1 is 'A', which sorts as 'a': skipped
    assert next_name(at) == b"\x3f" + b"a" * 62 + b"[" + long[64:]
    assert type_bitmap([1, 46, 47, 128]) == bytes([0, 17]) + bytes(
        [0x40] + [0] * 4 + [0x03] + [0] * 10 + [0x80]
    )
    assert type_bitmap([257]) == bytes([1, 1, 0x40])
    assert nsec_rdata(name, ()).endswith(type_bitmap([46, 47]))


# --------------------------------------------------------------------------- keys, CLI


def test_key_file_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def load(path: Path) -> None:
        make_config(key_file=path)

    with pytest.raises(ConfigError, match=r"test.toml: zone\[0\].dnssec.key_file: cannot read"):
        load(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load(garbage)
    rsa_file = tmp_path / "rsa.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_file.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an EC P-256 key"):
        load(rsa_file)
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="secp384r1 key, not an EC P-256 key"):
        load(p384)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        load(locked)
    good = tmp_path / "good.pem"
    write_new_key(good)
    assert stat.S_IMODE(good.stat().st_mode) == 0o600
    with caplog.at_level(logging.WARNING, logger="gslb.dnssec"):
        load(good)
        assert not caplog.records
        os.chmod(good, 0o644)
        load(good)
    assert "readable by every user" in caplog.text


def zone_config(dnssec: str) -> str:
    return f"""
[[zone]]
origin = "example.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A 192.0.2.53"]
dnssec = {dnssec}
"""


def test_dnssec_table_is_checked(key_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zone\[0\].dnssec.colour: unknown key"):
        parse_config(zone_config(f"{{ key_file = {str(key_file)!r}, colour = 1 }}"), "t.toml")
    with pytest.raises(ConfigError, match=r"zone\[0\].dnssec.key_file: is required"):
        parse_config(zone_config("{}"), "t.toml")
    with pytest.raises(ConfigError, match=r"dnssec.publish\[0\]: names a key that is already"):
        parse_config(
            zone_config(f"{{ key_file = {str(key_file)!r}, publish = [{str(key_file)!r}] }}"),
            "t.toml",
        )
    # relative to the config file's directory
    (tmp_path / "keys").mkdir()
    write_new_key(tmp_path / "keys" / "z.pem")
    cfg = parse_config(zone_config('{ key_file = "keys/z.pem" }'), str(tmp_path / "g.toml"))
    assert cfg.zones[0].dnssec is not None


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.pem"
    assert main(["dnssec-keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert main(["dnssec-keygen", str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_ds_command_prints_dnskey_and_ds(
    geo_db: Path, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gslb.toml"
    config.write_text(zone_config(f"{{ key_file = {str(key_file)!r} }}"))
    assert main(["ds", "-c", str(config)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith(";")]
    owner, ttl, klass, rdtype, rdata = lines[0].split(maxsplit=4)
    dnskey = dns.rrset.from_text(owner, int(ttl), klass, rdtype, rdata)
    r, _ = signed(geo_db, key_file)
    assert dnskey == dnskeys(r)[ORIGIN]
    ds = dns.dnssec.make_ds(ORIGIN, dnskey[0], "SHA256")
    assert lines[1] == f"example.test. IN DS {ds.to_text().upper()}"
    assert main(["check-config", str(config)]) == 0
    assert "1 zone(s) (1 signed)" in capsys.readouterr().out


def test_rate_limiting_counts_a_signed_nxdomain_as_an_nxdomain(responder: Responder) -> None:
    """gslb.rrl reads the NXNAME bit out of the responder's own compact denial."""
    from gslb.config import RrlConfig
    from gslb.rrl import Action, RateLimiter

    client = ipaddress.ip_address(LONDON)

    def wire(name: str, rdtype: str = "A") -> bytes:
        out = responder.respond(query(name, rdtype, do=True, edns=0), client, tcp=False)
        assert out is not None
        return out

    rl = RateLimiter(RrlConfig(enabled=True, rate=1))
    assert rl.check(client, wire("nope1.example.test."), 0.0) is Action.SEND
    assert rl.check(client, wire("nope2.example.test."), 0.0) is not Action.SEND
    # A signed NODATA is still counted per name.
    assert rl.check(client, wire("www.example.test.", "TXT"), 0.0) is Action.SEND
