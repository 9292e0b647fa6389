"""Helpers for the stream (L4) tests: real TCP and UDP origins on 127.0.0.1, port 0.

`TcpOrigin` echoes what it reads (or runs a test's handler), counts its connections (and
those that carried data, which probes do not) and,
with `proxy_protocol`, reads a PROXY header first (edge.proxyproto.decode) and keeps it.
`UdpOrigin` answers each datagram with its name and the datagram.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from edge import proxyproto
from edge.config import EdgeConfig, from_mapping

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TcpOrigin:
    def __init__(self, name: str = "origin", *, proxy_protocol: bool = False) -> None:
        self.name = name
        self.proxy_protocol = proxy_protocol
        self.handler: Handler = self._echo
        self.connections = 0
        self.echoed = 0  # connections that carried data (probes do not)
        self.headers: list[proxyproto.ProxyHeader] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and reset every open connection (a dead origin)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[None, None, None]:
        # Known at accept, before the connection's task first runs: `stop` resets a
        # connection accepted so late that its task never ran, not only the others.
        self._writers.add(writer)
        return self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self.proxy_protocol:
                self.headers.append(await read_proxy_header(reader))
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1 << 16)
        if first:
            self.echoed += 1
            writer.write(first)
        await echo(reader, writer)


async def read_proxy_header(reader: asyncio.StreamReader) -> proxyproto.ProxyHeader:
    data = b""
    for _ in range(256):
        decoded = proxyproto.decode(data)
        if decoded is not None:
            header, used = decoded
            assert used == len(data), "read one byte at a time: nothing past the header"
            return header
        data += await reader.readexactly(1)
    raise AssertionError("no PROXY header within 256 bytes")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close back."""
    while chunk := await reader.read(1 << 16):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


class UdpOrigin(asyncio.DatagramProtocol):
    def __init__(self, name: str = "udp") -> None:
        self.name = name
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", self.port)
        )
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(self.name.encode() + b":" + data, addr)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def roundtrip(host: str, port: int, payload: bytes) -> bytes:
    """Send `payload` and EOF on a new connection; everything read back until EOF."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def stream_config(*streams: dict[str, Any], **sections: Any) -> EdgeConfig:
    """A stream-only edge with an admin port; probes off unless a stream sets them."""
    data: dict[str, Any] = {
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"access_log": ""},
        "stream": [
            {"name": f"s{i}", "probe": {"enabled": False}, **s} for i, s in enumerate(streams)
        ],
    }
    data.update(sections)
    return from_mapping(data, "<test>")


async def udp_exchange(
    sock: socket.socket, target: tuple[str, int], payload: bytes
) -> tuple[bytes, tuple[str, int]]:
    """Send one datagram from `sock` (non-blocking) and wait for one reply."""
    loop = asyncio.get_running_loop()
    sock.sendto(payload, target)
    async with asyncio.timeout(10):
        fut: asyncio.Future[tuple[bytes, tuple[str, int]]] = loop.create_future()

        def readable() -> None:
            if not fut.done():
                fut.set_result(sock.recvfrom(65535))

        loop.add_reader(sock.fileno(), readable)
        try:
            return await fut
        finally:
            loop.remove_reader(sock.fileno())
