"""The value a GeoIP lookup produces, and the interface every locator implements."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Location:
    """Where an address is, and the network the answer holds for.

    `network` is the database (or override) network that matched; the DNS side uses its prefix
    length as the ECS scope and as part of the response-cache key.
    """

    latitude: float
    longitude: float
    country: str | None
    continent: str | None
    network: IPNetwork


class Locator(Protocol):
    """Maps an address to a Location, or None when nothing is known about it."""

    def locate(self, address: IPAddress) -> Location | None: ...


@runtime_checkable
class PlaceLocator(Locator, Protocol):
    """A Locator with a shortcut for the DNS cold path (gslb.answer): where an IPv4 address is
    as plain values, without building an address, a network or a Location."""

    def place4(self, value: int) -> tuple[float, float, int] | None:
        """(latitude, longitude, prefix length of the network holding it) for the IPv4
        address `value` (an int), exactly what `locate` would say, when that is at hand
        cheaply; None when `locate` must answer (which it then does, and may say nothing)."""
        ...

    def place_key4(self, block: int) -> int | None:
        """A number standing for what `place4` says of the first address of the /24 `block`
        (an IPv4 address >> 8), when one is at hand for it: a number stands for one answer
        for the life of the process, so a cache can be keyed by it (many /24s share one).
        None: ask place4."""
        ...

    def place_of(self, key: int) -> tuple[float, float, int] | None:
        """What `place4` says of the /24s whose `place_key4` is `key`; None when that is no
        longer at hand (the key came from a database this locator has replaced since)."""
        ...
