"""DNSSEC from a real `gslb serve` process: dnspython queries with DO=1 validated against the
served DNSKEY, `dig +dnssec`, `delv` validating with the zone's key as its trust anchor, TCP
for a signed answer too big for UDP, and a key change on SIGHUP."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gslb.dnssec import dnskey_rdata, dnskey_text, ds_rdata, ds_text, write_new_key
from tests.integration.gslb_helpers import (
    LONDON,
    NEW_YORK,
    TOKYO,
    GslbProcess,
    dig,
    write_config,
)

ORIGIN = dns.name.from_text("example.test.")


def signed_config(path: Path, geo_db: Path, key: str) -> Path:
    write_config(path, geo_db)
    text = path.read_text()
    text = text.replace(
        'origin = "example.test."\n',
        f'origin = "example.test."\ndnssec = {{ key_file = "{key}" }}\n',
        1,
    )
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def gslb(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Iterator[GslbProcess]:
    base = tmp_path_factory.mktemp("gslb-dnssec")
    write_new_key(base / "example.test.pem")
    proc = GslbProcess(signed_config(base / "gslb.toml", geo_db, "example.test.pem"))
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


def ask(
    gslb: GslbProcess,
    name: str,
    rdtype: str = "A",
    *,
    do: bool = True,
    tcp: bool = False,
    subnet: str | None = None,
    payload: int = 1232,
) -> dns.message.Message:
    options = []
    if subnet is not None:
        addr, _, prefix = subnet.partition("/")
        options.append(dns.edns.ECSOption(addr, int(prefix)))
    q = dns.message.make_query(
        name, rdtype, use_edns=0, want_dnssec=do, options=options, payload=payload
    )
    if tcp:
        return dns.query.tcp(q, gslb.host, port=gslb.port, timeout=5)
    return dns.query.udp(q, gslb.host, port=gslb.port, timeout=5)


def dnskeys(gslb: GslbProcess) -> dns.rrset.RRset:
    reply = ask(gslb, "example.test.", "DNSKEY")
    return reply.find_rrset(reply.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)


def validate(gslb: GslbProcess, reply: dns.message.Message) -> list[str]:
    """Validate every signed RRset of answer and authority; returns "owner TYPE" of each."""
    keys = {ORIGIN: dnskeys(gslb)}
    done = []
    for section in (reply.answer, reply.authority):
        sigs = {(s.name, s.covers): s for s in section if s.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG or (rrset.name, rrset.rdtype) not in sigs:
                continue
            dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], keys)
            done.append(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}")
    return done


def test_signed_answers_validate(gslb: GslbProcess) -> None:
    assert validate(gslb, ask(gslb, "example.test.", "DNSKEY")) == ["example.test. DNSKEY"]
    assert validate(gslb, ask(gslb, "static.example.test.")) == ["static.example.test. A"]
    assert validate(gslb, ask(gslb, "alias.example.test.")) == [
        "alias.example.test. CNAME",
        "www.example.test. A",
    ]
    assert validate(gslb, ask(gslb, "x.wild.example.test.")) == ["x.wild.example.test. A"]


def test_pool_answers_validate_per_client(gslb: GslbProcess) -> None:
    got = {}
    for subnet in (LONDON, NEW_YORK, TOKYO):
        reply = ask(gslb, "www.example.test.", subnet=subnet)
        assert validate(gslb, reply) == ["www.example.test. A"]
        got[subnet] = [rd.address for s in reply.answer if s.rdtype == 1 for rd in s]
    assert got == {LONDON: ["127.0.0.11"], NEW_YORK: ["127.0.0.12"], TOKYO: ["127.0.0.13"]}


def test_compact_denial_and_referral(gslb: GslbProcess) -> None:
    reply = ask(gslb, "nope.example.test.")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert validate(gslb, reply) == ["example.test. SOA", "nope.example.test. NSEC"]
    assert re.search(
        r"NSEC \\000\.nope\.example\.test\. RRSIG NSEC (NXNAME|TYPE128)\n", reply.to_text()
    )
    nodata = ask(gslb, "static.example.test.", "AAAA")
    assert validate(gslb, nodata) == ["example.test. SOA", "static.example.test. NSEC"]
    referral = ask(gslb, "host.sub.example.test.")
    assert not referral.flags & dns.flags.AA
    assert validate(gslb, referral) == ["sub.example.test. NSEC"]
    # DO=0: the classic answers
    assert ask(gslb, "nope.example.test.", do=False).rcode() == dns.rcode.NXDOMAIN
    plain = ask(gslb, "static.example.test.", do=False)
    assert [s.rdtype for s in plain.answer] == [dns.rdatatype.A]


def test_big_signed_answer_falls_back_to_tcp(gslb: GslbProcess) -> None:
    udp = ask(gslb, "big.example.test.", "TXT")
    assert udp.flags & dns.flags.TC and not udp.answer
    whole = ask(gslb, "big.example.test.", "TXT", tcp=True)
    assert not whole.flags & dns.flags.TC
    assert validate(gslb, whole) == ["big.example.test. TXT"]
    assert len(whole.to_wire()) > 1232


def test_dig_dnssec_shows_rrsigs(gslb: GslbProcess) -> None:
    out = dig(f"@{gslb.host}", "-p", str(gslb.port), "+dnssec", "+norec", "static.example.test")
    assert re.search(r"static\.example\.test\.\s+300\s+IN\s+RRSIG\s+A 13 3 300 ", out), out
    plain = dig(f"@{gslb.host}", "-p", str(gslb.port), "+norec", "static.example.test")
    assert "RRSIG" not in plain and "127.0.0.30" in plain


def delv(gslb: GslbProcess, anchor: Path, *query: str) -> str:
    exe = shutil.which("delv")
    if exe is None:
        raise AssertionError("delv is not installed (make apt-test installs bind9-dnsutils)")
    args = [exe, f"@{gslb.host}", "-p", str(gslb.port), "-a", str(anchor), "+root=example.test"]
    out = subprocess.run([*args, *query], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout + out.stderr


def write_anchor(path: Path, key: str) -> Path:
    """A delv trust-anchor file holding the DNSKEY `key` (presentation form) of example.test."""
    flags, protocol, algorithm, public = key.split(maxsplit=3)
    public = public.replace(" ", "")
    path.write_text(
        f"trust-anchors {{\n  example.test. static-key {flags} {protocol} {algorithm} "
        f'"{public}";\n}};\n'
    )
    return path


def test_delv_validates_with_the_zone_key_as_trust_anchor(
    gslb: GslbProcess, tmp_path: Path
) -> None:
    (key,) = dnskeys(gslb)
    anchor = write_anchor(tmp_path / "anchor.conf", key.to_text())
    for name, rdtype, want in (
        ("static.example.test", "A", "; fully validated"),
        ("www.example.test", "A", "; fully validated"),
        ("alias.example.test", "A", "; fully validated"),
        ("x.wild.example.test", "A", "; fully validated"),
        ("nope.example.test", "A", "; negative response, fully validated"),
        ("static.example.test", "AAAA", "; negative response, fully validated"),
        ("big.example.test", "TXT", "; fully validated"),
    ):
        out = delv(gslb, anchor, name, rdtype)
        assert want in out, out
    # a wrong anchor: the same answers do not validate
    other = write_new_key(tmp_path / "other.pem")
    wrong = write_anchor(tmp_path / "wrong.conf", dnskey_text(dnskey_rdata(other.public_key())))
    out = delv(gslb, wrong, "static.example.test", "A")
    assert "fully validated" not in out and "resolution failed" in out, out


def test_delv_follows_the_chain_into_a_signed_child_zone_served_beside_the_parent(
    tmp_path: Path, geo_db: Path
) -> None:
    # Serving example.test and its signed child sub.example.test, the DS query for the child
    # apex must be answered from the parent (RFC 4035 section 3.1.4.1); answered from the
    # child (a NODATA signed by the child) delv reports a broken trust chain.
    parent = write_new_key(tmp_path / "parent.pem")
    child = write_new_key(tmp_path / "child.pem")
    child_dnskey = dnskey_rdata(child.public_key())
    ds = ds_text(ds_rdata(dns.name.from_text("sub.example.test.").to_wire(), child_dnskey))
    config = signed_config(tmp_path / "gslb.toml", geo_db, "parent.pem")
    text = config.read_text().replace(
        '"sub            NS    ns.sub",', f'"sub NS ns.sub", "sub DS {ds}",'
    )
    config.write_text(
        text
        + '\n[[zone]]\norigin = "sub.example.test."\ndnssec = { key_file = "child.pem" }\n'
        + 'soa = { mname = "ns", rname = "hostmaster" }\n'
        + 'records = ["@ NS ns", "ns A 127.0.0.53", "www A 127.0.0.54"]\n'
    )
    anchor = write_anchor(tmp_path / "anchor.conf", dnskey_text(dnskey_rdata(parent.public_key())))
    proc = GslbProcess(config)
    try:
        out = delv(proc, anchor, "www.sub.example.test", "A")
        assert "; fully validated" in out and "127.0.0.54" in out, out
        out = delv(proc, anchor, "sub.example.test", "DS")
        assert "; fully validated" in out, out
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_new_key_on_reload(tmp_path: Path, geo_db: Path) -> None:
    write_new_key(tmp_path / "a.pem")
    write_new_key(tmp_path / "b.pem")
    config = signed_config(tmp_path / "gslb.toml", geo_db, "a.pem")
    proc = GslbProcess(config)
    try:
        before = dnskeys(proc)
        assert validate(proc, ask(proc, "static.example.test.")) == ["static.example.test. A"]
        config.write_text(config.read_text().replace('"a.pem"', '"b.pem"'))
        mark = len(proc.lines)
        proc.signal(signal.SIGHUP)
        proc.wait_for(r"reloaded config", start=mark)
        after = dnskeys(proc)
        assert after != before
        reply = ask(proc, "static.example.test.")
        assert validate(proc, reply) == ["static.example.test. A"]  # with the new key
        with pytest.raises(dns.dnssec.ValidationFailure):
            dns.dnssec.validate(reply.answer[0], reply.answer[1], {ORIGIN: before})
    finally:
        assert proc.stop() == 0, proc.log_text()
