"""EDNS Client Subnet (RFC 7871): decoding, validation and the echo we send back.

dnslib leaves option 8 as an opaque blob, so it is decoded here, strictly: an option a
resolver got wrong is answered with FORMERR rather than guessed at.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, NoReturn

from geo.location import IPAddress, Location
from gslb.errors import FormError

OPTION_CODE: Final = 8
FAMILY_IPV4: Final = 1
FAMILY_IPV6: Final = 2
# How much of the client's address we use: finer prefixes add no location accuracy but
# fragment caches (ours and the resolvers'), and RFC 7871 section 11.1 recommends these.
CAP_IPV4: Final = 24
CAP_IPV6: Final = 56

_BITS: Final = {FAMILY_IPV4: 32, FAMILY_IPV6: 128}


# Not frozen for the same reason as wire.Query: one is built per ECS query. Read-only by use.
@dataclass(slots=True)
class ClientSubnet:
    family: int
    source: int  # SOURCE PREFIX-LENGTH as received
    scope: int
    address: bytes  # ceil(source / 8) octets as received

    @classmethod
    def decode(cls, data: bytes) -> ClientSubnet:
        """Parse the option data of an ECS option in a query. Raises FormError."""
        n = len(data)
        if n >= 4 and data[0] == 0 and data[3] == 0:
            family, source = data[1], data[2]
            # The common, valid case in as few steps as possible (this runs per query).
            if (
                (
                    (family == FAMILY_IPV4 and source <= 32)
                    or (family == FAMILY_IPV6 and source <= 128)
                )
                and n - 4 == (source + 7) // 8
                and not (source % 8 and data[-1] & (0xFF >> (source % 8)))
            ):
                return cls(family, source, 0, data[4:])
        cls._reject(data)

    @classmethod
    def for_network(cls, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ClientSubnet:
        """The option a client (resolver) sends for `network`, e.g. 192.0.2.0/24."""
        family = FAMILY_IPV4 if network.version == 4 else FAMILY_IPV6
        source = network.prefixlen
        return cls(family, source, 0, network.network_address.packed[: (source + 7) // 8])

    @staticmethod
    def _reject(data: bytes) -> NoReturn:
        """Raise the FormError that says what is wrong with `data`."""
        if len(data) < 4:
            raise FormError("ECS option shorter than 4 octets")
        family = (data[0] << 8) | data[1]
        source, scope = data[2], data[3]
        bits = _BITS.get(family)
        if bits is None:
            raise FormError(f"ECS family {family} is not 1 or 2")
        if source > bits:
            raise FormError(f"ECS source prefix {source} longer than {bits}")
        if scope != 0:
            raise FormError("ECS scope prefix must be 0 in a query")
        address = data[4:]
        if len(address) != (source + 7) // 8:
            raise FormError("ECS address length does not match the source prefix")
        raise FormError("ECS address has bits set beyond the source prefix")

    def lookup_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address to locate: the subnet's network address, cut to the /24 or /56 cap."""
        v4 = self.family == FAMILY_IPV4
        used = min(self.source, CAP_IPV4 if v4 else CAP_IPV6)
        raw = self.address[: (used + 7) // 8]
        if used % 8:
            raw = raw[:-1] + bytes((raw[-1] & (0xFF << (8 - used % 8)) & 0xFF,))
        if v4:
            return ipaddress.IPv4Address(raw.ljust(4, b"\0"))
        return ipaddress.IPv6Address(raw.ljust(16, b"\0"))

    def text(self) -> str:
        """The subnet as sent, e.g. "192.0.2.0/24"."""
        if self.family == FAMILY_IPV4 and len(self.address) <= 4:
            a, b, c, d = self.address.ljust(4, b"\0")
            return f"{a}.{b}.{c}.{d}/{self.source}"
        addr = self.address.ljust(4 if self.family == FAMILY_IPV4 else 16, b"\0")
        ip = ipaddress.ip_address(addr)
        return f"{ip}/{self.source}"

    def encode(self, scope: int) -> bytes:
        """The full option (code, length, data) echoing this subnet with `scope`."""
        data = bytes((self.family >> 8, self.family & 0xFF, self.source, scope)) + self.address
        return OPTION_CODE.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def decision_address(ecs: ClientSubnet | None, client: IPAddress) -> IPAddress:
    """The address whose location decides a pool answer: the ECS subnet (capped) when the
    query has one with a non-zero source prefix, else the client's own address (an
    IPv4-mapped IPv6 address as its IPv4 address)."""
    if ecs is not None and ecs.source:
        return ecs.lookup_address()
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        return client.ipv4_mapped
    return client


def answer_scope(ecs: ClientSubnet | None, where: Location | None, tailored: bool) -> int:
    """The SCOPE PREFIX-LENGTH of a pool answer: the prefix of the GeoIP network that
    decided it, capped at /24 (/56), for an answer tailored to an ECS subnet; else 0.

    The decision saw at most the capped prefix of the subnet: a longer GeoIP network would
    tell resolvers the answer was made for a part of the /24 (/56) that the address we
    looked up may not even lie in."""
    return scope_of(ecs, None if where is None else where.network.prefixlen, tailored)


def scope_of(ecs: ClientSubnet | None, prefix: int | None, tailored: bool) -> int:
    """answer_scope from the prefix length of the GeoIP network (None: not located)."""
    if ecs is None or not ecs.source or not tailored or prefix is None:
        return 0
    return min(prefix, CAP_IPV4 if ecs.family == FAMILY_IPV4 else CAP_IPV6)
