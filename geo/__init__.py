"""GeoIP location and great-circle distance for GeoEdge.

The public API: `Location` (a frozen value), the `Locator` interface (and `PlaceLocator`, its
shortcut for the DNS cold path), `GeoIPLocator` (MaxMind database plus CIDR overrides,
reloaded on file change) and `distance_km`.
"""

from geo.distance import distance_km
from geo.errors import DatabaseError, GeoError
from geo.location import IPAddress, IPNetwork, Location, Locator, PlaceLocator
from geo.locator import GeoIPLocator, default_database_path

__all__ = [
    "DatabaseError",
    "GeoError",
    "GeoIPLocator",
    "IPAddress",
    "IPNetwork",
    "Location",
    "Locator",
    "PlaceLocator",
    "default_database_path",
    "distance_km",
]
