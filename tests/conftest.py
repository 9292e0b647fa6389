"""Fixtures shared by the whole test suite. Keep this file small."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.geodb import FIXTURE_JSON, build_city_db


@pytest.fixture(scope="session")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GeoIP2 City .mmdb built from tests/fixtures/geo_cities.json (London 192.0.2.0/24,
    New York 198.51.100.0/24, Tokyo 203.0.113.0/24, Frankfurt 2001:db8::/32, ...)."""
    return build_city_db(FIXTURE_JSON, tmp_path_factory.mktemp("geo") / "cities.mmdb")


_TABLE_CACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """GeoIP /24 tables (geo.table) built during the session, by tests or by the servers they
    start (which inherit the environment), go to a temporary cache directory."""
    directory = tempfile.mkdtemp(prefix="geoedge-xdg-")
    _TABLE_CACHE.append(directory)
    os.environ["XDG_CACHE_HOME"] = directory
    os.environ.pop("CACHE_DIRECTORY", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _TABLE_CACHE:
        shutil.rmtree(directory, ignore_errors=True)
