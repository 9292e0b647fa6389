"""DNS COOKIE, NSID and CHAOS identity in the answer engine (gslb.answer.Responder): the
options a reply carries, FORMERR for malformed cookies, BADCOOKIE when required, and that the
options never leak between queries through the caches."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from geo.locator import GeoIPLocator
from gslb.answer import Responder
from gslb.cookies import server_cookie
from gslb.health import HealthStore
from tests.unit.answer_support import LONDON, make_config, query

SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
NOW = 1559731985
CLIENT = ipaddress.ip_address(LONDON)
CC = bytes.fromhex("2464c4abcf10c957")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(geo_db: Path, tmp_path: Path, extra: str = "", records: tuple[str, ...] = ()) -> Responder:
    (tmp_path / "secret").write_text(SECRET.hex() + "\n")
    secret = str(tmp_path / "secret")
    cfg = make_config(
        f'\n[cookies]\nsecret_file = {secret!r}\n{extra}\n[identity]\nname = "ns-test-1"\n',
        records=records,
    )
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    return Responder(cfg, GeoIPLocator(geo_db), health, clock=Clock(NOW))


def ask(
    r: Responder,
    options: list[dns.edns.Option],
    *,
    tcp: bool = False,
    name: str = "static.example.test.",
    rdclass: str = "IN",
    rdtype: str = "A",
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=0, options=options, id=77)
    out = r.respond(q.to_wire(), CLIENT, tcp=tcp)
    assert out is not None
    return dns.message.from_wire(out)


def cookie_of(m: dns.message.Message) -> bytes | None:
    for option in m.options:
        if option.otype == dns.edns.OptionType.COOKIE:
            return option.to_wire()
    return None


def raw_cookie(data: bytes) -> bytes:
    """A query with a COOKIE option of any length (dnspython refuses malformed ones)."""
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00" + (len(data) + 4).to_bytes(2, "big")
    option = b"\x00\x0a" + len(data).to_bytes(2, "big") + data
    return (
        query("static.example.test.")[:11]
        + b"\x01"
        + query("static.example.test.")[12:]
        + opt
        + option
    )


def test_client_cookie_gets_a_server_cookie(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path)
    m = ask(r, [dns.edns.CookieOption(CC, b"")])
    assert m.rcode() == dns.rcode.NOERROR and len(m.answer) == 1
    assert cookie_of(m) == CC + server_cookie(SECRET, CC, CLIENT, NOW)
    assert r.verified is None


def test_valid_server_cookie_is_echoed_and_marked_verified(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path)
    good = server_cookie(SECRET, CC, CLIENT, NOW - 60)
    q = dns.message.make_query(
        "static.example.test.", "A", use_edns=0, options=[dns.edns.CookieOption(CC, good)]
    )
    out = r.respond(q.to_wire(), CLIENT, tcp=False)
    assert out is not None and out is r.verified
    assert cookie_of(dns.message.from_wire(out)) == CC + good


@pytest.mark.parametrize("size", [0, 5, 7, 8, 9, 15, 16, 24, 40, 41, 49])
def test_cookie_lengths(geo_db: Path, tmp_path: Path, size: int) -> None:
    # RFC 7873 section 5.2.2: 8 octets (client cookie) or 16 to 40 (with a server cookie).
    r = make(geo_db, tmp_path)
    out = r.respond(raw_cookie(bytes(range(size))), CLIENT, tcp=False)
    assert out is not None
    m = dns.message.from_wire(out)
    assert m.edns == 0
    if size == 8 or 16 <= size <= 40:
        assert m.rcode() == dns.rcode.NOERROR
        fresh = server_cookie(SECRET, bytes(range(8)), CLIENT, NOW)
        assert cookie_of(m) == bytes(range(8)) + fresh
    else:
        assert m.rcode() == dns.rcode.FORMERR and cookie_of(m) is None


def test_two_cookie_options_are_formerr(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path)
    m = ask(r, [dns.edns.CookieOption(CC, b""), dns.edns.CookieOption(CC, b"")])
    assert m.rcode() == dns.rcode.FORMERR


def test_required_cookie_gives_badcookie_over_udp_only(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path, "require = true")
    udp = ask(r, [dns.edns.CookieOption(CC, b"")])
    assert udp.rcode() == dns.rcode.BADCOOKIE
    assert not udp.answer
    fresh = cookie_of(udp)
    assert fresh == CC + server_cookie(SECRET, CC, CLIENT, NOW)
    # RFC 7873 5.3: the client retries with the cookie it got, and is answered.
    again = ask(r, [dns.edns.CookieOption(CC, fresh[8:])])
    assert again.rcode() == dns.rcode.NOERROR and again.answer
    tcp = ask(r, [dns.edns.CookieOption(CC, b"")], tcp=True)
    assert tcp.rcode() == dns.rcode.NOERROR and tcp.answer and cookie_of(tcp) == fresh
    # A query with no cookie at all is not from a cookie-aware client: answered.
    plain = dns.message.from_wire(
        r.respond(query("static.example.test.", edns=0), CLIENT, tcp=False) or b""
    )
    assert plain.rcode() == dns.rcode.NOERROR and plain.answer


def test_cookies_never_leak_through_the_caches(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path)
    for _ in range(2):  # the second round hits every cache
        with_cookie = ask(r, [dns.edns.CookieOption(CC, b"")])
        assert cookie_of(with_cookie) is not None
        without = ask(r, [])
        assert cookie_of(without) is None and without.answer == with_cookie.answer
        other = bytes(8)
        assert cookie_of(ask(r, [dns.edns.CookieOption(other, b"")]))[:8] == other  # type: ignore[index]


def test_cookies_can_be_turned_off(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path, "enabled = false")
    m = ask(r, [dns.edns.CookieOption(CC, b"")])
    assert m.rcode() == dns.rcode.NOERROR and cookie_of(m) is None


def test_default_config_makes_cookies_with_a_random_secret(geo_db: Path) -> None:
    cfg = make_config()
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    r = Responder(cfg, GeoIPLocator(geo_db), health)
    m = ask(r, [dns.edns.CookieOption(CC, b"")])
    cookie = cookie_of(m)
    assert cookie is not None and len(cookie) == 24 and cookie[8] == 1


def test_options_push_a_reply_over_the_udp_size_into_truncation(
    geo_db: Path, tmp_path: Path
) -> None:
    def fit(r: Responder) -> bytes | None:
        return r.respond(query("fit.example.test.", "TXT", edns=0, payload=512), CLIENT, tcp=False)

    small = fit(make(geo_db, tmp_path, records=('fit TXT "x"',)))
    assert small is not None
    # A TXT record that leaves the plain reply 10 octets below 512: the 41 octets of the
    # COOKIE and NSID options do not fit.
    n = 512 - 10 - len(small) - 2  # two more strings: each has a length octet
    r = make(geo_db, tmp_path, records=(f'fit TXT "x" "{"y" * (n // 2)}" "{"z" * (n - n // 2)}"',))
    plain = fit(r)
    assert (
        plain is not None
        and len(plain) == 502
        and not dns.message.from_wire(plain).flags & dns.flags.TC
    )
    options = [dns.edns.CookieOption(CC, b""), dns.edns.NSIDOption(b"")]
    q = dns.message.make_query("fit.example.test.", "TXT", use_edns=0, payload=512, options=options)
    out = r.respond(q.to_wire(), CLIENT, tcp=False)
    assert out is not None and len(out) <= 512
    m = dns.message.from_wire(out)
    assert m.flags & dns.flags.TC and not m.answer
    assert cookie_of(m) == CC + server_cookie(SECRET, CC, CLIENT, NOW)
    full = r.respond(q.to_wire(), CLIENT, tcp=True)
    assert full is not None and dns.message.from_wire(full).answer


def test_nsid(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path)
    m = ask(r, [dns.edns.NSIDOption(b"")])
    (option,) = m.options
    assert option.otype == dns.edns.OptionType.NSID and option.to_wire() == b"ns-test-1"
    both = ask(r, [dns.edns.NSIDOption(b""), dns.edns.CookieOption(CC, b"")])
    assert sorted(o.otype for o in both.options) == [
        dns.edns.OptionType.NSID,
        dns.edns.OptionType.COOKIE,
    ]
    assert not ask(r, []).options  # from the cache, without NSID


def test_nsid_off(geo_db: Path, tmp_path: Path) -> None:
    cfg = make_config("\n[identity]\nnsid = false\nchaos = false\n")
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    r = Responder(cfg, GeoIPLocator(geo_db), health)
    assert not ask(r, [dns.edns.NSIDOption(b"")]).options
    assert ask(r, [], name="id.server.", rdclass="CH", rdtype="TXT").rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("name", ["id.server.", "hostname.bind.", "ID.SERVER."])
def test_chaos_identity(geo_db: Path, tmp_path: Path, name: str) -> None:
    r = make(geo_db, tmp_path)
    m = ask(r, [], name=name, rdclass="CH", rdtype="TXT")
    assert m.rcode() == dns.rcode.NOERROR
    (rrset,) = m.answer
    assert rrset.rdclass == dns.rdataclass.CH and rrset.ttl == 0
    assert [rd.strings for rd in rrset] == [(b"ns-test-1",)]
    assert m.question[0].name.to_text() == name  # the case as asked


def test_chaos_version_is_off_by_default_and_configurable(geo_db: Path, tmp_path: Path) -> None:
    r = make(geo_db, tmp_path)
    for name in ("version.bind.", "version.server."):
        assert ask(r, [], name=name, rdclass="CH", rdtype="TXT").rcode() == dns.rcode.REFUSED
    cfg = make_config('\n[identity]\nversion = "gslb 1"\n')
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    r = Responder(cfg, GeoIPLocator(geo_db), health)
    m = ask(r, [], name="version.bind.", rdclass="CH", rdtype="TXT")
    assert [rd.strings for rd in m.answer[0]] == [(b"gslb 1",)]
    nodata = ask(r, [], name="version.bind.", rdclass="CH", rdtype="A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_identity_defaults_to_the_host_name() -> None:
    import socket

    assert make_config().identity.name == socket.gethostname()
