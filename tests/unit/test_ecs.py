"""EDNS Client Subnet option decoding and the address used for the geo decision."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.location import Location
from gslb.ecs import ClientSubnet, answer_scope, decision_address
from gslb.errors import FormError


def option(family: int, source: int, scope: int, address: bytes) -> bytes:
    return bytes((0, family, source, scope)) + address


def test_decode_ipv4() -> None:
    ecs = ClientSubnet.decode(option(1, 24, 0, b"\xc0\x00\x02"))
    assert (ecs.family, ecs.source, ecs.scope, ecs.address) == (1, 24, 0, b"\xc0\x00\x02")
    assert ecs.lookup_address() == ipaddress.IPv4Address("192.0.2.0")
    assert ecs.text() == "192.0.2.0/24"


def test_source_is_capped_for_lookup() -> None:
    v4 = ClientSubnet.decode(option(1, 32, 0, bytes([198, 51, 100, 77])))
    assert v4.lookup_address() == ipaddress.IPv4Address("198.51.100.0")
    v6 = ClientSubnet.decode(option(2, 64, 0, bytes.fromhex("20010db812345678")))
    assert v6.lookup_address() == ipaddress.IPv6Address("2001:db8:1234:5600::")


def test_short_prefix_is_masked() -> None:
    ecs = ClientSubnet.decode(option(1, 20, 0, bytes([10, 1, 0x30])))
    assert ecs.lookup_address() == ipaddress.IPv4Address("10.1.48.0")


def test_zero_prefix() -> None:
    ecs = ClientSubnet.decode(option(2, 0, 0, b""))
    assert ecs.lookup_address() == ipaddress.IPv6Address("::")
    assert ecs.text() == "::/0"


def test_encode_echoes_with_scope() -> None:
    ecs = ClientSubnet.decode(option(1, 24, 0, b"\xc0\x00\x02"))
    assert ecs.encode(16) == b"\x00\x08\x00\x07" + option(1, 24, 16, b"\xc0\x00\x02")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x01\x18", "shorter than 4"),
        (option(3, 24, 0, b"\x01\x02\x03"), "family 3"),
        (option(1, 33, 0, b"\x01\x02\x03\x04\x05"), "longer than 32"),
        (option(2, 129, 0, bytes(17)), "longer than 128"),
        (option(1, 24, 8, b"\x01\x02\x03"), "scope prefix must be 0"),
        (option(1, 24, 0, b"\x01\x02"), "address length"),
        (option(1, 24, 0, b"\x01\x02\x03\x04"), "address length"),
        (option(1, 23, 0, b"\x01\x02\x03"), "beyond the source prefix"),
    ],
)
def test_malformed_options_are_formerr(data: bytes, problem: str) -> None:
    with pytest.raises(FormError, match=problem):
        ClientSubnet.decode(data)


@given(
    v6=st.booleans(),
    value=st.integers(0, 2**128 - 1),
    source=st.integers(0, 128),
)
def test_any_valid_subnet_round_trips(v6: bool, value: int, source: int) -> None:
    bits = 128 if v6 else 32
    source = min(source, bits)
    value &= (1 << bits) - 1
    masked = value >> (bits - source) << (bits - source) if source else 0
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    if v6:
        network = ipaddress.IPv6Network((masked, source))
    else:
        network = ipaddress.IPv4Network((masked, source))
    address = network.network_address.packed[: (source + 7) // 8]
    ecs = ClientSubnet.decode(option(2 if v6 else 1, source, 0, address))
    cap = 56 if v6 else 24
    assert ecs.lookup_address() in network.supernet(new_prefix=min(source, cap))
    assert ecs.text() == str(network)
    assert ecs.encode(0)[4:] == option(2 if v6 else 1, source, 0, address)


def test_decision_address_is_the_capped_subnet_or_the_client() -> None:
    client = ipaddress.ip_address("203.0.113.9")
    ecs = ClientSubnet.decode(option(1, 32, 0, bytes([198, 51, 100, 77])))
    assert decision_address(ecs, client) == ipaddress.IPv4Address("198.51.100.0")
    assert decision_address(None, client) == client
    zero = ClientSubnet.decode(option(1, 0, 0, b""))
    assert decision_address(zero, client) == client  # source 0: the resolver decides
    mapped = ipaddress.ip_address("::ffff:192.0.2.1")
    assert decision_address(None, mapped) == ipaddress.IPv4Address("192.0.2.1")


def test_answer_scope_is_the_deciding_network_capped() -> None:
    ecs = ClientSubnet.decode(option(1, 24, 0, b"\xc0\x00\x02"))
    wide = Location(0, 0, None, None, ipaddress.ip_network("192.0.0.0/16"))
    narrow = Location(0, 0, None, None, ipaddress.ip_network("192.0.2.128/25"))
    assert answer_scope(ecs, wide, True) == 16
    assert answer_scope(ecs, narrow, True) == 24
    assert answer_scope(ecs, wide, False) == 0  # not tailored to the client
    assert answer_scope(None, wide, True) == 0
    assert answer_scope(ecs, None, True) == 0
    v6 = ClientSubnet.for_network(ipaddress.ip_network("2001:db8::/64"))
    assert (
        answer_scope(v6, Location(0, 0, None, None, ipaddress.ip_network("2001:db8::/60")), True)
        == 56
    )


@given(st.integers(0, 2**32 - 1), st.integers(1, 32))
def test_for_network_is_what_a_resolver_sends(value: int, prefix: int) -> None:
    net = ipaddress.IPv4Network((value, prefix), strict=False)
    ecs = ClientSubnet.for_network(net)
    assert ClientSubnet.decode(ecs.encode(0)[4:]) == ecs
    assert ecs.text() == str(net)


@given(st.ip_addresses(), st.integers(0, 128))
def test_the_option_built_for_a_network_decodes_to_that_network(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int
) -> None:
    network = ipaddress.ip_network(f"{address}/{min(prefix, address.max_prefixlen)}", strict=False)
    ecs = ClientSubnet.decode(ClientSubnet.for_network(network).encode(0)[4:])
    assert ecs.text() == str(network)
