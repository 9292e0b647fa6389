"""Build tiny GeoIP2 City databases for tests and benchmarks with mmdb-writer.

`build_city_db(json_path, out_path)` turns a JSON description (tests/fixtures/geo_cities.json
is the canonical one) into an .mmdb file that geoip2 and maxminddb read as a City database:
an IPv6 tree, IPv4 networks stored under ::/96 (where readers look IPv4 up) and again under
::ffff:0:0/96 (IPv4-mapped), records laid out like GeoLite2 City.

Each JSON network entry has "network" and optionally "city", "geoname_id", "time_zone",
"country", "country_name", "country_geoname_id", "continent", "continent_name",
"continent_geoname_id", "latitude", "longitude", "accuracy_radius". An entry without
latitude/longitude gets no "location" (a network the database knows but cannot place).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import netaddr
from mmdb_writer import MmdbF64, MmdbU16, MmdbU32, MMDBWriter

FIXTURE_JSON = Path(__file__).parent / "fixtures" / "geo_cities.json"


def _names(name: str) -> dict[str, str]:
    return {"en": name}


def city_record(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The GeoLite2 City record for one JSON entry."""
    record: dict[str, Any] = {}
    if "city" in entry:
        record["city"] = {
            "geoname_id": MmdbU32(int(entry.get("geoname_id", 0))),
            "names": _names(entry["city"]),
        }
    if "continent" in entry:
        record["continent"] = {
            "code": entry["continent"],
            "geoname_id": MmdbU32(int(entry.get("continent_geoname_id", 0))),
            "names": _names(entry.get("continent_name", entry["continent"])),
        }
    if "country" in entry:
        country = {
            "iso_code": entry["country"],
            "geoname_id": MmdbU32(int(entry.get("country_geoname_id", 0))),
            "names": _names(entry.get("country_name", entry["country"])),
        }
        record["country"] = country
        record["registered_country"] = dict(country)
    if "latitude" in entry and "longitude" in entry:
        location: dict[str, Any] = {
            "latitude": MmdbF64(float(entry["latitude"])),
            "longitude": MmdbF64(float(entry["longitude"])),
            "accuracy_radius": MmdbU16(int(entry.get("accuracy_radius", 100))),
        }
        if "time_zone" in entry:
            location["time_zone"] = entry["time_zone"]
        record["location"] = location
    return record


def _tree_prefixlen(net: netaddr.IPNetwork) -> int:
    return int(net.prefixlen) + (96 if net.version == 4 else 0)


def write_city_db(
    entries: Iterable[Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    description: str = "GeoEdge test City database",
) -> Path:
    """Write a City database holding `entries` to `out_path` (atomically, by rename)."""
    out = Path(out_path)
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-City",
        languages=["en"],
        description={"en": description},
    )
    parsed = [(netaddr.IPNetwork(e["network"]), e) for e in entries]
    # Supernets first: mmdb-writer splits an existing leaf when a subnet is inserted later.
    parsed.sort(key=lambda item: _tree_prefixlen(item[0]))
    for net, entry in parsed:
        record = city_record(entry)
        writer.insert_network(netaddr.IPSet([net]), record)
        if net.version == 4:
            writer.insert_network(netaddr.IPSet([net.ipv6(ipv4_compatible=False)]), record)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer.to_db_file(str(tmp))
    os.replace(tmp, out)
    return out


def build_city_db(json_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Build the City database described by the JSON file at `json_path` into `out_path`."""
    with open(json_path, encoding="utf-8") as f:
        spec = json.load(f)
    return write_city_db(
        spec["networks"],
        out_path,
        description=spec.get("description", "GeoEdge test City database"),
    )


@functools.cache
def bundled_table_dir() -> Path:
    """The default cache directory (a temporary one during tests: tests/conftest.py), once
    it holds the /24 table (geo.table) of the bundled GeoLite2 snapshot: built in this
    process, about 10 s of CPU, the first time a session asks."""
    from geo.locator import default_database_path
    from geo.table import build_table, default_cache_dir
    from geo.tree import file_signature

    directory = default_cache_dir()
    database = default_database_path()
    build_table(database, file_signature(database), directory)
    return directory
