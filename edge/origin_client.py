"""The edge's client for bodiless origin requests (GET, HEAD): edge.origin_wire on asyncio
connections, pooled per origin.

Why not aiohttp's client for these: on a 10 KiB miss its request was a third of the event
loop's CPU, most of it in objects built per request (request, response, timers, URL,
connector bookkeeping); this client writes one prepared head and parses the answer with
edge.origin_wire, and a miss costs about a fifth less CPU (docs/benchmarks.md). Requests
with a body still go through aiohttp's client (edge.proxy.forward), which streams them.

The response (`OriginResponse`) offers what the proxy and cache layer read from aiohttp's:
`status`, `reason`, `read()`, `content.iter_chunked(n)`, `release()` and `close()`, its
fields as the `str` pairs it parsed (`pairs`, where aiohttp's has `raw_headers`: both read
through edge.exchange.response_pairs), and fails the way it does: framing and syntax
errors and a connection lost mid-response raise aiohttp.ClientPayloadError (an
aiohttp.ClientError), a timeout raises TimeoutError, a failed connect `OriginConnectError`.

The pool keeps a connection only when it is provably clean, as edge.aiohttp_internals'
GuardedConnector does for aiohttp's: a response read to its end, with no byte past it
(`excess_bytes`), an origin that keeps it alive; and a byte arriving while it is idle closes
it (`unsolicited_bytes`). Both are reported to `on_protocol_error(origin, kind, size)`.
Idle connections close after `keepalive_timeout`; at most `limit` connections per origin,
later requests wait for one. A request on a kept connection that the origin closes before
answering a byte (it timed the connection out meanwhile) is sent again on a new one: GET and
HEAD are safe to repeat. Timeouts (`Timeouts`): `connect`, `read` (the most any wait for
bytes may last: aiohttp's sock_read) and `total` (the whole exchange, body included).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import aiohttp

from edge.errors import OriginError
from edge.origin_wire import END, Event, Head, Interim, ResponseReader, WireError, encode_request

# Body bytes held per connection before reading from the origin pauses (flow control).
_HIGH_WATER = 256 * 1024
ProtocolErrorReport = Callable[[str, str, int], None]
InterimSender = Callable[[int, tuple[tuple[bytes, bytes], ...]], Awaitable[None]]


class ChunkSource(Protocol):
    def iter_chunked(self, n: int) -> AsyncIterator[bytes]: ...


class UpstreamResponse(Protocol):
    """What the proxy and cache layer read of an origin's response: aiohttp's
    ClientResponse (requests with a body) and OriginResponse (bodiless ones) alike."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def content(self) -> ChunkSource: ...
    async def read(self) -> bytes: ...
    def release(self) -> object: ...
    def close(self) -> None: ...


class OriginConnectError(OriginError):
    """The connection to an origin could not be made."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float
    total: float


@dataclass(frozen=True, slots=True)
class _Target:
    """What an origin URL says about connecting to it."""

    key: str  # scheme://host:port, as protocol errors are reported
    host: str
    port: int
    tls: bool
    prefix: str  # path before every target
    authority: str  # the Host of a request that has none


def _target(base: str) -> _Target:
    parts = urlsplit(base)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    return _Target(
        f"{parts.scheme}://{shown}:{port}", host, port, tls, parts.path.rstrip("/"), parts.netloc
    )


class _Connection(asyncio.Protocol):
    """One origin connection: feeds a ResponseReader, queues its events for the response."""

    def __init__(self, client: OriginClient, target: _Target) -> None:
        self.client = client
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None  # None: idle (no response due)
        self.events: collections.deque[Event] = collections.deque()
        self.buffered = 0  # body bytes queued
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.answered = False  # a byte of the current response arrived
        self.paused = False
        self.idle_since = 0.0  # loop time it went back to the pool
        self._poll: select.poll | None = None  # of its socket, for `pending`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        # Not over TLS: what arrived while reading was paused may wait in the TLS layer's
        # buffers, not the socket, where poll(2) would not see it.
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)

    def pending(self) -> bool:
        """Whether something the loop has not read yet may be waiting: the socket holds
        bytes, the origin's close or an error (one poll(2)), or it cannot be known (TLS)."""
        return self._poll is None or bool(self._poll.poll(0))

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if self.error is not None:
            return  # the response failed: nothing after it is read
        if reader is None:  # idle: bytes nobody asked for
            self.client._report(self.target, "unsolicited_bytes", len(data))
            self.close()
            return
        self.answered = True
        try:
            events = reader.feed(data)
        except WireError as exc:
            self._fail(exc)
            return
        self._queue(events)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost finishes the reader

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client._lost(self)
        if self.reader is None or self.reader.done or self.error is not None:
            return
        if exc is not None:  # a reset is no end of a body delimited by the close
            self._fail(exc)
            return
        try:
            events = self.reader.finish()
        except WireError as err:
            self._fail(err)
            return
        self._queue(events)

    def _queue(self, events: list[Event]) -> None:
        if not events:
            return
        for event in events:
            if type(event) is bytes:
                self.buffered += len(event)
        self.events.extend(events)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def took(self, size: int) -> None:
        self.buffered -= size
        if self.paused and self.buffered <= _HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Content:
    """`response.content`, as far as the edge reads aiohttp's."""

    def __init__(self, response: OriginResponse) -> None:
        self._response = response

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        while True:
            piece = await self._response._next_piece()
            if piece is None:
                return
            for at in range(0, len(piece), n):
                yield piece[at : at + n] if len(piece) > n else piece


class OriginResponse:
    """A response from an origin, its head read; the body read through it."""

    def __init__(self, conn: _Connection, head: Head, deadline: float, read: float) -> None:
        self._conn: _Connection | None = conn
        self.status = head.status
        self.reason = head.reason
        self.pairs = head.fields  # str pairs: edge.exchange.response_pairs
        self._deadline = deadline
        self._read_timeout = read
        self._ended = False

    @property
    def content(self) -> _Content:
        # Made when asked for, not kept: a response and a content referring to each other
        # would be a cycle, freed by the cycle collector only (a pass per few hundred
        # misses, 7 ms each, with their headers).
        return _Content(self)

    async def read(self) -> bytes:
        pieces = []
        while (piece := await self._next_piece()) is not None:
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _next_piece(self) -> bytes | None:
        if self._ended:
            return None
        conn = self._conn
        if conn is None:
            raise aiohttp.ClientPayloadError("response closed")
        while True:
            events = conn.events
            if events:
                if time.monotonic() > self._deadline:
                    raise TimeoutError("origin exchange over its total timeout")
                event = events.popleft()
                if type(event) is bytes:
                    conn.took(len(event))
                    return event
                if event is END:
                    self._ended = True
                    return None
                continue
            if conn.error is not None:
                raise _payload_error(conn.error)
            await _wait(conn, self._deadline, self._read_timeout)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the response was read to
        its end, cleanly; else it is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.client._release(conn, clean=self._ended and not conn.events)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.client._release(conn, clean=False)

    def __del__(self) -> None:
        # Dropped unreleased (a caller cancelled on its way): its connection would hold a
        # slot of the origin's limit until the origin closed it.
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self.close()


async def _wait(conn: _Connection, deadline: float, read: float) -> None:
    """Until `conn` has news, or a timeout: the read timeout, within the total deadline."""
    loop = asyncio.get_running_loop()
    waiter = conn.waiter = loop.create_future()
    timeout = min(read, deadline - time.monotonic())
    handle = loop.call_later(max(timeout, 0.0), _expire, waiter)
    try:
        await waiter
    finally:
        handle.cancel()
        conn.waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("origin request timed out"))


def _payload_error(exc: BaseException) -> aiohttp.ClientPayloadError:
    error = aiohttp.ClientPayloadError(str(exc) or repr(exc))
    error.__cause__ = exc
    return error


class OriginClient:
    """Pooled connections to origins for bodiless requests (see the module docstring)."""

    def __init__(
        self,
        *,
        limit: int,
        keepalive_timeout: float,
        ssl_context: ssl.SSLContext,
        on_protocol_error: ProtocolErrorReport,
    ) -> None:
        self._limit = limit
        self._keepalive = keepalive_timeout
        self._ssl = ssl_context
        self._on_protocol_error = on_protocol_error
        self._targets: dict[str, _Target] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._open: dict[str, set[_Connection]] = {}
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        base: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        timeouts: Timeouts,
        interim: InterimSender | None = None,
    ) -> OriginResponse:
        """Send `method target` to the origin at `base`; the response once its head is
        read (1xx heads before it go to `interim`, 100 Continue excepted)."""
        where = self._targets.get(base)
        if where is None:
            where = self._targets[base] = _target(base)
        if not any(k.lower() == "host" for k, _ in headers):
            headers = [("Host", where.authority), *headers]
        wire = encode_request(method, where.prefix + target, headers)
        deadline = time.monotonic() + timeouts.total
        for attempt in range(2):
            conn, reused = await self._acquire(where, timeouts, deadline)
            conn.reader = ResponseReader(method)
            conn.answered = False
            try:
                transport = conn.transport
                if transport is None:  # closed by the origin as soon as it was made
                    raise aiohttp.ClientPayloadError("origin closed the connection")
                transport.write(wire)
                head = await self._head(conn, deadline, timeouts.read, interim)
            except BaseException as exc:
                self._release(conn, clean=False)
                if (
                    isinstance(exc, aiohttp.ClientPayloadError)
                    and reused
                    and not conn.answered
                    and attempt == 0
                ):
                    continue  # closed by the origin while kept (its own idle timeout): ask again
                raise
            return OriginResponse(conn, head, deadline, timeouts.read)
        raise AssertionError("unreachable")

    async def _head(
        self, conn: _Connection, deadline: float, read: float, interim: InterimSender | None
    ) -> Head:
        while True:
            events = conn.events
            while events:
                event = events.popleft()
                if type(event) is Head:
                    return event
                if type(event) is Interim:
                    if interim is not None and event.status >= 102:
                        left = max(deadline - time.monotonic(), 0.0)
                        await asyncio.wait_for(interim(event.status, event.raw_headers), left)
                    continue
                raise AssertionError(f"{event!r} before the head")  # the reader's order
            if conn.error is not None:
                raise _payload_error(conn.error)
            if conn.transport is None:
                raise aiohttp.ClientPayloadError("origin closed the connection")
            if time.monotonic() > deadline:
                raise TimeoutError("origin exchange over its total timeout")
            await _wait(conn, deadline, read)

    def in_use(self) -> int:
        """Connections handed out to requests and not yet back."""
        opened = sum(len(conns) for conns in self._open.values())
        return opened - sum(len(idle) for idle in self._idle.values())

    async def _acquire(
        self, where: _Target, timeouts: Timeouts, deadline: float
    ) -> tuple[_Connection, bool]:
        key = where.key
        loop = asyncio.get_running_loop()
        conns = self._open.setdefault(key, set())
        for _ in range(1000):
            kept = self._kept(key)
            if kept is not None:
                if not kept.pending():
                    return kept, True
                # Bytes the origin sent unasked (or its close) may sit unread, in the socket
                # or (over TLS, always taken this way) the TLS layer: two turns of the loop
                # read them (data_received then closes the connection). One is not enough
                # on asyncio's own loop, where this task's next step is queued before the
                # read that the turn's poll finds.
                try:
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                except BaseException:  # cancelled meanwhile: the connection is nobody's
                    kept.close()
                    self._lost(kept)
                    raise
                if kept.transport is not None and not kept.transport.is_closing():
                    return kept, True
                continue
            if len(conns) < self._limit:
                break
            waiter = loop.create_future()
            self._waiters.setdefault(key, collections.deque()).append(waiter)
            timer = loop.call_later(max(deadline - time.monotonic(), 0.0), _expire, waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake(key)  # woken, then cancelled: the wake-up goes on
                raise
            finally:
                timer.cancel()
                queue = self._waiters.get(key)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
        else:
            raise TimeoutError(f"no connection to {where.key} came free")
        conn = _Connection(self, where)
        conns.add(conn)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn,
                    where.host,
                    where.port,
                    ssl=self._ssl if where.tls else None,
                    server_hostname=where.host if where.tls else None,
                ),
                min(timeouts.connect, max(deadline - time.monotonic(), 0.0)),
            )
        except TimeoutError:
            self._lost(conn)
            raise
        except (OSError, ssl.SSLError) as exc:
            self._lost(conn)
            raise OriginConnectError(f"cannot connect to {where.key}: {exc}") from exc
        except BaseException:
            conn.close()
            self._lost(conn)
            raise
        return conn, False

    def _kept(self, key: str) -> _Connection | None:
        """The most recently pooled live connection to `key`, taken from the pool."""
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                if now - conn.idle_since < self._keepalive:
                    return conn
                conn.close()
        return None

    def _release(self, conn: _Connection, *, clean: bool) -> None:
        reader = conn.reader
        conn.reader = None
        if reader is not None and reader.leftover:
            self._report(conn.target, "excess_bytes", reader.leftover)
            clean = False
        usable = (
            clean
            and not self._closed
            and reader is not None
            and reader.done
            and reader.keep_alive
            and conn.error is None
            and conn.transport is not None
            and not conn.transport.is_closing()
        )
        if not usable:
            conn.close()
            self._lost(conn)
            return
        conn.events.clear()
        conn.buffered = 0
        if conn.paused and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.setdefault(conn.target.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._keepalive, self._sweep)
        self._wake(conn.target.key)

    def _sweep(self) -> None:
        """Close the connections idle for keepalive_timeout; again while any is idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest = now
        for idle in self._idle.values():
            for conn in [c for c in idle if now - c.idle_since >= self._keepalive]:
                idle.remove(conn)
                conn.close()
            if idle:
                oldest = min(oldest, idle[0].idle_since)
        if any(self._idle.values()):
            self._sweeper = loop.call_at(oldest + self._keepalive, self._sweep)

    def _lost(self, conn: _Connection) -> None:
        """`conn` is closed or closing: out of the pool and the count."""
        key = conn.target.key
        conns = self._open.get(key)
        if conns is not None and conn in conns:
            conns.discard(conn)
            self._wake(key)
        idle = self._idle.get(key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _wake(self, key: str) -> None:
        queue = self._waiters.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _report(self, where: _Target, kind: str, size: int) -> None:
        self._on_protocol_error(where.key, kind, size)

    async def close(self) -> None:
        """Close every connection (in flight ones too)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in list(self._open.values()):
            for conn in list(conns):
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)
