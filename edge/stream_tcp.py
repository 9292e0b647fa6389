"""TCP pass-through for a `[[stream]]`: the thin asyncio adapter around edge.stream_pool.

Each accepted client gets a `Relay`: two asyncio protocols, one per socket, joined so that
bytes read on one side are written to the other. Nothing is buffered beyond the transports'
own write buffers, and those are bounded: when one side's buffer rises above HIGH_WATER
its transport calls `pause_writing`, and the relay stops reading the other side until it
drains below LOW_WATER (so one relay holds at most HIGH_WATER plus one read per
direction). An EOF one way is passed on as a write EOF (shutdown) and the other way stays
open; the relay ends when both ways are done or either socket fails (a reset is passed on
as a reset, so a truncation stays visible).

Until an origin is connected the client's socket is not read. A connect that fails or
times out counts against that origin (passive ejection) and the next origin the pool picks
is tried, each at most once. With `proxy_protocol` the PROXY header goes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from edge import proxyproto
from edge.config import Address, StreamConfig
from edge.origins import Origin
from edge.stream_pool import OriginCounts, StreamPool

log = logging.getLogger("edge.stream")

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class _Side(asyncio.Protocol):
    """One socket of a relay; every event goes to the relay."""

    __slots__ = ("eof", "is_client", "lost", "relay", "transport")

    def __init__(self, relay: Relay, is_client: bool) -> None:
        self.relay = relay
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if self.is_client:
            self.relay.accepted()

    def data_received(self, data: bytes) -> None:
        self.relay.forward(self, data)

    def eof_received(self) -> bool:
        return self.relay.eof(self)

    def pause_writing(self) -> None:
        self.relay.set_reading(self, False)

    def resume_writing(self) -> None:
        self.relay.set_reading(self, True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.lost(self, exc)


class Relay:
    """One client connection and, once connected, its origin connection."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.client = _Side(self, True)
        self.origin_side: _Side | None = None
        self.origin: Origin | None = None
        self.counts = OriginCounts()  # replaced by the origin's counters once connected
        # What the client sent before the origin was connected: uvloop may deliver data
        # despite pause_reading in connection_made. Reading pauses again at once, so this
        # holds a read or two at most.
        self._early: list[bytes] = []
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._loop = loop
        self.last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._registered = False
        self._connecting = False
        self._finished = False

    # ---------------------------------------------------------------------- lifecycle

    def accepted(self) -> None:
        listener = self.listener
        transport = self.client.transport
        assert transport is not None
        stats = listener.pool.stats
        if len(listener.relays) >= listener.config.max_connections:
            stats.refused["limit"] += 1
            self._finished = True
            transport.abort()  # at once: the client sees a reset, not a silent wait
            return
        listener.relays.add(self)
        self._registered = True
        stats.active += 1
        transport.pause_reading()  # until an origin is connected
        self.last = self._time()
        self._arm(listener.config.idle_timeout)
        self._connecting = True
        self._task = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self._try_origins()
        finally:
            self._connecting = False
            self._maybe_finish()

    async def _try_origins(self) -> None:
        sp = self.listener.pool
        client = self.client.transport
        assert client is not None
        peer = client.get_extra_info("peername")
        key = peer[0] if peer else ""
        tried: list[Origin] = []
        while (origin := sp.pick(key, tried)) is not None:
            if self.client.lost:  # gone while we were connecting: no origin to try for it
                return
            tried.append(origin)
            side = _Side(self, False)
            config = sp.stream
            address = sp.address(origin)
            try:
                async with asyncio.timeout(config.connect_timeout):
                    await self._loop.create_connection(_factory(side), address.host, address.port)
            except TimeoutError:
                sp.connect_failed(origin, "connect_timeout")
                log.warning("stream %s: connect to %s timed out", config.name, origin.url)
                continue
            except OSError as exc:
                sp.connect_failed(origin, "connect")
                log.warning("stream %s: connect to %s: %s", config.name, origin.url, exc)
                continue
            self._connected(origin, side, peer, client.get_extra_info("sockname"))
            return
        sp.stats.refused["no_origin"] += 1
        client.close()

    def _connected(self, origin: Origin, side: _Side, peer: object, sock: object) -> None:
        sp = self.listener.pool
        sp.connected(origin)
        self.origin = origin
        self.origin_side = side
        self.counts = sp.stats.origin(origin.url)
        transport = side.transport
        assert transport is not None and self.client.transport is not None
        version = sp.stream.proxy_protocol
        if version:
            transport.write(proxyproto.encode(version, _endpoint(peer), _endpoint(sock)))
        for data in self._early:
            transport.write(data)
            self.counts.bytes_in += len(data)
        self._early.clear()
        if self.client.lost:
            transport.close()
        elif self.client.eof:
            transport.write_eof()
        else:
            self.client.transport.resume_reading()

    def abort(self) -> None:
        """End both connections now (idle timeout, shutdown)."""
        for side in (self.client, self.origin_side):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.abort()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _maybe_finish(self) -> None:
        """Account for the relay once both sockets are gone and no connect is under way
        (a connect that completes for a client already gone is closed by _connected)."""
        if self._finished or self._connecting or not self.client.lost:
            return
        if self.origin_side is not None and not self.origin_side.lost:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self._registered:
            self.listener.relays.discard(self)
            self.listener.pool.stats.active -= 1
        if self.origin is not None:
            self.listener.pool.closed(self.origin)

    # ---------------------------------------------------------------------- events

    def _peer(self, side: _Side) -> _Side | None:
        return self.origin_side if side.is_client else self.client

    def forward(self, side: _Side, data: bytes) -> None:
        other = self._peer(side)
        if other is None and self._connecting:
            assert side.transport is not None
            self._early.append(data)
            side.transport.pause_reading()
            return
        if other is None or other.transport is None or other.lost:
            return
        other.transport.write(data)
        if side.is_client:
            self.counts.bytes_in += len(data)
        else:
            self.counts.bytes_out += len(data)
        self.last = self._time()

    def set_reading(self, writer: _Side, on: bool) -> None:
        """`writer`'s buffer crossed a water mark: stop or resume reading the other side."""
        other = self._peer(writer)
        if other is None or other.transport is None or other.lost or other.eof:
            return
        if other.transport.is_closing():
            return
        if on:
            other.transport.resume_reading()
        else:
            other.transport.pause_reading()

    def eof(self, side: _Side) -> bool:
        """A half-close: pass it on and keep the other way open (True keeps the socket)."""
        side.eof = True
        other = self._peer(side)
        if other is None and self._connecting:
            return True  # passed on once the origin is connected
        if other is None or other.transport is None or other.lost:
            return False
        if other.eof or not other.transport.can_write_eof():
            other.transport.close()  # both ways done: close after the buffers drain
            return False
        other.transport.write_eof()
        return True

    def lost(self, side: _Side, exc: Exception | None) -> None:
        other = self._peer(side)
        if other is not None and other.transport is not None and not other.lost:
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()
        self._maybe_finish()

    # ---------------------------------------------------------------------- idle timeout

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        left = self.last + self.listener.config.idle_timeout - self._time()
        if left > 0:
            self._arm(left)
            return
        self.listener.pool.stats.closed["idle"] += 1
        self.abort()


def _factory(side: _Side) -> Callable[[], _Side]:
    return lambda: side


def _endpoint(name: object) -> tuple[str, int] | None:
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return None


class TcpListener:
    """The listening socket of a TCP stream and its relays."""

    def __init__(self, pool: StreamPool, reuse_port: bool = False) -> None:
        self.pool = pool
        self.reuse_port = reuse_port
        self.relays: set[Relay] = set()
        self._server: asyncio.Server | None = None

    @property
    def config(self) -> StreamConfig:
        return self.pool.stream

    async def start(self) -> list[Address]:
        listen = self.config.listen
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Relay(self).client,
            listen.host,
            listen.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        return [Address(*s.getsockname()[:2]) for s in self._server.sockets]

    def reconfigure(self) -> None:
        """Limits and timeouts are read per connection; nothing to redo."""

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for relay in list(self.relays):
            relay.abort()
        for _ in range(100):  # aborted transports report connection_lost on the next turns
            if not self.relays:
                break
            await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
