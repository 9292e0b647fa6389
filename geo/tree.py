"""Reading a MaxMind DB file ourselves: what identifies one version of the file, the IPv4 part
of its search tree, and the fields of a City record GeoEdge uses.

Shared by the locator (geo.locator, which walks the tree per lookup) and the /24 table
(geo.table, which walks all of it once per database file).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geo.errors import DatabaseError

__all__ = ["Fields", "Signature", "Tree4", "file_signature", "record_fields", "walker"]

# (st_dev, st_ino, st_size, st_mtime_ns): what identifies one version of a database file.
Signature = tuple[int, int, int, int]
Fields = tuple[float, float, str | None, str | None]  # latitude, longitude, country, continent


def file_signature(path: Path) -> Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Tree4:
    """Reads the IPv4 part of a MaxMind DB search tree directly (the MaxMind DB spec, "Search
    Tree Section"): which leaf an address falls in, as (record value, prefix length).

    Walking ~8-24 nodes in Python costs a few microseconds, against ~10 for the C extension,
    which decodes the whole record on every lookup; records are then decoded (by the C
    extension) once per distinct record, not once per network. The first 16 levels are
    memoized per /16. Any record the tree reaches for the first time is checked against the
    C extension's prefix length; a mismatch turns the walk off for this database.
    """

    __slots__ = ("_jump", "_map", "node_count", "records", "root", "walk")

    def __init__(self, path: Path, signature: Signature, meta: Any) -> None:
        record_size = int(meta.record_size)
        self.node_count = node_count = int(meta.node_count)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != signature:
                raise DatabaseError(f"{path}: changed while being opened")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if node_count * record_size // 4 > len(self._map):
            self.close()
            raise DatabaseError(f"{path}: search tree larger than the file")
        self.walk = walker(self._map, record_size, node_count)
        node = 0
        if int(meta.ip_version) == 6:  # IPv4 lives under ::/96: 96 left turns from the root
            for _ in range(96):
                node, _depth = self.walk(node, 0, 0, 1)
        self.root = node  # where IPv4 addresses start
        self._jump = self._build_jump(node, node_count)
        # record value -> (latitude, longitude, country, continent), or None for no location
        self.records: dict[int, Fields | None] = {}

    def _build_jump(self, start: int, node_count: int) -> list[int]:
        """Where the first 16 bits of every IPv4 address lead: node << 6 | depth, per /16.

        Built breadth-first at open (at most 2^17 node reads, tens of milliseconds), so that
        no lookup walks more than the last 16 levels."""
        jump = [0] * 65536
        stack = [(start, 0, 0)]  # (node, depth, the bits taken so far)
        walk = self.walk
        while stack:
            node, depth, bits = stack.pop()
            if node >= node_count or depth == 16:
                span = 1 << (16 - depth)
                base = bits << (16 - depth)
                jump[base : base + span] = [(node << 6) | depth] * span
                continue
            for bit in (0, 1):
                child, _ = walk(node, bit << (31 - depth), depth, depth + 1)
                stack.append((child, depth + 1, (bits << 1) | bit))
        return jump

    def find(self, value: int) -> tuple[int, int]:
        """(record value, prefix length) of the leaf holding the IPv4 address `value`."""
        state = self._jump[value >> 16]
        node = state >> 6
        if node < self.node_count:
            return self.walk(node, value, state & 63, 32)
        return node, state & 63

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()


Walk = Callable[[int, int, int, int], tuple[int, int]]


def walker(buf: mmap.mmap, record_size: int, node_count: int) -> Walk:
    """walk(node, value, depth, stop): follow the bits of the IPv4 address `value` from
    `depth` until a leaf (a record value >= node_count) or `stop`; (record value, depth).

    One function per record layout with the node read inlined: this loop is the lookup.
    Records of 24 and 32 bits are whole bytes (a node is two of them); 28-bit records share
    a middle byte's halves."""
    if record_size in (24, 32):
        width = record_size // 8

        def walk_bytes(node: int, value: int, depth: int, stop: int) -> tuple[int, int]:
            while depth < stop and node < node_count:
                off = (2 * node + ((value >> (31 - depth)) & 1)) * width
                node = int.from_bytes(buf[off : off + width], "big")
                depth += 1
            return node, depth

        return walk_bytes
    if record_size == 28:

        def walk28(node: int, value: int, depth: int, stop: int) -> tuple[int, int]:
            while depth < stop and node < node_count:
                base = node * 7
                if (value >> (31 - depth)) & 1:
                    node = int.from_bytes(buf[base + 3 : base + 7], "big") & 0x0FFFFFFF
                else:
                    node = (int.from_bytes(buf[base : base + 4], "big") >> 8) | (
                        (buf[base + 3] & 0xF0) << 20
                    )
                depth += 1
            return node, depth

        return walk28
    raise DatabaseError(f"unsupported search tree record size {record_size}")


def record_fields(record: Any) -> Fields | None:
    """(latitude, longitude, country, continent) from a GeoIP2 City record, or None when the
    record has no coordinates.

    Records from maxminddb are plain dicts; anything else a strange database holds is treated
    as missing rather than trusted.
    """
    try:
        loc = record["location"]
        lat = float(loc["latitude"])
        lon = float(loc["longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    country = record.get("country")
    continent = record.get("continent")
    return (
        lat,
        lon,
        country.get("iso_code") if type(country) is dict else None,
        continent.get("code") if type(continent) is dict else None,
    )
