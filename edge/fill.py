"""Filling the cache from an origin response while clients read it (collapsed misses).

A `Lead` is the one origin request in flight for a cache key that other misses of the key
wait for; its `Fill` is the body on its way into the store, which the first client and the
collapsed misses read back at their own pace (see Fill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Literal

from aiohttp import web

from edge import cache_policy as cp
from edge.errors import (
    ClientGone,
)
from edge.exchange import CHUNK, abort, send_body, start_response
from edge.store import BodyWriter, Store

log = logging.getLogger("edge.cache")


# Body bytes a fill whose writer gave up holds for its client (see Fill).
PASS_BUFFER = 4 * CHUNK
# The most fills one group commit takes (see GroupCommit).
GROUP_MAX = 64
# Fills queued or committing past which a fill's client waits for its commit (see
# GroupCommit.behind): a bound on the bodies held in memory for commits not yet made.
BEHIND_MAX = 4 * GROUP_MAX
# How long a transaction of fewer than GROUP_MAX fills waits for more while nobody waits
# for one of them (see GroupCommit). A transaction's own cost (BEGIN and COMMIT, the cull,
# the thread hop) is 300-500 µs whatever it holds: one connection warming the cache makes
# about 1,000 fills a second, 5 to a transaction at 5 ms (1,000 µs of edge CPU a miss), 20
# at 20 ms (840 µs). The price is how long other workers take to see a fill: a request of
# this worker for it hurries the commit, and a purge through another one refuses it at its
# commit (Store.purge).
LINGER = 0.02

_Queued = tuple[BodyWriter, cp.CacheEntry, int, "asyncio.Future[cp.CacheEntry | None]"]


class GroupCommit:
    """Fills committed together: a commit asked for while one is running waits for it and
    goes with every other one asked for meanwhile, in one write transaction on one thread
    (Store.commit_all), so the transaction's fixed cost and the thread hop are shared.

    ``commit`` is waited for: its caller goes on once the fill is stored (or is not), and a
    transaction that has such a caller starts at once. ``submit`` is not: its caller has
    answered its client already and learns the outcome from the future. A transaction of
    submitted fills alone lingers (LINGER) for more, so that a single connection warming the
    cache still commits its fills many to a transaction, unless someone waits for one of
    them (``hurry``, ``drained``); and callers wait again once ``behind`` says too many are
    queued."""

    def __init__(self, store: Store, linger: float = LINGER) -> None:
        self._store = store
        self._linger = linger
        self._queue: list[_Queued] = []
        self._task: asyncio.Task[None] | None = None
        self._pending = 0  # fills queued or committing
        self._hurry = asyncio.Event()  # ends a lingering transaction's wait

    async def commit(
        self, writer: BodyWriter, entry: cp.CacheEntry, length: int
    ) -> cp.CacheEntry | None:
        """``writer.commit(entry, length)``, grouped."""
        future = self._enqueue(writer, entry, length)
        self.hurry()
        return await asyncio.shield(future)

    def submit(
        self, writer: BodyWriter, entry: cp.CacheEntry, length: int
    ) -> asyncio.Future[cp.CacheEntry | None]:
        """Queue ``writer.commit(entry, length)``; its result comes in the future returned
        (an exception is logged)."""
        future = self._enqueue(writer, entry, length)
        future.add_done_callback(_log_failure)
        return future

    def _enqueue(
        self, writer: BodyWriter, entry: cp.CacheEntry, length: int
    ) -> asyncio.Future[cp.CacheEntry | None]:
        future: asyncio.Future[cp.CacheEntry | None] = asyncio.get_running_loop().create_future()
        self._queue.append((writer, entry, length, future))
        self._pending += 1
        future.add_done_callback(self._done)
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        return future

    @property
    def behind(self) -> bool:
        """Whether BEHIND_MAX fills are queued or committing: a caller should wait."""
        return self._pending >= BEHIND_MAX

    def _done(self, future: asyncio.Future[cp.CacheEntry | None]) -> None:
        self._pending -= 1

    def hurry(self) -> None:
        """Somebody waits for a queued fill: its transaction starts without lingering."""
        self._hurry.set()

    async def drained(self) -> None:
        """Wait for the commits asked for so far (a purge goes after them, so that what a
        client was answered before it cannot be stored after it)."""
        if self._task is not None:
            self.hurry()
            await asyncio.shield(self._task)

    def _next_batch(self) -> list[_Queued]:
        """The queue's first fills, up to GROUP_MAX, one per primary key (a second fill of
        a key waits for the next transaction, which reads the first one's variant list)."""
        batch: list[_Queued] = []
        rest: list[_Queued] = []
        keys: set[str] = set()
        for item in self._queue:
            key = item[1].key
            if len(batch) < GROUP_MAX and key not in keys:
                keys.add(key)
                batch.append(item)
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self._linger > 0 and len(self._queue) < GROUP_MAX:
                    # Hurried, it stays so until the queue is empty (every waiter served).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), self._linger)
                batch = self._next_batch()
                fills = [(writer, entry, length) for writer, entry, length, _ in batch]
                try:
                    results = await asyncio.to_thread(self._store.commit_all, fills)
                except Exception as exc:  # each caller gets it (a storage error is a None)
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
            self._hurry.clear()


def _log_failure(future: asyncio.Future[cp.CacheEntry | None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("cache commit failed", exc_info=future.exception())


class Lead:
    """A collapsed miss in flight. Concurrent misses of its key wait (up to
    cache.collapse_timeout) for `ready`: the response head is known and its body is being
    filled (`fill`), or nothing will be filled. They then read the body from the fill as it
    arrives when its response may answer them, or wait on for `done`, which is set once the
    response is stored or known not to be, whether or not its own client is still reading.
    `answered`: its own client has the whole response, and it settles when the response's
    commit ends (CacheLayer._fill_whole). `awaited`: a collapsed miss waits on it, so that
    commit must not linger (GroupCommit.hurry)."""

    __slots__ = (
        "_inflight",
        "answered",
        "awaited",
        "done",
        "fill",
        "handed_over",
        "key",
        "ready",
    )

    def __init__(self, inflight: dict[str, Lead], key: str) -> None:
        self._inflight = inflight
        self.key = key
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.fill: Fill | None = None
        self.handed_over = False  # a Fill task or a commit settles it, not the request
        self.answered = False
        self.awaited = False

    def filling(self, fill: Fill) -> None:
        self.fill = fill
        self.handed_over = True
        if not self.ready.done():
            self.ready.set_result(None)

    def settle(self) -> None:
        if self._inflight.get(self.key) is self:
            del self._inflight[self.key]
        for future in (self.ready, self.done):
            if not future.done():
                future.set_result(None)


class Fill:
    """A storable origin body on its way into the cache, read at the origin's pace.

    A task (CacheLayer._run_fill) appends the body to the store's BodyWriter (in memory
    while it is small, else a temporary file) and commits it. The client whose miss it is,
    and the collapsed misses that may use its response (`entry`), read it back from the
    writer, each at its own pace and position (`send`). So a slow client neither slows the
    fill nor the other readers, a client that leaves does not stop it, and a big body is
    never held whole in memory. A temporary file stays open while the fill runs or a
    reader reads, and not a moment longer.
    Should the writer give up half-way (the object outgrew max_object_bytes, or the disk
    filled up), nothing is stored, and the readers it has get the rest through a buffer
    of at most PASS_BUFFER bytes past the slowest of them (the origin is read at that
    reader's pace from then on); a collapsed miss that has not joined yet is sent to the
    origin. With every reader gone, the fill stops.
    """

    def __init__(self, writer: BodyWriter, entry: cp.CacheEntry, length: int | None) -> None:
        self.writer = writer
        # The entry as it will be stored (body_length and digest still unknown), for
        # deciding whether the response may answer a collapsed miss.
        self.entry = entry
        self.length = length  # the body's length when known in advance, else None
        self._readers = 1  # the first client's
        self.stored = 0  # body bytes in the file
        self.storing = True
        self.state: Literal["filling", "done", "failed"] = "filling"
        # Once the writer gave up: body bytes from offset _passed on, kept until every
        # reader is past them, and each reader's position.
        self._passing: deque[bytes] = deque()
        self._passing_bytes = 0
        self._passed = 0
        self._positions: dict[object, int] = {}
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def put(self, data: bytes) -> bool:
        """Hand on the next piece of the body; False once nobody wants the rest."""
        if self.storing:
            if self.writer.write(data):
                self.stored = self.writer.length
                self._notify()
                return True
            self.storing = False
            self._passed = self.stored
        if not self._readers:
            return False
        self._passing.append(data)
        self._passing_bytes += len(data)
        self._notify()
        while self._readers and self._ahead() > PASS_BUFFER:
            await self._drained.wait()
        return self._readers > 0

    def _ahead(self) -> int:
        """Buffered bytes past the slowest reader."""
        slowest = min(self._positions.values(), default=self._passed)
        return self._passed + self._passing_bytes - max(slowest, self._passed)

    def _trim(self) -> None:
        """Drop buffered pieces every reader is past."""
        slowest = min(self._positions.values(), default=None)
        trimmed = False
        while self._passing and (
            slowest is None or self._passed + len(self._passing[0]) <= slowest
        ):
            data = self._passing.popleft()
            self._passing_bytes -= len(data)
            self._passed += len(data)
            trimmed = True
        if trimmed or slowest is None:
            self._drained.set()
            self._drained = asyncio.Event()

    def finish(self) -> None:
        self.state = "done"
        self._over()

    def fail(self) -> None:
        self.state = "failed"
        self._over()

    def _over(self) -> None:
        self._notify()
        if not self._readers:
            self.writer.close_reader()

    def join(self) -> bool:
        """Add a reader (a collapsed miss); False when the fill can no longer take one."""
        if self.state != "filling" or not self.storing:
            return False
        self._readers += 1
        return True

    def _leave(self, reader: object) -> None:
        self._positions.pop(reader, None)
        self._readers -= 1
        self._trim()
        if not self._readers and self.state != "filling":
            self.writer.close_reader()

    @property
    def readers(self) -> int:
        """Clients reading the body (the first one included while it does)."""
        return self._readers

    def leave_unread(self) -> None:
        """The first client needs none of the body (a 416)."""
        self._leave(object())

    def _buffered(self, pos: int) -> bytes:
        """Buffered bytes from body offset `pos` on, up to one piece; b"" if none yet."""
        base = self._passed
        for data in self._passing:
            if pos < base + len(data):
                return data[pos - base :] if pos >= base else b""
            base += len(data)
        return b""

    async def send(
        self,
        out: web.StreamResponse,
        request: web.BaseRequest,
        first: int = 0,
        last: int | None = None,
        *,
        leader: bool = True,
    ) -> bool:
        """Stream body bytes `first`..`last` (inclusive; to the end when None) to the client
        as the fill makes them available, and leave. The first client's response (`leader`)
        starts at once; a collapsed miss's only with its first body byte, so that when the
        fill fails before that, False is returned with `out` untouched and the request can
        go elsewhere. Once a byte left, a fill that fails (or, for a collapsed miss, a
        writer that gives up) before the wanted bytes are in cuts the connection. The last
        piece of a response that runs to the end of the body is held back until the fill is
        over, so a client that has the whole response never misses the entry with its next
        request (with an unknown length, every piece is held until the next one)."""
        stop = None if last is None else last + 1
        # A range that ends before the body does is complete once its bytes are in.
        early = stop is not None and stop != self.length
        final = self.length if stop is None else stop  # where the response ends, if known
        held = b""
        pos = first
        me = object()
        self._positions[me] = pos
        try:
            if leader:
                await start_response(out, request)
            while True:
                changed = self._changed
                if early and stop is not None and pos >= stop:
                    break
                if pos < self.stored:
                    want = self.stored - pos if stop is None else min(self.stored, stop) - pos
                    chunk = self.writer.read_at(pos, min(CHUNK, want))
                    if not chunk:
                        raise OSError("the body read back is shorter than what was written")
                elif not self.storing and (chunk := self._buffered(pos)):
                    if stop is not None:
                        chunk = chunk[: max(stop - pos, 0)]
                        if not chunk:
                            break
                elif self.state == "filling":
                    await changed.wait()
                    continue
                else:
                    break
                pos += len(chunk)
                self._positions[me] = pos
                if not self.storing:
                    self._trim()
                if not out.prepared:
                    await start_response(out, request)
                if held:
                    await send_body(out, held)
                    held = b""
                if final is not None and pos < final:
                    await send_body(out, chunk)
                else:
                    held = chunk  # maybe the last piece
            complete = (early and stop is not None and pos >= stop) or (
                not early and self.state == "done"
            )
            if not complete:
                if not out.prepared:
                    return False
                abort(request)
                return True
            if not out.prepared:
                await start_response(out, request)
            if held:
                await send_body(out, held)
            await out.write_eof()
        except ClientGone:
            pass  # the fill goes on without this client
        except ConnectionError:
            pass
        except OSError as exc:
            log.warning("reading back the cache's temporary file failed: %r", exc)
            if not out.prepared:
                return False
            abort(request)
        finally:
            self._leave(me)
        return True
