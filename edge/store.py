"""The edge's cache storage: diskcache (SQLite + files) with a small in-memory tier in front.

Blocking API: call it from a worker thread (``asyncio.to_thread``) in the proxy.

Layout inside one diskcache directory (keys are ``str``, values are ``bytes``; a Disk
subclass refuses everything else, so nothing is ever pickled or unpickled):

- ``m:<primary key>``  JSON list of the CacheEntry metadata of every stored Vary variant;
- ``b:<primary key>\\x1f<variant>\\x1f<sha256>``  the body bytes of one variant (from 4 KB
  to 32 KiB in a slab file the row names, edge.slabs; bigger in a file of their own);
and, beside diskcache's table, ``Purges``: the purges of the last hour, which every commit
checks (Store.purge), so that what an origin answered before a purge is not stored after it
by any process; and ``Tags``: a row per surrogate key and primary key whose variants carry
it, added by the fill's own transaction and gone with the key's variant list (a trigger), so
that a tag shared by a million objects costs a fill one row, not a rewrite of its list.

A body is written before the metadata that points at it, and metadata names the body's
length and SHA-256, which are checked on every read from disk: a mismatch evicts the
entry and reads as a miss, so a crash, a ``kill -9`` or a damaged file never yields a
truncated or wrong body. Bodies from the streaming writer go to a temp file inside the
cache directory and are renamed into diskcache's file area on ``commit()``.

On a full disk (ENOSPC/EDQUOT/EFBIG, or SQLite "database or disk is full") the store
turns ``degraded``: writes are skipped (reads still work) until ``retry_after`` seconds
passed, then the next write tries again and clears the flag if it succeeds.

Several processes may share one directory. Whatever takes a stored variant away (a purge, a
removal, a 304's update, a fill replacing a variant) also moves the directory's epoch (the
modification time of its file ``epoch``). The index checks a variant list against the
epoch once it is ``meta_refresh`` seconds old: unmoved, the list is still what is stored and
is kept (the common case, with a working set far larger than one second of traffic); moved,
it is read again. So a purge made by another process is seen within that time, and a hit
never pays a disk read and a JSON decode to learn that nothing changed. Bodies in memory
are keyed by digest and never stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

import diskcache

from edge import slabs
from edge.cache_policy import CacheEntry, entries_from_json, entries_json
from edge.errors import CacheMetadataError, CorruptBodyError, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Runs one SQL statement with its parameters (a connection's execute, diskcache's _sql).
Sql = Callable[[str, Any], sqlite3.Cursor]

CHUNK = 64 * 1024
# The most of a body a BodyWriter holds in memory (see BodyWriter).
HOLD_MAX = 1 << 20
# Where a body verified in this process lies, as the index remembers it: the path of its
# file, the rowid of its database row, its place in a slab, or "" for a row not read back
# yet.
Place = str | int | slabs.SlabPlace
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_SEP = "\x1f"
# A hit stamps the rows it used (for LRU eviction) at most this often: recency is exact to it,
# and a busy entry costs one row update per period, not one per hit.
_STAMP_EVERY = 30.0
# Keys or rows per statement, and rows per transaction, of the recency write-back (see
# _Reads.flush).
_STAMP_CHUNK = 1000
# How old the directory's epoch, as last seen, may get before a hit looks it up again.
_EPOCH_RECHECK = 0.05
# The most keys remembered as absent (Store._absent), and "never read".
_ABSENT_MAX = 4096
# The most keys whose last change of variant list Store remembers (Store._changes).
_CHANGES_MAX = 4096
_NEVER = float("-inf")
# Purges are recorded in the database for the fills of every process sharing it (see
# Store.purge): for PURGE_MEMORY seconds, at most PURGES_KEPT of them (and _PURGES_COUNTED
# more between counts); past that the oldest go, and every fill asked of an origin before
# the last of them is refused instead.
PURGE_MEMORY = 3600.0
PURGES_KEPT = 4096
# A purge dated this far past the wall clock came from a clock since set right (a VM's,
# stepped back by NTP): it is dropped rather than refuse every fill of what it names until
# the clock catches up.
PURGE_AHEAD = 60.0
# The purges are counted (a walk of PURGES_KEPT index entries) with every this many.
_PURGES_COUNTED = 64
_PURGE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS Purges (at REAL NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS Purges_at ON Purges(at)",
)
# The primary keys each surrogate key tags (Store.purge_tag), rows of the keys still listed:
# a variant list deleted (a removal, a purge, diskcache's eviction) takes its key's rows.
_TAG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS Tags (tag TEXT NOT NULL, key TEXT NOT NULL,"
    " PRIMARY KEY (tag, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS Tags_key ON Tags(key)",
    "CREATE TRIGGER IF NOT EXISTS Tags_list_delete AFTER DELETE ON Cache FOR EACH ROW"
    " WHEN OLD.key GLOB 'm:*' BEGIN DELETE FROM Tags WHERE key = substr(OLD.key, 3); END",
)
_TAG_INSERT = "INSERT OR IGNORE INTO Tags(tag, key) VALUES (?, ?)"
# Purges by prefix or tag whose removal is under way (Store.purge), by the process doing it:
# what they name is not served meanwhile, by any process, and what a process that died left
# is taken over (Store.maintain).
_PENDING_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS Pending (id INTEGER PRIMARY KEY, at REAL NOT NULL,"
    " kind TEXT NOT NULL, value TEXT NOT NULL, pid INTEGER NOT NULL)",
)
# A purge under way: when it was asked (the clock of CacheEntry.request_time), its kind and
# value (purge_names' terms).
_Hidden = tuple[float, str, str]
_TAGS_MOVED = (
    "INSERT OR IGNORE INTO Tags(tag, key) SELECT ?, listed.value FROM json_each(?) AS listed"
    " WHERE EXISTS (SELECT 1 FROM Cache WHERE key = 'm:' || listed.value AND raw = 1)"
)


# SQLite's result codes for a damaged database file (primary codes: the low byte).
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPT_CODES


def _is_full(exc: BaseException) -> bool:
    if exc.__context__ is not None and _is_full(exc.__context__):
        return True  # e.g. a ROLLBACK refused because SQLite had rolled back on SQLITE_FULL
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()
    return False


@dataclass(frozen=True, slots=True)
class _CommittedFile:
    """A finished temp file handed to diskcache to be renamed into place."""

    path: str
    size: int


@dataclass(frozen=True, slots=True)
class _NewFile:
    """A body held in memory, handed to diskcache whole: into its row when it is smaller
    than diskcache's ``min_file_size``, else to a file of its own (one open, write and
    close: no temp file to rename)."""

    data: bytes


@dataclass(slots=True)
class _Fill:
    """One body and its entry on the way into a write transaction (Store._commit_fills),
    and, once staged there, what the transaction did for it."""

    entry: CacheEntry
    body: bytes | _NewFile | _CommittedFile
    data: bytes | None  # the body's bytes when at hand (for the memory tier)
    place: Place = ""  # where the body went: its file, its slab, or "" for a row
    kept: tuple[CacheEntry, ...] = ()  # the key's variant list as written
    replaced: tuple[CacheEntry, ...] = ()  # variants it replaced or pushed out


def _create(path: str, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` (its directory made when missing); on any
    failure, nothing is left there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


class _BytesDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache Disk that only knows str keys and bytes values: no pickle either way.

    ``placed`` says, per thread, where the last value stored went: the path of its file,
    or "" for a row of the database."""

    _where = threading.local()

    @property
    def placed(self) -> str:
        where: str = getattr(self._where, "path", "")
        return where

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError("store keys must be str")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreError("refusing a pickled key found in the cache database")
        return key

    def filename(self, key: Any = None, value: Any = None) -> tuple[str, str]:
        """A new random name in one of 256 directories (``ab/cdef….val``). diskcache's own
        spreads files over 65,536 (two levels), so a young cache made a directory for
        nearly every file it stored: a mkdir (~160 us here) plus a failed open per fill.
        256 directories hold a million bodies at about 4,000 files each, which ext4 and
        XFS index. Names already in the database keep their place."""
        name = os.urandom(15).hex()
        filename = f"{name[:2]}/{name[2:]}.val"
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if isinstance(value, _CommittedFile):
            filename, full_path = self.filename(key, value)
            try:
                os.replace(value.path, full_path)
            except FileNotFoundError:
                if not os.path.exists(value.path):
                    raise
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                os.replace(value.path, full_path)
            self._where.path = full_path
            return value.size, diskcache.core.MODE_BINARY, filename, None
        if isinstance(value, _NewFile) and len(value.data) < self.min_file_size:
            # A small body goes into its row, as diskcache stores small values: creating
            # a file costs the kernel an inode and a directory entry (30-500 us of system
            # time per fill on the ext4 here), a row a few pages appended to the WAL; and
            # a hit reads it back by rowid as fast as it opens and reads a file.
            self._where.path = ""
            return 0, diskcache.core.MODE_RAW, None, sqlite3.Binary(value.data)
        if isinstance(value, _NewFile):
            filename, full_path = self.filename(key, value)
            _create(full_path, value.data)
            self._where.path = full_path
            return len(value.data), diskcache.core.MODE_BINARY, filename, None
        if type(value) is not bytes:
            raise TypeError("store values must be bytes")
        stored = super().store(value, False, key=key)
        self._where.path = "" if stored[2] is None else os.path.join(self._directory, stored[2])
        return stored

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise StoreError(f"refusing a non-bytes value (mode {mode}) from the cache")
        if slabs.is_slab(filename):
            raise StoreError("a body in a slab is read by the store, not by diskcache")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: str) -> None:
        """A row deleted: its file goes, unless it names a place in a slab (which goes
        whole, when none of its rows is left: see edge.slabs)."""
        if not slabs.is_slab(file_path):
            super().remove(file_path)


class _Reads:
    """Reads of diskcache's table that take no write transaction, and LRU recency written
    back in batches.

    With the least-recently-used policy every ``Cache.get`` is a write transaction (it
    stamps the row's access time): the cache-hit path serialised on SQLite's write lock.
    Here a read is a plain SELECT on a read-only connection of the calling thread (WAL:
    readers never wait for the writer), and the keys read are stamped later, many in one
    transaction (``flush``), so eviction still follows use at the granularity of a flush.

    This reads diskcache's schema (table ``Cache``: ``key``, ``raw``, ``mode``,
    ``filename``, ``value``, ``access_time``), which tests/unit/test_store.py checks
    against the installed diskcache; pyproject.toml pins the diskcache series.
    """

    _SELECT = "SELECT rowid, mode, filename, value, size FROM Cache WHERE key = ? AND raw = 1"
    # A row found before, by its rowid (no walk of the key index); the key is checked, as
    # SQLite may give a deleted row's rowid to a new one.
    _ROW = (
        f"SELECT value FROM Cache WHERE rowid = ? AND key = ? AND mode = {diskcache.core.MODE_RAW}"
    )
    # One statement per _STAMP_CHUNK keys or rows: SQLite runs it in one step, so the
    # flushing thread lets go of the GIL once per chunk, not once per key, and the event
    # loop does not fight it for the GIL thousands of times per flush.
    _FIND = (
        "INSERT OR IGNORE INTO temp.Stamps SELECT rowid FROM Cache"
        " WHERE raw = 1 AND key IN (SELECT value FROM json_each(?))"
    )
    _CHUNK_END = "SELECT max(id) FROM (SELECT id FROM temp.Stamps WHERE id > ? ORDER BY id LIMIT ?)"
    # A rowid may name another row by now (SQLite gives a deleted row's to a new one at the
    # end of the table): that row is stamped, a little recency wrong, nothing else.
    _STAMP = (
        "UPDATE Cache SET access_time = ? WHERE rowid IN"
        " (SELECT id FROM temp.Stamps WHERE id > ? AND id <= ?)"
    )

    def __init__(
        self, directory: str, slab_reads: slabs.SlabReads, wall: Clock = time.time
    ) -> None:
        self._directory = directory
        self._slabs = slab_reads
        self._path = os.path.join(directory, "cache.db")
        self._wall = wall
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._touched: set[str] = set()
        self._stamper: sqlite3.Connection | None = None  # flush's, kept open
        self._flushing = threading.Lock()  # one flush at a time uses the stamper

    def connection(self) -> sqlite3.Connection:
        """This thread's read-only connection to the database."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            uri = "file:" + urllib.parse.quote(self._path) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            # Bodies under 32 KiB are rows: read through the map, not pread and SQLite's
            # page cache (3-4 µs more per 10 KiB hit past the 64 MiB diskcache maps).
            # Address space only; SQLite caps it at its build's limit (2 GiB by default).
            conn.execute("PRAGMA mmap_size = 2147483648")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, key: str, sql: Sql | None = None) -> bytes | str | None:
        """The bytes stored under ``key``, the path of the file holding them, or None.
        ``sql``: read through it (a writer's, within its transaction) instead."""
        found = self.find(key, sql)
        return None if found is None else found[1]

    def find(
        self, key: str, sql: Sql | None = None, *, retried: bool = False
    ) -> tuple[Place, bytes | str] | None:
        """``get``, with where the bytes were found: the row's rowid (for ``row``) or
        their place in a slab; or None. Raises FileNotFoundError for a slab gone."""
        run = self.connection().execute if sql is None else sql
        row = run(self._SELECT, (key,)).fetchone()
        if row is None:
            return None
        rowid, mode, filename, value, size = row
        if mode == diskcache.core.MODE_RAW and isinstance(value, bytes):
            return rowid, value
        if mode == diskcache.core.MODE_BINARY and slabs.is_slab(filename):
            try:
                return self._slabs.read(filename, size)
            except FileNotFoundError:
                if sql is not None or retried:
                    raise
                # Compaction moved the body and retired its slab since the SELECT.
                return self.find(key, retried=True)
        if mode == diskcache.core.MODE_BINARY and isinstance(filename, str):
            return rowid, os.path.join(self._directory, filename)
        raise StoreError(f"refusing a non-bytes value (mode {mode}) from the cache")

    def row(self, rowid: int, key: str) -> bytes | None:
        """The bytes in row ``rowid`` if it still holds ``key``'s, else None."""
        row = self.connection().execute(self._ROW, (rowid, key)).fetchone()
        return row[0] if row is not None and isinstance(row[0], bytes) else None

    def touch(self, keys: Iterable[str]) -> None:
        # One C call, so atomic under the GIL: no lock. Collected as a set as they come
        # (a hit stamps once per _STAMP_EVERY), so that flush, in a thread, runs no Python
        # loop over them: the GIL is handed over every 5 ms at best, and a flush's loop over
        # tens of thousands of keys stalled requests that long.
        self._touched.update(keys)

    def flush(self, turn: contextlib.AbstractContextManager[object]) -> int:
        """Stamp the keys read since the last flush as used now; how many were stamped.

        The rows are found first (reads), then stamped in order of rowid, _STAMP_CHUNK to
        a write transaction taken in a ``turn`` (the store's write lock) of its own: as one
        transaction, a flush of 80,000 keys took 2.1 s, which every fill waited out; in
        chunks of the keys as they came, each chunk rewrote pages the others did too (4.6
        s); in rowid order, the rows of a chunk share their pages (1.4 s, and a fill waits
        0.06 s at most)."""
        touched, self._touched = self._touched, set()
        # A touch() that read the old set before the swap may still add to it: copied in
        # one C call, the set has that add or not; if not, the row's stamp waits for its
        # next use past _STAMP_EVERY (recency a little coarser, nothing else).
        keys = list(touched)
        if not keys:
            return 0
        now = self._wall()
        with self._flushing:
            conn = self._stamper
            if conn is None:
                conn = sqlite3.connect(
                    self._path, isolation_level=None, timeout=10, check_same_thread=False
                )
                conn.execute("PRAGMA temp_store = MEMORY")
                conn.execute("CREATE TEMP TABLE Stamps (id INTEGER PRIMARY KEY)")
                self._stamper = conn
            conn.execute("DELETE FROM temp.Stamps")
            for i in range(0, len(keys), _STAMP_CHUNK):
                # json.dumps holds the GIL for its whole run: in chunks, not 23 ms for
                # 32,000 keys (a stall of every request meanwhile).
                conn.execute(self._FIND, (json.dumps(keys[i : i + _STAMP_CHUNK]),))
            low = 0
            while (
                high := conn.execute(self._CHUNK_END, (low, _STAMP_CHUNK)).fetchone()[0]
            ) is not None:
                with turn:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute(self._STAMP, (now, low, high))
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                low = high
        return len(keys)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        with self._flushing:  # not under a flush still running in a thread
            if self._stamper is not None:
                connections.append(self._stamper)
                self._stamper = None
        for conn in connections:
            conn.close()


@dataclass(frozen=True, slots=True)
class StoreStats:
    size_bytes: int  # disk volume (SQLite pages + body files)
    records: int  # diskcache records (variant lists and bodies)
    memory_bytes: int
    memory_items: int
    hits: int  # variants() calls that found something
    misses: int
    corrupt: int  # bodies that failed the length/digest check and were evicted
    stores: int
    store_failures: int
    degraded: bool
    degraded_reason: str | None


class _Memory:
    """A bytes-bounded LRU of verified bodies and parsed variant lists."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def get(self, key: str) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: Any, cost: int) -> None:
        self.pop(key)
        if cost > self.max_bytes:
            return
        self._items[key] = (cost, value)
        self.used += cost
        while self.used > self.max_bytes and self._items:
            _, (c, _) = self._items.popitem(last=False)
            self.used -= c

    def cost(self, key: str) -> int:
        item = self._items.get(key)
        return 0 if item is None else item[0]

    def pop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.used -= item[0]

    def clear(self) -> None:
        self._items.clear()
        self.used = 0

    def drop(self, doomed: Callable[[Any], bool]) -> None:
        """Remove every item whose value ``doomed`` says."""
        for key in [k for k, (_, value) in self._items.items() if doomed(value)]:
            self.pop(key)

    def __len__(self) -> int:
        return len(self._items)


class _Listed:
    """A variant list held in the index: when it was read, the directory's epoch before
    that read, the rows a hit on it uses, and when they were last stamped as used."""

    __slots__ = ("entries", "epoch", "read_at", "rows", "stamped_at")

    def __init__(
        self, read_at: float, entries: tuple[CacheEntry, ...], epoch: int, rows: tuple[str, ...]
    ) -> None:
        self.read_at = read_at
        self.entries = entries
        self.epoch = epoch
        self.rows = rows
        self.stamped_at = read_at


def _listed(key: str, entries: tuple[CacheEntry, ...], read_at: float, epoch: int) -> _Listed:
    return _Listed(read_at, entries, epoch, (_meta_key(key), *(_body_key(e) for e in entries)))


def _list_cost(entries: tuple[CacheEntry, ...]) -> int:
    """What a parsed variant list holds in the index, about (Python objects: the record,
    the entry, its freshness, each header field a tuple of two strings, the row names;
    measured with tracemalloc at ~3.2 KB for an entry with nine fields, counted here a
    little above that)."""
    return 128 + sum(1000 + 2 * len(e.key) + 250 * len(e.headers) for e in entries)


def _place_cost(bkey: str, place: Place) -> int:
    """What the index holds for a body's place: its key, the path, the entry's overhead."""
    if isinstance(place, slabs.SlabPlace):
        return 160 + len(bkey) + len(place.path)
    return 96 + len(bkey) + (len(place) if isinstance(place, str) else 32)


def _meta_key(key: str) -> str:
    return "m:" + key


def _body_key(entry: CacheEntry) -> str:
    return f"b:{entry.key}{_SEP}{entry.variant}{_SEP}{entry.sha256}"


# A Cache row as Store._INSERT takes it: key, store and access time, size, mode, filename,
# value.
_Row = tuple[str, float, float, int, int, str | None, bytes | None]


@functools.lru_cache(maxsize=64)
def _insert_many(rows: int) -> str:
    """Store._INSERT for ``rows`` rows at once."""
    values = ", ".join(["(?, 1, ?, NULL, ?, 0, NULL, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
        f" tag, size, mode, filename, value) VALUES {values} ON CONFLICT(key, raw) DO NOTHING"
    )


# Rows per INSERT: 7 parameters each, within the 999 that SQLite before 3.32 allows.
_ROWS_MAX = 999 // 7


def _insert_rows(sql: Sql, rows: Sequence[_Row]) -> bool:
    """Insert ``rows``, _ROWS_MAX to a statement; whether each of them went in (a key
    stored already is left as it is)."""
    went = 0
    for at in range(0, len(rows), _ROWS_MAX):
        part = rows[at : at + _ROWS_MAX]
        went += sql(_insert_many(len(part)), [v for row in part for v in row]).rowcount
    return went == len(rows)


# Primary keys a purge removes in one write transaction (Store._remove): a few tens of
# milliseconds of the write lock at a time, which fills wait for.
_REMOVE_MAX = 256


def _delete_row(sql: Sql, cleanup: Callable[[str | None], None], key: str) -> None:
    """Delete the Cache row of ``key``, if any, within a diskcache transaction whose
    ``cleanup`` removes the row's file once it commits (diskcache's Cache.delete)."""
    for rowid, filename in sql(
        "SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1", (key,)
    ).fetchall():
        sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
        cleanup(filename)


def _list_row(mkey: str, data: bytes, now: float) -> _Row:
    """The Cache row of a variant list (``data``, its JSON), kept in the row itself."""
    return (mkey, now, now, 0, diskcache.core.MODE_RAW, None, data)


class BodyReader:
    """Streams a stored body, checking its digest; raises CorruptBodyError at the end on a
    mismatch (the entry is evicted then). The length was checked before it was handed out,
    so a truncated file never starts streaming."""

    def __init__(self, store: Store, entry: CacheEntry, source: IO[bytes] | bytes) -> None:
        self.entry = entry
        self.length = entry.body_length
        self._store = store
        self._source = source
        self._pos = 0
        self._hash = hashlib.sha256()
        self._done = False

    def read_chunk(self, size: int = CHUNK) -> bytes:
        """The next chunk, b"" at the end."""
        if self._done:
            return b""
        if isinstance(self._source, bytes):
            chunk = self._source[self._pos : self._pos + size]
        else:
            chunk = self._source.read(min(size, self.length - self._pos))
        self._pos += len(chunk)
        if isinstance(self._source, bytes):
            self._pos = min(self._pos, self.length)
            if not chunk:
                self._finish()
            return chunk
        self._hash.update(chunk)
        if not chunk or self._pos >= self.length:
            self._finish()
        return chunk

    def _finish(self) -> None:
        self._done = True
        if isinstance(self._source, bytes):
            return
        self._source.close()
        if self._pos != self.length or self._hash.hexdigest() != self.entry.sha256:
            self._store._corrupt(self.entry)
            raise CorruptBodyError(f"stored body of {self.entry.key} is damaged")
        path = self._source.name
        if isinstance(path, str):  # verified: later hits may send it from its file
            bkey = _body_key(self.entry)
            with self._store._lock:
                self._store._index.put(bkey, path, _place_cost(bkey, path))

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read_chunk()
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        if not isinstance(self._source, bytes):
            self._source.close()
        self._done = True

    def __enter__(self) -> BodyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# hashlib lets go of the GIL to hash more than 2 KiB. For a chunk of a few KiB (a small
# body's one or two socket reads) that hand-over to a waiting thread (a commit's) and back
# costs the loop more than the hash: such chunks are hashed in pieces under the threshold
# (bench/missab.sh: 0.95x edge CPU a miss of 10 KiB). Bigger chunks are hashed whole, the
# GIL free meanwhile for the other threads' work on other cores.
_HASH_PIECE = 2047
_HASH_PIECES_MAX = 16 * 1024


class BodyWriter:
    """Collects a body on its way into the store; ``commit`` stores it, ``abort`` (or an
    exception in a ``with`` block) throws it away. Nothing is visible to readers of the
    store before commit.

    A body up to ``hold`` bytes (the memory tier's object limit, at most HOLD_MAX) is held
    in memory and written to its file in one go at commit; past that, what is held goes to
    a temp file in the cache directory, and the rest follows it there as it arrives (the
    file is renamed into place at commit). ``read_at`` reads the body so far either way,
    also after commit or abort, until ``close_reader``."""

    def __init__(self, store: Store, max_bytes: int | None) -> None:
        self._store = store
        self._max = max_bytes
        self._hold = min(store._memory_object_max, HOLD_MAX)
        # The body while it is held in memory (bytes once committed), else None.
        self._held: bytearray | bytes | None = bytearray()
        self._path: str | None = None  # the temp file, once the body outgrew _hold
        self._file: IO[bytes] | None = None
        self._reader: int | None = None  # the temp file opened for read_at
        self._hash = hashlib.sha256()
        self.length = 0
        self.failed = False
        self._open = True  # neither committed nor aborted yet

    def write(self, chunk: bytes) -> bool:
        """Append a chunk; False once the writer gave up (too big or disk full)."""
        if self.failed or not self._open:
            return False
        if self._max is not None and self.length + len(chunk) > self._max:
            self.abort()
            return False
        try:
            held = self._held
            if held is not None:
                assert isinstance(held, bytearray)  # bytes only once committed
                if self.length + len(chunk) <= self._hold:
                    held += chunk
                else:
                    self._spill(held)
                    held = None
            if held is None:
                assert self._file is not None
                self._file.write(chunk)
                self._file.flush()  # in the file, for read_at, once write() returned True
        except OSError as e:
            self._store._write_failed(e)
            self.abort()
            return False
        update = self._hash.update
        if len(chunk) <= _HASH_PIECE or len(chunk) > _HASH_PIECES_MAX:
            update(chunk)
        else:
            view = memoryview(chunk)
            for at in range(0, len(chunk), _HASH_PIECE):
                update(view[at : at + _HASH_PIECE])
        self.length += len(chunk)
        return True

    def digest(self) -> str:
        """The SHA-256 of the body written so far, in hex."""
        return self._hash.hexdigest()

    def _spill(self, held: bytearray) -> None:
        """Move the body held so far to a temp file, which takes the rest."""
        fd, path = tempfile.mkstemp(dir=self._store._tmp_dir, suffix=".part")
        self._path = path
        self._file = os.fdopen(fd, "wb")
        self._file.write(held)
        self._file.flush()
        self._reader = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._held = None

    def read_at(self, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes of the body from offset ``pos`` (of those written)."""
        held = self._held
        if held is not None:
            return bytes(held[pos : pos + size])
        if self._reader is None:
            raise OSError("the body's temporary file is closed")
        return os.pread(self._reader, size, pos)

    @property
    def reader_open(self) -> bool:
        """Whether the temp file's reading handle is open (a spilled body, until
        ``close_reader``)."""
        return self._reader is not None

    def close_reader(self) -> None:
        """Done with ``read_at``: the temp file's reading handle goes (a held body stays
        until the writer goes)."""
        if self._reader is not None:
            with contextlib.suppress(OSError):
                os.close(self._reader)
            self._reader = None

    def commit(self, entry: CacheEntry, length: int) -> CacheEntry | None:
        """Store the body under ``entry`` if exactly ``length`` bytes were written.

        Returns the stored entry (with body_length and sha256 filled in) or None when the
        body was incomplete, too big, or the store is degraded. (``Store.commit_all``
        commits several writers in one transaction.)
        """
        return self._store.commit_all([(self, entry, length)])[0]

    def _finish(self, entry: CacheEntry, length: int) -> _Fill | None:
        """Close the body for commit: what to store, or None (and the writer aborted) when
        it is not exactly ``length`` bytes or cannot be finished."""
        if self.failed or not self._open:
            return None
        held = self._held
        if held is None:
            assert self._file is not None
            try:
                self._file.close()
            except OSError as e:
                self._store._write_failed(e)
                self.abort()
                return None
            self._file = None
        if self.length != length:
            self.abort()
            return None
        self._open = False
        digest = self.digest()
        final = entry
        if entry.body_length != self.length or entry.sha256 != digest:
            final = replace(entry, body_length=self.length, sha256=digest)
        if held is not None:
            data = self._held = bytes(held)
            return _Fill(final, _NewFile(data), data)
        assert self._path is not None
        return _Fill(final, _CommittedFile(self._path, self.length), None)

    def abort(self) -> None:
        self.failed = True
        self._open = False
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    def __enter__(self) -> BodyWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or self._open:
            self.abort()


class Store:
    """Cache storage. Thread-safe; several processes may share ``directory``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        size_limit: int = 1 << 30,
        memory_bytes: int = 64 << 20,
        memory_object_max: int = 1 << 20,
        index_bytes: int = 128 << 20,
        max_object_bytes: int | None = None,
        max_variants: int = 16,
        retry_after: float = 30.0,
        meta_refresh: float = 1.0,
        eviction_policy: str = "least-recently-used",
        clock: Clock = time.monotonic,
        sqlite_max_page_count: int | None = None,
    ) -> None:
        self.directory = os.fspath(directory)
        self._clock = clock
        self._retry_after = retry_after
        self._meta_refresh = meta_refresh
        self._memory_object_max = memory_object_max
        self.max_object_bytes = max_object_bytes
        self._max_variants = max_variants
        os.makedirs(self.directory, exist_ok=True)
        self._tmp_dir = os.path.join(self.directory, "tmp")
        os.makedirs(self._tmp_dir, exist_ok=True)
        self._sweep_tmp()
        settings: dict[str, Any] = {}
        if sqlite_max_page_count is not None:
            # A real SQLite limit; used by tests to reach "database or disk is full".
            settings["sqlite_max_page_count"] = sqlite_max_page_count
        settings.update(
            # SQLite's page cache of diskcache's own connection (the writer's): 8 MiB, not
            # diskcache's 32; reads go through _Reads' connections (2 MiB each).
            sqlite_cache_size=2048,
            disk=_BytesDisk,
            size_limit=size_limit,
            eviction_policy=eviction_policy,
            cull_limit=16,
            statistics=False,
            tag_index=False,
        )
        # How many corrupt stores this open set aside (0 or 1): counted in /metrics.
        self.resets = 0
        try:
            try:
                self._cache = diskcache.Cache(self.directory, **settings)
            except sqlite3.DatabaseError as e:
                if not _is_corrupt(e):
                    raise
                self._cache = self._reset(settings, e)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open cache directory {self.directory}: {e}") from e
        self._remove_set_aside()
        try:
            with self._cache.transact():
                for statement in (*slabs.SCHEMA, *_PURGE_SCHEMA, *_TAG_SCHEMA, *_PENDING_SCHEMA):
                    self._cache._sql(statement)
                self._move_tag_lists()
            self._slabs = slabs.Slabs(self.directory, size_limit)
        except (sqlite3.Error, OSError, diskcache.Timeout) as e:
            self._cache.close()
            raise StoreError(f"cannot open cache directory {self.directory}: {e}") from e
        self._slab_reads = slabs.SlabReads(self.directory)
        self._closed = False
        self._reads = _Reads(self.directory, self._slab_reads)
        self._epoch_file = os.path.join(self.directory, "epoch")
        with open(self._epoch_file, "ab"):
            pass
        self._lock = threading.Lock()
        # Write transactions of this process take turns here: waiting on SQLite's lock
        # instead means its busy handler's sleeps (up to 100 ms each) while the lock is free.
        self._writing = threading.RLock()
        self._memory = _Memory(memory_bytes)
        # The index: parsed variant lists ("m:" keys) and where each body already verified
        # in this process lies ("b:" keys: its file's path, or "" when it is a row of the
        # database), least recently used out, within its own budget beside the memory tier.
        self._index = _Memory(index_bytes)
        # Keys read and found absent ("m:" key -> when): taken as still absent for
        # meta_refresh, as a list in the index is taken as still stored, so a miss looks in
        # the database once (not once in the fast path and again in the full one), and a
        # key whose responses are not stored costs no read per request. Oldest out first.
        self._absent: OrderedDict[str, float] = OrderedDict()
        # The keys whose variant list this process changed last ("m:" key -> the change's
        # number), oldest out first, and the number of the last change forgotten: a list
        # read from the database before a change of its key (a commit or a removal in
        # another thread meanwhile) does not go into the index over it.
        self._change = 0
        self._changes: OrderedDict[str, int] = OrderedDict()
        self._changes_forgotten = 0
        self._epoch_seen = -1
        self._epoch_seen_at = self._epoch_moved_at = float("-inf")
        # Purges by prefix or tag under way (see hide): this process's own, from `hide` to
        # the end of their removal; those the database lists (every process's, read again
        # when the directory's epoch moves); both, as reads filter by them; and the rows of
        # Pending whose removal runs in this process.
        self._hiding: set[_Hidden] = set()
        self._recorded: frozenset[_Hidden] = frozenset()
        self._hidden: tuple[_Hidden, ...] = ()
        self._removing: set[int] = set()
        self._reading_pending = threading.Lock()
        # Held by flush_recency and maintain, which run in threads, and by close.
        self._maintaining = threading.RLock()
        self._degraded_reason: str | None = None
        self._degraded_until = 0.0
        self._hits = self._misses = self._corrupt_count = 0
        self._stores = self._store_failures = 0
        self._read_pending()

    # --- state ---------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._degraded_reason is not None

    @property
    def degraded_reason(self) -> str | None:
        return self._degraded_reason

    def stats(self) -> StoreStats:
        try:
            size = int(self._cache.volume())
            records = len(self._cache)
        except sqlite3.Error:
            size = records = -1
        with self._lock:
            return StoreStats(
                size_bytes=size,
                records=records,
                memory_bytes=self._memory.used,
                memory_items=len(self._memory),
                hits=self._hits,
                misses=self._misses,
                corrupt=self._corrupt_count,
                stores=self._stores,
                store_failures=self._store_failures,
                degraded=self.degraded,
                degraded_reason=self._degraded_reason,
            )

    def close(self) -> None:
        # After a flush or maintenance running in a thread (whose task was cancelled): it
        # reads through the connections closed here, and a connection closed under a
        # statement running in another thread crashes the process.
        with self._maintaining:
            self._close()

    def _close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._reads.flush(self._writing)
        self._reads.close()
        with self._writing:
            self._closed = True
            self._slabs.seal()
            try:
                with self._writes() as sql:
                    self._slabs.settle(sql)
            except (sqlite3.Error, OSError, diskcache.Timeout) as e:
                # Its lock going lets another process seal it.
                log.warning("cannot seal the cache's open slab: %s", e)
            self._slabs.release()
        self._slab_reads.close()
        self._cache.close()

    @contextlib.contextmanager
    def _writes(self) -> Iterator[Sql]:
        """A write transaction of this process (in its turn of ``_writing``), the slabs
        told how it ended before the turn passes."""
        with self._writing:
            try:
                with self._cache.transact():
                    yield self._cache._sql
            except BaseException:
                self._slabs.rolled_back()
                raise
            self._slabs.committed()

    def flush_recency(self) -> int:
        """Write back which entries were read since the last call (LRU eviction order),
        and keep the slabs (``maintain``); the cache layer calls it every few seconds, in
        a thread."""
        with self._maintaining:
            if self._closed:
                return 0
            try:
                flushed = self._reads.flush(self._writing)
            except sqlite3.Error as e:
                log.warning("cache recency write-back failed: %s", e)
                flushed = 0
            self.maintain()
        return flushed

    def maintain(self) -> None:
        """Seal the slabs of processes gone and retire the slabs left empty; then, in a
        transaction of its own, compact one slab when dead bytes in slabs pass their share
        of the size limit (edge.slabs); then make the purges left under way by a process
        gone, or by a removal that failed here (see purge)."""
        with self._maintaining:
            self._maintain()

    def _maintain(self) -> None:
        with self._writing:
            if self._closed:
                return
            moved: list[str] = []
            try:
                with self._writes() as sql:
                    self._slabs.check(sql)
                    self._slabs.settle(sql)
                with self._writes() as sql:
                    moved = self._slabs.compact(sql, self._verified_row)
                    self._slabs.settle(sql)
            except (sqlite3.Error, OSError, diskcache.Timeout) as e:
                self._write_failed(e)
            for bkey in moved:
                self._drop_body(bkey)  # its place in this process's index is the old one
        self._slab_reads.prune()
        self._resume_purges()

    @staticmethod
    def _verified_row(bkey: str, data: bytes) -> bool:
        """Whether ``data`` is the body a body row's key names (its digest ends the key)."""
        return hashlib.sha256(data).hexdigest() == bkey.rpartition(_SEP)[2]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reset(self, settings: dict[str, Any], error: sqlite3.DatabaseError) -> diskcache.Cache:
        """Set a corrupt store aside and open an empty one in its place.

        The cache is disposable: a damaged database must not keep the node from starting.
        Everything but the temp area moves into ``corrupt-<time>-<pid>/`` (renames only, so
        start-up stays fast whatever the size), which a background thread then deletes. A
        lock file makes the workers of one node, starting together, reset it once.
        """
        with open(os.path.join(self.directory, "reset.lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return diskcache.Cache(self.directory, **settings)  # another worker reset it
            except sqlite3.DatabaseError as again:
                if not _is_corrupt(again):
                    raise
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = os.path.join(self.directory, f"corrupt-{stamp}-{os.getpid()}")
            os.mkdir(aside)
            for name in os.listdir(self.directory):
                if name in ("tmp", "reset.lock") or name.startswith("corrupt-"):
                    continue
                os.rename(os.path.join(self.directory, name), os.path.join(aside, name))
            cache = diskcache.Cache(self.directory, **settings)
        self.resets = 1
        log.warning(
            "cache store %s was corrupt (%s): set aside in %s (being deleted); starting empty",
            self.directory,
            error,
            aside,
        )
        return cache

    def _remove_set_aside(self) -> None:
        """Delete stores set aside by a reset (this one's, or one a crash left behind)."""
        aside = [
            os.path.join(self.directory, name)
            for name in os.listdir(self.directory)
            if name.startswith("corrupt-")
        ]
        if aside:

            def remove() -> None:
                for path in aside:
                    shutil.rmtree(path, ignore_errors=True)

            threading.Thread(target=remove, name="cache-reset-cleanup", daemon=True).start()

    def _sweep_tmp(self) -> None:
        # Parts left by a crash mid-write: never committed, so never referenced.
        for name in os.listdir(self._tmp_dir):
            if name.endswith(".part"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._tmp_dir, name))

    def _write_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._store_failures += 1
        if _is_full(exc):
            reason = f"disk full: {exc}"
            if self._degraded_reason is None:
                log.error("cache store degraded, not caching for %.0fs: %s", self._retry_after, exc)
            self._degraded_reason = reason
            self._degraded_until = self._clock() + self._retry_after
        else:
            log.warning("cache store write failed: %s", exc)

    def _writable(self) -> bool:
        return self._degraded_reason is None or self._clock() >= self._degraded_until

    def _wrote_ok(self) -> None:
        if self._degraded_reason is not None:
            log.warning("cache store recovered from: %s", self._degraded_reason)
            self._degraded_reason = None
        with self._lock:
            self._stores += 1

    # --- metadata ------------------------------------------------------------------------

    def _epoch(self) -> int:
        try:
            return os.stat(self._epoch_file).st_mtime_ns
        except OSError:
            return -1  # never equal to a read epoch: every list is read again

    def _move_epoch(self) -> None:
        """Tell every process sharing the directory that stored variants went away."""
        now = time.time_ns()
        try:
            os.utime(self._epoch_file, ns=(now, max(now, self._epoch() + 1)))
        except OSError as e:
            log.warning("cannot move the cache epoch (other workers re-read late): %s", e)

    def _epoch_now(self, now: float) -> int:
        """The directory's epoch as last seen, looked up again (a stat) once it is
        _EPOCH_RECHECK seconds old: a busy hit path pays for one stat per period, not one
        per hit."""
        if now - self._epoch_seen_at >= _EPOCH_RECHECK or now < self._epoch_seen_at:
            epoch = self._epoch()
            moved = epoch != self._epoch_seen
            if moved:
                # It moved after the last look that saw it unmoved: lists known current
                # then are known current until that time, not later.
                self._epoch_moved_at = self._epoch_seen_at
            self._epoch_seen = epoch
            self._epoch_seen_at = now
            if moved:
                self._read_pending()  # a purge begun or ended moves it
        return self._epoch_seen

    def _current(self, listed: _Listed, now: float) -> bool:
        """Whether a variant list in the index may still be used: read less than
        meta_refresh ago, or older but with the directory's epoch unmoved since."""
        return now - listed.read_at < self._meta_refresh or listed.epoch == self._epoch_now(now)

    def _load_meta(self, key: str, sql: Sql | None = None) -> list[CacheEntry]:
        """The variant list stored for ``key``; ``sql``: read within a write transaction,
        through its connection."""
        mkey = _meta_key(key)
        try:
            raw = self._reads.get(mkey, sql)
            if isinstance(raw, str):
                raise StoreError("metadata stored as a file")
        except StoreError as e:
            log.warning("dropping refused cache metadata for %s: %s", key, e)
            self._cache.delete(mkey)
            return []
        if raw is None:
            return []
        try:
            entries = entries_from_json(raw)
        except (ValueError, TypeError, KeyError) as e:
            log.warning("dropping unreadable cache metadata for %s: %s", key, e)
            with contextlib.suppress(sqlite3.Error):
                self._cache.delete(mkey)
            return []
        self._reads.touch([mkey, *(_body_key(e) for e in entries)])
        return entries

    def _used(self, listed: _Listed, now: float) -> None:
        """A variant list served from the index: its rows count as read (LRU order), once
        per _STAMP_EVERY. (The caller counts the hit.)"""
        if now - listed.stamped_at >= _STAMP_EVERY:
            listed.stamped_at = now
            self._reads.touch(listed.rows)

    def _save_meta(self, key: str, entries: list[CacheEntry]) -> None:
        if entries:
            self._cache.set(_meta_key(key), entries_json(entries))
        else:
            self._cache.delete(_meta_key(key))

    def _drop_body(self, bkey: str) -> None:
        with self._lock:
            self._memory.pop(bkey)
            self._index.pop(bkey)

    def _forget(self, key: str) -> None:
        mkey = _meta_key(key)
        with self._lock:
            self._index.pop(mkey)
            self._absent.pop(mkey, None)
            self._changed(mkey)

    def _changed(self, mkey: str) -> None:
        """Note a change of `mkey`'s variant list (the lock held): see _changes."""
        self._change += 1
        changes = self._changes
        changes.pop(mkey, None)
        changes[mkey] = self._change
        if len(changes) > _CHANGES_MAX:
            self._changes_forgotten = changes.popitem(last=False)[1]

    @property
    def memory_bytes(self) -> int:
        """The memory tier's budget."""
        return self._memory.max_bytes

    @property
    def index_bytes(self) -> int:
        """The index's budget (variant lists and body locations)."""
        return self._index.max_bytes

    @property
    def memory_object_max(self) -> int:
        """The biggest body the memory tier keeps."""
        return self._memory_object_max

    @property
    def meta_refresh(self) -> float:
        """Seconds a variant list is used from memory before it is re-read from disk."""
        return self._meta_refresh

    def peek_variants(self, key: str) -> tuple[CacheEntry, ...] | None:
        """Variants of ``key`` from the index only: never blocks on disk, safe to call on
        the event loop. None when not there or due for a re-read (then call ``variants``
        in a thread)."""
        now = self._clock()
        with self._lock:
            listed: _Listed | None = self._index.get(_meta_key(key))
        if listed is None or not self._current(listed, now):
            return None
        with self._lock:
            self._hits += 1
        self._used(listed, now)
        return listed.entries

    def peek_single(self, key: str) -> tuple[CacheEntry, bytes | None, float | None] | None:
        """For a key with exactly one variant, from the index and the memory tier in one
        step (the cache-hit fast path): that variant, its body when the memory tier holds
        it, and None while the list may be used (``peek_variants`` would return it), else
        the seconds since it was last known to be what is stored (the later of its read
        and the last look at the directory's epoch before it moved). So, unlike
        ``peek_variants``, it also returns a list due for its re-read, and a caller may
        keep answering from it for a while as ``variants`` re-reads it in a thread. None
        when the index does not hold a single variant for ``key``."""
        with self._lock:
            listed: _Listed | None = self._index.get(_meta_key(key))
            if listed is None or len(listed.entries) != 1:
                return None
            entry = listed.entries[0]
            body: bytes | None = self._memory.get(listed.rows[1])
            self._hits += 1
        now = self._clock()
        self._used(listed, now)
        if self._current(listed, now):
            return entry, body, None
        return entry, body, now - max(listed.read_at, self._epoch_moved_at)

    def peek_body(self, entry: CacheEntry) -> bytes | None:
        """The verified body from the memory tier only (non-blocking), or None."""
        with self._lock:
            body: bytes | None = self._memory.get(_body_key(entry))
        return body

    def variants(self, key: str) -> tuple[CacheEntry, ...]:
        """Every stored variant of primary ``key`` (newest last), possibly empty."""
        mkey = _meta_key(key)
        now = self._clock()
        with self._lock:
            listed: _Listed | None = self._index.get(mkey)
            absent_at = self._absent.get(mkey, _NEVER)
            read_at_change = self._change
        if listed is not None and self._current(listed, now):
            with self._lock:
                self._hits += 1
            self._used(listed, now)
            return listed.entries
        if now - absent_at < self._meta_refresh:
            with self._lock:
                self._misses += 1
            return ()
        # The epoch as last seen, before the read (a move since means a read again later;
        # one seen up to _EPOCH_RECHECK ago only brings that re-read sooner).
        epoch = self._epoch_now(now)
        try:
            entries = self._unhidden(tuple(self._load_meta(key)))
        except (sqlite3.Error, OSError, StoreError) as e:
            log.warning("cache read failed for %s: %s", key, e)
            entries = ()
        with self._lock:
            if self._changes.get(mkey, self._changes_forgotten) > read_at_change:
                pass  # changed since the read: the index keeps what the change left
            elif entries:
                self._index.put(mkey, _listed(key, entries, now, epoch), _list_cost(entries))
                self._absent.pop(mkey, None)
                self._hits += 1
            else:
                self._index.pop(mkey)
                if len(self._absent) >= _ABSENT_MAX:
                    self._absent.popitem(last=False)
                self._absent[mkey] = now
                self._misses += 1
        return entries

    # --- bodies --------------------------------------------------------------------------

    def _corrupt(self, entry: CacheEntry) -> None:
        log.warning("evicting damaged cache entry %s (variant %s)", entry.key, entry.variant)
        with self._lock:
            self._corrupt_count += 1
        self._drop_body(_body_key(entry))
        self.remove(entry.key, entry.variant, entry.sha256)  # not a newer fill of it

    def _verified(self, entry: CacheEntry, data: bytes) -> bool:
        return len(data) == entry.body_length and hashlib.sha256(data).hexdigest() == entry.sha256

    def _stored_body(self, entry: CacheEntry, bkey: str) -> tuple[Place, bytes | IO[bytes]] | None:
        """The stored body value (bytes, or an open file for a big one) and where it was
        found (``_Reads.find``); None when the read failed, or when the body is missing or
        refused (then the entry is evicted)."""
        found: tuple[Place, bytes | IO[bytes]] | None = None
        try:
            stored = self._reads.find(bkey)
            if stored is not None:
                place, value = stored
                found = place, open(value, "rb") if isinstance(value, str) else value
        except FileNotFoundError:
            found = None  # evicted between the lookup and the open (a file or a slab)
        except StoreError:
            found = None  # a refused (non-bytes) row: as bad as a damaged one
        except (sqlite3.Error, OSError) as e:
            log.warning("cache body read failed for %s: %s", entry.key, e)
            return None
        if found is None:
            self._corrupt(entry)
        return found

    def _known_body(self, entry: CacheEntry, place: Place) -> bytes | None:
        """The body of an entry verified before in this process, read from where it was
        found then (``place``) and checked for length only; None when it is not there
        whole any more (then the caller reads it as new)."""
        bkey = _body_key(entry)
        try:
            if isinstance(place, int):
                data = self._reads.row(place, bkey)
            elif isinstance(place, slabs.SlabPlace):
                data = self._slab_reads.read_at(place, entry.body_length)
            elif place:
                fd = os.open(place, os.O_RDONLY)
                try:
                    data = os.read(fd, entry.body_length + 1)
                finally:
                    os.close(fd)
            else:  # a row this process wrote: found by key, then by rowid
                found = self._reads.find(bkey)
                if found is None or not isinstance(found[0], int) or type(found[1]) is not bytes:
                    return None  # a file or a slab: not checked yet, read as new
                where, data = found[0], found[1]
                if len(data) == entry.body_length:
                    with self._lock:
                        self._index.put(bkey, where, _place_cost(bkey, where))
        except (sqlite3.Error, OSError, StoreError):
            return None
        return data if data is not None and len(data) == entry.body_length else None

    def open_known_file(self, entry: CacheEntry) -> int | None:
        """A read-only descriptor on the file of ``entry``'s body, when the body was
        verified before in this process and lies in a file of its own that still has its
        length (as ``_known_body`` checks a later read), for sending with sendfile
        (edge.filebody); the caller closes it. None otherwise: read it with ``read_body``."""
        with self._lock:
            place = self._index.get(_body_key(entry))
        if not isinstance(place, str) or not place:
            return None
        try:
            fd = os.open(place, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size == entry.body_length:
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def get_body(self, entry: CacheEntry) -> bytes | None:
        """The whole body of ``entry``, verified; None (and the entry evicted) if it is
        missing, truncated or altered.

        The first read of a body in this process checks its length and SHA-256; later reads
        go straight to where it was found (no database lookup for a file) and check its
        length: a body is written once under a name that carries its digest and is never
        rewritten in place, so what a later read can meet is a body gone or cut short by
        something else (an eviction, a purge, a damaged disk), which the length shows."""
        with self._lock:
            mem: bytes | None = self._memory.get(_body_key(entry))
        return mem if mem is not None else self.read_body(entry)

    def read_body(self, entry: CacheEntry) -> bytes | None:
        """``get_body`` past the memory tier, for a caller that just looked there
        (``peek_single``): from where the body lies."""
        bkey = _body_key(entry)
        with self._lock:
            place = self._index.get(bkey)
        data: bytes | None = None
        if place is not None:
            data = self._known_body(entry, place)
        if data is None:
            found = self._stored_body(entry, bkey)
            if found is None:
                return None
            place, value = found
            if isinstance(value, bytes):
                data = value
            else:
                with value:
                    place = value.name if isinstance(value.name, str) else ""
                    data = value.read(entry.body_length + 1)
            if not self._verified(entry, data):
                self._corrupt(entry)
                return None
            with self._lock:
                self._index.put(bkey, place, _place_cost(bkey, place))
        # Read from its file or its row next time too (the page cache: a few µs, as nginx
        # reads its cache), not kept in the memory tier, where it would only push out the
        # bodies of fresh fills.
        return data

    def open_body(self, entry: CacheEntry) -> BodyReader | None:
        """A streaming reader for big bodies (small ones come from memory). None if the
        body is missing or has the wrong length (the entry is evicted)."""
        bkey = _body_key(entry)
        with self._lock:
            mem = self._memory.get(bkey)
        if mem is not None:
            return BodyReader(self, entry, mem)
        if entry.body_length <= self._memory_object_max:
            data = self.get_body(entry)
            return None if data is None else BodyReader(self, entry, data)
        found = self._stored_body(entry, bkey)
        if found is None:
            return None
        value = found[1]
        if isinstance(value, bytes):
            if not self._verified(entry, value):
                self._corrupt(entry)
                return None
            return BodyReader(self, entry, value)
        if os.fstat(value.fileno()).st_size != entry.body_length:
            value.close()
            self._corrupt(entry)
            return None
        return BodyReader(self, entry, value)

    # --- writes --------------------------------------------------------------------------

    def put(self, entry: CacheEntry, body: bytes) -> CacheEntry | None:
        """Store a complete body and its metadata. body_length and sha256 of ``entry`` are
        recomputed from ``body``. Returns the stored entry, or None if not stored."""
        if self.max_object_bytes is not None and len(body) > self.max_object_bytes:
            return None
        if not self._writable():
            return None
        final = replace(entry, body_length=len(body), sha256=hashlib.sha256(body).hexdigest())
        return self._commit_fills([_Fill(final, body, body)])[0]

    def writer(self, max_bytes: int | None = None) -> BodyWriter | None:
        """A streaming BodyWriter, or None while the store is degraded."""
        if not self._writable():
            return None
        return BodyWriter(self, self.max_object_bytes if max_bytes is None else max_bytes)

    def commit_all(
        self, fills: Sequence[tuple[BodyWriter, CacheEntry, int]]
    ) -> list[CacheEntry | None]:
        """``writer.commit(entry, length)`` for each of ``fills``, in one write transaction
        (a group commit: the transaction's fixed cost, its locks and the pages every
        insert touches are paid once for all of them). Their primary keys must differ:
        the variant list of a key is read outside the transaction. Should the transaction
        fail, none of them is stored."""
        keys = [entry.key for _, entry, _ in fills]
        if len(set(keys)) != len(keys):
            raise ValueError("commit_all takes one fill per primary key")
        finished = [writer._finish(entry, length) for writer, entry, length in fills]
        staged = [f for f in finished if f is not None]
        stored = iter(self._commit_fills(staged) if staged else [])
        results = [None if f is None else next(stored) for f in finished]
        for writer, _, _ in fills:
            writer._cleanup()
        return results

    def _commit_fills(self, fills: list[_Fill]) -> list[CacheEntry | None]:
        """Store each fill's body and the metadata naming it, all in one write
        transaction; the stored entries, or Nones when it failed. A fill a purge refuses
        (Store.purge) gets a None and leaves nothing behind."""
        epoch = self._epoch()  # before the commit: another process's purge meanwhile moves it
        asked = fills
        begun = False
        purged: set[int] = set()  # the indexes in `asked` of the fills a purge refuses
        try:
            with self._writes():
                cache = self._cache
                now = time.time()
                begun = True
                purged = _purged([f.entry for f in asked], cache._sql, now)
                if purged:
                    fills = [f for i, f in enumerate(asked) if i not in purged]
                if fills:
                    self._stage(fills, now)
                    # Eviction once per transaction, not per row written: as much room as
                    # the Cache.set of each row would have made (cull_limit rows each).
                    with cache._transact() as (sql, cleanup):  # within ours: no BEGIN
                        cache._cull(now, sql, cleanup, limit=2 * cache.cull_limit * len(fills))
                    self._slabs.settle(cache._sql)
                # Inside the transaction: a remove() of one of these keys (which forgets it
                # from memory after its own transaction) cannot come in between.
                for fill in fills:
                    self._remember(fill, epoch)
        except Exception as e:
            if begun:
                for fill in asked:
                    self._undo(fill)
            if isinstance(e, sqlite3.Error | OSError | diskcache.Timeout):
                self._write_failed(e)
                return [None] * len(asked)
            raise
        moved = False
        for fill in fills:
            bkey = _body_key(fill.entry)
            for old in fill.replaced:
                if _body_key(old) != bkey:
                    with contextlib.suppress(sqlite3.Error, OSError):
                        self._cache.delete(_body_key(old))
                    self._drop_body(_body_key(old))
                moved = True
            self._wrote_ok()
        if moved:
            self._move_epoch()  # other processes' lists may name a body just deleted
        for i in purged:
            self._undo(asked[i])
        return [None if i in purged else fill.entry for i, fill in enumerate(asked)]

    def _stage(self, fills: list[_Fill], now: float) -> None:
        """The fills' writes, inside _commit_fills' transaction: each body, then its key's
        variant list with it in (replacing its variant, the oldest pushed out past
        max_variants), then its surrogate keys.

        Rows are written with a statement or two each, not diskcache's ``Cache.set``
        (five statements and a cull per row: most of a fill's SQLite time), into
        diskcache's table as it would write them. The common group (new bodies, keys
        with no list yet) takes two statements in all: every body row in one INSERT and
        every list in another, so that the committing thread lets go of the GIL, and the
        event loop takes it, twice per group instead of three times per fill. Should a
        row be there already, both are undone and each fill goes the way of one."""
        sql = self._cache._sql
        bodies = self._place(fills, now)
        lists = [_list_row(_meta_key(f.entry.key), entries_json([f.entry]), now) for f in fills]
        sql("SAVEPOINT fills")
        if _insert_rows(sql, bodies) and _insert_rows(sql, lists):
            sql("RELEASE fills")
            for fill in fills:
                fill.kept, fill.replaced = (fill.entry,), ()
        else:
            sql("ROLLBACK TO fills")
            sql("RELEASE fills")
            for fill, row in zip(fills, bodies, strict=True):
                self._stage_one(fill, row, now, sql)
        self._add_tags([(tag, f.entry.key) for f in fills for tag in f.entry.surrogate_keys])

    def _place(self, fills: list[_Fill], now: float) -> list[_Row]:
        """Put each fill's body in a slab (all of them in one system call) or its own
        file; the Cache rows naming them."""
        cache = self._cache
        slabbed = [
            f.data
            if f.data is not None and slabs.MIN_BYTES <= len(f.data) < cache.disk.min_file_size
            else None
            for f in fills
        ]
        in_slabs = iter(self._slabs.append([d for d in slabbed if d is not None]))
        rows: list[_Row] = []
        for fill, data in zip(fills, slabbed, strict=True):
            bkey = _body_key(fill.entry)
            if data is not None:
                filename, fill.place = next(in_slabs)
                size, mode, value = len(data), diskcache.core.MODE_BINARY, None
            else:
                size, mode, filename, value = cache.disk.store(fill.body, False, key=bkey)
                fill.place = cache.disk.placed
            rows.append((bkey, now, now, size, mode, filename, value))
        return rows

    def _stage_one(self, fill: _Fill, body: _Row, now: float, sql: Sql) -> None:
        """One fill's body row and variant list, a statement or two each."""
        entry = fill.entry
        bkey = body[0]
        if not sql(self._INSERT, body).rowcount:
            # These very bytes are stored already (the key names their digest): kept.
            sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", (now, bkey))
            if isinstance(fill.place, str) and fill.place:
                with contextlib.suppress(OSError):
                    os.unlink(fill.place)
            fill.place = ""
        kept: list[CacheEntry] = []
        replaced: list[CacheEntry] = []
        listed = self._load_meta(entry.key, sql)
        for e in listed:
            (replaced if e.variant == entry.variant else kept).append(e)
        kept.append(entry)
        while len(kept) > self._max_variants:
            replaced.append(kept.pop(0))
        mkey = _meta_key(entry.key)
        data = entries_json(kept)
        writes = [
            (self._RESTAMP_META, (now, now, data, mkey)),
            (self._INSERT, _list_row(mkey, data, now)),
        ]
        if not listed:
            writes.reverse()  # no list read: the row is new
        if not any(sql(*w).rowcount for w in writes):
            self._cache.set(mkey, data)  # a list an older version wrote to a file: diskcache's way
        fill.kept, fill.replaced = tuple(kept), tuple(replaced)

    # diskcache's own INSERT (Cache._row_insert) for a new row of a str key, or nothing
    # when the key has one; and the update of a variant list kept in its row.
    _INSERT = _insert_many(1)
    _RESTAMP_META = (
        "UPDATE Cache SET store_time = ?, access_time = ?, value = ? WHERE key = ? AND raw = 1"
        f" AND mode = {diskcache.core.MODE_RAW} AND filename IS NULL"
    )

    def _undo(self, fill: _Fill) -> None:
        """After a failed transaction: nothing of ``fill`` is left in memory, the index or
        on disk (its body's file, put in place before the rollback, goes too). Its rows
        went with the rollback; a body row it found stored already (the same bytes) stays,
        as the variant list naming it does."""
        self._forget(fill.entry.key)
        self._drop_body(_body_key(fill.entry))
        temp = fill.body.path if isinstance(fill.body, _CommittedFile) else ""
        for path in (fill.place, temp):
            if isinstance(path, str) and path:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _remember(self, fill: _Fill, epoch: int) -> None:
        """After a commit: the variant list just written and the body's place go to the
        index, and the body, when it is small and at hand, to the memory tier, so the first
        hit needs no database read."""
        key, body = fill.entry.key, fill.data
        bkey = _body_key(fill.entry)
        now = self._clock()
        with self._lock:
            # Filtered under the lock: a purge hidden meanwhile (hide) finds it in the index.
            entries = self._unhidden(fill.kept)
            listed = _listed(key, entries, now, epoch)
            self._index.put(listed.rows[0], listed, _list_cost(entries))
            self._absent.pop(listed.rows[0], None)
            self._changed(listed.rows[0])
            # Written from bytes whose digest was just computed: verified.
            self._index.put(bkey, fill.place, _place_cost(bkey, fill.place))
            if body is not None and len(body) <= self._memory_object_max:
                self._memory.put(bkey, body, len(body) + 64)

    def _add_tags(self, tagged: list[tuple[str, str]]) -> None:
        """Note that each (surrogate key, primary key) of ``tagged`` tags that key, within
        the caller's write transaction."""
        if tagged:
            self._cache._con.executemany(_TAG_INSERT, tagged)

    def _move_tag_lists(self) -> None:
        """Move the tag lists an earlier version kept in diskcache's table (a row
        ``t:<tag>`` holding a JSON list of primary keys, rewritten whole by every fill) to
        the Tags table, within the caller's write transaction; once, as the store opens.
        Only the keys still stored move: the lists kept the keys evicted since."""
        sql = self._cache._sql
        for (tkey,) in sql(
            "SELECT key FROM Cache WHERE key >= 't:' AND key < 't;' AND raw = 1"
        ).fetchall():
            try:
                keys = _tagged(self._cache.get(tkey, default=None))
            except StoreError:
                keys = []
            sql(_TAGS_MOVED, (tkey[2:], json.dumps(keys)))
            self._cache.delete(tkey)

    def update(self, entry: CacheEntry) -> bool:
        """Replace the metadata of a stored variant (after a 304 freshened it); the body
        must be the same (same sha256). False if the variant is gone, or if a purge made
        after `entry`'s request names it (Store.purge; a tag the 304 adds, say): then the
        variant goes, as the purge would have taken it had the origin said so sooner."""
        if not self._writable():
            return False
        purged = False
        try:
            with self._writing, self._cache.transact():
                purged = bool(_purged([entry], self._cache._sql, time.time()))
                if purged:
                    return False
                entries = self._load_meta(entry.key)
                for i, e in enumerate(entries):
                    if e.variant == entry.variant and e.sha256 == entry.sha256:
                        entries[i] = replace(entry, body_length=e.body_length)
                        break
                else:
                    return False
                self._save_meta(entry.key, entries)
                self._add_tags([(tag, entry.key) for tag in entry.surrogate_keys])
        except (sqlite3.Error, OSError, diskcache.Timeout) as e:
            self._write_failed(e)
            return False
        finally:
            self._forget(entry.key)
            if purged:
                with contextlib.suppress(StoreError):
                    self.remove(entry.key, entry.variant, entry.sha256)
        self._move_epoch()
        self._wrote_ok()
        return True

    # --- removal -------------------------------------------------------------------------

    def remove(self, key: str, variant: str | None = None, sha256: str | None = None) -> int:
        """Remove one variant (or all variants) of ``key``, only while it holds the body
        ``sha256`` when given; returns how many went."""

        def named(e: CacheEntry) -> bool:
            return (variant is None or e.variant == variant) and sha256 in (None, e.sha256)

        return self._remove([key], named)

    def _remove(
        self, keys: Sequence[str], named: Callable[[CacheEntry], bool], untag: str | None = None
    ) -> int:
        """Remove the variants of ``keys`` (one per primary key) that ``named`` says, in one
        write transaction: the variant lists and the body rows they name go together. With
        ``untag``, the keys leave that tag's rows (``named`` takes what carries it)."""
        removed: list[CacheEntry] = []
        try:
            with self._writing, self._cache._transact(retry=True) as (sql, cleanup):
                for key in keys:
                    kept: list[CacheEntry] = []
                    gone = len(removed)
                    for e in self._load_meta(key, sql):
                        (removed if named(e) else kept).append(e)
                    if untag is not None and not any(untag in e.surrogate_keys for e in kept):
                        # (One kept carries it when it was asked after the purge.)
                        sql("DELETE FROM Tags WHERE tag = ? AND key = ?", (untag, key))
                    if len(removed) == gone:
                        continue
                    if kept:
                        self._cache.set(_meta_key(key), entries_json(kept))
                    else:
                        _delete_row(sql, cleanup, _meta_key(key))
                for entry in removed:
                    _delete_row(sql, cleanup, _body_key(entry))
        except (sqlite3.Error, OSError, diskcache.Timeout) as e:
            what = keys[0] if len(keys) == 1 else f"{len(keys)} keys from {keys[0]}"
            raise StoreError(f"cannot remove {what}: {e}") from e
        finally:
            for key in keys:
                self._forget(key)
            if removed:
                self._move_epoch()
        for entry in removed:
            self._drop_body(_body_key(entry))
        return len(removed)

    def purged(self, entry: CacheEntry) -> bool:
        """Whether a purge recorded after `entry`'s origin request (Store.purge, in any
        process) names it: a response on its way from the origin that requests made since
        must not be answered from. A database that cannot be read says yes."""
        try:
            return bool(_purged([entry], self._reads.connection().execute, time.time()))
        except sqlite3.Error as e:
            log.warning("cannot read the cache's purges: %s", e)
            return True

    def purge(self, kind: str, value: str, asked_before: float | None = None) -> int:
        """Remove what a purge of `kind` names (purge_names; "url": `value` is a primary
        key, "prefix": a prefix of keys, "surrogate_key": a tag); how many variants went.

        With `asked_before` (a time on the clock of CacheEntry.request_time) the purge is
        recorded first, and a fill it names whose origin request came before that time is
        refused when it is committed after it, by this process or another one sharing the
        directory: what an origin answered before a purge is not stored after it; and only
        what was asked before it is removed. A purge by prefix or tag, whose removal takes
        about 0.1 ms an object, is also hidden from then on (``hide``): in this process at
        once, in the others once it is recorded (they read the Pending table when the
        directory's epoch moves). Should its removal fail, or the process die, it stays
        hidden and recorded, and `maintain` finishes it."""
        if kind not in ("url", "prefix", "surrogate_key"):
            raise ValueError(f"no purge of kind {kind!r}")
        unrecorded: BaseException | None = None
        pending: int | None = None
        hidden = None if asked_before is None or kind == "url" else (asked_before, kind, value)
        if asked_before is not None:
            if hidden is not None:
                self.hide(kind, value, asked_before)
            row_id: int | None = None
            try:
                with self._writes() as sql:
                    row = (asked_before, kind, value)
                    added = sql("INSERT INTO Purges(at, kind, value) VALUES (?, ?, ?)", row)
                    _forget_purges(sql, asked_before, added.lastrowid or 0)
                    if hidden is not None:
                        row_id = sql(
                            "INSERT INTO Pending(at, kind, value, pid) VALUES (?, ?, ?, ?)",
                            (*row, os.getpid()),
                        ).lastrowid
                        # Before the commit: maintain() must not take it over meanwhile.
                        self._removing.add(row_id or 0)
                pending = row_id
            except (sqlite3.Error, OSError, diskcache.Timeout) as e:
                self._removing.discard(row_id or 0)
                self._write_failed(e)  # a full disk: no fill is committed for a while
                unrecorded = e
            if pending is not None:
                self._move_epoch()  # the other processes read the Pending table again
        try:
            removed = self._remove_named(kind, value, asked_before)
        except BaseException:
            if pending is None and hidden is not None:
                self._unhide(hidden)  # nothing recorded to finish it later
            self._removing.discard(pending or 0)  # maintain takes it from here
            raise
        if hidden is not None:
            self._end_pending(pending, hidden)
        if unrecorded is not None:
            # What is stored went; what is on its way may still be stored: say so, so the
            # purge is made again (it can be).
            raise StoreError(
                f"removed {removed}, but could not record the purge against fills on their"
                f" way: {unrecorded}"
            ) from unrecorded
        return removed

    def _remove_named(self, kind: str, value: str, asked_before: float | None) -> int:
        """The removal of a purge (purge's terms), by the remover of its kind."""
        if kind == "url":
            return self.purge_url(value)
        if kind == "prefix":
            return self.purge_prefix(value, asked_before)
        return self.purge_tag(value, asked_before)

    def purge_url(self, key: str) -> int:
        """Remove every variant stored for primary key ``key``."""
        return self.remove(key)

    def purge_prefix(self, prefix: str, asked_before: float | None = None) -> int:
        """Remove everything whose primary key starts with ``prefix`` (asked of an origin
        before `asked_before`, if given): the keys are read from the key index from
        ``prefix`` on, as far as they start with it."""
        mprefix = _meta_key(prefix)
        keys = []
        # SQLite compares text keys byte by byte in UTF-8, which orders them as str does,
        # so the keys with the prefix are one run of the index, from the prefix itself on.
        # (diskcache's iterkeys walked every key before them, 100 to a query whose OR kept
        # it off the index: 25 s of CPU for one purge in a cache of 200,000 entries.)
        rows = self._reads.connection().execute(self._FROM_KEY, (mprefix,))
        try:
            for (k,) in rows:
                if not (isinstance(k, str) and k.startswith(mprefix)):
                    break
                keys.append(k[2:])
        finally:
            rows.close()
        before = math.inf if asked_before is None else asked_before
        return self._remove_all(keys, lambda e: e.request_time < before)

    def _remove_all(
        self, keys: list[str], named: Callable[[CacheEntry], bool], untag: str | None = None
    ) -> int:
        """``_remove``, _REMOVE_MAX keys to a transaction."""
        return sum(
            self._remove(keys[at : at + _REMOVE_MAX], named, untag)
            for at in range(0, len(keys), _REMOVE_MAX)
        )

    _FROM_KEY = "SELECT key FROM Cache WHERE key >= ? AND raw = 1 ORDER BY key"

    def purge_tag(self, tag: str, asked_before: float | None = None) -> int:
        """Remove every variant tagged ``tag`` by a Surrogate-Key response header (asked of
        an origin before `asked_before`, if given), and the tag's rows of the keys read. A
        key the tag's rows gain after they were read (a fill of a request made after the
        purge) keeps its variants and its row."""
        try:
            rows = self._reads.connection().execute("SELECT key FROM Tags WHERE tag = ?", (tag,))
            keys = [k for (k,) in rows]
        except sqlite3.Error as e:
            raise StoreError(f"cannot purge the tag {tag}: {e}") from e
        before = math.inf if asked_before is None else asked_before
        return self._remove_all(
            keys, lambda e: tag in e.surrogate_keys and e.request_time < before, untag=tag
        )

    # --- purges under way ----------------------------------------------------------------

    def hide(self, kind: str, value: str, asked_before: float) -> None:
        """From now on this process serves nothing a purge of `kind` ("prefix" or
        "surrogate_key") and `value` names that was asked of an origin before
        `asked_before`: its variant lists leave the index, and lists read from the database
        are filtered, until the purge's removal ends (``purge`` calls this; the cache layer
        calls it before it waits for its pending commits)."""
        hidden = (asked_before, kind, value)
        with self._lock:
            if hidden in self._hiding:
                return  # and since then, the index has had only lists filtered by it
            self._hiding.add(hidden)
            self._rehide()
            self._drop_hidden([hidden])

    def _drop_hidden(self, hidden: Sequence[_Hidden]) -> None:
        """Take from the index the variant lists naming something `hidden` hides, and keep
        a read of the database begun before now out of it (the lock held)."""
        self._index.drop(
            lambda v: isinstance(v, _Listed) and len(_visible(v.entries, hidden)) < len(v.entries)
        )
        # Every change forgotten: a list read before this goes into no index (see _changes).
        self._change += 1
        self._changes.clear()
        self._changes_forgotten = self._change

    def _unhidden(self, entries: tuple[CacheEntry, ...]) -> tuple[CacheEntry, ...]:
        """`entries` without those a purge under way hides (see hide)."""
        hidden = self._hidden
        return _visible(entries, hidden) if hidden else entries

    def _rehide(self) -> None:
        """``_hidden`` made again from this process's purges and the recorded ones (the
        lock held): reads test one tuple."""
        self._hidden = tuple(self._hiding | self._recorded)

    def _unhide(self, hidden: _Hidden) -> None:
        with self._lock:
            self._hiding.discard(hidden)
            self._recorded = self._recorded - {hidden}
            self._rehide()

    def _read_pending(self) -> None:
        """Read which purges the Pending table lists, every process's; what one newly
        listed hides leaves this process's index."""
        with self._reading_pending:  # one read at a time: an older one never lands last
            try:
                rows = self._reads.connection().execute("SELECT at, kind, value FROM Pending")
                recorded = frozenset((at, kind, value) for at, kind, value in rows)
            except sqlite3.Error as e:
                log.warning("cannot read the cache's purges under way: %s", e)
                self._epoch_seen = -1  # read again at the next look
                return
            with self._lock:
                if recorded == self._recorded:
                    return
                new = [h for h in recorded if h not in self._recorded and h not in self._hiding]
                self._recorded = recorded
                self._rehide()
                if new:
                    self._drop_hidden(new)

    def _end_pending(self, pending: int | None, hidden: _Hidden) -> None:
        """A purge's removal ended: its Pending row goes, and it hides nothing more."""
        if pending is not None:
            try:
                with self._writes() as sql:
                    sql("DELETE FROM Pending WHERE id = ?", (pending,))
            except (sqlite3.Error, OSError, diskcache.Timeout) as e:
                # maintain() makes the purge again, which finds nothing left, and the row goes.
                log.warning("cannot clear a purge ended (it is made again): %s", e)
                self._removing.discard(pending)
                return
            self._removing.discard(pending)
        self._unhide(hidden)
        self._move_epoch()  # the other processes read the Pending table again

    def _resume_purges(self) -> None:
        """Make the purges the Pending table lists whose process died, or whose removal
        failed in this one, each claimed first (one process takes it)."""
        try:
            rows = (
                self._reads.connection()
                .execute("SELECT id, at, kind, value, pid FROM Pending")
                .fetchall()
            )
        except sqlite3.Error as e:
            log.warning("cannot read the cache's purges under way: %s", e)
            return
        me = os.getpid()
        for pending, at, kind, value, pid in rows:
            if pending in self._removing or (pid != me and _alive(pid)):
                continue
            try:
                with self._writes() as sql:
                    claim = "UPDATE Pending SET pid = ? WHERE id = ? AND pid = ?"
                    if not sql(claim, (me, pending, pid)).rowcount:
                        continue  # another process took it
            except (sqlite3.Error, OSError, diskcache.Timeout) as e:
                log.warning("cannot take over a purge under way: %s", e)
                return
            log.info("making again the purge of %s %s left by process %d", kind, value, pid)
            self._removing.add(pending)
            self.hide(kind, value, at)
            try:
                removed = self._remove_named(kind, value, at)
            except (StoreError, sqlite3.Error, OSError, diskcache.Timeout) as e:
                log.warning("purge of %s %s failed again: %s", kind, value, e)
                self._removing.discard(pending)  # the next maintain() tries again
                continue
            log.info("purge of %s %s done: %d variant(s) removed", kind, value, removed)
            self._end_pending(pending, (at, kind, value))

    def clear(self) -> None:
        self._cache.clear()
        self.maintain()  # the slabs emptied go
        with self._lock:
            self._memory.clear()
            self._index.clear()


def _tagged(raw: object) -> list[str]:
    """The primary keys a tag's row lists (a JSON array of strings; anything else: none)."""
    if not isinstance(raw, bytes | str):
        return []
    try:
        doc = json.loads(raw)
    except ValueError:
        return []
    return [k for k in doc if isinstance(k, str)] if isinstance(doc, list) else []


def _visible(entries: tuple[CacheEntry, ...], hidden: Sequence[_Hidden]) -> tuple[CacheEntry, ...]:
    """`entries` but those a purge in `hidden` names and that were asked before it."""
    return tuple(
        e
        for e in entries
        if not any(
            e.request_time < at and purge_names(kind, value, e.key, e.surrogate_keys)
            for at, kind, value in hidden
        )
    )


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def purge_names(kind: str, value: str, key: str, tags: Sequence[str]) -> bool:
    """Whether a purge of `kind` and `value` (Store.purge's terms) names what is stored
    under primary key `key` with surrogate keys `tags`. Kind "all" (purges forgotten, see
    _forget_purges) names everything."""
    if kind == "url":
        return key == value
    if kind == "prefix":
        return key.startswith(value)
    if kind == "surrogate_key":
        return value in tags
    return kind == "all"


def _purged(entries: Sequence[CacheEntry], run: Sql, now: float) -> set[int]:
    """Which of `entries` (their indexes) a purge recorded after their origin request
    names (Store.purge); one indexed read, which finds nothing but in the seconds after a
    purge. A purge dated past `now` (the wall clock) by more than PURGE_AHEAD was made by
    a clock since set right: it is not heeded."""
    asked = min(e.request_time for e in entries)
    purges = run(
        "SELECT at, kind, value FROM Purges WHERE at > ? AND at <= ?",
        (asked, now + PURGE_AHEAD),
    ).fetchall()
    if not purges:
        return set()
    return {
        i
        for i, e in enumerate(entries)
        if any(
            at > e.request_time and purge_names(kind, value, e.key, e.surrogate_keys)
            for at, kind, value in purges
        )
    }


def _forget_purges(sql: Sql, now: float, added: int) -> None:
    """Purges older than PURGE_MEMORY go (a fill is not on its way for an hour), and so do
    purges dated past the clock (see PURGE_AHEAD). Past PURGES_KEPT (counted with every
    _PURGES_COUNTED-th purge, `added` being the new one's rowid) the oldest go too, and a
    purge of kind "all" at the newest of those takes their place: a fill asked for before
    it is refused whatever it is."""
    sql("DELETE FROM Purges WHERE at < ?", (now - PURGE_MEMORY,))
    sql("DELETE FROM Purges WHERE at > ?", (time.time() + PURGE_AHEAD,))
    if added % _PURGES_COUNTED:
        return
    row = sql(
        "SELECT at FROM Purges WHERE kind != 'all' ORDER BY at DESC LIMIT 1 OFFSET ?",
        (PURGES_KEPT,),
    ).fetchone()
    if row is not None:
        sql("DELETE FROM Purges WHERE at <= ?", (row[0],))
        sql("INSERT INTO Purges(at, kind, value) VALUES (?, 'all', '')", (row[0],))


def read_entry_json(data: bytes) -> CacheEntry:
    """Decode one entry's JSON (for tools); raises CacheMetadataError."""
    return CacheEntry.from_json(data)


__all__ = [
    "BodyReader",
    "BodyWriter",
    "CacheMetadataError",
    "CorruptBodyError",
    "Store",
    "StoreStats",
    "read_entry_json",
]
