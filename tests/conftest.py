"""Fixtures shared by the whole test suite. Keep this file small."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.geodb import FIXTURE_JSON, build_city_db


@pytest.fixture(scope="session")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GeoIP2 City .mmdb built from tests/fixtures/geo_cities.json (London 192.0.2.0/24,
    New York 198.51.100.0/24, Tokyo 203.0.113.0/24, Frankfurt 2001:db8::/32, ...)."""
    return build_city_db(FIXTURE_JSON, tmp_path_factory.mktemp("geo") / "cities.mmdb")
