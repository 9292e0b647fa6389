"""GeoIPLocator against a City database built from tests/fixtures/geo_cities.json."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geoip2.database
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter

from geo import DatabaseError, GeoError, GeoIPLocator, Location, default_database_path
from tests.geodb import write_city_db

ip = ipaddress.ip_address
net = ipaddress.ip_network

LONDON = {
    "network": "192.0.2.0/24",
    "city": "London",
    "country": "GB",
    "continent": "EU",
    "latitude": 51.5074,
    "longitude": -0.1278,
}
PARIS = {**LONDON, "city": "Paris", "country": "FR", "latitude": 48.8566, "longitude": 2.3522}


def place(cidr: str, lat: float, lon: float, country: str | None = None) -> Location:
    return Location(lat, lon, country, None, net(cidr))


@pytest.fixture(scope="module")
def locator(geo_db: Path) -> Iterator[GeoIPLocator]:
    with GeoIPLocator(geo_db) as loc:
        yield loc


@pytest.mark.parametrize(
    ("address", "country", "continent", "lat", "lon", "network"),
    [
        ("192.0.2.1", "GB", "EU", 51.5074, -0.1278, "192.0.2.0/24"),
        ("192.0.2.255", "GB", "EU", 51.5074, -0.1278, "192.0.2.0/24"),
        ("198.51.100.7", "US", "NA", 40.7128, -74.006, "198.51.100.0/24"),
        ("203.0.113.200", "JP", "AS", 35.6762, 139.6503, "203.0.113.0/24"),
        ("2001:db8::1", "DE", "EU", 50.1109, 8.6821, "2001:db8::/32"),
        ("2001:db8:ffff:ffff::53", "DE", "EU", 50.1109, 8.6821, "2001:db8::/32"),
        # 100.64.0.0/24 is Sydney with 100.64.0.128/25 split off to Auckland: the database
        # reports the network that actually matched, /25 on both sides.
        ("100.64.0.1", "AU", "OC", -33.8688, 151.2093, "100.64.0.0/25"),
        ("100.64.0.200", "NZ", "OC", -36.8485, 174.7633, "100.64.0.128/25"),
        # IPv4-mapped IPv6 is looked up in the mapped tree and reported as IPv6.
        ("::ffff:192.0.2.9", "GB", "EU", 51.5074, -0.1278, "::ffff:192.0.2.0/120"),
    ],
)
def test_fixture_networks(
    locator: GeoIPLocator,
    address: str,
    country: str,
    continent: str,
    lat: float,
    lon: float,
    network: str,
) -> None:
    loc = locator.locate(ip(address))
    assert loc == Location(lat, lon, country, continent, net(network))
    assert ip(address) in loc.network


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "10.0.0.1", "127.0.0.1", "192.0.3.1", "2001:db9::1", "::1", "fe80::1"],
)
def test_addresses_not_in_the_database_are_unknown(locator: GeoIPLocator, address: str) -> None:
    assert locator.locate(ip(address)) is None


def test_network_without_coordinates_is_unknown(locator: GeoIPLocator, geo_db: Path) -> None:
    # The database does know 100.64.1.0/24 (continent only) ...
    with geoip2.database.Reader(str(geo_db)) as reader:
        city = reader.city("100.64.1.1")
        assert city.continent.code == "EU"
        assert city.location.latitude is None
    # ... but a location without coordinates is no use for choosing an edge.
    assert locator.locate(ip("100.64.1.1")) is None


def test_fixture_database_reads_as_geoip2_city(geo_db: Path) -> None:
    with geoip2.database.Reader(str(geo_db)) as reader:
        assert reader.metadata().database_type == "GeoLite2-City"
        city = reader.city("198.51.100.1")
        assert city.city.name == "New York"
        assert city.country.iso_code == "US"
        assert city.continent.code == "NA"
        assert city.location.time_zone == "America/New_York"
        assert city.traits.network == net("198.51.100.0/24")


def test_repeated_lookups_agree_with_and_without_cache(geo_db: Path) -> None:
    addresses = [ip(a) for a in ("192.0.2.1", "2001:db8::1", "8.8.8.8", "100.64.0.129")] * 3
    with GeoIPLocator(geo_db, cache_size=0) as plain, GeoIPLocator(geo_db, cache_size=2) as tiny:
        for a in addresses:
            assert plain.locate(a) == tiny.locate(a)


# --- overrides ---------------------------------------------------------------------------


def test_override_wins_over_database(geo_db: Path) -> None:
    paris = place("192.0.2.0/25", 48.8566, 2.3522, "FR")
    with GeoIPLocator(geo_db, overrides=[paris]) as loc:
        assert loc.locate(ip("192.0.2.1")) == paris
        # Outside the override the database answers as before.
        london = loc.locate(ip("192.0.2.200"))
        assert london is not None
        assert london.country == "GB"
        assert london.network == net("192.0.2.0/24")


def test_most_specific_override_wins(geo_db: Path) -> None:
    wide = place("10.0.0.0/8", 50.0, 8.0, "DE")
    mid = place("10.1.0.0/16", 52.5, 13.4, "DE")
    narrow = place("10.1.2.0/24", 48.1, 11.6, "DE")
    host = place("10.1.2.3/32", 53.5, 10.0, "DE")
    v6 = place("fd00::/8", 47.4, 8.5, "CH")
    v6_narrow = place("fd00:1::/32", 46.2, 6.1, "CH")
    # Order of the list does not matter.
    overrides = [narrow, v6, host, wide, v6_narrow, mid]
    with GeoIPLocator(geo_db, overrides=overrides) as loc:
        assert loc.locate(ip("10.9.9.9")) == wide
        assert loc.locate(ip("10.1.9.9")) == mid
        assert loc.locate(ip("10.1.2.4")) == narrow
        assert loc.locate(ip("10.1.2.3")) == host
        assert loc.locate(ip("fd99::1")) == v6
        assert loc.locate(ip("fd00:1::1")) == v6_narrow
        assert loc.locate(ip("11.0.0.1")) is None
        # An IPv4 override never matches IPv6, not even IPv4-mapped.
        assert loc.locate(ip("::ffff:10.1.2.3")) is None
        assert loc.overrides == tuple(overrides)


def test_default_route_override_catches_everything_of_its_family(geo_db: Path) -> None:
    anywhere = place("0.0.0.0/0", 0.0, 0.0)
    with GeoIPLocator(geo_db, overrides=[anywhere]) as loc:
        assert loc.locate(ip("198.51.100.1")) == anywhere
        assert loc.locate(ip("2001:db8::1")) is not None
        assert loc.locate(ip("2001:db8::1")) != anywhere


def test_duplicate_override_network_is_rejected(geo_db: Path) -> None:
    with pytest.raises(GeoError, match=re.escape("10.0.0.0/8")):
        GeoIPLocator(geo_db, overrides=[place("10.0.0.0/8", 1, 1), place("10.0.0.0/8", 2, 2)])


# --- opening and reloading ---------------------------------------------------------------


def test_missing_database_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(DatabaseError, match=re.escape("nope.mmdb")):
        GeoIPLocator(missing)


def test_garbage_file_is_a_database_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"this is not a MaxMind database\n" * 10)
    with pytest.raises(DatabaseError, match=re.escape("bad.mmdb")):
        GeoIPLocator(bad)


def test_non_city_database_is_rejected(tmp_path: Path) -> None:
    import netaddr

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    writer.insert_network(netaddr.IPSet(["192.0.2.0/24"]), {"autonomous_system_number": 64496})
    path = tmp_path / "asn.mmdb"
    writer.to_db_file(str(path))
    with pytest.raises(DatabaseError, match="City"):
        GeoIPLocator(path)


def test_ipv4_only_database_answers_none_for_ipv6(tmp_path: Path) -> None:
    import netaddr

    writer = MMDBWriter(ip_version=4, database_type="Test-City")
    writer.insert_network(
        netaddr.IPSet(["192.0.2.0/24"]), {"location": {"latitude": 1.5, "longitude": 2.5}}
    )
    path = tmp_path / "v4.mmdb"
    writer.to_db_file(str(path))
    with GeoIPLocator(path) as loc:
        assert loc.locate(ip("192.0.2.1")) == Location(1.5, 2.5, None, None, net("192.0.2.0/24"))
        assert loc.locate(ip("2001:db8::1")) is None


def _replace(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write a new database beside `path` and rename it over `path`, like geoipupdate."""
    staged = path.with_name("staged.mmdb")
    write_city_db(entries, staged)
    os.replace(staged, path)


def test_reload_picks_up_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "city.mmdb"
    write_city_db([LONDON], path)
    with GeoIPLocator(path) as loc:
        before = loc.locate(ip("192.0.2.1"))  # also fills the result cache
        assert before is not None
        assert before.country == "GB"
        assert loc.maybe_reload() is False  # nothing changed

        _replace(path, [PARIS])
        assert loc.maybe_reload() is True
        after = loc.locate(ip("192.0.2.1"))
        assert after is not None
        assert after.country == "FR"
        assert loc.maybe_reload() is False


def test_bad_new_file_keeps_the_old_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "city.mmdb"
    write_city_db([LONDON], path)
    with GeoIPLocator(path) as loc:
        staged = tmp_path / "staged.mmdb"
        staged.write_bytes(b"\x00" * 4096)
        os.replace(staged, path)
        with caplog.at_level(logging.ERROR, logger="geo"), pytest.raises(DatabaseError):
            loc.maybe_reload()
        assert "keeping the old one" in caplog.text
        kept = loc.locate(ip("192.0.2.1"))
        assert kept is not None
        assert kept.country == "GB"
        # The same bad file is reported once, not on every poll.
        assert loc.maybe_reload() is False

        # A good file after the bad one is picked up.
        _replace(path, [PARIS])
        assert loc.maybe_reload() is True
        fixed = loc.locate(ip("192.0.2.1"))
        assert fixed is not None
        assert fixed.country == "FR"


def test_file_gone_for_a_moment_keeps_the_old_database(tmp_path: Path) -> None:
    path = tmp_path / "city.mmdb"
    write_city_db([LONDON], path)
    with GeoIPLocator(path) as loc:
        path.unlink()
        assert loc.maybe_reload() is False
        assert loc.locate(ip("192.0.2.1")) is not None


# --- the bundled default -----------------------------------------------------------------


def test_default_database_is_the_bundled_geolite2() -> None:
    assert default_database_path().name == "GeoLite2-City.mmdb"
    assert default_database_path().is_file()
    with GeoIPLocator() as loc:
        assert loc.path == default_database_path()
        assert loc.database_type == "GeoLite2-City"
        google = loc.locate(ip("8.8.8.8"))
        assert google is not None
        assert google.country == "US"
        assert google.continent == "NA"
        assert ip("8.8.8.8") in google.network
        # Somewhere in the contiguous United States.
        assert 24 < google.latitude < 50
        assert -125 < google.longitude < -66


# --- never raises ------------------------------------------------------------------------


@given(st.ip_addresses())
def test_locate_never_raises(locator: GeoIPLocator, address: Any) -> None:
    result = locator.locate(address)
    if result is not None:
        assert address in result.network
        assert -90 <= result.latitude <= 90
        assert -180 <= result.longitude <= 180


@given(st.ip_addresses())
def test_locate_never_raises_with_overrides(geo_db: Path, address: Any) -> None:
    overrides = [place("10.0.0.0/8", 1, 1), place("fd00::/8", 2, 2), place("::/0", 3, 3)]
    with GeoIPLocator(geo_db, overrides=overrides, cache_size=0) as loc:
        result = loc.locate(address)
    if address.version == 6:
        assert result is not None
    if result is not None:
        assert address in result.network


def test_lookup_racing_a_reload_is_answered_by_the_new_database(tmp_path: Path) -> None:
    # A thread that read the old database reference just before another thread's reload
    # closed it must get an answer from the new database, not an error. This drives that
    # interleaving deterministically through the internal lookup step.
    path = tmp_path / "city.mmdb"
    write_city_db([LONDON], path)
    with GeoIPLocator(path) as loc:
        stale = loc._db
        _replace(path, [PARIS])
        assert loc.maybe_reload() is True
        answer = loc._lookup(stale, ip("192.0.2.1"))
        assert answer is not None
        assert answer.country == "FR"


# --- the search-tree walk and the network cache ------------------------------------------


def _random_v4_db(path: Path, seed: int, ip_version: int) -> Path:
    """A City database of random, partly nested IPv4 networks (some without coordinates)."""
    import random

    import netaddr

    rnd = random.Random(seed)
    writer = MMDBWriter(
        ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="Test-City"
    )
    nets = []
    for _ in range(rnd.randint(1, 40)):
        prefix = rnd.randint(1, 32)
        value = rnd.getrandbits(32) & ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF)
        nets.append(netaddr.IPNetwork((value, prefix)))
    nets.sort(key=lambda n: n.prefixlen)  # supernets first (see tests.geodb)
    for i, n in enumerate(nets):
        record: dict[str, Any] = {"country": {"iso_code": f"C{i}"}}
        if i % 5:
            record["location"] = {"latitude": float(i % 90), "longitude": float(i)}
        writer.insert_network(netaddr.IPSet([n]), record)
    writer.to_db_file(str(path))
    return path


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    ip_version=st.sampled_from([4, 6]),
    probes=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=60),
)
def test_tree_walk_and_network_cache_agree_with_the_reader(
    tmp_path_factory: pytest.TempPathFactory, seed: int, ip_version: int, probes: list[int]
) -> None:
    # The cached path walks the search tree itself and caches by leaf network; the uncached
    # path asks the C extension for every address. Both must say the same, every time.
    path = _random_v4_db(tmp_path_factory.mktemp("walk") / "r.mmdb", seed, ip_version)
    with GeoIPLocator(path, cache_size=0) as plain, GeoIPLocator(path, cache_size=8) as cached:
        assert cached._db.tree is not None
        addresses = [ipaddress.IPv4Address(v) for v in probes]
        for a in addresses + addresses[::-1]:
            assert cached.locate(a) == plain.locate(a), a
        assert cached._db.tree is not None  # no disagreement turned the walk off


def test_tree_walk_agrees_with_the_reader_on_the_bundled_database() -> None:
    import random

    rnd = random.Random(20261127)
    with GeoIPLocator(cache_size=0) as plain, GeoIPLocator() as cached:
        tree = cached._db.tree
        assert tree is not None
        for _ in range(3000):
            a = ipaddress.IPv4Address(rnd.getrandbits(32))
            assert cached.locate(a) == plain.locate(a), a
        assert cached._db.tree is tree and tree.records


def test_network_cache_answers_other_addresses_of_a_network_and_stays_bounded(
    geo_db: Path,
) -> None:
    with GeoIPLocator(geo_db, cache_size=2) as loc:
        first = loc.locate(ip("192.0.2.1"))
        assert first is not None and first.network == net("192.0.2.0/24")
        assert loc.locate(ip("192.0.2.200")) is first  # same leaf network: from the cache
        for a in ("198.51.100.7", "203.0.113.9", "2001:db8::1", "8.8.8.8"):
            loc.locate(ip(a))
            assert len(loc._db.cache) <= 2
        assert loc.locate(ip("192.0.2.1")) == first  # evicted, then found again
