"""GeoIP location and great-circle distance for GeoEdge.

The public API: `Location` (a frozen value), the `Locator` interface, `GeoIPLocator` (MaxMind
database plus CIDR overrides, reloaded on file change) and `distance_km`.
"""

from geo.distance import distance_km
from geo.errors import GeoError
from geo.location import Location, Locator

__all__ = ["GeoError", "Location", "Locator", "distance_km"]
