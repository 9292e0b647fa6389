"""Zone data: master-file parsing, zone validation, and authoritative lookup."""

from __future__ import annotations

import ipaddress

import pytest

from gslb.errors import ZoneError
from gslb.models import Edge, Pool
from gslb.zone import (
    AAAA,
    CNAME,
    MX,
    NOERROR,
    NS,
    NXDOMAIN,
    SOA,
    TXT,
    A,
    PoolAnswer,
    Record,
    RRset,
    Zone,
    Zones,
    is_subdomain,
    name_from_text,
    name_to_text,
    parse_master,
    parse_ttl,
    parse_zone_file,
)

ORIGIN = name_from_text("example.test.")


def key(lineno: int) -> str:
    return f"zone[0].file (z line {lineno})"


def parse(text: str) -> list[Record]:
    return parse_master(text, ORIGIN, 3600, key)


BASE = """
$TTL 1h
@   IN  SOA ns1 hostmaster ( 1 ; serial
            7200 3600 1209600 300 )
    IN  NS  ns1
ns1     A   192.0.2.1
"""


def zone(extra: str, pools: list[tuple[Pool, str]] | None = None) -> Zone:
    records = parse(BASE + extra)
    return Zone(
        ORIGIN,
        records,
        [(p, name_from_text(n), f"pool[{i}].name") for i, (p, n) in enumerate(pools or [])],
        key="zone[0]",
    )


# ---------------------------------------------------------------------- names


def test_names() -> None:
    assert name_from_text("www", ORIGIN) == b"\x03www\x07example\x04test\x00"
    assert name_from_text("WWW.Example.Test.") == b"\x03www\x07example\x04test\x00"
    assert name_from_text("@", ORIGIN) == ORIGIN
    assert name_from_text(".") == b"\x00"
    assert name_to_text(name_from_text("a.b.")) == "a.b."
    assert name_to_text(b"\x00") == "."
    assert is_subdomain(name_from_text("a.example.test."), ORIGIN)
    assert is_subdomain(ORIGIN, ORIGIN)
    assert not is_subdomain(name_from_text("example.test.x."), ORIGIN)
    assert not is_subdomain(name_from_text("xexample.test."), ORIGIN)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a" * 64 + ".", "longer than 63"),
        ("a..b.", "empty label"),
        ("bad label.", "not a host label"),
        ("a.*.b.", "not a host label"),
        (".".join(["a" * 60] * 5) + ".", "longer than 255"),
        ("rel", "without an origin"),
    ],
)
def test_bad_names(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        name_from_text(text)


def test_ttl_units() -> None:
    assert parse_ttl("300") == 300
    assert parse_ttl("1h30m") == 5400
    assert parse_ttl("1w") == 604800
    with pytest.raises(ValueError):
        parse_ttl("5x")


# ---------------------------------------------------------------------- master files


def test_master_file_features() -> None:
    records = parse(
        BASE
        + """
$ORIGIN sub2.example.test.
www 300 IN A 192.0.2.10
        IN AAAA 2001:db8::10   ; owner inherited
txt     TXT "a \\"quoted\\" string" unquoted
mx      MX  10 mail.example.test.
srv     SRV 1 2 3 target
caa     CAA 0 issue "ca.example"
"""
    )
    by = {(name_to_text(r.name), r.rtype): r for r in records}
    assert by[("example.test.", SOA)].rdata.times == (1, 7200, 3600, 1209600, 300)
    assert by[("example.test.", SOA)].ttl == 3600
    assert by[("www.sub2.example.test.", A)].ttl == 300
    assert by[("www.sub2.example.test.", AAAA)].ttl == 3600
    assert str(by[("www.sub2.example.test.", AAAA)].rdata) == "2001:db8::10"
    assert [bytes(s) for s in by[("txt.sub2.example.test.", TXT)].rdata.data] == [
        b'a "quoted" string',
        b"unquoted",
    ]
    assert by[("mx.sub2.example.test.", MX)].target == name_from_text("mail.example.test.")
    assert by[("srv.sub2.example.test.", 33)].target == name_from_text("target.sub2.example.test.")
    assert by[("ns1.example.test.", A)].key == "zone[0].file (z line 6)"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("www A 300.1.1.1", 1, "invalid IPv4 address '300.1.1.1'"),
        ("www AAAA 192.0.2.1", 1, "invalid IPv6 address"),
        ("\nwww HINFO a b", 2, "unsupported record type 'HINFO'"),
        ("www CH A 192.0.2.1", 1, "class CH is not supported"),
        ("www MX mail", 1, "MX needs 2 rdata field(s)"),
        ("www MX 70000 mail", 1, "MX preference 70000 is larger than 65535"),
        ('www TXT "unterminated', 1, "unterminated quoted string"),
        ("www A ( 192.0.2.1", 1, "unbalanced '('"),
        ("$INCLUDE other.zone", 1, "unsupported directive $INCLUDE"),
        ("   A 192.0.2.1", 1, "without an owner name"),
        ("www 300", 1, "record without a type"),
        ("bad_label! A 192.0.2.1", 1, "not a host label"),
        ("www CAA 0 bad-tag x", 1, "invalid CAA tag"),
    ],
)
def test_master_file_errors(text: str, line: int, problem: str) -> None:
    with pytest.raises(ZoneError) as info:
        parse(text)
    assert info.value.key == key(line)
    assert problem in info.value.problem


def test_directives_only_in_files() -> None:
    with pytest.raises(ZoneError, match="only allowed in zone files"):
        parse_master("$TTL 5", ORIGIN, 3600, lambda _n: "zone[0].records[0]", directives=False)


# ---------------------------------------------------------------------- $INCLUDE


class Files:
    """A small real file set for parse_zone_file: names (as the parser resolves them) to
    text; records which names were read."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.read: list[str] = []

    def __call__(self, name: str) -> str:
        self.read.append(name)
        try:
            return self.files[name]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", name) from None


def parse_file(files: dict[str, str], top: str = "zones/main.zone") -> list[Record]:
    reader = Files(files)
    return parse_zone_file(files[top], top, ORIGIN, 3600, "zone[0].file", reader)


def table(records: list[Record]) -> list[tuple[str, str, int, str]]:
    return [
        (name_to_text(r.name), {A: "A", TXT: "TXT"}.get(r.rtype, "?"), r.ttl, r.key)
        for r in records
    ]


def test_include_origin_ttl_and_owner_stay_with_the_included_file() -> None:
    records = parse_file(
        {
            "zones/main.zone": (
                "$TTL 300\n"
                "host A 192.0.2.1\n"
                "$INCLUDE sub/hosts.zone lab ; comment\n"
                "  A 192.0.2.2\n"  # the owner before the $INCLUDE: host
                "after A 192.0.2.3\n"  # relative to example.test., with $TTL 300
                "$ORIGIN inner.example.test.\n"
                "$INCLUDE sub/plain.zone\n"
            ),
            "zones/sub/hosts.zone": (
                "a A 192.0.2.10\n"  # origin lab.example.test., $TTL 300 inherited
                "$TTL 60\n"
                "$ORIGIN elsewhere.example.test.\n"
                "b A 192.0.2.11\n"
            ),
            "zones/sub/plain.zone": "c A 192.0.2.12\n",  # the current origin: inner
        }
    )
    main, hosts, plain = (
        "zone[0].file (zones/main.zone line",
        "zone[0].file (zones/sub/hosts.zone line",
        "zone[0].file (zones/sub/plain.zone line",
    )
    assert table(records) == [
        ("host.example.test.", "A", 300, f"{main} 2)"),
        ("a.lab.example.test.", "A", 300, f"{hosts} 1)"),
        ("b.elsewhere.example.test.", "A", 60, f"{hosts} 4)"),
        ("host.example.test.", "A", 300, f"{main} 4)"),
        ("after.example.test.", "A", 300, f"{main} 5)"),
        ("c.inner.example.test.", "A", 300, f"{plain} 1)"),
    ]


def test_include_paths_resolve_against_the_including_file() -> None:
    files = {
        "zones/main.zone": "$INCLUDE a/one.zone\n$INCLUDE /abs/three.zone\n",
        "zones/a/one.zone": "$INCLUDE ../two.zone\n",
        "zones/two.zone": "two A 192.0.2.2\n",
        "/abs/three.zone": '$INCLUDE "four.zone"\n',
        "/abs/four.zone": "four A 192.0.2.4\n",
    }
    reader = Files(files)
    records = parse_zone_file(
        files["zones/main.zone"], "zones/main.zone", ORIGIN, 3600, "z", reader
    )
    assert [name_to_text(r.name) for r in records] == ["two.example.test.", "four.example.test."]
    assert reader.read == [
        "zones/a/one.zone",
        "zones/two.zone",
        "/abs/three.zone",
        "/abs/four.zone",
    ]


@pytest.mark.parametrize(
    ("files", "where", "problem"),
    [
        (
            {"zones/main.zone": "\n$INCLUDE main.zone\n"},
            "zones/main.zone line 2",
            "$INCLUDE loop: zones/main.zone -> zones/main.zone",
        ),
        (
            {
                "zones/main.zone": "$INCLUDE a.zone\n",
                "zones/a.zone": "x A 192.0.2.1\n$INCLUDE ./sub/../b.zone\n",
                "zones/b.zone": "$INCLUDE a.zone\n",
            },
            "zones/b.zone line 1",
            "$INCLUDE loop: zones/main.zone -> zones/a.zone -> zones/b.zone -> zones/a.zone",
        ),
        (
            {
                "zones/main.zone": "$INCLUDE f1\n",
                **{f"zones/f{i}": f"$INCLUDE f{i + 1}\n" for i in range(1, 20)},
            },
            "zones/f7 line 1",
            "$INCLUDE of 'zones/f8' nests more than 8 files",
        ),
        (
            {"zones/main.zone": "www A 192.0.2.1\n$INCLUDE missing.zone\n"},
            "zones/main.zone line 2",
            "$INCLUDE cannot read 'zones/missing.zone'",
        ),
        (
            {"zones/main.zone": "$INCLUDE a.zone\n", "zones/a.zone": "; c\n\nbad MX x\n"},
            "zones/a.zone line 3",
            "MX needs 2 rdata field(s)",
        ),
        (
            {
                "zones/main.zone": "www A 192.0.2.1\n$INCLUDE a.zone\n",
                "zones/a.zone": "  A 192.0.2.2\n",
            },
            "zones/a.zone line 1",
            "without an owner name",
        ),
        (
            {"zones/main.zone": "$INCLUDE\n"},
            "zones/main.zone line 1",
            "$INCLUDE takes a file name and an optional domain name",
        ),
        (
            {"zones/main.zone": "$INCLUDE a.zone sub extra\n"},
            "zones/main.zone line 1",
            "$INCLUDE takes a file name and an optional domain name",
        ),
        (
            {"zones/main.zone": "$INCLUDE a.zone bad!name\n"},
            "zones/main.zone line 1",
            "not a host label",
        ),
    ],
    ids=[
        "self",
        "loop",
        "depth",
        "missing",
        "error-inside",
        "no-owner",
        "no-file",
        "extra",
        "bad-origin",
    ],
)
def test_include_errors_name_file_and_line(files: dict[str, str], where: str, problem: str) -> None:
    with pytest.raises(ZoneError) as info:
        parse_file(files)
    assert info.value.key == f"zone[0].file ({where})"
    assert problem in info.value.problem


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        ("www.other.test. A 192.0.2.1", "line 7", "outside zone example.test."),
        ("x CNAME y\nx TXT t", "line 7", "CNAME at x.example.test. beside other data (TXT)"),
        ("x CNAME y\nx CNAME z", "line 8", "a second CNAME"),
        ("@ CNAME y", "line 7", "CNAME at example.test. beside other data"),
        (
            "sub NS ns.sub\nns.sub A 192.0.2.2\nx.sub TXT t",
            "line 9",
            "below the delegation sub.example.test.",
        ),
        ("sub NS ns.sub\nns.sub A 192.0.2.2\nsub TXT t", "line 9", "TXT beside the delegation NS"),
        (
            "sub NS ns.sub",
            "line 7",
            "NS target ns.sub.example.test. is inside the zone but has no A/AAAA",
        ),
        ("@ NS ns3", "line 7", "NS target ns3.example.test."),
        ("x SOA a b 1 2 3 4 5", "line 7", "SOA only at the apex"),
        ("@ SOA a b 1 2 3 4 5", "line 7", "a second SOA record"),
    ],
)
def test_zone_validation(extra: str, where: str, problem: str) -> None:
    with pytest.raises(ZoneError) as info:
        zone(extra)
    assert where in info.value.key
    assert problem in info.value.problem


def test_zone_needs_soa_and_apex_ns() -> None:
    with pytest.raises(ZoneError, match="no SOA"):
        Zone(ORIGIN, parse("@ NS ns1\nns1 A 192.0.2.1"), key="zone[0]")
    with pytest.raises(ZoneError, match="no NS record at the apex") as info:
        Zone(ORIGIN, parse("@ SOA a b 1 2 3 4 5"), key="zone[0]")
    assert info.value.key == "zone[0]"


def test_out_of_zone_ns_targets_need_no_glue() -> None:
    z = zone("sub NS ns.elsewhere.test.")
    res = z.resolve(name_from_text("x.sub.example.test."), A)
    assert not res.aa and res.authority[0].rtype == NS and not res.additional


FRA = Edge("fra", 50.1, 8.7, ipv4=ipaddress.IPv4Address("127.0.0.11"))
V6 = Edge("v6", 0.0, 0.0, ipv6=ipaddress.IPv6Address("2001:db8::1"))


@pytest.mark.parametrize(
    ("extra", "pool_name", "problem"),
    [
        (
            "www A 192.0.2.9",
            "www.example.test.",
            "clashes with the static A record at zone[0].file (z line 7)",
        ),
        ("www CNAME x", "www.example.test.", "clashes with the static CNAME"),
        (
            "sub NS ns.elsewhere.test.",
            "a.sub.example.test.",
            "below the delegation sub.example.test.",
        ),
        ("", "www.other.test.", "outside zone"),
    ],
)
def test_pool_validation(extra: str, pool_name: str, problem: str) -> None:
    with pytest.raises(ZoneError) as info:
        zone(extra, [(Pool(pool_name, (FRA,)), pool_name)])
    assert info.value.key == "pool[0].name"
    assert problem in info.value.problem


def test_static_mx_txt_beside_a_pool() -> None:
    z = zone(
        "www MX 10 mail\nwww TXT hi\nmail A 192.0.2.25",
        [(Pool("www.example.test.", (FRA, V6)), "www.example.test.")],
    )
    www = name_from_text("www.example.test.")
    a = z.resolve(www, A)
    assert isinstance(a.answer[0], PoolAnswer) and a.answer[0].pool.edges == (FRA,)
    aaaa = z.resolve(www, AAAA)
    assert isinstance(aaaa.answer[0], PoolAnswer) and aaaa.answer[0].pool.edges == (V6,)
    assert a.pool is not None
    mx = z.resolve(www, MX)
    assert isinstance(mx.answer[0], RRset) and mx.answer[0].rtype == MX
    assert mx.optional[0].rtype == A


def test_duplicate_records_are_one() -> None:
    z = zone("x A 192.0.2.7\nx 60 A 192.0.2.7\nx A 192.0.2.8")
    res = z.resolve(name_from_text("x.example.test."), A)
    (rrset,) = res.answer
    assert isinstance(rrset, RRset)
    assert len(rrset.rdatas) == 2 and rrset.ttl == 3600


def test_rrset_ttl_is_the_minimum() -> None:
    z = zone("x 60 A 192.0.2.7\nx 30 A 192.0.2.8")
    (rrset,) = z.resolve(name_from_text("x.example.test."), A).answer
    assert isinstance(rrset, RRset) and rrset.ttl == 30


def test_lookup_results() -> None:
    z = zone("a CNAME b\nb CNAME c\nc A 192.0.2.3\n*.w TXT w")
    res = z.resolve(name_from_text("a.example.test."), A)
    assert res.rcode == NOERROR and [r.rtype for r in res.answer] == [CNAME, CNAME, A]  # type: ignore[union-attr]
    nx = z.resolve(name_from_text("zz.example.test."), A)
    assert nx.rcode == NXDOMAIN and nx.authority[0].ttl == 300
    wild = z.resolve(name_from_text("q.w.example.test."), TXT)
    assert wild.answer[0].name == name_from_text("q.w.example.test.")  # type: ignore[union-attr]


def test_zones_find_the_most_specific() -> None:
    parent = zone("child NS ns.elsewhere.test.")
    child_origin = name_from_text("child.example.test.")
    child = Zone(
        child_origin,
        parse_master(
            "@ SOA ns h 1 2 3 4 5\n@ NS ns.elsewhere.test.\nwww A 192.0.2.5", child_origin, 60, key
        ),
        key="zone[1]",
    )
    zones = Zones([parent, child])
    assert zones.find(name_from_text("www.child.example.test.")) is child
    assert zones.find(name_from_text("x.example.test.")) is parent
    assert zones.find(name_from_text("example.test.")) is parent
    assert zones.find(name_from_text("test.")) is None
    assert zones.find(b"\x00") is None
