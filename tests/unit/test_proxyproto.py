"""PROXY protocol v1/v2 headers against the examples and layout of the spec
(haproxy.org/download/2.9/doc/proxy-protocol.txt), and decode(encode(x)) == x."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import proxyproto
from edge.proxyproto import ProxyHeader, ProxyProtocolError

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # spec 2.2, the 12-byte signature


def test_v1_spec_example() -> None:
    header = proxyproto.encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_longest_line_fits_the_spec_bound() -> None:
    v6 = "ffff:f...f:ffff".replace("f...f", ":".join(["ffff"] * 6))
    header = proxyproto.encode_v1((v6, 65535), (v6, 65535))
    # 104 bytes; the spec's 107 is for "PROXY UNKNOWN" followed by the same addresses
    assert header.startswith(b"PROXY TCP6 ") and len(header) == 104 <= proxyproto.V1_MAX


def test_v1_unknown_without_ip_endpoints() -> None:
    assert proxyproto.encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert proxyproto.encode_v1(("/run/sock", 0), ("/x", 0)) == b"PROXY UNKNOWN\r\n"


def test_v2_tcp4_layout() -> None:
    header = proxyproto.encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == (
        SIG + b"\x21\x11\x00\x0c" + bytes([192, 168, 0, 1, 192, 168, 0, 11]) + b"\xdc\x04\x01\xbb"
    )


def test_v2_tcp6_and_udp_families() -> None:
    header = proxyproto.encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert header[12:16] == b"\x21\x21\x00\x24" and len(header) == 16 + 36
    assert proxyproto.encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), "udp")[13] == 0x12


def test_v2_local_for_health_checks() -> None:
    assert proxyproto.encode_v2(None, None) == SIG + b"\x20\x00\x00\x00"
    assert proxyproto.decode(SIG + b"\x20\x00\x00\x00") == (ProxyHeader(2, "", None, None), 16)


def test_mixed_families_become_ipv4_mapped() -> None:
    header = proxyproto.encode_v1(("10.1.2.3", 5), ("::1", 6))
    assert header.startswith(b"PROXY TCP6 ") and header.endswith(b" ::1 5 6\r\n")
    decoded = proxyproto.decode(header)
    assert decoded is not None and decoded[0].source is not None
    assert ipaddress.ip_address(decoded[0].source[0]) == ipaddress.ip_address("::ffff:10.1.2.3")


def test_decode_reports_length_and_leaves_payload() -> None:
    data = proxyproto.encode_v2(("10.0.0.1", 1000), ("10.0.0.2", 80)) + b"GET / HTTP/1.1\r\n"
    decoded = proxyproto.decode(data)
    assert decoded is not None
    header, used = decoded
    assert header.source == ("10.0.0.1", 1000) and header.destination == ("10.0.0.2", 80)
    assert data[used:] == b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_incomplete_headers_ask_for_more(version: str) -> None:
    full = proxyproto.encode(version, ("10.0.0.1", 1), ("10.0.0.2", 2))
    for n in range(len(full)):
        assert proxyproto.decode(full[:n]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 200,
        SIG + b"\x31\x11\x00\x0c" + bytes(12),
        SIG + b"\x21\x11\x00\x04" + bytes(4),
        SIG[:11] + b"X" + b"\x21\x11\x00\x00",
    ],
)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        proxyproto.decode(data)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ProxyProtocolError):
        proxyproto.encode("v3", None, None)


_ip = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: str(a) if a.ipv4_mapped is None else "::1"),
)
_port = st.integers(0, 65535)


@given(st.data(), _port, _port)
def test_roundtrip(data: st.DataObject, sport: int, dport: int) -> None:
    src = data.draw(_ip)
    version = ipaddress.ip_address(src).version
    dst = data.draw(st.ip_addresses(v=version).map(str))
    for name in ("v1", "v2"):
        encoded = proxyproto.encode(name, (src, sport), (dst, dport))
        decoded = proxyproto.decode(encoded + b"x")
        assert decoded is not None
        header, used = decoded
        assert used == len(encoded)
        assert (header.source, header.destination, header.protocol) == (
            (src, sport),
            (dst, dport),
            "tcp",
        )
