"""UDP pass-through for a `[[stream]]`: flows keyed by client address (edge.flows).

The first datagram of a client opens a flow: a connected UDP socket towards the origin the
pool picks (the kernel then only hands us that origin's datagrams). Its replies are sent to
the client from the listening socket, so the client sees them come from the address it
talked to. Flows idle for `idle_timeout` are closed by a sweep; a new client arriving at a
full table (`max_connections` flows) evicts the least recently used flow.

UDP has no connect to fail: an origin that is not listening shows up as ICMP port
unreachable, which the connected socket reports as ECONNREFUSED on its next send or
receive. That counts against the origin (passive ejection) and ends the flow; the client's
next datagram opens a flow to another origin. Datagrams the socket cannot take at once are
dropped (and counted), as a router would.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import cast

from edge.config import Address, StreamConfig
from edge.flows import FlowTable
from edge.origins import Clock, Origin
from edge.stream_pool import OriginCounts, StreamPool

log = logging.getLogger("edge.stream")

_MAX_DATAGRAM = 65535
_READS_PER_WAKEUP = 64  # replies read per readiness callback before yielding to the loop

Client = tuple[str, int]


class _Flow:
    __slots__ = ("client", "counts", "listener", "origin", "sock")

    def __init__(
        self, listener: UdpListener, client: Client, origin: Origin, sock: socket.socket
    ) -> None:
        self.listener = listener
        self.client = client
        self.origin = origin
        self.sock = sock
        self.counts: OriginCounts = listener.pool.stats.origin(origin.url)

    def readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.listener.failed(self, exc)
                return
            self.listener.reply(self, data)


class UdpListener(asyncio.DatagramProtocol):
    """The listening socket of a UDP stream and its flow table."""

    def __init__(
        self, pool: StreamPool, reuse_port: bool = False, clock: Clock = time.monotonic
    ) -> None:
        self.pool = pool
        self.reuse_port = reuse_port
        self._clock = clock
        self.flows: FlowTable[Client, _Flow] = FlowTable(
            pool.stream.max_connections, pool.stream.idle_timeout
        )
        self.transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def config(self) -> StreamConfig:
        return self.pool.stream

    async def start(self) -> list[Address]:
        self._loop = loop = asyncio.get_running_loop()
        listen = self.config.listen
        await loop.create_datagram_endpoint(
            lambda: self, local_addr=(listen.host, listen.port), reuse_port=self.reuse_port or None
        )
        assert self.transport is not None
        self._sweeper = loop.create_task(self._sweep())
        name = self.transport.get_extra_info("sockname")
        return [Address(name[0], name[1])]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        client = (str(addr[0]), cast(int, addr[1]))
        flow = self.flows.get(client, self._clock())
        if flow is None:
            flow = self._open(client)
            if flow is None:
                return
        try:
            flow.sock.send(data)
        except (BlockingIOError, InterruptedError):
            flow.counts.errors["dropped"] += 1
            return
        except OSError as exc:
            self.failed(flow, exc)
            return
        flow.counts.bytes_in += len(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("stream %s: %s", self.config.name, exc)

    def _open(self, client: Client) -> _Flow | None:
        sp = self.pool
        tried: list[Origin] = []
        while (origin := sp.pick(client[0], tried)) is not None:
            tried.append(origin)
            address = sp.address(origin)
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect((address.host, address.port))
            except OSError as exc:
                sock.close()
                sp.connect_failed(origin, "connect")
                log.warning("stream %s: %s: %s", self.config.name, origin.url, exc)
                continue
            return self._add(client, origin, sock)
        sp.stats.refused["no_origin"] += 1
        return None

    def _add(self, client: Client, origin: Origin, sock: socket.socket) -> _Flow:
        assert self._loop is not None
        flow = _Flow(self, client, origin, sock)
        self._loop.add_reader(sock.fileno(), flow.readable)
        self.pool.connected(origin)
        self.pool.stats.active += 1
        for _, old in self.flows.put(client, flow, self._clock()):
            self.pool.stats.closed["evicted"] += 1
            self._close(old)
        return flow

    def reply(self, flow: _Flow, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.sendto(data, flow.client)
        flow.counts.bytes_out += len(data)
        self.flows.touch(flow.client, self._clock())

    def failed(self, flow: _Flow, exc: OSError) -> None:
        """The origin refused (ICMP port unreachable) or the socket broke: end the flow."""
        flow.counts.errors["refused" if isinstance(exc, ConnectionRefusedError) else "send"] += 1
        log.warning("stream %s: %s: %s", self.config.name, flow.origin.url, exc)
        if self.flows.get(flow.client, self._clock()) is flow:
            self.flows.pop(flow.client)
        self._close(flow, ok=False)

    def _close(self, flow: _Flow, ok: bool = True) -> None:
        if flow.sock.fileno() < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(flow.sock.fileno())
        flow.sock.close()
        self.pool.stats.active -= 1
        self.pool.closed(flow.origin, ok)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.flows.idle_timeout / 4))
            for _, flow in self.flows.expire(self._clock()):
                self.pool.stats.closed["idle"] += 1
                self._close(flow)

    def reconfigure(self) -> None:
        """A reload: the table's bound and idle timeout follow the new configuration."""
        config = self.config
        for _, flow in self.flows.resize(config.max_connections, config.idle_timeout):
            self.pool.stats.closed["evicted"] += 1
            self._close(flow)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for _, flow in self.flows.clear():
            self._close(flow)
        if self.transport is not None:
            self.transport.close()
            self.transport = None
