"""The /24 table of a GeoIP City database: for every /24 of the IPv4 space, the place of the
database network holding it (latitude, longitude) and that network's prefix length, read
with one index into a memory-mapped file.

Why: the DNS cold path (gslb.answer `_placed`) places a client /24 never seen before, and
walking the search tree in Python and decoding a record met for the first time were most of
its cost. The table answers both without either, for all /24s in networks of /24 or larger;
a /24 split into smaller networks is marked, and the locator walks the tree for it (but for
its first address, whose place the table holds too: an ECS /24 is placed by that address).

Building it walks the IPv4 part of the search tree down to depth 24 (about 2M nodes in
GeoLite2 City) and decodes, with the C extension, every record reached (about 400k): some
15 s of CPU. So it runs in a process of its own (`python -m geo.table`, niced) which writes
the file into a cache directory, named after the database's path and signature; every
worker and every later start maps that file read-only, sharing one copy in the page cache.
The locator starts that process and maps the result (`GeoIPLocator.poll_table`); until then
it walks the tree as before. Builds of the same file take a lock, so several workers starting
at once build it once; a build also deletes the tables of database files that are gone or
have changed since.

File layout, native byte order (the header says which; a table is not moved between
machines): a 64-byte header, 2**24 entries of 32 bits (64 MiB, written sparse), per
place two 64-bit floats, latitude and longitude (place 0 unused), then the database's path
(to tell whether the table is still current when pruning). An entry is 0 where nothing
is known (an empty leaf, or a record without coordinates), else the prefix length in its
low 5 bits and twice the place's number (the index of its latitude among the floats) above
them. Where networks smaller than /24 are, the low 5 bits are `WALK` (the locator walks the
tree for an address there), and the entry names the place of the /24's first address, if
it has one, for whoever asks about that address alone (the DNS cold path: an ECS /24 is
placed by it): its prefix length less 25 in the next 3 bits, twice its place's number above
them. The file's name carries the format's version, so checkouts of another version sharing
the cache directory keep tables of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import itertools
import logging
import mmap
import os
import struct
import sys
from array import array
from pathlib import Path
from typing import BinaryIO, Final

import maxminddb
import maxminddb.errors

from geo.errors import DatabaseError
from geo.tree import Signature, Tree4, file_signature, record_fields
from geoedge.lifetime import die_with_parent

__all__ = ["PlaceTable", "build_table", "default_cache_dir", "table_path"]

log = logging.getLogger("geo")

_MAGIC: Final = b"GEO24TBL"
_VERSION: Final = 2
_ORDER: Final = 0x01020304  # written natively: says the byte order
# magic, version, byte order, places, length of the path at the end, signature (dev, ino,
# size, mtime_ns) and path hash of the database
_HEADER: Final = struct.Struct("=8sIIIIqqqq8s")
_HEADER_SIZE: Final = 64
_ENTRIES: Final = 1 << 24
_ENTRIES_SIZE: Final = 4 * _ENTRIES
WALK: Final = 31  # the low 5 bits of an entry where networks smaller than /24 are
_CHUNK: Final = 1 << 16  # bytes per write; all-zero chunks are skipped (a sparse file)
_MAP_FLAGS: Final = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # Linux: populate
# Serial numbers of the tables mapped in this process (see PlaceTable.serial)
_SERIALS: Final = itertools.count(1)


def default_cache_dir() -> Path:
    """Where tables go when the config names no directory: systemd's CacheDirectory= (the
    first of $CACHE_DIRECTORY), else $XDG_CACHE_HOME/geoedge, else ~/.cache/geoedge."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "geoedge"


def _path_hash(database: Path) -> bytes:
    return hashlib.sha256(str(database.resolve()).encode()).digest()[:8]


def table_path(cache_dir: Path, database: Path, signature: Signature) -> Path:
    """The table file of this version (`signature`) of the database file `database`."""
    dev, ino, size, mtime = signature
    name = f"geo24-{_path_hash(database).hex()}-{dev}-{ino}-{size}-{mtime}-v{_VERSION}.bin"
    return cache_dir / name


class PlaceTable:
    """A table file, mapped read-only. `entries[address >> 8]` is the entry of an IPv4
    address (see the module docstring), `coords[i]` and `coords[i + 1]` the latitude and
    longitude of the place an entry holds `i` for. `serial` is a number of this mapping
    alone among the tables mapped in this process, shifted left 32 bits so that `serial |
    entry` names an entry of this table and no other (GeoIPLocator.place_key4). Raises
    DatabaseError when the file is not a table of this version of the database."""

    __slots__ = ("_map", "coords", "entries", "path", "places", "serial")

    def __init__(self, path: Path, database: Path, signature: Signature) -> None:
        self.path = path
        with open(path, "rb") as f:
            # populated: the page tables of all 64 MiB set up now (tens of ms), not by a page
            # fault on the first lookup into each 4 KiB (several µs each in a VM)
            self._map = mmap.mmap(f.fileno(), 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
        try:
            places, path_size = _check_header(self._map, database, signature, path)
            end = _HEADER_SIZE + _ENTRIES_SIZE + 16 * (places + 1)
            if len(self._map) != end + path_size:
                raise DatabaseError(f"{path}: not the size its header says")
            view = memoryview(self._map)
            self.entries = view[_HEADER_SIZE : _HEADER_SIZE + _ENTRIES_SIZE].cast("I")
            self.coords = view[_HEADER_SIZE + _ENTRIES_SIZE : end].cast("d")
            view.release()
        except BaseException:
            self._map.close()
            raise
        self.places = places
        self.serial = next(_SERIALS) << 32

    def close(self) -> None:
        """Unmap the file. Lookups after this raise ValueError (a released memoryview)."""
        self.entries.release()
        self.coords.release()
        with contextlib.suppress(Exception):
            self._map.close()


def _check_header(
    data: bytes | mmap.mmap, database: Path, signature: Signature, path: Path
) -> tuple[int, int]:
    """(places, size of the path at the end) of a table with this header, or DatabaseError."""
    if len(data) < _HEADER_SIZE:
        raise DatabaseError(f"{path}: too short for a /24 table")
    magic, version, order, places, path_size, *sig, path_hash = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION or order != _ORDER:
        raise DatabaseError(f"{path}: not a /24 table of this version and byte order")
    if tuple(sig) != signature or path_hash != _path_hash(database):
        raise DatabaseError(f"{path}: made for another database file")
    return int(places), int(path_size)


def _walk_all(
    database: Path, signature: Signature
) -> tuple[array[int], array[float]]:  # entries, coordinates
    """Walk the IPv4 tree of `database` to depth 24 and decode every record it reaches."""
    try:
        reader = maxminddb.open_database(str(database), maxminddb.MODE_AUTO)
    except (OSError, ValueError, maxminddb.errors.InvalidDatabaseError) as exc:
        raise DatabaseError(f"{database}: not a readable MaxMind database: {exc}") from exc
    try:
        tree = Tree4(database, signature, reader.metadata())
        try:
            return _fill(reader, tree, database)
        finally:
            tree.close()
    finally:
        reader.close()


def _fill(reader: maxminddb.Reader, tree: Tree4, database: Path) -> tuple[array[int], array[float]]:
    entries = array("I", (0,)) * _ENTRIES
    coords = array("d", (0.0, 0.0))
    by_record: dict[int, int] = {}  # record value -> twice its place's number (0: none)
    by_place: dict[tuple[float, float], int] = {}  # (latitude, longitude) -> coords index
    node_count = tree.node_count
    walk = tree.walk

    def place_at(node: int, depth: int, value: int) -> int:
        """Twice the place's number of record `node`, reached at `depth` for the address
        `value` (0: no coordinates), decoding the record the first time."""
        at = by_record.get(node)
        if at is None:
            address = ipaddress.IPv4Address(value)
            record, found = reader.get_with_prefix_len(address)
            if found != depth:  # as the locator's own check (geo.locator._decode4)
                raise DatabaseError(
                    f"{database}: search tree walk disagrees with the reader at {address} "
                    f"(/{depth} vs /{found})"
                )
            fields = record_fields(record)
            at = 0
            if fields is not None:
                place = (fields[0], fields[1])
                at = by_place.get(place, 0)
                if not at:
                    at = by_place[place] = len(coords)
                    coords.extend(place)
            by_record[node] = at
        return at

    stack = [(tree.root, 0, 0)]  # (node, depth, the bits taken so far)
    while stack:
        node, depth, bits = stack.pop()
        if node < node_count:
            if depth == 24:  # smaller networks below: the locator walks
                first, found = walk(node, bits << 8, depth, 32)  # the /24's first address
                at = 0
                if first > node_count:
                    at = place_at(first, found, bits << 8)
                entries[bits] = at << 8 | (found - 25) << 5 | WALK if at else WALK
                continue
            one = 1 << (31 - depth)
            left, _ = walk(node, 0, depth, depth + 1)
            right, _ = walk(node, one, depth, depth + 1)
            stack.append((left, depth + 1, bits << 1))
            stack.append((right, depth + 1, (bits << 1) | 1))
            continue
        if node == node_count:  # an empty leaf: nothing known
            continue
        at = place_at(node, depth, bits << (32 - depth))
        if at:
            entry = at << 5 | depth
            span = 1 << (24 - depth)
            base = bits << (24 - depth)
            if span == 1:
                entries[base] = entry
            else:
                entries[base : base + span] = array("I", (entry,)) * span
    return entries, coords


def build_table(database: Path, signature: Signature, cache_dir: Path) -> Path:
    """Build the table of this version of `database` into `cache_dir` unless a valid one is
    there already; the path of the table. Raises DatabaseError (the database changed or is
    not readable, or its tree disagrees with the reader) or OSError (the directory)."""
    out = table_path(cache_dir, database, signature)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
        with contextlib.suppress(OSError, DatabaseError):
            with open(out, "rb") as f:
                _check_header(f.read(_HEADER_SIZE), database, signature, out)
            return out
        if file_signature(database) != signature:
            raise DatabaseError(f"{database}: changed before its /24 table was built")
        entries, coords = _walk_all(database, signature)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                _write(f, entries, coords, database, signature)
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _prune(cache_dir, keep=out)
    return out


def _write(
    f: BinaryIO, entries: array[int], coords: array[float], database: Path, signature: Signature
) -> None:
    places = len(coords) // 2 - 1
    name = str(database.resolve()).encode()
    f.write(
        _HEADER.pack(_MAGIC, _VERSION, _ORDER, places, len(name), *signature, _path_hash(database))
    )
    f.write(bytes(_HEADER_SIZE - _HEADER.size))
    raw = memoryview(entries).cast("B")
    zero = bytes(_CHUNK)
    for at in range(0, len(raw), _CHUNK):
        chunk = raw[at : at + _CHUNK]
        if chunk == zero:
            f.seek(len(chunk), os.SEEK_CUR)  # a hole: most of the space is one
        else:
            f.write(chunk)
    f.write(coords.tobytes())
    f.write(name)
    f.truncate()


def _prune(cache_dir: Path, keep: Path) -> None:
    """Delete the tables of database files that are gone or have changed since (processes
    still mapping one keep it until they let go), and temporary files of failed builds."""
    for old in cache_dir.glob("geo24-*"):
        if old == keep or old.suffix == ".lock":
            continue
        try:
            if old.suffix != ".tmp":
                if _still_current(old):
                    continue
            elif _held(old.with_suffix("").with_suffix(".lock")):
                continue  # another build is writing it
            old.unlink()
            old.with_suffix(".lock").unlink(missing_ok=True)
        except OSError:
            continue


def _still_current(table: Path) -> bool:
    """Whether the database file this table was made for still has the signature it had."""
    with open(table, "rb") as f:
        header = f.read(_HEADER_SIZE)
        try:
            _m, _v, _o, places, path_size, *sig, _h = _HEADER.unpack_from(header)
        except struct.error:
            return False
        f.seek(_HEADER_SIZE + _ENTRIES_SIZE + 16 * (places + 1))
        name = f.read(path_size)
    try:
        return file_signature(Path(name.decode())) == tuple(sig)
    except (OSError, UnicodeDecodeError):
        return False


def _held(lock: Path) -> bool:
    try:
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m geo.table [--cache-dir DIR] [--signature DEV INO SIZE MTIME] [DATABASE]`:
    build the table of DATABASE (default: the bundled snapshot), print its path."""
    p = argparse.ArgumentParser(prog="python -m geo.table", description=__doc__.split("\n")[0])
    p.add_argument("database", nargs="?", type=Path, help="GeoIP City .mmdb (default: bundled)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="default: " + str(default_cache_dir())
    )
    p.add_argument(
        "--signature",
        type=int,
        nargs=4,
        metavar=("DEV", "INO", "SIZE", "MTIME_NS"),
        help="build only if the file is still this version (the locator passes the one it opened)",
    )
    p.add_argument("--nice", type=int, default=0, help="lower this process's priority by N")
    p.add_argument(
        "--parent", type=int, help="end when the process with this pid (our parent) does"
    )
    args = p.parse_args(argv)
    if args.parent is not None:
        die_with_parent(args.parent)
    if args.nice:
        os.nice(args.nice)
    from geo.locator import default_database_path

    database = args.database if args.database is not None else default_database_path()
    try:
        signature: Signature = (
            (args.signature[0], args.signature[1], args.signature[2], args.signature[3])
            if args.signature
            else file_signature(database)
        )
        out = build_table(database, signature, args.cache_dir or default_cache_dir())
    except (OSError, DatabaseError) as exc:
        print(f"geo.table: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
