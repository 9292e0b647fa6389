"""Great-circle distance: known city pairs and the properties a metric on a sphere has."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo import distance_km
from geo.distance import EARTH_RADIUS_KM

LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.0060)
LOS_ANGELES = (34.0522, -118.2437)
TOKYO = (35.6762, 139.6503)
SYDNEY = (-33.8688, 151.2093)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        # Published great-circle distances between city centres.
        (LONDON, PARIS, 344.0),
        (LONDON, NEW_YORK, 5570.0),
        (NEW_YORK, LOS_ANGELES, 3936.0),
        (TOKYO, SYDNEY, 7826.0),
    ],
)
def test_known_city_pairs_within_one_percent(
    a: tuple[float, float], b: tuple[float, float], km: float
) -> None:
    assert distance_km(*a, *b) == pytest.approx(km, rel=0.01)


def test_exact_fractions_of_the_circumference() -> None:
    half = math.pi * EARTH_RADIUS_KM
    assert distance_km(0, 0, 0, 0) == 0
    assert distance_km(0, 0, 0, 90) == pytest.approx(half / 2)
    assert distance_km(90, 0, -90, 0) == pytest.approx(half)
    assert distance_km(0, 0, 0, 180) == pytest.approx(half)
    # Longitude means nothing at a pole.
    assert distance_km(90, 0, 90, 123) == pytest.approx(0, abs=1e-6)


lat = st.floats(min_value=-90, max_value=90, allow_nan=False)
lon = st.floats(min_value=-180, max_value=180, allow_nan=False)


@given(lat, lon, lat, lon)
def test_symmetric_and_bounded(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    d = distance_km(lat1, lon1, lat2, lon2)
    assert 0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-6
    assert d == pytest.approx(distance_km(lat2, lon2, lat1, lon1), abs=1e-6)


@given(lat, lon, lat, lon, lat, lon)
def test_triangle_inequality(
    lat1: float, lon1: float, lat2: float, lon2: float, lat3: float, lon3: float
) -> None:
    direct = distance_km(lat1, lon1, lat3, lon3)
    via = distance_km(lat1, lon1, lat2, lon2) + distance_km(lat2, lon2, lat3, lon3)
    assert direct <= via + 1e-6
