"""Small bodies in append-only slab files beside the cache database.

A body under diskcache's ``min_file_size`` (32 KiB) used to be a row's value: SQLite wrote
its pages to the write-ahead log, then again to the database at each checkpoint, and that
was most of what committing a fill cost. Here such a body is appended to this process's
open slab (one ``pwrite``) and its row, in diskcache's table as ever, names where it lies:
``slabs/<slab>:<offset>`` in the ``filename`` column, mode binary, no value, and the
body's length as ``size``. A row is written after the bytes it names, and the row's key
carries the body's SHA-256, checked on the first read in each process, so a crash or a
damaged slab never yields a wrong body.

A slab is only ever appended to, by the one process that holds its lock (``flock``), and
never rewritten: a body stays at its offset until the whole slab goes. Table ``Slabs``
keeps, per slab, its bytes written, its rows and their bytes (a trigger counts rows
deleted, by diskcache's eviction as by our purges), and whether it is sealed (full, or its
process gone). A sealed slab with no rows left is retired: its row goes and its file is
unlinked after the transaction. Bytes of deleted rows stay counted in diskcache's
``size`` (the disk still holds them) until their slab is retired, so diskcache's eviction
keeps what is on disk within ``size_limit``; and when such dead bytes pass a tenth of the
limit, ``compact`` copies the live bodies of the emptiest sealed slab into the open one,
so that slab can be retired.

Every method that takes ``sql`` runs inside the store's write transaction, through
diskcache's connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Sql = Callable[[str, Any], sqlite3.Cursor]

DIRECTORY = "slabs"
# Bodies from this size up to diskcache's min_file_size go to slabs; smaller ones fit a
# row's page (SQLite spills a row past about 4 KiB to overflow pages) and stay there.
MIN_BYTES = 4000
_PREFIX = DIRECTORY + "/"
# The part of the cache's size limit that dead bytes in sealed slabs may take before
# compaction moves the live bodies out of the emptiest slab.
_DEAD_SHARE = 0.1
# A slab file found with no row (a process died before its first commit) is removed once
# its lock is free and it is older than this (its owner may not have locked it yet).
_ORPHAN_AGE = 60.0

_NAME = "substr({row}.filename, 7, instr({row}.filename, ':') - 7)"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS Slabs (name TEXT PRIMARY KEY, sealed INTEGER NOT NULL"
    " DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, live INTEGER NOT NULL DEFAULT 0,"
    " live_bytes INTEGER NOT NULL DEFAULT 0)",
    # A slab's rows count nothing in diskcache's size: the slab's bytes do, as written
    # (Slabs.settle), until the slab goes. The triggers undo diskcache's own counting of
    # them, and keep each slab's rows and their bytes, whoever inserts, deletes or moves.
    "CREATE TRIGGER IF NOT EXISTS Slabs_row_insert AFTER INSERT ON Cache FOR EACH ROW"
    " WHEN NEW.filename GLOB 'slabs/*' BEGIN"
    " UPDATE Settings SET value = value - NEW.size WHERE key = 'size';"
    f" INSERT INTO Slabs(name, live, live_bytes) VALUES ({_NAME.format(row='NEW')}, 1, NEW.size)"
    " ON CONFLICT(name) DO UPDATE SET live = live + 1, live_bytes = live_bytes + NEW.size;"
    " END",
    "CREATE TRIGGER IF NOT EXISTS Slabs_row_delete AFTER DELETE ON Cache FOR EACH ROW"
    " WHEN OLD.filename GLOB 'slabs/*' BEGIN"
    " UPDATE Settings SET value = value + OLD.size WHERE key = 'size';"
    " UPDATE Slabs SET live = live - 1, live_bytes = live_bytes - OLD.size"
    f" WHERE name = {_NAME.format(row='OLD')}; END",
    "CREATE TRIGGER IF NOT EXISTS Slabs_row_move AFTER UPDATE OF filename ON Cache FOR EACH ROW"
    " WHEN OLD.filename GLOB 'slabs/*' AND NEW.filename GLOB 'slabs/*' BEGIN"
    " UPDATE Slabs SET live = live - 1, live_bytes = live_bytes - OLD.size"
    f" WHERE name = {_NAME.format(row='OLD')};"
    f" INSERT INTO Slabs(name, live, live_bytes) VALUES ({_NAME.format(row='NEW')}, 1, NEW.size)"
    " ON CONFLICT(name) DO UPDATE SET live = live + 1, live_bytes = live_bytes + NEW.size;"
    " END",
    # The rows of one slab, for compaction (partial: other rows pay nothing for it).
    "CREATE INDEX IF NOT EXISTS Cache_slab ON Cache(filename) WHERE filename GLOB 'slabs/*'",
)
# The rows of one slab, by the partial index (its condition repeated, so SQLite uses it).
_ROWS_OF = "FROM Cache WHERE filename GLOB 'slabs/*' AND filename >= ? AND filename < ?"


# The most buffers one pwritev takes (IOV_MAX).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def is_slab(filename: object) -> bool:
    """Whether a row's filename names a place in a slab."""
    return isinstance(filename, str) and filename.startswith(_PREFIX)


def _parse(filename: str) -> tuple[str, int]:
    name, _, offset = filename[len(_PREFIX) :].partition(":")
    return name, int(offset)


def _range(name: str) -> tuple[str, str]:
    """The filenames of slab ``name``'s rows lie in [low, high)."""
    return f"{_PREFIX}{name}:", f"{_PREFIX}{name};"


@dataclass(frozen=True, slots=True)
class SlabPlace:
    """Where a body lies in a slab: the slab file's path and the offset."""

    path: str
    offset: int


@dataclass(slots=True)
class _Open:
    """A slab this process appends to (or did, until its seal is committed)."""

    name: str
    path: str
    fd: int
    end: int = 0  # bytes written
    accounted: int = 0  # bytes counted in Slabs and diskcache's size, as last committed


class Slabs:
    """The slabs of one cache directory, as this process writes them. Not thread-safe:
    the store calls it under its write lock, from a transaction's start to its end
    (``committed`` or ``rolled_back`` included)."""

    def __init__(self, directory: str, size_limit: int) -> None:
        self.directory = os.path.join(directory, DIRECTORY)
        os.makedirs(self.directory, exist_ok=True)
        # Small enough that a small cache has a few dozen, big enough that a big one
        # does not have thousands of files.
        self.slab_bytes = max(1 << 20, min(16 << 20, size_limit // 64))
        self._size_limit = size_limit
        self._open: _Open | None = None
        self._sealing: list[_Open] = []  # full slabs whose seal is not committed yet
        self._unlink: list[str] = []  # retired in this transaction: unlinked after it

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _own(self) -> list[_Open]:
        return [*self._sealing, *([self._open] if self._open is not None else [])]

    # --- writes (inside the store's write transaction) -------------------------------

    def append(self, bodies: Sequence[bytes]) -> list[tuple[str, SlabPlace]]:
        """Write ``bodies`` to the open slab (the next ones once it is full), one system
        call per slab: the filename each body's row names it by, and where it lies."""
        out: list[tuple[str, SlabPlace]] = []
        slab = self._open
        batch: list[bytes] = []
        end = 0 if slab is None else slab.end  # where the next body goes
        for data in bodies:
            if slab is None or end >= self.slab_bytes:
                if slab is not None:
                    self._write(slab, batch)
                slab, batch = self._start(), []
                end = slab.end
            out.append((f"{_PREFIX}{slab.name}:{end}", SlabPlace(slab.path, end)))
            batch.append(data)
            end += len(data)
        if slab is not None and batch:
            self._write(slab, batch)
        return out

    @staticmethod
    def _write(slab: _Open, bodies: list[bytes]) -> None:
        """Append ``bodies`` to ``slab``'s file at its end."""
        views = [memoryview(data) for data in bodies]
        while views:
            written = os.pwritev(slab.fd, views[:_IOV_MAX], slab.end)
            slab.end += written
            while views and written >= len(views[0]):  # a short write: the rest again
                written -= len(views.pop(0))
            if views:
                views[0] = views[0][written:]

    def _start(self) -> _Open:
        """A new open slab (the one before it, if any, to be sealed)."""
        name = f"{time.time_ns():x}-{os.getpid()}-{os.urandom(3).hex()}.slab"
        path = self.path(name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if self._open is not None:
            self._sealing.append(self._open)
        self._open = _Open(name, path, fd)
        return self._open

    def settle(self, sql: Sql) -> None:
        """At the end of a write transaction: count the bytes appended since the last
        commit in ``Slabs`` and diskcache's size, seal the slabs filled, and retire the
        sealed ones left with no row."""
        grown = 0
        for slab in self._own():
            sealed = 0 if slab is self._open else 1
            if sealed or slab.end != slab.accounted:
                sql(
                    "INSERT INTO Slabs(name, bytes, sealed) VALUES (?, ?, ?) ON CONFLICT(name)"
                    " DO UPDATE SET bytes = excluded.bytes, sealed = max(sealed, excluded.sealed)",
                    (slab.name, slab.end, sealed),
                )
                grown += slab.end - slab.accounted
        if grown:
            sql("UPDATE Settings SET value = value + ? WHERE key = 'size'", (grown,))
        rows = sql("SELECT name, bytes FROM Slabs WHERE sealed = 1 AND live <= 0", ()).fetchall()
        for name, size in rows:
            sql("DELETE FROM Slabs WHERE name = ?", (name,))
            sql("UPDATE Settings SET value = value - ? WHERE key = 'size'", (size,))
            self._unlink.append(name)

    def committed(self) -> None:
        """The transaction ``settle`` ran in committed."""
        while self._sealing:
            with contextlib.suppress(OSError):
                os.close(self._sealing.pop().fd)  # its lock goes with it
        if self._open is not None:
            self._open.accounted = self._open.end
        for name in self._unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
        self._unlink = []

    def rolled_back(self) -> None:
        """The transaction rolled back: the next one counts what this one would have; the
        bytes it appended stay, dead, in the slab."""
        self._unlink = []

    # --- maintenance (inside the store's write transaction) ---------------------------

    def check(self, sql: Sql) -> None:
        """Seal this process's open slab when none of its rows is left, and the unsealed
        slabs of processes gone (their lock is free); drop the rows
        of slabs whose file is gone (what they named cannot be read); remove slab files
        with no row whose process is gone."""
        rows = sql("SELECT name, sealed, live FROM Slabs", ()).fetchall()
        known = {name: sealed for name, sealed, _ in rows}
        emptied = {name for name, _, live in rows if live <= 0}
        slab = self._open
        if slab is not None and slab.end == slab.accounted and slab.name in emptied:
            self.seal()  # every row it held went: its bytes go now, not once it is full
        own = {slab.name for slab in self._own()}
        present = set(os.listdir(self.directory))
        for name, sealed in known.items():
            if name in own or name in present:
                continue
            sql(f"DELETE {_ROWS_OF}", _range(name))
            if not sealed:
                sql("UPDATE Slabs SET sealed = 1 WHERE name = ?", (name,))
        for name in present - own:
            if not name.endswith(".slab") or known.get(name) == 1:
                continue
            path = self.path(name)
            if name not in known:
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(path).st_mtime < _ORPHAN_AGE:
                        continue
            if not _lock_free(path):
                continue
            if name in known:
                sql("UPDATE Slabs SET sealed = 1 WHERE name = ?", (name,))
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def compact(self, sql: Sql, verified: Callable[[str, bytes], bool]) -> list[str]:
        """When dead bytes in sealed slabs pass their share of the size limit: copy the
        live bodies of the sealed slab with the most dead bytes to the open slab (those
        that ``verified(key, data)``; the others' rows are deleted), so it can be retired.
        The keys of the rows moved or deleted."""
        row = sql(
            "SELECT name, total(bytes - live_bytes) OVER () FROM Slabs WHERE sealed = 1"
            " ORDER BY bytes - live_bytes DESC LIMIT 1",
            (),
        ).fetchone()
        if row is None or row[1] <= self._size_limit * _DEAD_SHARE:
            return []
        name = row[0]
        rows = sql(f"SELECT rowid, key, filename, size {_ROWS_OF}", _range(name)).fetchall()
        try:
            fd = os.open(self.path(name), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            sql(f"DELETE {_ROWS_OF}", _range(name))  # nothing there to keep
            return [key for _, key, _, _ in rows]
        moved: list[str] = []
        try:
            for rowid, key, filename, size in rows:
                data = os.pread(fd, size, _parse(filename)[1])
                if len(data) != size or not verified(key, data):
                    sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                else:
                    filename = self.append([data])[0][0]
                    sql("UPDATE Cache SET filename = ? WHERE rowid = ?", (filename, rowid))
                moved.append(key)
        finally:
            os.close(fd)
        return moved

    def seal(self) -> None:
        """No more appends: the open slab is sealed by the next ``settle``."""
        if self._open is not None:
            self._sealing.append(self._open)
            self._open = None

    def release(self) -> None:
        """Close the slabs still held (sealed or not: their lock going lets another
        process seal them)."""
        while self._sealing:
            with contextlib.suppress(OSError):
                os.close(self._sealing.pop().fd)


class SlabReads:
    """Reads from slabs through descriptors kept open: an open and a close per read cost
    about as much as reading 10 KiB from the page cache. A descriptor is used and closed
    under one lock, so a close never lets a read in another thread meet a file that took
    its number. Those of slabs gone (retired by any process) are closed by ``prune``;
    until then their bytes, which never change, can still be read."""

    _MAX_OPEN = 256

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def read(self, filename: str, size: int) -> tuple[SlabPlace, bytes]:
        """The ``size`` bytes a row naming ``filename`` has, and where they lie; fewer
        when the slab was cut short. FileNotFoundError when the slab went."""
        found = place(self._directory, filename)
        return found, self.read_at(found, size)

    def read_at(self, place: SlabPlace, size: int) -> bytes:
        with self._lock:
            fd = self._fds.get(place.path)
            if fd is None:
                if len(self._fds) >= self._MAX_OPEN:
                    self._close_all()
                fd = os.open(place.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds[place.path] = fd
            return os.pread(fd, size, place.offset)

    def prune(self) -> None:
        """Close the descriptors of slabs that are gone (their space is freed then)."""
        with self._lock:
            for path, fd in list(self._fds.items()):
                if os.fstat(fd).st_nlink == 0:
                    os.close(fd)
                    del self._fds[path]

    def close(self) -> None:
        with self._lock:
            self._close_all()

    def _close_all(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def place(directory: str, filename: str) -> SlabPlace:
    """Where a row of the cache in ``directory`` that names ``filename`` has its bytes."""
    name, offset = _parse(filename)
    return SlabPlace(os.path.join(directory, DIRECTORY, name), offset)


def _lock_free(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # the lock, if taken, goes with it
    return True
