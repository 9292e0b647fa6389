"""PROXY protocol v1 and v2 headers (haproxy.org/download/2.9/doc/proxy-protocol.txt): pure codec.

The edge sends one header first on each connection to a stream origin configured with
`proxy_protocol`, so the origin sees the client's address instead of the edge's. The
decoder is here for the test origins and for whoever puts a GeoEdge stream behind another
one; it takes bytes and says how many of them the header used.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from edge.errors import EdgeError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (spec 2.1)
_V2_PROXY, _V2_LOCAL = 0x21, 0x20  # version 2 + command
_FAMILIES = {(4, "tcp"): 0x11, (4, "udp"): 0x12, (6, "tcp"): 0x21, (6, "udp"): 0x22}
_BY_FAMILY = {v: k for k, v in _FAMILIES.items()}

Endpoint = tuple[str, int]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(EdgeError):
    """Bytes that are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded header; `source`/`destination` are None for LOCAL (v2) and UNKNOWN (v1)."""

    version: int
    protocol: str  # tcp | udp | "" (unknown)
    source: Endpoint | None
    destination: Endpoint | None
    tlvs: bytes = b""


def _pair(source: Endpoint, destination: Endpoint) -> tuple[Address, Address] | None:
    """Both addresses as one IP version (IPv4 next to IPv6 becomes IPv4-mapped), or None."""
    try:
        src = ipaddress.ip_address(source[0].split("%", 1)[0])
        dst = ipaddress.ip_address(destination[0].split("%", 1)[0])
    except ValueError:
        return None
    if src.version != dst.version:
        src, dst = (
            ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst)
        )
    return src, dst


def encode_v1(source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """`PROXY TCP4 src dst sport dport\\r\\n`; `PROXY UNKNOWN\\r\\n` without IP endpoints."""
    pair = None if source is None or destination is None else _pair(source, destination)
    if pair is None or source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: Endpoint | None, destination: Endpoint | None, protocol: str = "tcp"
) -> bytes:
    """The binary header of the PROXY command; LOCAL (health checks) without endpoints, and
    PROXY with an unspecified family when they are not IP endpoints."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
    pair = _pair(source, destination)
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, 0, 0)
    src, dst = pair
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    family = _FAMILIES[(src.version, protocol)]
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def encode(version: str, source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """The header of a configured `proxy_protocol` ("v1" or "v2") for a TCP connection."""
    if version == "v1":
        return encode_v1(source, destination)
    if version == "v2":
        return encode_v2(source, destination)
    raise ProxyProtocolError(f"unknown PROXY protocol version {version!r}")


def decode(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `data` and its length, or None while it is incomplete."""
    if not data:
        return None
    if data[:1] == b"\r":
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyProtocolError("no PROXY protocol signature")
        return _decode_v2(data)
    if not b"PROXY ".startswith(data[:6]):
        raise ProxyProtocolError("no PROXY protocol signature")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("v1 header longer than 107 bytes")
        return None
    return _decode_v1(data[:end].decode("ascii", "replace")), end + 2


def _decode_v1(line: str) -> ProxyHeader:
    parts = line.split(" ")
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyHeader(1, "", None, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"bad v1 header {line!r}")
    try:
        version = ipaddress.ip_address(parts[2]).version
        if version != ipaddress.ip_address(parts[3]).version or f"TCP{version}" != parts[1]:
            raise ProxyProtocolError(f"v1 addresses do not match {parts[1]}")
        ports = [int(p) for p in parts[4:6] if p.isdigit() and (p == "0" or p[0] != "0")]
    except ValueError:
        raise ProxyProtocolError(f"bad v1 address in {line!r}") from None
    if len(ports) != 2 or not all(0 <= p <= 65535 for p in ports):
        raise ProxyProtocolError(f"bad v1 port in {line!r}")
    return ProxyHeader(1, "tcp", (parts[2], ports[0]), (parts[3], ports[1]))


def _decode_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        return None
    command, family, length = struct.unpack("!BBH", data[12:16])
    if command not in (_V2_PROXY, _V2_LOCAL):
        raise ProxyProtocolError(f"bad v2 version/command byte {command:#04x}")
    total = 16 + length
    if len(data) < total:
        return None
    body = data[16:total]
    if command == _V2_LOCAL or family == 0:
        return ProxyHeader(2, "", None, None, body), total
    if family not in _BY_FAMILY:
        raise ProxyProtocolError(f"unsupported v2 family {family:#04x}")
    ip_version, protocol = _BY_FAMILY[family]
    size = 4 if ip_version == 4 else 16
    if len(body) < 2 * size + 4:
        raise ProxyProtocolError("v2 address block too short")
    ips = [ipaddress.ip_address(body[i * size : (i + 1) * size]) for i in (0, 1)]
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    tlvs = body[2 * size + 4 :]
    return ProxyHeader(2, protocol, (str(ips[0]), sport), (str(ips[1]), dport), tlvs), total
