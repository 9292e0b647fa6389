"""The /24 table (geo.table) and the locator answering from it: the same places as the
search tree walk everywhere (edges of networks, networks smaller than /24, empty leaves,
records without coordinates), overrides still first, and a reload never answering from the
old database's table. Builds run in this process (build_table) or, through poll_table, in
the subprocess a server would start."""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest

from geo.errors import DatabaseError
from geo.location import Location
from geo.locator import GeoIPLocator, default_database_path
from geo.table import WALK, PlaceTable, build_table, default_cache_dir, table_path
from geo.tree import file_signature
from tests.geodb import bundled_table_dir, write_city_db


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def wait_ready(locator: GeoIPLocator) -> None:
    """poll_table until the table answers (the build subprocess takes a second or so)."""
    for _ in range(600):
        locator.poll_table()
        if locator.table_ready:
            return
        time.sleep(0.05)
    raise AssertionError("the /24 table did not become ready")


def place_of(locator: GeoIPLocator, value: int) -> tuple[float, float, int] | None:
    """What place4 must say: locate()'s answer as (latitude, longitude, prefix length)."""
    where = locator.locate(ipaddress.IPv4Address(value))
    if where is None:
        return None
    return where.latitude, where.longitude, where.network.prefixlen


def entry(
    network: str, lat: float | None = None, lon: float | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"network": network, "country": "NL", "continent": "EU", **extra}
    if lat is not None and lon is not None:
        out |= {"latitude": lat, "longitude": lon}
    return out


# Networks of many sizes, side by side and nested, with gaps between them (empty leaves),
# one without coordinates, two sharing a place, and networks smaller than /24.
NETWORKS = [
    entry("11.0.0.0/8", 10.0, 20.0),
    entry("12.34.0.0/16", 30.5, -40.25),
    entry("12.35.0.0/20", 30.5, -40.25),  # the same place as the /16 next to it
    entry("12.35.16.0/24", -1.5, 2.5),
    entry("12.35.17.0/25", 5.0, 6.0),
    entry("12.35.17.128/26", 7.0, 8.0),
    entry("12.35.17.192/32", 9.0, 10.0),
    entry("12.35.18.0/23"),  # known, without coordinates
    entry("12.35.20.0/24", 89.9, 179.9),
    entry("200.1.2.0/24", -45.0, 170.0),
    entry("200.1.3.0/30", -46.0, 171.0),
    entry("200.1.4.128/25", -47.0, 172.0),  # a split /24 whose first address is unknown
]


def probes(networks: list[dict[str, Any]]) -> list[int]:
    """The first and last address of every network, its neighbours outside it, and the
    middle: where a table off by one /24 or one prefix bit would show."""
    out: list[int] = [0, 0xFFFFFFFF]
    for e in networks:
        net = ipaddress.IPv4Network(e["network"])
        first, last = int(net.network_address), int(net.broadcast_address)
        out += [first, last, (first + last) // 2, max(first - 1, 0), min(last + 1, 0xFFFFFFFF)]
        out += [first | 0xFF, (last + 1) & 0xFFFFFF00]  # the /24s' own edges
    return out


@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    return write_city_db(NETWORKS, tmp_path / "small.mmdb")


def test_the_table_says_what_the_walk_says_on_a_database_of_every_kind_of_network(
    small_db: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with GeoIPLocator(small_db, table_dir=cache) as tabled, GeoIPLocator(small_db) as walked:
        assert not tabled.table_ready
        wait_ready(tabled)
        table = tabled._db.table
        # places of the networks of /24 or larger (two of them share one), and of the
        # networks holding the first address of a split /24
        assert table is not None and table.places == 7
        rnd = random.Random(5)
        values = probes(NETWORKS) + [rnd.getrandbits(32) for _ in range(2000)]
        for value in values:
            expected = place_of(walked, value)
            assert tabled.place4(value) == expected, ipaddress.IPv4Address(value)
            assert walked.place4(value) == expected, ipaddress.IPv4Address(value)
        # what the table itself holds, not the walk behind it
        entries = table.entries
        assert entries[ip("12.35.17.0") >> 8] & 31 == WALK  # split below /24: walked
        assert entries[ip("200.1.3.0") >> 8] & 31 == WALK
        assert entries[ip("200.1.4.0") >> 8] == WALK  # ... and no place for its first address
        assert entries[ip("12.35.18.0") >> 8] == 0  # no coordinates
        assert entries[ip("13.0.0.0") >> 8] == 0  # an empty leaf
        assert entries[ip("12.34.255.0") >> 8] & 31 == 16
        assert tabled.place4(ip("12.34.255.9")) == (30.5, -40.25, 16)
        assert tabled.place4(ip("12.35.17.130")) == (7.0, 8.0, 26)
        assert tabled.place4(ip("12.35.17.193")) is None  # between networks
        assert tabled.place4(ip("12.35.17.192")) == (9.0, 10.0, 32)


def test_the_bundled_database_table_agrees_with_the_walk_and_the_reader() -> None:
    rnd = random.Random(20261202)
    with (
        GeoIPLocator(table_dir=bundled_table_dir()) as tabled,
        GeoIPLocator() as walked,
        GeoIPLocator(cache_size=0) as reader,
    ):
        tabled.poll_table()  # built already: mapped at once
        table = tabled._db.table
        assert table is not None and table.places > 100_000
        values = [rnd.getrandbits(32) for _ in range(20_000)]
        # /24s split into smaller networks, and both ends of the /24s around them
        split = [i for i in range(0, 1 << 24, 97) if table.entries[i] & 31 == WALK][:300]
        assert len(split) > 100
        for i in split:
            values += [i << 8, (i << 8) | 0xFF, (i << 8) | rnd.getrandbits(8), (i + 1) << 8]
            values += [(i << 8) - 1]
        answered = 0
        for value in values:
            expected = place_of(reader, value)
            assert tabled.place4(value) == expected, ipaddress.IPv4Address(value)
            assert walked.place4(value) == expected, ipaddress.IPv4Address(value)
            answered += expected is not None
            if value & 0xFF == 0:  # a /24's first address: what its place_key4 stands for
                key = tabled.place_key4(value >> 8)
                if key is not None:
                    assert tabled.place_of(key) == expected, ipaddress.IPv4Address(value)
        assert answered > 5000
        firsts = [table.entries[i] != WALK for i in split]  # placed by their first address
        assert sum(firsts) > len(split) // 2


def test_overrides_win_over_the_table(small_db: Path, tmp_path: Path) -> None:
    office = Location(1.0, 2.0, "JP", "AS", ipaddress.IPv4Network("12.34.128.0/17"))
    with GeoIPLocator(small_db, [office], table_dir=tmp_path / "cache") as tabled:
        wait_ready(tabled)
        assert tabled.place4(ip("12.34.200.0")) is None  # locate() answers: the override
        assert tabled.locate(ipaddress.IPv4Address("12.34.200.0")) is office
        assert tabled.place4(ip("12.34.1.0")) == (30.5, -40.25, 16)


def test_a_reload_answers_from_the_new_database_then_from_its_own_table(
    small_db: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with GeoIPLocator(small_db, table_dir=cache) as tabled:
        wait_ready(tabled)
        old_table = tabled._db.table
        assert old_table is not None
        assert tabled.place4(ip("11.1.2.0")) == (10.0, 20.0, 8)
        moved = [entry("11.0.0.0/9", -10.0, -20.0), *NETWORKS[1:]]
        write_city_db(moved, small_db)  # by rename, as geoipupdate does
        assert tabled.maybe_reload()
        assert not tabled.table_ready  # the old table went with the old database
        assert tabled.place4(ip("11.1.2.0")) == (-10.0, -20.0, 9)  # the walk, meanwhile
        with pytest.raises(ValueError):
            old_table.entries[0]  # unmapped: a lookup still holding it fails, never lies
        wait_ready(tabled)
        assert tabled.place4(ip("11.1.2.0")) == (-10.0, -20.0, 9)
        assert tabled.place4(ip("11.200.2.0")) is None
        # the old database's table was pruned by the build of the new one
        tables = sorted(p.name for p in cache.glob("geo24-*.bin"))
        assert tables == [table_path(cache, small_db, file_signature(small_db)).name]


def test_place_keys_stand_for_what_place4_says_and_for_one_table_only(
    small_db: Path, tmp_path: Path
) -> None:
    # place_key4 numbers a /24's place (its first address, as place4 places it) by the
    # table's entry; place_of gives that place back. A reload brings another table: its
    # numbers differ, and numbers of the old one are no longer turned into places.
    office = Location(1.0, 2.0, "JP", "AS", ipaddress.IPv4Network("12.34.128.0/17"))
    cache = tmp_path / "cache"
    with GeoIPLocator(small_db, [office], table_dir=cache) as tabled:
        assert tabled.place_key4(ip("11.1.2.0") >> 8) is None  # no table yet: place4
        wait_ready(tabled)
        rnd = random.Random(11)
        blocks = [v >> 8 for v in probes(NETWORKS)] + [rnd.getrandbits(24) for _ in range(2000)]
        keyed: dict[int, tuple[float, float, int] | None] = {}
        for block in blocks:
            key = tabled.place_key4(block)
            if key is None:  # split, unknown, or the override's: place4 (or locate) says
                continue
            place = tabled.place_of(key)
            assert place is not None and place == tabled.place4(block << 8)
            assert keyed.setdefault(key, place) == place  # one number, one place
        assert len(keyed) >= 4
        assert tabled.place_key4(ip("12.34.200.0") >> 8) is None  # the override
        assert tabled.place_key4(ip("12.34.1.0") >> 8) is not None
        # split below /24: the network of the first address, for that address alone
        split = tabled.place_key4(ip("12.35.17.0") >> 8)
        assert split is not None and tabled.place_of(split) == (5.0, 6.0, 25)
        split = tabled.place_key4(ip("200.1.3.0") >> 8)
        assert split is not None and tabled.place_of(split) == (-46.0, 171.0, 30)
        assert tabled.place_key4(ip("200.1.4.0") >> 8) is None  # its first address: unknown
        assert tabled.place_key4(ip("13.0.0.0") >> 8) is None  # nothing known
        old = tabled.place_key4(ip("11.1.2.0") >> 8)
        assert old is not None and tabled.place_of(old) == (10.0, 20.0, 8)
        moved = [entry("11.0.0.0/9", -10.0, -20.0), *NETWORKS[1:]]
        write_city_db(moved, small_db)
        assert tabled.maybe_reload()
        assert tabled.place_key4(ip("11.1.2.0") >> 8) is None  # the walk, meanwhile
        assert tabled.place_of(old) is None
        wait_ready(tabled)
        new = tabled.place_key4(ip("11.1.2.0") >> 8)
        assert new is not None and new != old
        assert tabled.place_of(new) == (-10.0, -20.0, 9)
        assert tabled.place_of(old) is None


def test_a_table_of_another_database_version_is_never_used(small_db: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    signature = file_signature(small_db)
    built = build_table(small_db, signature, cache)
    other = (signature[0], signature[1], signature[2], signature[3] + 1)
    with pytest.raises(DatabaseError, match="another database"):
        PlaceTable(built, small_db, other)
    # A file in the place of this version's table that is not one: built again over it
    built.write_bytes(b"GEO24TBL" + bytes(100))
    with GeoIPLocator(small_db, table_dir=cache) as tabled:
        wait_ready(tabled)
        assert tabled.place4(ip("12.35.16.7")) == (-1.5, 2.5, 24)


def test_a_failed_build_is_logged_and_the_walk_goes_on(
    small_db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with GeoIPLocator(small_db, table_dir=not_a_dir) as tabled:
        with caplog.at_level(logging.ERROR, logger="geo"):
            for _ in range(600):
                tabled.poll_table()
                if tabled._db.table_done:
                    break
                time.sleep(0.05)
        assert tabled._db.table_done and not tabled.table_ready
        assert "building its /24 table failed" in caplog.text
        assert tabled.place4(ip("12.35.16.7")) == (-1.5, 2.5, 24)


def test_without_a_table_dir_nothing_is_built(small_db: Path) -> None:
    with GeoIPLocator(small_db) as plain:
        assert not plain.poll_table() and plain._db.builder is None


def test_closing_ends_a_build_in_progress(tmp_path: Path) -> None:
    locator = GeoIPLocator(table_dir=tmp_path / "cache")  # the bundled one: seconds to build
    locator.poll_table()
    builder = locator._db.builder
    assert builder is not None
    locator.close()
    assert builder.returncode is not None
    assert not list((tmp_path / "cache").glob("*.bin"))


def test_default_cache_dir_follows_systemd_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/geoedge-gslb:/other")
    assert default_cache_dir() == Path("/var/cache/geoedge-gslb")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    assert default_cache_dir() == Path("/tmp/xdg/geoedge")


def test_the_bundled_table_is_keyed_by_the_database_file() -> None:
    database = default_database_path()
    path = table_path(bundled_table_dir(), database, file_signature(database))
    assert path.is_file()
    assert path.name.startswith("geo24-") and path.name.endswith(".bin")
