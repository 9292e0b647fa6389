"""Great-circle distance between two points on the Earth (a sphere of mean radius).

The central angle comes from atan2 of its sine and cosine (the spherical case of Vincenty's
formula), which stays accurate for every pair of points; the haversine's asin loses about
a tenth of a metre near antipodal points, enough to break the triangle inequality there.
"""

from __future__ import annotations

from math import atan2, cos, hypot, radians, sin

EARTH_RADIUS_KM = 6371.0088


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two (latitude, longitude) points in degrees."""
    p1, p2 = radians(lat1), radians(lat2)
    dl = radians(lon2 - lon1)
    sin1, cos1, sin2, cos2, cosl = sin(p1), cos(p1), sin(p2), cos(p2), cos(dl)
    y = hypot(cos2 * sin(dl), cos1 * sin2 - sin1 * cos2 * cosl)
    x = sin1 * sin2 + cos1 * cos2 * cosl
    return EARTH_RADIUS_KM * atan2(y, x)
