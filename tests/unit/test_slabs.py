"""Bodies in slabs (edge.slabs through edge.store) on a real cache directory: where they go,
reads in a fresh process, damage, the size accounting under churn, retirement of empty
slabs, compaction around bodies still in use, slabs of a process killed with kill -9, and a
transaction that fails after its bytes were appended."""

import calendar
import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from edge import slabs
from edge.cache_policy import CacheEntry, CacheRequest, make_entry
from edge.store import Store

T0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
ROOT = Path(__file__).resolve().parents[2]
BODY = 10_240


def entry(path: str) -> CacheEntry:
    request = CacheRequest("GET", "https", "example.com", path, ())
    return make_entry(
        request,
        200,
        "OK",
        [("Cache-Control", "max-age=60")],
        request_time=T0,
        response_time=T0,
        body_length=0,
        sha256="0" * 64,
        now=T0,
    )


def body(i: int, size: int = BODY) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (size // 32)


def fill(s: Store, i: int, size: int = BODY) -> CacheEntry:
    """Store body ``i`` as a fill does (held in memory, committed by a writer)."""
    w = s.writer()
    assert w is not None and w.write(body(i, size))
    stored = w.commit(entry(f"/o/{i}"), size)
    assert stored is not None
    return stored


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "cache.db")


def slab_files(tmp_path: Path) -> dict[str, int]:
    directory = tmp_path / slabs.DIRECTORY
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def settings_size(tmp_path: Path) -> int:
    with db(tmp_path) as conn:
        return int(conn.execute("SELECT value FROM Settings WHERE key = 'size'").fetchone()[0])


def on_disk(tmp_path: Path) -> int:
    """Bytes of bodies outside the database: slab files and files of their own."""
    with db(tmp_path) as conn:
        files = conn.execute(
            "SELECT total(size) FROM Cache WHERE filename IS NOT NULL"
            " AND filename NOT GLOB 'slabs/*'"
        ).fetchone()[0]
    return int(files) + sum(slab_files(tmp_path).values())


def test_a_small_body_goes_to_a_slab_and_reads_back_in_another_process(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        stored = fill(s, 1)
        tiny = s.put(entry("/tiny"), b"tiny")  # below slabs.MIN_BYTES: stays in its row
        big = fill(s, 2, 40_000)  # past diskcache's min_file_size: a file of its own
        assert s.get_body(stored) == body(1)
    with db(tmp_path) as conn:
        rows = {
            key.split("\x1f")[0].rsplit("/", 1)[1]: filename
            for key, filename in conn.execute(
                "SELECT key, filename FROM Cache WHERE key GLOB 'b:*'"
            )
        }
    assert rows["tiny"] is None  # its row holds it
    assert rows["1"].startswith("slabs/") and rows["1"].endswith(":0")
    assert rows["2"] is not None and not rows["2"].startswith("slabs/")  # a file
    assert len(slab_files(tmp_path)) == 1
    with Store(tmp_path) as s:  # a fresh index: the digest is checked on this first read
        assert s.get_body(stored) == body(1)
        assert tiny is not None and s.get_body(tiny) == b"tiny"
        assert s.get_body(big) == body(2, 40_000)
        (got,) = s.variants(stored.key)
        assert s.get_body(got) == body(1)  # read again from its place in the slab


def test_a_damaged_slab_never_yields_a_wrong_body(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        a, b = fill(s, 1), fill(s, 2)
    (name,) = slab_files(tmp_path)
    path = tmp_path / slabs.DIRECTORY / name
    data = bytearray(path.read_bytes())
    data[BODY + 100] ^= 0xFF  # inside the second body
    path.write_bytes(bytes(data))
    with Store(tmp_path) as s:
        assert s.get_body(a) == body(1)
        assert s.get_body(b) is None  # checked against its digest: evicted, a miss
        assert s.variants(b.key) == ()


def test_a_slab_cut_short_reads_as_a_miss(tmp_path: Path) -> None:
    with Store(tmp_path, memory_bytes=0) as s:
        a = fill(s, 1)
        b = fill(s, 2)
        assert s.get_body(b) == body(2)  # its place is known now: length checked only
        (name,) = slab_files(tmp_path)
        os.truncate(tmp_path / slabs.DIRECTORY / name, BODY + 10)
        assert s.get_body(b) is None
        assert s.get_body(a) == body(1)


def test_disk_use_stays_within_the_size_limit_under_churn(tmp_path: Path) -> None:
    limit = 4 << 20
    with Store(tmp_path, size_limit=limit, memory_bytes=0) as s:
        assert s._slabs.slab_bytes == 1 << 20
        for i in range(1500):  # 15 MB through a 4 MiB cache
            fill(s, i)
            if i % 100 == 99:
                s.maintain()
                # What is on disk is what diskcache counts, dead bytes in slabs included.
                assert settings_size(tmp_path) == on_disk(tmp_path)
                assert on_disk(tmp_path) <= limit + 2 * s._slabs.slab_bytes
        s.maintain()
        assert settings_size(tmp_path) == on_disk(tmp_path)
        assert len(slab_files(tmp_path)) <= limit // s._slabs.slab_bytes + 2
        kept = [e for i in range(1500) for e in s.variants(f"https://example.com/o/{i}")]
        assert len(kept) >= 150  # the cache holds about its limit, not much less
        for e in kept[-50:]:
            assert s.get_body(e) == body(int(e.key.rsplit("/", 1)[1]))


def test_a_group_commit_writes_its_bodies_across_slabs_each_in_its_place(tmp_path: Path) -> None:
    # A group's bodies go to the open slab in one write, and to the next slab from the
    # body that finds the open one full: each row names where its own bytes are.
    with Store(tmp_path, size_limit=4 << 20, memory_bytes=0) as s:
        assert s._slabs.slab_bytes == 1 << 20
        for group in range(4):  # 4 x 64 x 10 KiB: 2.5 slabs
            fills = []
            for i in range(group * 64, group * 64 + 64):
                w = s.writer()
                assert w is not None and w.write(body(i))
                fills.append((w, entry(f"/o/{i}"), BODY))
            assert None not in s.commit_all(fills)
        assert settings_size(tmp_path) == on_disk(tmp_path)
        sizes = sorted(slab_files(tmp_path).values())
        assert len(sizes) == 3 and sum(sizes) == 256 * BODY
    with Store(tmp_path) as s:  # a fresh index: read from each row's place, digest checked
        for i in range(256):
            (got,) = s.variants(f"https://example.com/o/{i}")
            assert s.get_body(got) == body(i)


def test_a_group_past_the_limits_of_one_system_call_and_one_statement(tmp_path: Path) -> None:
    # More bodies for one slab than one pwritev takes (IOV_MAX, 1024 here) and more rows
    # than one INSERT may bind on SQLite before 3.32 (999 parameters, 7 a row): all stored.
    # GroupCommit sends at most 64; commit_all itself takes any number.
    with Store(tmp_path, size_limit=2 << 30, memory_bytes=0) as s:
        assert s._slabs.slab_bytes == 16 << 20
        s._cache._con.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        fills = []
        for i in range(1100):
            w = s.writer()
            assert w is not None and w.write(body(i, 4096))
            fills.append((w, entry(f"/o/{i}"), 4096))
        assert None not in s.commit_all(fills), s.stats().degraded_reason
        assert list(slab_files(tmp_path).values()) == [1100 * 4096]
    with Store(tmp_path) as s:
        for i in range(0, 1100, 7):
            (got,) = s.variants(f"https://example.com/o/{i}")
            assert s.get_body(got) == body(i, 4096)


def test_slabs_emptied_by_purges_are_retired(tmp_path: Path) -> None:
    with Store(tmp_path, size_limit=64 << 20) as s:
        entries = [fill(s, i) for i in range(250)]  # 2.5 MB: three slabs of 1 MiB
        assert len(slab_files(tmp_path)) == 3
        per_slab = -(-s._slabs.slab_bytes // BODY)  # a slab takes bodies until it is full
        for e in entries[: 2 * per_slab]:
            s.remove(e.key)
        s.maintain()
        # The first two were sealed and are empty now; the open one stays.
        assert len(slab_files(tmp_path)) == 1
        assert settings_size(tmp_path) == on_disk(tmp_path)
        for e in entries[2 * per_slab :]:
            assert s.get_body(e) == body(int(e.key.rsplit("/", 1)[1]))
        s.clear()
        assert settings_size(tmp_path) == on_disk(tmp_path)
    assert slab_files(tmp_path) == {}  # the open one was sealed at close, then retired
    with Store(tmp_path) as s:
        s.maintain()
    assert slab_files(tmp_path) == {}


def test_compaction_moves_the_bodies_still_used_out_of_a_mostly_dead_slab(
    tmp_path: Path,
) -> None:
    limit = 8 << 20  # slabs of 1 MiB; compaction past 0.8 MiB of dead bytes
    with Store(tmp_path, size_limit=limit, memory_bytes=0) as s:
        entries = [fill(s, i) for i in range(300)]
        first = sorted(slab_files(tmp_path))[0]
        pinned = entries[::40]  # one body in forty stays: every slab keeps a few
        for e in entries:
            if e not in pinned:
                s.remove(e.key)
        with db(tmp_path) as conn:
            dead = conn.execute("SELECT total(bytes - live_bytes) FROM Slabs").fetchone()[0]
        assert dead > limit * 0.1
        for _ in range(5):
            s.maintain()
        assert first not in slab_files(tmp_path)  # its live bodies moved, then it went
        assert settings_size(tmp_path) == on_disk(tmp_path)
        with db(tmp_path) as conn:
            dead = conn.execute(
                "SELECT total(bytes - live_bytes) FROM Slabs WHERE sealed = 1"
            ).fetchone()[0]
        assert dead <= limit * 0.1
        for e in pinned:  # from this process's index (their old places were dropped)
            assert s.get_body(e) == body(int(e.key.rsplit("/", 1)[1]))
    with Store(tmp_path) as s:  # and in a fresh one, digests checked
        for e in pinned:
            (got,) = s.variants(e.key)
            assert s.get_body(got) == body(int(e.key.rsplit("/", 1)[1]))


def test_the_slab_of_a_process_killed_is_sealed_and_retired_when_empty(tmp_path: Path) -> None:
    code = """
        import sys, hashlib, calendar
        from edge.store import Store
        from edge.cache_policy import CacheRequest, make_entry
        t = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
        s = Store(sys.argv[1])
        for i in range(20):
            r = CacheRequest("GET", "https", "example.com", f"/o/{i}", ())
            e = make_entry(r, 200, "OK", [("Cache-Control", "max-age=60")],
                request_time=t, response_time=t, body_length=0, sha256="0" * 64, now=t)
            data = hashlib.sha256(str(i).encode()).digest() * 320
            w = s.writer()
            w.write(data)
            w.commit(e, len(data))
        print("ready", flush=True)
        sys.stdin.read()
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with Store(tmp_path) as s:
            s.maintain()  # its owner holds its lock: not sealed
            with db(tmp_path) as conn:
                assert conn.execute("SELECT sealed FROM Slabs").fetchall() == [(0,)]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            s.maintain()
            with db(tmp_path) as conn:
                assert conn.execute("SELECT sealed FROM Slabs").fetchall() == [(1,)]
            found = [e for i in range(20) for e in s.variants(f"https://example.com/o/{i}")]
            assert len(found) == 20
            for e in found:
                assert s.get_body(e) == body(int(e.key.rsplit("/", 1)[1]))
                s.remove(e.key)
            s.maintain()
            assert slab_files(tmp_path) == {}
            assert settings_size(tmp_path) == on_disk(tmp_path) == 0


def test_a_failed_transaction_leaves_its_bytes_dead_and_counted(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        a = fill(s, 1)
        # The variant list's insert fails: the transaction rolls back after the body was
        # appended to the slab and its row inserted.
        with db(tmp_path) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON Cache WHEN NEW.key GLOB 'm:*/o/2'"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        w = s.writer()
        assert w is not None and w.write(body(2))
        assert w.commit(entry("/o/2"), BODY) is None
        with db(tmp_path) as conn:
            conn.execute("DROP TRIGGER refuse")
        assert s.variants("https://example.com/o/2") == ()
        c = fill(s, 3)
        assert settings_size(tmp_path) == on_disk(tmp_path)  # the dead body counted too
        assert sum(slab_files(tmp_path).values()) == 3 * BODY
        assert s.get_body(a) == body(1) and s.get_body(c) == body(3)


def test_two_processes_write_their_own_slabs_and_read_each_others(tmp_path: Path) -> None:
    with Store(tmp_path) as one, Store(tmp_path) as two:
        a = fill(one, 1)
        b = fill(two, 2)
        assert len(slab_files(tmp_path)) == 2
        (got_b,) = one.variants(b.key)
        (got_a,) = two.variants(a.key)
        assert one.get_body(got_b) == body(2)
        assert two.get_body(got_a) == body(1)
        two.remove(a.key)
        two.maintain()  # one's slab is empty, but open (its lock held): not two's to seal
        assert len(slab_files(tmp_path)) == 2
        one.maintain()  # one's own: sealed and retired
        assert len(slab_files(tmp_path)) == 1
        c = fill(one, 3)
    with Store(tmp_path) as s:  # both were sealed at close
        s.maintain()
        assert len(slab_files(tmp_path)) == 2
        s.remove(c.key)
        s.maintain()
        assert len(slab_files(tmp_path)) == 1
        (got,) = s.variants(b.key)
        assert s.get_body(got) == body(2)


def deleted_slabs_open() -> list[str]:
    """Slab files this process holds open although they were deleted."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "/slabs/" in target and target.endswith("(deleted)"):
                found.append(target)
    return found


def test_a_slab_retired_by_another_process_is_let_go_by_readers(tmp_path: Path) -> None:
    with Store(tmp_path, size_limit=64 << 20, memory_bytes=0) as writer:
        entries = [fill(writer, i) for i in range(110)]  # the first slab fills up
        with Store(tmp_path, memory_bytes=0) as reader:
            (got,) = reader.variants(entries[0].key)
            assert reader.get_body(got) == body(0)  # the reader keeps the slab open
            for e in entries[: -(-writer._slabs.slab_bytes // BODY)]:
                writer.remove(e.key)
            writer.maintain()  # the first slab is empty and sealed: retired
            assert len(slab_files(tmp_path)) == 1
            assert len(deleted_slabs_open()) == 1  # the reader's descriptor holds it
            reader.maintain()
            assert deleted_slabs_open() == []  # its space is free now
            (last,) = reader.variants(entries[-1].key)
            assert reader.get_body(last) == body(109)


def consistent(tmp_path: Path) -> None:
    """Each slab's counts are its rows', every slab row names a known slab, and what is on
    disk is what diskcache counts."""
    with db(tmp_path) as conn:
        wrong = conn.execute(
            "SELECT s.name, s.live, (SELECT count(*) FROM Cache c"
            " WHERE c.filename GLOB 'slabs/' || s.name || ':*') AS n FROM Slabs s"
            " WHERE s.live != n"
        ).fetchall()
        unknown = conn.execute(
            "SELECT count(*) FROM Cache WHERE filename GLOB 'slabs/*' AND"
            " substr(filename, 7, instr(filename, ':') - 7) NOT IN (SELECT name FROM Slabs)"
        ).fetchone()[0]
    assert wrong == [] and unknown == 0
    assert settings_size(tmp_path) == on_disk(tmp_path)


def test_fills_and_maintenance_in_threads_keep_the_counts(tmp_path: Path) -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads change often: every window between steps shows
    try:
        with Store(tmp_path, size_limit=256 << 20, memory_bytes=0) as s:
            s._slabs.slab_bytes = 64 << 10  # a seal every 16 fills
            stop = time.monotonic() + 2.0

            def filler(t: int) -> None:
                for i in range(100_000):
                    if time.monotonic() > stop:
                        return
                    fill(s, t * 1_000_000 + i, 4096)

            def maintainer() -> None:
                while time.monotonic() < stop:
                    s.maintain()

            threads = [threading.Thread(target=filler, args=(t,)) for t in range(4)]
            threads.append(threading.Thread(target=maintainer))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            consistent(tmp_path)
    finally:
        sys.setswitchinterval(switch)
    consistent(tmp_path)


def test_a_slab_that_cannot_be_started_fails_one_commit_only(tmp_path: Path) -> None:
    with Store(tmp_path, size_limit=64 << 20, memory_bytes=0) as s:
        per_slab = -(-s._slabs.slab_bytes // BODY)
        for i in range(per_slab):
            fill(s, i)  # the first slab is full: the next fill starts another
        directory = tmp_path / slabs.DIRECTORY
        directory.rename(tmp_path / "away")
        directory.write_bytes(b"")  # a file where the directory was: the open fails
        w = s.writer()
        assert w is not None and w.write(body(1000))
        assert w.commit(entry("/o/1000"), BODY) is None
        directory.unlink()
        (tmp_path / "away").rename(directory)
        for i in range(1001, 1004):
            fill(s, i)
        consistent(tmp_path)
        assert len(slab_files(tmp_path)) == 2
        (got,) = s.variants("https://example.com/o/1003")
        assert s.get_body(got) == body(1003)


def test_a_refill_of_the_same_bytes_never_serves_damaged_ones(tmp_path: Path) -> None:
    with Store(tmp_path, memory_bytes=0) as s:
        fill(s, 1)
    (name,) = slab_files(tmp_path)
    path = tmp_path / slabs.DIRECTORY / name
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with Store(tmp_path, memory_bytes=0) as s:
        again = fill(s, 1)  # the same response again: its body's row is there already
        assert s.get_body(again) is None  # checked against the digest, not served
        assert s.variants(again.key) == ()


def test_a_lost_slab_file_drops_its_rows_and_maintenance_goes_on(tmp_path: Path) -> None:
    with Store(tmp_path, size_limit=8 << 20, memory_bytes=0) as s:
        entries = [fill(s, i) for i in range(300)]
        per_slab = -(-s._slabs.slab_bytes // BODY)
        for e in entries[: per_slab - 8]:
            s.remove(e.key)  # most of the first slab dead
        first = sorted(slab_files(tmp_path))[0]
        os.unlink(tmp_path / slabs.DIRECTORY / first)  # lost: by hand, or a damaged disk
        failures = s.stats().store_failures
        s.maintain()
        assert s.stats().store_failures == failures
        consistent(tmp_path)
        for e in entries[per_slab - 8 : per_slab]:
            (got,) = s.variants(e.key) or (e,)
            assert s.get_body(got) is None  # its row went with the slab: a miss
        (got,) = s.variants(entries[-1].key)
        assert s.get_body(got) == body(299)


def test_a_row_culled_in_the_transaction_that_started_its_slab_is_counted(
    tmp_path: Path,
) -> None:
    with Store(tmp_path, size_limit=400_000, memory_bytes=0) as a:
        for i in range(40):  # dead bytes of a's open slab fill the cache
            a.remove(fill(a, i).key)
        with Store(tmp_path, size_limit=400_000, memory_bytes=0) as b:
            fill(b, 100)  # b's first slab; the cull of its transaction takes this very row
            consistent(tmp_path)
    with Store(tmp_path, size_limit=400_000) as s:
        s.maintain()
        consistent(tmp_path)
    assert slab_files(tmp_path) == {}


def test_an_open_slab_whose_rows_all_went_goes_too(tmp_path: Path) -> None:
    with Store(tmp_path, size_limit=64 << 20, memory_bytes=0) as s:
        for i in range(5):
            s.remove(fill(s, i).key)
        assert len(slab_files(tmp_path)) == 1
        s.maintain()  # its dead bytes would count against the limit until it filled up
        assert slab_files(tmp_path) == {}
        consistent(tmp_path)
        e = fill(s, 5)  # a new slab
        assert len(slab_files(tmp_path)) == 1 and s.get_body(e) == body(5)
        consistent(tmp_path)
