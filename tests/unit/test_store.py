"""The cache store (edge.store) on a real diskcache directory: round trips, integrity
checks against damaged files, restarts and kill -9, purges, the memory tier, and a full
database / file-size limit reached for real."""

import asyncio
import calendar
import glob
import hashlib
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import diskcache
import pytest

from edge import store as store_module
from edge.cache_policy import CacheEntry, CacheRequest, entries_json, make_entry
from edge.store import BodyWriter, Store, _body_key

T0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def entry(
    target: str = "/a", headers: list[tuple[str, str]] | None = None, **req: str
) -> CacheEntry:
    request = CacheRequest("GET", "https", "example.com", target, tuple(req.items()))
    h = [("Cache-Control", "max-age=60"), *(headers or [])]
    return make_entry(
        request,
        200,
        "OK",
        h,
        request_time=T0,
        response_time=T0,
        body_length=0,
        sha256="0" * 64,
        now=T0,
    )


def body_files(directory: Path) -> list[str]:
    return [p for p in glob.glob(str(directory / "**" / "*.val"), recursive=True)]


def test_roundtrip_and_variants(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        e = s.put(entry(), b"hello")
        assert e is not None
        assert e.body_length == 5 and e.sha256 == hashlib.sha256(b"hello").hexdigest()
        (got,) = s.variants(e.key)
        assert got == e
        assert s.get_body(got) == b"hello"
        # Two Vary variants of one URL live side by side.
        vh = [("Vary", "Accept-Language")]
        de = s.put(entry(headers=vh, **{"Accept-Language": "de"}), b"hallo")
        en = s.put(entry(headers=vh, **{"Accept-Language": "en"}), b"hi")
        assert de is not None and en is not None and de.variant != en.variant
        bodies = {s.get_body(v) for v in s.variants(e.key)}
        assert bodies == {b"hello", b"hallo", b"hi"}
        # Storing the same variant again replaces it (and its body).
        s.put(entry(headers=vh, **{"Accept-Language": "de"}), b"servus")
        assert {s.get_body(v) for v in s.variants(e.key)} == {b"hello", b"servus", b"hi"}
        st = s.stats()
        assert st.hits >= 1 and st.stores == 4 and not st.degraded


def test_values_on_disk_are_bytes_and_json(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.put(entry(), b"x" * 100)
    con = sqlite3.connect(tmp_path / "cache.db")
    rows = con.execute("SELECT key, raw, mode FROM Cache").fetchall()
    con.close()
    assert rows and all(isinstance(k, str) and raw == 1 for k, raw, _ in rows)
    assert all(mode in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY) for *_, mode in rows)
    raw = diskcache.Cache(str(tmp_path)).get("m:https://example.com/a")
    assert isinstance(raw, bytes) and json.loads(raw)[0]["body_length"] == 100


def test_pickled_rows_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with Store(tmp_path) as s:
        s.put(entry(), b"ok")
    # Someone with write access to the directory plants a pickle that would run code.
    payload = pickle.dumps(_MkdirOnLoad(str(marker)))
    con = sqlite3.connect(tmp_path / "cache.db")
    con.execute(
        "UPDATE Cache SET mode = ?, value = ? WHERE key = ?",
        (diskcache.core.MODE_PICKLE, payload, "m:https://example.com/a"),
    )
    con.commit()
    con.close()
    with Store(tmp_path) as s:
        assert s.variants("https://example.com/a") == ()
        assert s.variants("https://example.com/a") == ()
    assert not marker.exists()
    # The refused row is gone, not left to be refused on every read.
    con = sqlite3.connect(tmp_path / "cache.db")
    left = con.execute("SELECT COUNT(*) FROM Cache WHERE key LIKE 'm:%'").fetchone()[0]
    con.close()
    assert left == 0


@pytest.mark.parametrize("size", [10, 300_000])  # read whole, and streamed from disk
def test_pickled_body_rows_are_refused_and_evicted(tmp_path: Path, size: int) -> None:
    marker = tmp_path / "pwned"
    with Store(tmp_path, memory_object_max=1000) as s:
        stored = s.put(entry(), os.urandom(size))
        assert stored is not None
    con = sqlite3.connect(tmp_path / "cache.db")
    con.execute(
        "UPDATE Cache SET mode = ?, value = ?, filename = NULL WHERE key LIKE 'b:%'",
        (diskcache.core.MODE_PICKLE, pickle.dumps(_MkdirOnLoad(str(marker)))),
    )
    con.commit()
    con.close()
    with Store(tmp_path, memory_object_max=1000) as s:
        (e,) = s.variants(stored.key)
        assert s.open_body(e) is None
        assert s.variants(stored.key) == ()  # evicted, not refused again on every read
    assert not marker.exists()


class _MkdirOnLoad:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_garbage_metadata_reads_as_miss(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.put(entry(), b"ok")
    dc = diskcache.Cache(str(tmp_path))
    dc.set("m:https://example.com/a", b'[{"key": 1}]')
    dc.close()
    with Store(tmp_path) as s:
        assert s.variants("https://example.com/a") == ()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_body_file_is_a_miss_and_evicted(tmp_path: Path, damage: str) -> None:
    body = os.urandom(200_000)  # big enough for a file of its own
    with Store(tmp_path) as s:
        s.put(entry(), body)
    (path,) = body_files(tmp_path)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(1000)
    elif damage == "flip":
        with open(path, "r+b") as f:
            f.seek(5000)
            b = f.read(1)
            f.seek(5000)
            f.write(bytes([b[0] ^ 1]))
    else:
        os.unlink(path)
    with Store(tmp_path) as s:
        (e,) = s.variants("https://example.com/a")
        assert s.get_body(e) is None
        assert s.variants("https://example.com/a") == ()
        assert s.stats().corrupt == 1


def test_damaged_small_body_in_database(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        e = s.put(entry(), b"small body")
        assert e is not None
    con = sqlite3.connect(tmp_path / "cache.db")
    n = con.execute(
        "UPDATE Cache SET value = ? WHERE key LIKE 'b:%'", (sqlite3.Binary(b"small bodY"),)
    ).rowcount
    con.commit()
    con.close()
    assert n == 1
    with Store(tmp_path) as s:
        (got,) = s.variants(e.key)
        assert s.get_body(got) is None
        assert s.variants(e.key) == ()


def test_streaming_reader_checks_digest(tmp_path: Path) -> None:
    body = os.urandom(300_000)
    with Store(tmp_path, memory_object_max=1000) as s:
        e = s.put(entry(), body)
        assert e is not None
        r = s.open_body(e)
        assert r is not None
        assert b"".join(r) == body
    (path,) = body_files(tmp_path)
    with open(path, "r+b") as f:
        f.seek(250_000)
        f.write(b"\0" * 10)
    with Store(tmp_path, memory_object_max=1000) as s:
        (e,) = s.variants(e.key)
        r = s.open_body(e)
        assert r is not None
        from edge.errors import CorruptBodyError

        with pytest.raises(CorruptBodyError):
            for _ in r:
                pass
        assert s.variants(e.key) == ()
    # A truncated file is refused before streaming starts.
    with Store(tmp_path, memory_object_max=1000) as s:
        e2 = s.put(entry(), body)
        assert e2 is not None
    (path,) = body_files(tmp_path)
    os.truncate(path, 10)
    with Store(tmp_path, memory_object_max=1000) as s:
        assert s.open_body(e2) is None


def test_streaming_writer(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        w = s.writer()
        assert w is not None
        for _ in range(10):
            w.write(b"x" * 50_000)
        e = w.commit(entry(), 500_000)
        assert e is not None and e.body_length == 500_000
        assert s.get_body(e) == b"x" * 500_000
        # Wrong final length: a cut-short body is never stored.
        w = s.writer()
        assert w is not None
        w.write(b"partial")
        assert w.commit(entry("/b"), 1000) is None
        assert s.variants("https://example.com/b") == ()
        # An exception inside the block aborts.
        with pytest.raises(RuntimeError), s.writer() as w2:  # type: ignore[union-attr]
            w2.write(b"abc")
            raise RuntimeError("origin went away")
        # A size cap makes the writer give up.
        w = s.writer(max_bytes=10)
        assert w is not None
        assert not w.write(b"x" * 11)
        assert w.commit(entry("/c"), 11) is None
    assert os.listdir(tmp_path / "tmp") == []


def test_a_small_body_is_held_in_memory_and_written_straight_to_its_row(tmp_path: Path) -> None:
    with Store(tmp_path, memory_object_max=100) as s:
        w = s.writer()
        assert w is not None
        assert w.write(b"a" * 60) and w.write(b"b" * 40)
        assert os.listdir(tmp_path / "tmp") == []  # no temp file for a held body
        assert w.read_at(55, 10) == b"aaaaabbbbb"
        e = w.commit(entry(), 100)
        assert e is not None
        assert w.read_at(95, 10) == b"bbbbb"  # readers of the fill go on after commit
        assert body_files(tmp_path) == []  # under diskcache's min_file_size: its row
    with sqlite3.connect(tmp_path / "cache.db") as db:
        ((value,),) = db.execute("SELECT value FROM Cache WHERE key LIKE 'b:%'")
        assert value == b"a" * 60 + b"b" * 40
    big = os.urandom(40_000)  # held too, but past min_file_size: a file of its own
    with Store(tmp_path, memory_object_max=1 << 20) as s:  # durable: read by a new store
        assert s.get_body(e) == b"a" * 60 + b"b" * 40
        w = s.writer()
        assert w is not None and w.write(big) and os.listdir(tmp_path / "tmp") == []
        e2 = w.commit(entry("/big"), len(big))
        assert e2 is not None
        (path,) = body_files(tmp_path)
        with open(path, "rb") as f:
            assert f.read() == big


def test_bodies_go_to_256_directories_of_one_level_old_places_still_read(tmp_path: Path) -> None:
    """A young cache must not make a directory per body (diskcache's two levels of 256
    did: a mkdir on nearly every fill). A body filed under diskcache's layout by an
    earlier version is still found: its name is in the database."""
    old_dir = tmp_path / "ab" / "cd"
    old_dir.mkdir(parents=True)
    with Store(tmp_path, memory_object_max=40_000) as s:
        bodies = {}
        for i in range(600):
            w = s.writer()  # a body held in memory, written straight to its file
            body = b"%d" % i * (33_000 // len(b"%d" % i))
            assert w is not None and w.write(body) and not w.reader_open
            e = w.commit(entry(f"/{i}"), len(body))
            assert e is not None
            bodies[e] = body
        spilled = s.writer()  # a body renamed into place from its temp file
        assert spilled is not None and spilled.write(b"z" * 50_000) and spilled.reader_open
        e = spilled.commit(entry("/spilled"), 50_000)
        assert e is not None
        bodies[e] = b"z" * 50_000
        files = body_files(tmp_path)
        assert len(files) == 601
        dirs = {os.path.relpath(os.path.dirname(p), tmp_path) for p in files}
        assert all(len(d) == 2 and "/" not in d for d in dirs)
        assert 200 < len(dirs) <= 256
        moved = files[0]  # as if written by diskcache's own layout
        os.rename(moved, old_dir / os.path.basename(moved))
        with sqlite3.connect(tmp_path / "cache.db") as db:
            rel = os.path.relpath(moved, tmp_path)
            db.execute(
                "UPDATE Cache SET filename = ? WHERE filename = ?",
                (f"ab/cd/{os.path.basename(moved)}", rel),
            )
    with Store(tmp_path, memory_object_max=0) as s:
        for e, body in bodies.items():
            assert s.get_body(e) == body


def test_a_body_outgrowing_memory_spills_to_a_temp_file(tmp_path: Path) -> None:
    with Store(tmp_path, memory_object_max=100) as s:
        w = s.writer()
        assert w is not None
        assert w.write(b"x" * 80)
        assert os.listdir(tmp_path / "tmp") == []
        assert w.write(b"y" * 80)  # past the hold: what was held goes to a temp file
        (part,) = os.listdir(tmp_path / "tmp")
        assert part.endswith(".part") and w.reader_open
        assert w.read_at(75, 10) == b"xxxxxyyyyy"
        e = w.commit(entry(), 160)
        assert e is not None and s.get_body(e) == b"x" * 80 + b"y" * 80
        assert os.listdir(tmp_path / "tmp") == []  # renamed into place
        assert w.read_at(150, 100) == b"y" * 10  # the reading handle outlives the rename
        w.close_reader()
        assert not w.reader_open
        with pytest.raises(OSError):
            w.read_at(0, 1)


def test_a_spill_that_fails_gives_up_but_keeps_what_was_read_back(tmp_path: Path) -> None:
    with Store(tmp_path, memory_object_max=100) as s:
        w = s.writer()
        assert w is not None
        assert w.write(b"x" * 80)
        os.rmdir(tmp_path / "tmp")  # the temp area is gone: the spill cannot happen
        assert not w.write(b"y" * 80)
        assert w.failed and w.commit(entry(), 160) is None
        assert w.read_at(0, 100) == b"x" * 80  # readers still get the bytes written
        assert s.variants(entry().key) == () and body_files(tmp_path) == []


def test_restart_persistence(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        for i in range(5):
            s.put(entry(f"/p{i}"), f"body {i}".encode() * 10_000)
    with Store(tmp_path) as s:
        for i in range(5):
            (e,) = s.variants(f"https://example.com/p{i}")
            assert s.get_body(e) == f"body {i}".encode() * 10_000


def test_purges(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.put(entry("/img/1", [("Surrogate-Key", "img all")]), b"1")
        s.put(entry("/img/2", [("Surrogate-Key", "img")]), b"2")
        s.put(entry("/imgx"), b"x")
        s.put(entry("/css/1", [("Surrogate-Key", "all")]), b"3")
        s.put(entry("/js/1"), b"4")
        assert s.purge_prefix("https://example.com/img/") == 2
        assert s.variants("https://example.com/imgx") != ()
        assert s.purge_tag("all") == 1
        assert s.variants("https://example.com/css/1") == ()
        assert s.purge_tag("all") == 0
        assert s.purge_url("https://example.com/js/1") == 1
        assert s.purge_url("https://example.com/js/1") == 0
        assert s.variants("https://example.com/imgx") != ()


def test_a_prefix_purge_takes_its_keys_in_batches_and_leaves_the_rest(tmp_path: Path) -> None:
    """More keys than one removal transaction takes, bodies in slabs and in files of their
    own, variants of one key, and neighbours in key order on both sides that stay."""
    cached = {
        "/p/": 300,  # past _REMOVE_MAX: more than one transaction
        "/p/\u00e9t\u00e9/": 3,  # non-ASCII: keys ordered as UTF-8 bytes, as str orders them
        "/p": 1,
        "/o/": 2,
        "/q/": 2,
        "/p0/": 2,
    }
    with Store(tmp_path) as s:
        for prefix, count in cached.items():
            for i in range(count):
                body = f"{prefix}{i}".encode() * (12_000 if i == 0 else 100)  # 0: a file
                s.put(entry(f"{prefix}{i}", [("Surrogate-Key", "t")]), body)
        s.put(entry("/p/0", [("Vary", "Accept")], accept="b"), b"variant")
        files = len(body_files(tmp_path))
        assert s.purge_prefix("https://example.com/p/") == 304
        for prefix, count in cached.items():
            gone = prefix.startswith("/p/")
            for i in range(count):
                assert (s.variants(f"https://example.com{prefix}{i}") == ()) == gone
        # The body rows and files went with their lists; the tag's list still names what
        # is left (a tag purge reads each key's variants).
        assert len(body_files(tmp_path)) == files - 2
        rows = s._cache._sql("SELECT count(*) FROM Cache WHERE key LIKE 'b:%'").fetchone()[0]
        assert rows == 1 + 2 + 2 + 2
        assert s.purge_tag("t") == 7
    with Store(tmp_path) as s:  # and so does a fresh process's view
        assert s.variants("https://example.com/p/5") == ()


def _tags(s: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in s._cache._sql("SELECT tag, key FROM Tags ORDER BY tag, key")]


def _written() -> int:
    """Bytes this process has handed to write system calls so far."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


def test_a_fill_of_a_tag_shared_by_thousands_writes_what_a_new_tag_does(tmp_path: Path) -> None:
    """A tag's keys were one JSON list that every fill carrying the tag read and wrote
    whole (a file of 240 KB for 5,000 keys, per fill): now a row each."""
    with Store(tmp_path) as s:
        s._cache._con.execute("PRAGMA wal_autocheckpoint = 0")  # no checkpoint in between
        for i in range(5_000):
            s.put(entry(f"/site/{i}", [("Surrogate-Key", "site")]), b"x")
        written = []
        for path, tag in (("/one/shared", "site"), ("/one/new", "fresh")):
            before = _written()
            s.put(entry(path, [("Surrogate-Key", tag)]), b"y")
            written.append(_written() - before)
        shared, fresh = written
        # The list of the tag's keys would be this long: less than half of it written more.
        listed = len(json.dumps([f"https://example.com/site/{i}" for i in range(5_000)]))
        assert shared - fresh < listed / 2, f"{shared} bytes written against {fresh}"
        assert s.purge_tag("site") == 5_001


def test_tags_go_with_the_variant_lists_that_carry_them(tmp_path: Path) -> None:
    """The Tags rows of a key go when its variant list goes (a removal, a purge of any
    kind, eviction), so the table holds no more than the keys stored."""
    with Store(tmp_path) as s:
        s.put(entry("/a", [("Surrogate-Key", "t1 t2")]), b"a")
        s.put(entry("/b", [("Surrogate-Key", "t1")]), b"b")
        s.put(entry("/c", [("Surrogate-Key", "t3")]), b"c")
        key = "https://example.com/"
        assert _tags(s) == [
            ("t1", key + "a"),
            ("t1", key + "b"),
            ("t2", key + "a"),
            ("t3", key + "c"),
        ]
        assert s.purge_url(key + "a") == 1
        assert _tags(s) == [("t1", key + "b"), ("t3", key + "c")]
        assert s.purge_prefix(key + "c") == 1
        assert _tags(s) == [("t1", key + "b")]
        # A key whose new response no longer carries a tag: a purge of the tag leaves its
        # variant, and takes the tag's row the key kept.
        s.put(entry("/b", [("Surrogate-Key", "t4")]), b"b2")
        assert s.purge_tag("t1") == 0
        assert _tags(s) == [("t4", key + "b")]
        s.clear()
        assert _tags(s) == []


def test_tag_lists_of_an_earlier_version_are_moved_to_rows(tmp_path: Path) -> None:
    """A cache directory written by a version that kept each tag's keys as a JSON list in a
    row ``t:<tag>`` (in a file of its own past 32 KiB): the store moves them as it opens."""
    keys = [f"https://example.com/old/{i}" for i in range(2_000)]
    with Store(tmp_path) as s:
        for i in range(2_000):
            s.put(entry(f"/old/{i}", [("Surrogate-Key", "big" if i else "big small")]), b"o")
        s._cache._sql("DELETE FROM Tags")
        # 72 KB: a file. The lists kept keys evicted since: those do not move.
        s._cache.set("t:big", json.dumps([*keys, "https://example.com/evicted"]).encode())
        s._cache.set("t:small", json.dumps(keys[:1]).encode())
        files = len(body_files(tmp_path))
    with Store(tmp_path) as s:
        assert s._cache._sql("SELECT count(*) FROM Cache WHERE key LIKE 't:%'").fetchone() == (0,)
        assert len(body_files(tmp_path)) == files - 1
        assert len(_tags(s)) == 2_001
        assert s.purge_tag("small") == 1
        assert s.purge_tag("big") == 1_999


def test_a_prefix_purge_reads_only_its_own_keys(tmp_path: Path) -> None:
    """The work of a purge of one key does not grow with the keys before it in the index
    (diskcache's iterkeys walked them all, 25 s of CPU for one key among 200,000):
    counted in SQLite's virtual machine steps, on every connection of this thread."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    with Store(tmp_path) as s:
        for i in range(3_000):
            s.put(entry(f"/a/{i}"), b"x")
        s.put(entry("/z/1"), b"z")
        for con in (s._cache._con, s._reads.connection()):
            con.set_progress_handler(step, 100)
        assert s.purge_prefix("https://example.com/z/") == 1
        for con in (s._cache._con, s._reads.connection()):
            con.set_progress_handler(None, 100)
        assert s.variants("https://example.com/z/1") == ()
    assert 0 < steps < 50, f"{steps * 100} virtual machine steps"


def test_purge_tag_spares_entries_that_lost_the_tag(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.put(entry("/a", [("Surrogate-Key", "t")]), b"1")
        s.put(entry("/a"), b"2")  # re-stored without the tag
        assert s.purge_tag("t") == 0
        assert s.variants("https://example.com/a") != ()


def test_memory_tier_is_bounded(tmp_path: Path) -> None:
    with Store(tmp_path, memory_bytes=50_000, memory_object_max=20_000) as s:
        entries = [s.put(entry(f"/m{i}"), bytes([i]) * 10_000) for i in range(20)]
        for e in entries:
            assert e is not None
            assert s.get_body(e) == bytes([entries.index(e)]) * 10_000
            assert s.stats().memory_bytes <= 50_000
        assert 0 < s.stats().memory_items < 20
        big = s.put(entry("/big"), b"b" * 30_000)
        assert big is not None and s.get_body(big) == b"b" * 30_000
        assert s.stats().memory_bytes <= 50_000


def test_other_process_purge_seen_after_refresh(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path, clock=clock, meta_refresh=1.0) as a, Store(tmp_path) as b:
        a.put(entry(), b"v")
        assert a.variants("https://example.com/a") != ()
        b.purge_url("https://example.com/a")
        clock.t += 2
        assert a.variants("https://example.com/a") == ()


def test_an_absent_key_is_read_once_per_refresh(tmp_path: Path) -> None:
    """A key found absent is taken as absent for meta_refresh without another read (a
    miss looks it up in the fast path and again in the full one); what another process
    stores meanwhile is seen after it, and what this process stores at once."""
    clock = Clock()
    key = "https://example.com/a"
    with Store(tmp_path, clock=clock, meta_refresh=1.0) as a, Store(tmp_path) as b:
        assert a.variants(key) == ()
        b.put(entry(), b"v")  # another process
        assert a.variants(key) == ()  # remembered as absent, not read again
        clock.t += 1.5
        assert [e.key for e in a.variants(key)] == [key]
        a.remove(key)
        assert a.variants(key) == ()
        assert a.put(entry(), b"w") is not None  # this process: seen at once
        stored = a.variants(key)
        assert len(stored) == 1 and a.get_body(stored[0]) == b"w"
        assert a.stats().misses == 3 and a.stats().hits >= 2


def test_a_row_read_by_rowid_is_never_another_bodys_that_took_the_rowid(tmp_path: Path) -> None:
    """A body read back from its row is read by rowid next time; SQLite gives the rowid
    of a deleted last row to the next insert, so a stale rowid must not yield the new
    row's bytes, even when they have the same length."""
    with Store(tmp_path) as a, Store(tmp_path) as b:
        old = a.put(entry("/old"), b"o" * 100)
        assert old is not None
        assert a._index.get(_body_key(old)) == ""  # written here, its rowid not known yet
        assert a.read_body(old) == b"o" * 100
        assert isinstance(a._index.get(_body_key(old)), int)  # learnt by the first read
        a._index.clear()  # as after a restart: the place is learnt by the first read
        assert a.read_body(old) == b"o" * 100
        assert isinstance(a._index.get(_body_key(old)), int)

        def rowid(e: CacheEntry) -> int:
            with sqlite3.connect(tmp_path / "cache.db") as db:
                ((r,),) = db.execute("SELECT rowid FROM Cache WHERE key = ?", (_body_key(e),))
                return int(r)

        before = rowid(old)
        assert b.purge_url(old.key) == 1  # another process: a does not know yet
        new = b.put(entry("/new"), b"n" * 100)
        assert new is not None and rowid(new) == before  # the rowid was given again
        assert a.read_body(old) is None
        assert a.read_body(new) == b"n" * 100


def test_fills_keep_diskcaches_table_and_counts_as_cache_set_would(tmp_path: Path) -> None:
    """Fills write diskcache's rows with their own statements: the same bytes stored
    again keep one row (and no second file), a variant list an older version left in a
    file is replaced with its file removed, and diskcache's count and size stay true."""
    big = os.urandom(40_000)
    with Store(tmp_path, memory_object_max=1 << 20) as s:
        for _ in range(3):  # the same bytes three times: one body row, one file
            w = s.writer()
            assert w is not None and w.write(big)
            assert w.commit(entry("/same"), len(big)) is not None
            assert s.put(entry("/small"), b"s" * 100) is not None
        assert len(body_files(tmp_path)) == 1
        old_list = tmp_path / "old-list.val"  # as diskcache writes a value of 32 KiB and more
        e = s.put(entry("/listed"), b"l")
        assert e is not None
        doc = entries_json([e])
        old_list.write_bytes(doc)
        with sqlite3.connect(tmp_path / "cache.db") as db:
            db.execute(
                "UPDATE Cache SET mode = 2, filename = ?, value = NULL, size = ? WHERE key = ?",
                ("old-list.val", len(doc), "m:" + e.key),
            )
        assert s.put(entry("/listed"), b"L") is not None  # replaces the list in a file
        assert not old_list.exists()
    with sqlite3.connect(tmp_path / "cache.db") as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM Cache").fetchone()
        (files,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM Cache").fetchone()
        count, size = (
            db.execute("SELECT value FROM Settings WHERE key = ?", (k,)).fetchone()[0]
            for k in ("count", "size")
        )
        # 3 lists, 3 bodies, and the body the refused list named (left for eviction)
        assert (count, size) == (rows, files) == (7, len(big))
    with Store(tmp_path) as s:
        (listed,) = s.variants(entry("/listed").key)
        assert s.get_body(listed) == b"L"
        (same,) = s.variants(entry("/same").key)
        assert s.get_body(same) == big


def test_update_replaces_metadata(tmp_path: Path) -> None:
    from dataclasses import replace

    with Store(tmp_path) as s:
        e = s.put(entry(), b"body")
        assert e is not None
        newer = replace(e, headers=(*e.headers, ("X-New", "1")))
        assert s.update(newer)
        (got,) = s.variants(e.key)
        assert ("X-New", "1") in got.headers
        assert not s.update(replace(newer, sha256="f" * 64))


def test_database_full_degrades_and_recovers(tmp_path: Path) -> None:
    clock = Clock()
    # A real SQLite limit on the database size: inserts fail with SQLITE_FULL.
    with Store(tmp_path, clock=clock, retry_after=30.0, sqlite_max_page_count=64) as s:
        first = s.put(entry("/keep"), b"k")
        assert first is not None
        stored = []
        for i in range(200):
            e = s.put(entry(f"/f{i}"), os.urandom(3000))
            if e is None:
                break
            stored.append(e)
        else:
            pytest.fail("the database never filled up")
        assert s.degraded and "full" in (s.degraded_reason or "")
        # Serving goes on: reads work, writes are skipped without touching the disk.
        assert s.get_body(first) == b"k"
        failures = s.stats().store_failures
        assert s.put(entry("/later"), b"z") is None
        assert s.stats().store_failures == failures
        # Space comes back, the retry time passes: caching resumes.
        for e in stored:
            s.purge_url(e.key)
        clock.t += 31
        assert s.put(entry("/later"), b"z") is not None
        assert not s.degraded


def _run_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_file_size_limit_degrades_in_a_real_process(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel refuse big writes (EFBIG), as a full disk would.
    code = """
        import resource, sys, json, calendar
        from edge.store import Store
        from edge.cache_policy import CacheRequest, make_entry
        t = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
        def entry(p):
            r = CacheRequest("GET", "https", "example.com", p, ())
            return make_entry(r, 200, "OK", [("Cache-Control", "max-age=60")],
                request_time=t, response_time=t, body_length=0, sha256="0" * 64, now=t)
        s = Store(sys.argv[1])
        small = s.put(entry("/small"), b"tiny")
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        big = s.put(entry("/big"), b"x" * (8 << 20))
        w = s.writer()
        print(json.dumps({
            "big": big is not None, "degraded": s.degraded, "reason": s.degraded_reason,
            "small": s.get_body(small), "writer": w is not None,
        }, default=lambda b: b.decode()))
    """
    out = _run_child(code, tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["big"] is False and doc["degraded"] is True and doc["writer"] is False
    assert "too large" in doc["reason"].lower()
    assert doc["small"] == "tiny"


def test_kill_9_never_leaves_a_bad_entry(tmp_path: Path) -> None:
    code = """
        import sys, os, calendar
        from edge.store import Store
        from edge.cache_policy import CacheRequest, make_entry
        t = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
        s = Store(sys.argv[1])
        i = 0
        while True:
            r = CacheRequest("GET", "https", "example.com", f"/k{i % 40}", ())
            e = make_entry(r, 200, "OK", [("Cache-Control", "max-age=60")],
                request_time=t, response_time=t, body_length=0, sha256="0" * 64, now=t)
            w = s.writer()
            for _ in range(4):
                w.write(os.urandom(20_000))
            w.commit(e, 80_000)
            i += 1
            if i == 30:
                print("ready", flush=True)
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    with Store(tmp_path) as s:
        assert os.listdir(tmp_path / "tmp") == []  # half-written parts were swept
        seen = 0
        for i in range(40):
            for e in s.variants(f"https://example.com/k{i}"):
                body = s.get_body(e)
                assert body is None or hashlib.sha256(body).hexdigest() == e.sha256
                seen += body is not None
        assert seen >= 1


def test_non_blocking_peeks(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path) as writer:
        e = writer.put(entry(), b"peek")
        assert e is not None
    with Store(tmp_path, clock=clock, meta_refresh=1.0) as s:
        assert s.peek_variants(e.key) is None  # not loaded into memory yet
        assert s.peek_body(e) is None
        assert s.peek_single(e.key) is None
        (got,) = s.variants(e.key)
        assert s.peek_single(e.key) == (got, None, None)  # in the index, body not read yet
        assert s.get_body(got) == b"peek"
        assert s.peek_variants(e.key) == (got,)
        assert s.peek_body(got) is None  # read from its row again next time, not kept
        assert s.get_body(got) == b"peek"
        clock.t += 2  # due for a check: nothing was taken away (the epoch did not move)
        assert s.peek_variants(e.key) == (got,)
        with Store(tmp_path) as other:  # another process purges it: the epoch moves
            assert other.purge_url(e.key) == 1
        clock.t += 2
        assert s.peek_variants(e.key) is None  # due, and no longer what is stored


def test_small_body_reader(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        e = s.put(entry(), b"0123456789")
        assert e is not None
        r = s.open_body(e)
        assert r is not None and r.length == 10
        assert r.read_chunk(4) == b"0123"
        assert b"".join(r) == b"456789"
        assert r.read_chunk() == b""


def test_peeks_after_a_commit_need_no_disk_read(tmp_path: Path) -> None:
    # The first hit after a miss is answered from memory: the committing store keeps the
    # variant list it wrote and, when small enough, the body.
    clock = Clock()
    with Store(tmp_path, clock=clock, meta_refresh=1.0, memory_object_max=100) as s:
        w = s.writer()
        assert w is not None
        w.write(b"stream")
        w.write(b"ed")
        e = w.commit(entry(), 8)
        assert e is not None
        assert s.peek_variants(e.key) == (e,)
        assert s.peek_body(e) == b"streamed"
        assert s.peek_single(e.key) == (e, b"streamed", None)
        put = s.put(entry("/p"), b"put")
        assert put is not None and s.peek_single(put.key) == (put, b"put", None)
        big = s.put(entry("/big"), b"b" * 101)  # above memory_object_max: metadata only
        assert big is not None
        assert s.peek_variants(big.key) == (big,)
        assert s.peek_body(big) is None and s.peek_single(big.key) == (big, None, None)
        w = s.writer()
        assert w is not None
        w.write(b"c" * 60)
        w.write(b"c" * 60)
        big2 = w.commit(entry("/big2"), 120)
        assert big2 is not None and s.peek_body(big2) is None
        assert s.get_body(big2) == b"c" * 120
        # A replaced body leaves memory with its metadata.
        newer = s.put(entry(), b"newer")
        assert newer is not None
        assert s.peek_body(e) is None
        assert s.peek_single(e.key) == (newer, b"newer", None)
        # A removal forgets both.
        assert s.purge_url(e.key) == 1
        assert s.peek_variants(e.key) is None and s.peek_single(e.key) is None


def test_single_peek_keeps_a_list_due_for_its_re_read(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path, clock=clock, meta_refresh=1.0) as s:
        e = s.put(entry(), b"aged")
        assert e is not None
        clock.t += 1.5  # due, but the epoch did not move: the list is still current
        assert s.peek_single(e.key) == (e, b"aged", None)
        assert s.peek_variants(e.key) == (e,)
        with Store(tmp_path) as other:  # another process updates it: the epoch moves
            assert other.update(e)
        clock.t += 0.5
        assert s.peek_variants(e.key) is None  # due: the plain peek declines
        # Kept for the fast path meanwhile, with how long ago it was last known current
        # (the last look at the epoch before it moved).
        assert s.peek_single(e.key) == (e, b"aged", 0.5)
        clock.t += 0.25
        assert s.peek_single(e.key) == (e, b"aged", 0.75)
        assert s.variants(e.key) == (e,)  # the re-read
        assert s.peek_single(e.key) == (e, b"aged", None)
        assert s.peek_single("https://example.com/none") is None
        assert s.meta_refresh == 1.0


def test_a_list_not_looked_at_since_the_epoch_moved_is_stale_for_its_whole_age(
    tmp_path: Path,
) -> None:
    # No look at the epoch between the read and the move: the list is known current only
    # as of its read, however late the move is noticed.
    clock = Clock()
    with Store(tmp_path, clock=clock, meta_refresh=1.0) as s:
        e = s.put(entry(), b"old")
        assert e is not None
        with Store(tmp_path) as other:
            assert other.update(e)
        clock.t += 600
        assert s.peek_single(e.key) == (e, b"old", 600)


def test_several_variants_are_not_a_single_peek(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        a = s.put(entry("/v", [("Vary", "Accept")], accept="a"), b"a")
        b = s.put(entry("/v", [("Vary", "Accept")], accept="b"), b"b")
        assert a is not None and b is not None and a.variant != b.variant
        assert s.peek_variants(a.key) == (a, b)
        assert s.peek_single(a.key) is None


def test_diskcache_schema_the_read_path_relies_on(tmp_path: Path) -> None:
    # edge.store._Reads selects from and stamps diskcache's table directly; a diskcache
    # release that changes it must fail here, not in production.
    with Store(tmp_path) as s:
        s.put(entry(), b"x" * 10)
    db = sqlite3.connect(tmp_path / "cache.db")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(Cache)")}
        policy = db.execute("SELECT value FROM Settings WHERE key = 'eviction_policy'").fetchone()
    finally:
        db.close()
    assert {"key", "raw", "mode", "filename", "value", "access_time"} <= columns
    assert policy == ("least-recently-used",)
    assert (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY) == (1, 2)


def test_reads_take_no_write_transaction_and_recency_is_written_back(tmp_path: Path) -> None:
    # A read used to be a write transaction (diskcache stamps the access time on every
    # get under least-recently-used). Reads now leave the database alone; the stamps are
    # written in one batch, and eviction still spares what was read.
    big = 40_000  # stored as files, like real bodies
    # diskcache culls 16 rows (8 entries) at a time: 40 entries, room for a few more.
    clock = Clock()
    with Store(tmp_path, size_limit=44 * big, memory_bytes=0, clock=clock) as s:
        stored = [s.put(entry(f"/{i}"), bytes([i % 256]) * big) for i in range(40)]
        assert all(e is not None and s.variants(e.key) for e in stored)
        assert s.flush_recency() == 0  # stamped when written: a hit within 30 s adds none
        clock.t += 30
        assert all(e is not None and s.variants(e.key) for e in stored)
        assert s.flush_recency() == 80  # every entry was read just now
        s._forget(stored[0].key)  # type: ignore[union-attr]  # read it from disk again
        before = os.stat(tmp_path / "cache.db-wal").st_mtime_ns
        first = s.variants(stored[0].key)[0]  # type: ignore[union-attr]
        assert s.get_body(first) == bytes([0]) * big
        assert os.stat(tmp_path / "cache.db-wal").st_mtime_ns == before
        assert s.flush_recency() == 2  # its metadata and its body, nothing else
        assert s.flush_recency() == 0
        for i in range(40, 60):  # past size_limit: diskcache culls the least recently used
            s.put(entry(f"/{i}"), bytes([i]) * big)
            if not s._reads.get(f"m:{stored[1].key}"):  # type: ignore[union-attr]
                break
        else:
            raise AssertionError("nothing was evicted")
        assert s.variants(stored[0].key), "the entry read was evicted"  # type: ignore[union-attr]


def test_fills_commit_between_the_chunks_of_a_recency_write_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy edge's recency write-back stamps tens of thousands of rows (80,000 took 2.1 s).
    In one transaction, every fill of the process, and of the other workers, waited for all
    of it; each chunk of keys is a transaction of its own now, and fills go between."""
    monkeypatch.setattr(store_module, "_STAMP_CHUNK", 50)
    clock = Clock()
    with Store(tmp_path, memory_bytes=0, clock=clock) as s:
        stored = [s.put(entry(f"/{i}"), b"x") for i in range(1_000)]
        clock.t += 30
        assert s.variants(stored[0].key) and s.flush_recency() == 2  # type: ignore[union-attr]
        assert s._reads._stamper is not None
        events: list[str] = []
        first_commit = threading.Event()
        filling_soon = threading.Event()

        def traced(statement: str) -> None:
            events.append(statement)
            if statement == "COMMIT" and not first_commit.is_set():
                first_commit.set()
                # The fill under way before this chunk lets go of the lock (on a busy
                # machine the thread could otherwise start after all 40 chunks).
                filling_soon.wait(10)
                time.sleep(0.05)

        def fill() -> None:
            if first_commit.wait(30):
                filling_soon.set()
                s.put(entry("/meanwhile"), b"m")
                events.append("fill")

        s._reads._stamper.set_trace_callback(traced)
        assert all(s.variants(e.key) for e in stored[1:])  # type: ignore[union-attr]
        filling = threading.Thread(target=fill)
        filling.start()
        assert s.flush_recency() == 1_998  # 40 chunks
        filling.join(30)
        assert "fill" in events
        commits = [i for i, statement in enumerate(events) if statement == "COMMIT"]
        assert len(commits) == 40
        assert commits[0] < events.index("fill") < commits[-1]


def test_a_variant_replaced_by_another_process_is_re_read(tmp_path: Path) -> None:
    # A replaced variant's old body is deleted: a list naming it must not outlive the
    # replacement (the hit would read a missing body and evict the new entry as damaged).
    clock = Clock()
    with Store(tmp_path, clock=clock, meta_refresh=1.0) as a:
        old = a.put(entry(), b"first")
        assert old is not None and a.variants(old.key) == (old,)
        with Store(tmp_path) as b:
            new = b.put(entry(), b"second")
            assert new is not None and new.sha256 != old.sha256
        clock.t += 1.5
        (seen,) = a.variants(old.key)
        assert seen.sha256 == new.sha256
        assert a.get_body(seen) == b"second"
        assert a.stats().corrupt == 0


def test_disk_use_stays_within_size_limit_under_churn(tmp_path: Path) -> None:
    # Issue 8: ten times the limit written through the store; what it holds stays within
    # size_limit (diskcache culls the least recently used as it goes).
    limit = 1 << 20
    with Store(tmp_path, size_limit=limit, memory_bytes=0) as s:
        for i in range(250):
            s.put(entry(f"/churn/{i}"), bytes([i % 256]) * 40_000)
            assert s.stats().size_bytes <= limit + 40_000 * 2, i
        on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.val"))
        assert on_disk <= limit + 40_000 * 2
        assert s.variants("https://example.com/churn/249")  # the newest is kept


def test_a_body_cut_short_after_its_first_read_is_still_caught(tmp_path: Path) -> None:
    # Later reads of a body verified once go straight to its file and check its length.
    body = os.urandom(50_000)
    with Store(tmp_path, memory_bytes=0) as s:
        e = s.put(entry(), body)
        assert e is not None
        (got,) = s.variants(e.key)
        assert s.get_body(got) == body  # verified, its file remembered
        assert s.get_body(got) == body  # from the file it was found in
        (path,) = body_files(tmp_path)
        with open(path, "r+b") as f:
            f.truncate(1000)
        assert s.get_body(got) is None
        assert s.stats().corrupt == 1
        assert s.variants(e.key) == ()


def test_a_remembered_body_file_gone_reads_as_a_miss(tmp_path: Path) -> None:
    body = os.urandom(50_000)
    with Store(tmp_path, memory_bytes=0) as s:
        e = s.put(entry(), body)
        assert e is not None and s.get_body(e) == body
        (path,) = body_files(tmp_path)
        os.unlink(path)
        assert s.get_body(e) is None
        assert s.variants(e.key) == ()


def test_index_bytes_is_read_from_the_cache_section() -> None:
    from edge.config import from_mapping
    from edge.errors import ConfigError

    base = {"pool": {"origins": ["http://127.0.0.1:9001"]}}
    assert from_mapping({**base, "cache": {"index_bytes": "8MiB"}}, "e.toml").cache.index_bytes == (
        8 << 20
    )
    assert from_mapping(base, "e.toml").cache.index_bytes == 128 << 20
    with pytest.raises(ConfigError, match=r"e\.toml: cache\.index_bytes"):
        from_mapping({**base, "cache": {"index_bytes": "lots"}}, "e.toml")


def test_a_commit_that_fails_after_its_body_file_was_placed_leaves_no_file(
    tmp_path: Path,
) -> None:
    # Body row and metadata are one transaction: when the database fills up while writing
    # the metadata, the rollback must not leave the body's file behind, unreferenced.
    with Store(tmp_path, sqlite_max_page_count=64) as s:
        for i in range(400):
            headers = [("X-Pad", "p" * 3000)]  # big metadata, small file-backed bodies
            if s.put(entry(f"/f{i}", headers), os.urandom(40_000)) is None:
                break
        else:
            pytest.fail("the database never filled up")
        assert s.degraded
        stored = sum(1 for i in range(i) if s.variants(f"https://example.com/f{i}"))
    assert len(body_files(tmp_path)) == stored


def _writer(s: Store, data: bytes) -> BodyWriter:
    w = s.writer()
    assert w is not None and w.write(data)
    return w


def test_commit_all_stores_several_fills_in_one_transaction(tmp_path: Path) -> None:
    with Store(tmp_path, memory_object_max=100) as s:
        bodies = [os.urandom(50), os.urandom(150), b"short"]  # held, spilled, cut short
        fills = [
            (_writer(s, bodies[0]), entry("/a"), 50),
            (_writer(s, bodies[1]), entry("/b"), 150),
            (_writer(s, bodies[2]), entry("/c"), 10),
        ]
        wal = tmp_path / "cache.db-wal"
        size = wal.stat().st_size if wal.exists() else 0
        a, b, c = s.commit_all(fills)
        assert a is not None and b is not None and c is None
        assert s.get_body(a) == bodies[0] and s.get_body(b) == bodies[1]
        assert s.variants(entry("/c").key) == ()
        assert s.stats().stores == 2 and os.listdir(tmp_path / "tmp") == []
        assert len(body_files(tmp_path)) == 1  # the spilled one; the held one is a row
        assert wal.stat().st_size > size
        with pytest.raises(ValueError):  # one fill per key: lists are read outside
            s.commit_all([(_writer(s, b"x"), entry("/d"), 1), (_writer(s, b"y"), entry("/d"), 1)])
    with Store(tmp_path) as s:  # durable
        assert s.get_body(a) == bodies[0] and s.get_body(b) == bodies[1]


def test_a_group_with_a_key_stored_before_keeps_every_list_and_body(tmp_path: Path) -> None:
    # New keys go in with one INSERT for all bodies and one for all lists; a key that has
    # a list already (another variant stored) makes the group take each fill in turn,
    # merging that list: nothing of either way is lost.
    vh = [("Vary", "Accept-Language")]
    with Store(tmp_path) as s:
        de = s.put(entry("/v", vh, **{"Accept-Language": "de"}), b"hallo")
        assert de is not None
        new = {f"/n{i}": os.urandom(5000 + i) for i in range(5)}
        en_body = os.urandom(3000)
        for mixed in (False, True):
            fills = [
                (_writer(s, body), entry(f"{path}-{mixed}"), len(body))
                for path, body in new.items()
            ]
            if mixed:
                en = entry("/v", vh, **{"Accept-Language": "en"})
                fills.insert(2, (_writer(s, en_body), en, len(en_body)))
            assert None not in s.commit_all(fills)
    with Store(tmp_path) as s:  # a new process: what the transactions left
        for mixed in (False, True):
            for path, body in new.items():
                (got,) = s.variants(entry(f"{path}-{mixed}").key)
                assert s.get_body(got) == body
        variants = s.variants(de.key)
        assert {s.get_body(v) for v in variants} == {b"hallo", en_body}


def test_a_group_commit_that_fails_stores_none_of_its_fills(tmp_path: Path) -> None:
    # The database fills up part-way through the group: the whole transaction is rolled
    # back, and no fill of it is left in the index, the memory tier or on disk.
    with Store(tmp_path, sqlite_max_page_count=64) as s:
        for n in range(1, 400):
            fills = [
                (
                    _writer(s, os.urandom(40_000)),
                    entry(f"/g{n}-{i}", [("X-Pad", "p" * 3000)]),
                    40_000,
                )
                for i in range(4)
            ]
            results = s.commit_all(fills)
            if None in results:
                break
        else:
            pytest.fail("the database never filled up")
        assert results == [None] * 4 and s.degraded
        for _, e, _ in fills:
            assert s.peek_variants(e.key) is None and s.variants(e.key) == ()
        stored = [
            f"/g{m}-{i}"
            for m in range(1, n)
            for i in range(4)
            if s.variants(entry(f"/g{m}-{i}").key)
        ]
        assert len(stored) == 4 * (n - 1)
    assert len(body_files(tmp_path)) == len(stored)


def test_a_failed_group_commit_keeps_a_body_stored_before_it(tmp_path: Path) -> None:
    # A fill of the very bytes already stored for its URL and variant (a refetch that
    # found them unchanged) keeps their row; when the fill's transaction fails, the
    # rollback leaves that row as it was, and the entry stored before keeps its body.
    shared = os.urandom(2000)
    with Store(tmp_path, sqlite_max_page_count=64) as s:
        first = s.put(entry("/first"), shared)
        assert first is not None
        for n in range(1, 400):
            fills = [(_writer(s, shared), entry("/first"), len(shared))]
            fills += [
                (
                    _writer(s, os.urandom(40_000)),
                    entry(f"/g{n}-{i}", [("X-Pad", "p" * 3000)]),
                    40_000,
                )
                for i in range(3)
            ]
            if None in s.commit_all(fills):
                break
        else:
            pytest.fail("the database never filled up")
    with Store(tmp_path) as again:  # a new process: nothing in memory
        (stored,) = again.variants(first.key)
        assert again.get_body(stored) == shared


class _CountingStore(Store):
    """A real store that counts its group commits."""

    groups: list[int]

    def commit_all(self, fills):  # type: ignore[no-untyped-def]
        self.groups.append(len(fills))
        return super().commit_all(fills)


async def test_concurrent_fills_share_write_transactions(tmp_path: Path) -> None:
    from edge.fill import GroupCommit

    with _CountingStore(tmp_path) as s:
        s.groups = []
        commits = GroupCommit(s)
        bodies = {f"/c{i}": os.urandom(1000 + i) for i in range(20)}
        # Two variants of one key: never in one transaction (its list is read outside),
        # both end up in the list.
        en, de = (
            entry("/v", [("Vary", "Accept-Language")], **{"Accept-Language": "en"}),
            entry("/v", [("Vary", "Accept-Language")], **{"Accept-Language": "de"}),
        )
        jobs = [commits.commit(_writer(s, b), entry(p), len(b)) for p, b in bodies.items()]
        jobs += [commits.commit(_writer(s, b"en"), en, 2), commits.commit(_writer(s, b"de"), de, 2)]
        results = await asyncio.gather(*jobs)
        await commits.drained()
        assert all(r is not None for r in results)
        # All asked for before the first transaction: one group, but for the second
        # variant of /v, which goes in the next.
        assert s.groups == [21, 1]
        alone = await commits.commit(_writer(s, b"z"), entry("/z"), 1)
        assert alone is not None and s.groups == [21, 1, 1]
        for r, body in zip(results, [*bodies.values(), b"en", b"de"], strict=True):
            assert r is not None and s.get_body(r) == body
        s._forget(en.key)  # type: ignore[union-attr]
        assert {e.variant for e in s.variants(en.key)} == {en.variant, de.variant}


async def test_submitted_fills_linger_into_one_transaction_until_someone_waits(
    tmp_path: Path,
) -> None:
    """Fills whose callers do not wait (answered before the commit) go many to a
    transaction, the first one waiting LINGER for the others; a caller that waits, or
    hurry(), starts the transaction at once; past BEHIND_MAX queued, callers are told to
    wait (behind)."""
    from edge.fill import BEHIND_MAX, GroupCommit

    with _CountingStore(tmp_path) as s:
        s.groups = []
        commits = GroupCommit(s, linger=30.0)  # only a waiter or hurry() ends this linger
        first = commits.submit(_writer(s, b"a"), entry("/a"), 1)
        await asyncio.sleep(0)  # the transaction's task has started and lingers
        later = [
            commits.submit(_writer(s, b"%d" % i), entry(f"/s{i}"), len(b"%d" % i)) for i in range(5)
        ]
        assert not first.done() and s.groups == []
        waited = await commits.commit(_writer(s, b"w"), entry("/w"), 1)  # a waiter: now
        assert waited is not None and first.done() and all(f.done() for f in later)
        assert s.groups == [7]
        assert s.get_body(first.result()) == b"a"  # type: ignore[arg-type]
        # A lingering transaction of submitted fills alone, hurried.
        more = commits.submit(_writer(s, b"m"), entry("/m"), 1)
        await asyncio.sleep(0)
        assert not more.done()
        commits.hurry()
        assert (await more) is not None and s.groups == [7, 1]
        # Too many queued: callers should wait for their commits.
        assert not commits.behind
        queued = [commits.submit(_writer(s, b"q"), entry(f"/q{i}"), 1) for i in range(BEHIND_MAX)]
        assert commits.behind
        await commits.drained()
        assert all(f.result() is not None for f in queued) and not commits.behind
        assert sum(s.groups) == 7 + 1 + BEHIND_MAX


def test_a_recency_write_back_bigger_than_one_statement_stamps_every_row(tmp_path: Path) -> None:
    # The write-back goes in statements of _STAMP_CHUNK keys: past one, every row read is
    # still stamped, all with the same time, in one transaction.
    from edge.store import _STAMP_CHUNK

    clock = Clock()
    count = _STAMP_CHUNK + 300  # two rows each: metadata and body, three statements
    with Store(tmp_path, memory_bytes=0, clock=clock) as s:
        stored = [s.put(entry(f"/r{i}"), b"r%d" % i) for i in range(count)]
        clock.t += 30
        assert all(e is not None and s.variants(e.key) for e in stored)
        before = time.time()
        assert s.flush_recency() == 2 * count
    with sqlite3.connect(tmp_path / "cache.db") as db:
        stamps = {t for (t,) in db.execute("SELECT access_time FROM Cache WHERE key LIKE '_:%/r%'")}
    assert len(stamps) == 1 and stamps.pop() >= before


def test_a_body_written_in_pieces_of_any_size_has_its_own_digest(tmp_path: Path) -> None:
    # BodyWriter hashes chunks of a few KiB in pieces (under hashlib's GIL threshold): the digest
    # stored is the whole body's whatever the chunks, at and around the piece's size.
    sizes = [0, 1, 2046, 2047, 2048, 4095, 4096, 10240, 16383, 16384, 16385, 70001]
    chunks = [bytes([n % 251]) * n for n in sizes]
    with Store(tmp_path) as s:
        writer = s.writer()
        for chunk in chunks:
            assert writer.write(chunk)
        body = b"".join(chunks)
        assert writer.digest() == hashlib.sha256(body).hexdigest()
        stored = writer.commit(entry(), len(body))
        assert stored is not None and stored.sha256 == hashlib.sha256(body).hexdigest()
        assert s.get_body(stored) == body


@pytest.mark.parametrize("meanwhile", ["refill", "purge"])
def test_a_list_read_before_a_change_of_its_key_stays_out_of_the_index(
    tmp_path: Path, meanwhile: str
) -> None:
    # A variant list read from the database in one thread (a hit's re-read) while another
    # commits a new fill of the key, or purges it: the old list must not go into the index
    # over the change (its body is gone: the next hit would call it damaged and, removing
    # it by variant, delete the new fill).
    with Store(tmp_path) as s:
        old = s.put(entry(), b"old body")
        assert old is not None
        s._forget(old.key)  # not in the index: the next variants() reads the database
        load = s._load_meta
        read, changed = threading.Event(), threading.Event()

        def held_load(key: str, sql: Any = None) -> list[CacheEntry]:
            out = load(key, sql)
            if threading.current_thread().name == "reread":
                read.set()
                changed.wait(5)
            return out

        s._load_meta = held_load  # type: ignore[method-assign]
        reread = threading.Thread(target=s.variants, args=(old.key,), name="reread")
        reread.start()
        assert read.wait(5)
        new = s.put(entry(), b"new body!") if meanwhile == "refill" else None
        if meanwhile == "purge":
            assert s.purge_url(old.key) == 1
        changed.set()
        reread.join(5)
        listed = s.variants(old.key)
        if new is None:
            assert listed == ()
        else:
            assert [e.sha256 for e in listed] == [new.sha256]
            assert s.get_body(listed[0]) == b"new body!"
        assert s.stats().corrupt == 0


def test_a_damaged_entry_goes_but_not_a_newer_fill_of_its_variant(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        old = s.put(entry(), b"old body")
        new = s.put(entry(), b"new body!")
        assert old is not None and new is not None and old.sha256 != new.sha256
        s._corrupt(old)  # as a hit on a stale list of the index would
        assert [e.sha256 for e in s.variants(new.key)] == [new.sha256]
        assert s.get_body(new) == b"new body!"
