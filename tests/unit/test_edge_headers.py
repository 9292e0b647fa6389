"""Header rewriting between client and origin (edge.headers), as pure functions."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.headers import (
    HOP_BY_HOP,
    cdn_loop_ids,
    client_response_headers,
    end_to_end,
    list_members,
    loop_verdict,
    origin_request_headers,
    valid_host,
)

_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)


@given(
    st.lists(st.tuples(_names, st.text("abc ,", max_size=8)), max_size=12),
    st.lists(_names, max_size=4),
)
def test_end_to_end_drops_hop_by_hop_and_connection_named(
    pairs: list[tuple[str, str]], named: list[str]
) -> None:
    pairs = [*pairs, ("Connection", ", ".join(named))] if named else pairs
    kept = end_to_end(pairs)
    dropped = HOP_BY_HOP | {n.lower() for n in named}
    assert all(k.lower() not in dropped for k, _ in kept)
    assert kept == [(k, v) for k, v in pairs if k.lower() not in dropped | _connection(pairs)]


def _connection(pairs: list[tuple[str, str]]) -> set[str]:
    return {
        t.strip().lower()
        for k, v in pairs
        if k.lower() == "connection"
        for t in v.split(",")
        if t.strip()
    }


def test_untrusted_forwarding_fields_are_replaced() -> None:
    out = origin_request_headers(
        [
            ("Host", "www.example.test"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=x"),
            ("Via", "1.0 upstream"),
        ],
        client_ip="192.0.2.7",
        proto="https",
        host="www.example.test",
        version=(1, 1),
        via="geoedge",
        mode="both",
    )
    assert out["X-Forwarded-For"] == "192.0.2.7"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "www.example.test"
    assert out["Forwarded"] == "for=192.0.2.7;proto=https;host=www.example.test"
    assert out["Via"] == "1.0 upstream, 1.1 geoedge"


def test_trusted_peer_chain_is_extended_and_ipv6_quoted() -> None:
    out = origin_request_headers(
        [("X-Forwarded-For", "203.0.113.1"), ("Forwarded", "for=203.0.113.1")],
        client_ip="2001:db8::1",
        proto="http",
        host="h",
        version=(1, 1),
        via="e",
        trusted=[ipaddress.ip_network("2001:db8::/32")],
        mode="both",
    )
    assert out["X-Forwarded-For"] == "203.0.113.1, 2001:db8::1"
    assert out["Forwarded"] == 'for=203.0.113.1, for="[2001:db8::1]";proto=http;host=h'


def test_response_headers_get_via_and_lose_hop_by_hop() -> None:
    out = client_response_headers(
        [("Transfer-Encoding", "chunked"), ("Connection", "x-a"), ("X-A", "1"), ("ETag", '"e"')],
        version=(1, 0),
        via="geoedge",
    )
    assert list(out.items()) == [("ETag", '"e"'), ("Via", "1.0 geoedge")]


def test_other_x_forwarded_fields_only_from_trusted_peers() -> None:
    # X-Forwarded-Port / -Prefix / -Scheme steer redirects and absolute URLs in common
    # frameworks and are not in the cache key: a client must not be able to set them.
    pairs = [
        ("Host", "www.example.test"),
        ("X-Forwarded-Port", "1337"),
        ("X-Forwarded-Prefix", "/evil"),
        ("x-forwarded-scheme", "nothttps"),
    ]
    common = {
        "proto": "http",
        "host": "www.example.test",
        "version": (1, 1),
        "via": "geoedge",
        "trusted": [ipaddress.ip_network("10.0.0.0/8")],
    }
    untrusted = origin_request_headers(pairs, client_ip="192.0.2.7", **common)
    assert "X-Forwarded-Port" not in untrusted
    assert "X-Forwarded-Prefix" not in untrusted
    assert "X-Forwarded-Scheme" not in untrusted
    trusted = origin_request_headers(pairs, client_ip="10.1.2.3", **common)
    assert trusted["X-Forwarded-Port"] == "1337"
    assert trusted["X-Forwarded-Prefix"] == "/evil"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("www.example.test", True),
        ("www.example.test:8080", True),
        ("192.0.2.1:80", True),
        ("[2001:db8::1]:443", True),
        ("", True),
        ("a.example:8080/x", False),
        ("a.example?q", False),
        ("a.example#f", False),
        ("user@a.example", False),
        ("a.example x", False),
        ("[::1", False),
        ("a.example:80:80", False),
    ],
)
def test_valid_host(value: str, ok: bool) -> None:
    assert valid_host(value) is ok


def test_list_members_split_outside_quotes_and_comments() -> None:
    assert list_members(' a, "b,c" ,, (d, e) f ,g') == ["a", '"b,c"', "(d, e) f", "g"]
    assert list_members('"x\\",y", z') == ['"x\\",y"', "z"]
    assert list_members("") == []


def test_cdn_loop_ids_drop_parameters_and_fold_case() -> None:
    assert cdn_loop_ids(['Foo123.Example:8080; abc=123; def="456, 789"', "bar, [::1]:80"]) == [
        "foo123.example:8080",
        "bar",
        "[::1]:80",
    ]


@pytest.mark.parametrize(
    ("pairs", "verdict"),
    [
        ([], None),
        ([("CDN-Loop", "other, shield:8080")], None),
        ([("CDN-Loop", "other"), ("cdn-loop", "Edge1:8080; x=1")], "loop"),
        ([("Via", "1.1 geoedge, 1.0 edge1:8080 (GeoEdge)")], "loop"),
        # The product-wide Via pseudonym is no node identity: tiers share it.
        ([("Via", "1.1 geoedge, 1.1 geoedge")], None),
        ([("CDN-Loop", ", ".join(f"n{i}" for i in range(3)))], None),
        ([("CDN-Loop", ", ".join(f"n{i}" for i in range(4)))], "too-many-hops"),
        ([("CDN-Loop", "n1, n2"), ("CDN-Loop", "n3, n4")], "too-many-hops"),
    ],
)
def test_loop_verdict(pairs: list[tuple[str, str]], verdict: str | None) -> None:
    assert loop_verdict(pairs, "edge1:8080", 3) == verdict


def test_cdn_loop_is_appended_to_the_clients_and_never_removed() -> None:
    common = {
        "client_ip": "192.0.2.7",
        "proto": "http",
        "host": "h",
        "version": (1, 1),
        "via": "geoedge",
        "cdn_loop": "edge1:8080",
    }
    out = origin_request_headers([("CDN-Loop", "cdn-a"), ("cdn-loop", "cdn-b; p=1")], **common)
    assert out.getall("CDN-Loop") == ["cdn-a, cdn-b; p=1, edge1:8080"]
    assert origin_request_headers([], **common)["CDN-Loop"] == "edge1:8080"
    # No strip list takes it away.
    out = origin_request_headers([("CDN-Loop", "cdn-a")], strip=frozenset({"x-host"}), **common)
    assert out["CDN-Loop"] == "cdn-a, edge1:8080"


def test_stripped_fields_are_dropped_from_every_peer() -> None:
    pairs = [
        ("X-Original-URL", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("X-Forwarded-Server", "evil"),
        ("X-Kept", "1"),
    ]
    strip = frozenset({"x-original-url", "x-http-method-override", "x-forwarded-server"})
    for peer in ("192.0.2.7", "10.1.2.3"):
        out = origin_request_headers(
            pairs,
            client_ip=peer,
            proto="http",
            host="h",
            version=(1, 1),
            via="geoedge",
            trusted=[ipaddress.ip_network("10.0.0.0/8")],
            strip=strip,
        )
        assert {k.lower() for k in out} & strip == set()
        assert out["X-Kept"] == "1"
