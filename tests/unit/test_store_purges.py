"""Store.purge against fills on their way: a purge recorded with `asked_before` refuses,
at their commit, the fills it names whose origin request came before it, in every process
sharing the directory; within its bounds of time and count."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge import store as store_module
from edge.cache_policy import CacheEntry, CacheRequest, make_entry
from edge.fill import GroupCommit
from edge.store import PURGE_MEMORY, Store, StoreError, purge_names


def entry(path: str, asked: float, tags: str = "") -> CacheEntry:
    request = CacheRequest("GET", "http", "h.test", path)
    fields = [("Cache-Control", "max-age=60")]
    if tags:
        fields.append(("Surrogate-Key", tags))
    return make_entry(
        request, 200, "OK", fields, request_time=asked, response_time=asked + 1,
        body_length=0, sha256="0" * 64, now=asked + 1,
    )  # fmt: skip


def key(path: str) -> str:
    return CacheRequest("GET", "http", "h.test", path).key


def stored(s: Store, path: str) -> bool:
    return s.variants(key(path)) != ()


def purges(directory: Path) -> list[tuple[float, str, str]]:
    with sqlite3.connect(directory / "cache.db") as db:
        return [tuple(r) for r in db.execute("SELECT at, kind, value FROM Purges ORDER BY at")]


def test_purge_names() -> None:
    assert purge_names("url", key("/a"), key("/a"), ())
    assert not purge_names("url", key("/a"), key("/ab"), ())
    assert purge_names("prefix", key("/p/")[:-1], key("/p/x"), ())
    assert not purge_names("prefix", key("/p/")[:-1], key("/q/x"), ())
    assert purge_names("surrogate_key", "grp", key("/t"), ("one", "grp"))
    assert not purge_names("surrogate_key", "grp", key("/t"), ("group",))
    assert purge_names("all", "", key("/anything"), ())


@pytest.mark.parametrize(
    ("kind", "value"),
    [("url", key("/a")), ("prefix", key("/a")), ("surrogate_key", "grp")],
)
def test_a_purge_through_one_store_refuses_what_another_asked_before_it(
    tmp_path: Path, kind: str, value: str
) -> None:
    # Two Stores on one directory: two worker processes of one node.
    with Store(tmp_path) as purging, Store(tmp_path) as filling:
        assert purging.purge(kind, value, asked_before=100.0) == 0
        assert filling.put(entry("/a", 99.0, "grp"), b"old" * 2000) is None
        assert not stored(filling, "/a") and not stored(purging, "/a")
        # Asked once the purge was made: the origin's answer is today's.
        assert filling.put(entry("/a", 100.0, "grp"), b"new" * 2000) is not None
        assert stored(filling, "/a")
        # What the purge does not name is stored whenever it was asked.
        assert filling.put(entry("/b", 50.0, "other"), b"b") is not None


def test_only_the_named_fills_of_a_group_are_refused(tmp_path: Path) -> None:
    with Store(tmp_path) as purging, Store(tmp_path) as filling:
        purging.purge("url", key("/x"), asked_before=100.0)
        writers = []
        for path, size in (("/w", 10), ("/x", 10_000), ("/y", 200_000), ("/z", 10)):
            writer = filling.writer()
            assert writer is not None and writer.write(b"v" * size)
            writers.append((writer, entry(path, 99.0), size))
        results = filling.commit_all(writers)
        assert [r is not None for r in results] == [True, False, True, True]
        assert [stored(filling, p) for p in ("/w", "/x", "/y", "/z")] == [True, False, True, True]
        assert os.listdir(tmp_path / "tmp") == []  # the refused fill left no file behind


def test_a_streamed_fill_refused_leaves_no_file(tmp_path: Path) -> None:
    with Store(tmp_path) as purging, Store(tmp_path) as filling:
        writer = filling.writer()
        assert writer is not None and writer.write(b"x" * 3_000_000)  # spilled to a file
        purging.purge("prefix", key("/big")[:-1], asked_before=100.0)
        assert writer.commit(entry("/big", 99.0), 3_000_000) is None
        assert os.listdir(tmp_path / "tmp") == []
        assert not stored(filling, "/big")


def test_a_purge_without_a_time_records_nothing(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        assert s.put(entry("/a", 99.0), b"a") is not None
        assert s.purge("url", key("/a")) == 1
        assert purges(tmp_path) == []
        assert s.put(entry("/a", 99.0), b"a") is not None


def test_purges_are_kept_an_hour(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.purge("url", key("/a"), asked_before=1000.0)
        assert s.put(entry("/a", 999.0), b"a") is None
        later = 1000.0 + PURGE_MEMORY + 1
        s.purge("url", key("/b"), asked_before=later)
        assert purges(tmp_path) == [(later, "url", key("/b"))]
        # No fill asked for an hour ago is still on its way: the first purge is forgotten.
        assert s.put(entry("/a", 999.0), b"a") is not None


def test_past_the_count_every_fill_asked_before_the_forgotten_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PURGES_KEPT", 3)
    monkeypatch.setattr(store_module, "_PURGES_COUNTED", 1)  # counted with each purge
    with Store(tmp_path) as s:
        for i in range(5):  # two too many: the first two go
            s.purge("url", key(f"/{i}"), asked_before=1000.0 + i)
        assert purges(tmp_path) == [
            (1001.0, "all", ""),
            *((1000.0 + i, "url", key(f"/{i}")) for i in (2, 3, 4)),
        ]
        # Asked before the newest forgotten purge: refused whatever it is.
        assert s.put(entry("/elsewhere", 1000.5), b"e") is None
        assert s.put(entry("/0", 1000.5), b"0") is None
        # Asked after it: only what a purge kept names.
        assert s.put(entry("/elsewhere", 1001.0), b"e") is not None
        assert s.put(entry("/3", 1001.0), b"3") is None
        assert s.put(entry("/3", 1003.0), b"3") is not None


def test_purged_says_whether_a_response_on_its_way_is_named(tmp_path: Path) -> None:
    with Store(tmp_path) as purging, Store(tmp_path) as reading:
        assert not reading.purged(entry("/a", 99.0, "grp"))
        purging.purge("surrogate_key", "grp", asked_before=100.0)
        assert reading.purged(entry("/a", 99.0, "grp"))
        assert not reading.purged(entry("/a", 100.0, "grp"))  # asked once it was made
        assert not reading.purged(entry("/a", 99.0, "other"))


def _locked(directory: Path) -> sqlite3.Connection:
    """Another process's write transaction, held (a real SQLite lock)."""
    db = sqlite3.connect(directory / "cache.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    return db


def _in_thread(fn: Callable[[], Any]) -> dict[str, Any]:
    """`fn` run in a thread of its own (a connection of its own, with the short timeout)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    return out


def test_a_commit_whose_transaction_cannot_begin_stores_nothing(tmp_path: Path) -> None:
    # Another process holds the write lock past the busy timeout: a None, not an IndexError
    # (the results were counted from the fills the transaction had begun: none).
    with Store(tmp_path) as s:
        s._cache._timeout = 0.05  # diskcache's busy timeout (60 s by default) made short
        db = _locked(tmp_path)
        try:
            out = _in_thread(lambda: s.put(entry("/a", 99.0), b"a"))
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert "error" not in out, repr(out.get("error"))
        assert out["value"] is None


def test_a_group_commit_whose_transaction_cannot_begin_does_not_hang(tmp_path: Path) -> None:
    # commit_all raised StopIteration in the committing thread, which asyncio cannot set
    # on a future: the GroupCommit's task, its drained() and every purge after it hung.
    async def main(s: Store) -> object:
        commits = GroupCommit(s, linger=0)
        writer = s.writer()
        assert writer is not None and writer.write(b"x")
        return await asyncio.wait_for(commits.commit(writer, entry("/g", 99.0), 1), 5.0)

    with Store(tmp_path) as s:
        s._cache._timeout = 0.05
        db = _locked(tmp_path)
        try:
            assert asyncio.run(main(s)) is None
        finally:
            db.execute("ROLLBACK")
            db.close()


def test_a_purge_that_cannot_be_recorded_still_removes_and_says_so(tmp_path: Path) -> None:
    bad = "/bad/" + "x" * 1000
    with Store(tmp_path, sqlite_max_page_count=64) as s:
        assert s.put(entry(bad, time.time() - 1), b"b") is not None
        for i in range(400):  # the database full
            if s.put(entry(f"/f{i}", time.time() - 1), os.urandom(3000)) is None:
                break
        else:
            pytest.fail("the database never filled up")
        for i in range(200):  # purges of long URLs until the Purges table needs a page
            try:
                s.purge("url", key(f"/gone{i:04}/" + "x" * 1000), asked_before=time.time())
            except StoreError:
                break
        else:
            pytest.fail("the purges never needed a new page")
        with pytest.raises(StoreError, match="removed 1, but could not record"):
            s.purge("url", key(bad), asked_before=time.time())
        assert not stored(s, bad)


def test_a_purge_dated_by_a_clock_ahead_is_dropped_once_the_clock_is_right(
    tmp_path: Path,
) -> None:
    # The wall clock was a day ahead (a VM's) when the operator purged; NTP set it right.
    with Store(tmp_path) as s:
        s.purge("url", key("/a"), asked_before=time.time() + 86400)
        assert s.put(entry("/a", time.time()), b"a") is not None  # not heeded
        s.purge("url", key("/other"), asked_before=time.time())  # and dropped by the next
        assert [kind for _, kind, _ in purges(tmp_path)] == ["url"]


def test_a_304_asked_before_a_purge_of_a_tag_it_adds_takes_the_variant_out(
    tmp_path: Path,
) -> None:
    # Worker B revalidates /a (stored untagged) at 99 and the 304 adds Surrogate-Key: grp;
    # worker A purges grp at 100 (its tag list names nothing yet); B's update comes after.
    with Store(tmp_path) as purging, Store(tmp_path) as filling:
        old = filling.put(entry("/a", 90.0), b"a")
        assert old is not None
        purging.purge("surrogate_key", "grp", asked_before=100.0)
        freshened = replace(
            entry("/a", 99.0, "grp"), sha256=old.sha256, body_length=old.body_length
        )
        assert filling.update(freshened) is False
        assert not stored(filling, "/a") and not stored(purging, "/a")
        # A 304 to a request made after the purge freshens as before.
        assert filling.put(entry("/a", 90.0), b"a") is not None
        again = replace(entry("/a", 101.0, "grp"), sha256=old.sha256, body_length=1)
        assert filling.update(again) is True


def _before_removal(monkeypatch: pytest.MonkeyPatch, s: Store, act: Callable[[], None]) -> None:
    """`act` runs once as `s`'s purge begins its removal: after the purge is recorded
    (and hidden), before anything goes."""
    removing = s._remove
    acted: list[bool] = []

    def act_first(*args: Any, **kwargs: Any) -> int:
        if not acted:
            acted.append(True)
            act()
        return removing(*args, **kwargs)

    monkeypatch.setattr(s, "_remove", act_first)


def test_a_tag_purge_keeps_what_was_tagged_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While one store purges the tag "grp", another commits a new response tagged "grp"
    # (asked after the purge): it stays stored, and the tag still lists it, so the next
    # purge of "grp" takes it out (the tag's row used to be deleted whole at the end).
    with Store(tmp_path) as purging, Store(tmp_path) as filling:
        assert filling.put(entry("/old", 50.0, "grp"), b"o") is not None

        def another_commits() -> None:
            assert filling.put(entry("/new", 200.0, "grp"), b"n") is not None

        _before_removal(monkeypatch, purging, another_commits)
        assert purging.purge("surrogate_key", "grp", asked_before=100.0) == 1
        monkeypatch.undo()
        assert not stored(purging, "/old") and stored(purging, "/new")
        assert purging.purge("surrogate_key", "grp") == 1
        assert not stored(purging, "/new")


@pytest.mark.parametrize("reader_is_the_purger", [False, True])
def test_a_url_purge_leaves_no_reader_its_old_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader_is_the_purger: bool
) -> None:
    # A read of the key made just as the purge moves the directory's epoch must not keep
    # the old list: the removal is committed by then (a record and removal in one
    # transaction moved the epoch before its commit, and the list read meanwhile was
    # taken as current for good).
    now = [1000.0]
    with (
        Store(tmp_path, clock=lambda: now[0]) as purging,
        Store(tmp_path, clock=lambda: now[0]) as other,
    ):
        reader = purging if reader_is_the_purger else other
        assert purging.put(entry("/a", 50.0), b"a") is not None
        moving = purging._move_epoch

        def move_then_read() -> None:
            moving()
            reader.variants(key("/a"))

        monkeypatch.setattr(purging, "_move_epoch", move_then_read)
        assert purging.purge("url", key("/a"), asked_before=100.0) == 1
        now[0] += 60
        assert not stored(reader, "/a")


def _rows(directory: Path, table: str, where: str = "1") -> int:
    with sqlite3.connect(directory / "cache.db") as db:
        return int(db.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])


def test_a_purge_under_way_is_hidden_from_every_process_until_its_removal_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A purge by prefix or tag removes about 10,000 objects a second: what it names is not
    # served meanwhile, by the purging process at once and by another one once it looks at
    # the directory's epoch again. What is asked after it is stored and served.
    now = [1000.0]
    with (
        Store(tmp_path, clock=lambda: now[0]) as purging,
        Store(tmp_path, clock=lambda: now[0]) as other,
    ):
        for path, tags in (("/p/a", "grp"), ("/p/b", ""), ("/q/c", "grp")):
            assert purging.put(entry(path, 50.0, tags), path.encode()) is not None
        assert stored(other, "/p/a") and other.peek_variants(key("/p/a"))  # in its index
        seen: dict[str, Any] = {}

        def look() -> None:
            seen["purging"] = [stored(purging, p) for p in ("/p/a", "/p/b", "/q/c")]
            seen["pending"] = _rows(tmp_path, "Pending")
            now[0] += 2  # past meta_refresh: the other process looks at the epoch
            time.sleep(2 * store_module._EPOCH_RECHECK)
            seen["other"] = [stored(other, p) for p in ("/p/a", "/p/b", "/q/c")]
            seen["rows"] = _rows(tmp_path, "Cache", "key GLOB 'm:*'")
            # Asked after the purge: stored, and seen by both.
            assert other.put(entry("/p/a", 150.0, "grp"), b"new") is not None
            seen["new"] = (stored(other, "/p/a"), stored(purging, "/p/a"))

        _before_removal(monkeypatch, purging, look)
        prefix = key("/p/")[:-1]
        # /p/b; the old /p/a went as the new one replaced it.
        assert purging.purge("prefix", prefix, asked_before=100.0) == 1
        monkeypatch.undo()
        assert seen == {
            "purging": [False, False, True],
            "pending": 1,
            "other": [False, False, True],
            "rows": 3,  # nothing removed yet
            "new": (True, True),
        }
        assert _rows(tmp_path, "Pending") == 0
        now[0] += 2
        time.sleep(2 * store_module._EPOCH_RECHECK)
        for s in (purging, other):
            assert [e.request_time for e in s.variants(key("/p/a"))] == [150.0]
            assert not stored(s, "/p/b") and stored(s, "/q/c")
            assert s._hidden == ()


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def test_a_purge_a_process_left_under_way_is_finished_by_maintain(tmp_path: Path) -> None:
    # A worker killed during the removal of a tag leaves its Pending row: every process
    # hides what it names from the start, and the first one to maintain its store claims
    # the row and makes the purge again. A row of a process still running is its own.
    import subprocess
    import sys

    with Store(tmp_path) as s:
        for path, tags in (("/a", "grp"), ("/b", "grp"), ("/c", "")):
            assert s.put(entry(path, 50.0, tags), b"x") is not None
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with sqlite3.connect(tmp_path / "cache.db") as db:
            db.execute(
                "INSERT INTO Pending(at, kind, value, pid) VALUES (100, 'surrogate_key', 'grp',"
                " ?), (100, 'prefix', ?, ?)",
                (_dead_pid(), key("/c"), runner.pid),
            )
        with Store(tmp_path) as s:
            assert [stored(s, p) for p in ("/a", "/b", "/c")] == [False, False, False]
            assert _rows(tmp_path, "Cache", "key GLOB 'm:*'") == 3  # hidden, still stored
            s.maintain()
            assert _rows(tmp_path, "Cache", "key GLOB 'm:*'") == 1  # the tag's two went
            assert _rows(tmp_path, "Pending") == 1  # the running process's is left to it
            assert not stored(s, "/c")
            runner.kill()
            runner.wait()
            s.maintain()
            assert _rows(tmp_path, "Pending") == 0 and _rows(tmp_path, "Cache") == 0
            assert s._hidden == ()
    finally:
        runner.kill()
        runner.wait()


def test_a_purge_whose_removal_fails_stays_hidden_until_maintain_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path) as s:
        assert s.put(entry("/t", 50.0, "grp"), b"t") is not None

        def fail(*args: Any, **kwargs: Any) -> int:
            raise StoreError("disk gone")

        monkeypatch.setattr(s, "_remove", fail)
        with pytest.raises(StoreError, match="disk gone"):
            s.purge("surrogate_key", "grp", asked_before=100.0)
        monkeypatch.undo()
        assert not stored(s, "/t") and _rows(tmp_path, "Pending") == 1
        s.maintain()
        assert _rows(tmp_path, "Pending") == 0 and _rows(tmp_path, "Cache") == 0


def test_a_key_fetched_again_during_a_tag_purge_keeps_its_tag_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The removal keeps what was asked after the purge: a key fetched again meanwhile,
    # with the tag, keeps the tag's row, so the next purge of the tag finds it.
    with Store(tmp_path) as purging, Store(tmp_path) as filling:
        assert filling.put(entry("/k", 50.0, "grp"), b"old") is not None

        def refill() -> None:
            assert filling.put(entry("/k", 200.0, "grp"), b"new") is not None

        _before_removal(monkeypatch, purging, refill)
        assert purging.purge("surrogate_key", "grp", asked_before=100.0) == 0  # replaced
        monkeypatch.undo()
        assert [e.request_time for e in purging.variants(key("/k"))] == [200.0]
        assert _rows(tmp_path, "Tags", "tag = 'grp'") == 1
        assert purging.purge("surrogate_key", "grp", asked_before=300.0) == 1
        assert not stored(purging, "/k") and _rows(tmp_path, "Tags") == 0


def _left_under_way(directory: Path) -> None:
    """/p/x stored, and a purge of the prefix /p/ left under way by a process gone."""
    with Store(directory) as s:
        assert s.put(entry("/p/x", 50.0), b"x") is not None
    with sqlite3.connect(directory / "cache.db") as db:
        db.execute(
            "INSERT INTO Pending(at, kind, value, pid) VALUES (100, 'prefix', ?, ?)",
            (key("/p/"), _dead_pid()),
        )


def test_a_purge_taken_over_that_fails_on_the_database_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _left_under_way(tmp_path)
    with Store(tmp_path) as s:
        reading = s.purge_prefix

        def fail(*args: Any, **kwargs: Any) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(s, "purge_prefix", fail)
        s.maintain()  # logged, not raised
        monkeypatch.setattr(s, "purge_prefix", reading)
        assert not stored(s, "/p/x") and _rows(tmp_path, "Pending") == 1
        s.maintain()
        assert _rows(tmp_path, "Pending") == 0 and _rows(tmp_path, "Cache") == 0
        assert s._hidden == ()


def test_close_waits_for_a_maintenance_running_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The edge cancels its recency-flush task and closes the store, but the flush's thread
    # may still be in maintain(), making a purge taken over: it reads through connections
    # close() closes, and one closed under a running statement crashes the process (seen in
    # CI). close() waits for it; a maintain() after close() does nothing.
    _left_under_way(tmp_path)
    s = Store(tmp_path)
    removing = s._remove_named
    inside, go_on = threading.Event(), threading.Event()

    def slow(*args: Any, **kwargs: Any) -> int:
        inside.set()
        go_on.wait(10)
        return removing(*args, **kwargs)

    monkeypatch.setattr(s, "_remove_named", slow)
    flushing = threading.Thread(target=s.flush_recency)
    flushing.start()
    assert inside.wait(10)
    closing = threading.Thread(target=s.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # waits for the maintenance
    go_on.set()
    flushing.join(10)
    closing.join(10)
    assert not flushing.is_alive() and not closing.is_alive()
    assert _rows(tmp_path, "Pending") == 0 and _rows(tmp_path, "Cache") == 0
    s.maintain()  # closed: nothing
    assert s.flush_recency() == 0
