"""edge.origin_client against raw origins on 127.0.0.1: pooling, keep-alive expiry, the
connection limit, a kept connection the origin closed, timeouts, broken bodies, flow control
and the pool's guard against bytes nobody asked for."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from edge.origin_client import OriginClient, OriginConnectError, Timeouts
from tests.integration.edge_helpers import until

# Serves one connection: gets (reader, writer), returns when done with it.
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUTS = Timeouts(connect=2.0, read=5.0, total=10.0)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s" % (len(body), body, extra)


class Origin:
    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.heads: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._run(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


@asynccontextmanager
async def origin(make: Callable[[Origin], Serve]) -> AsyncIterator[Origin]:
    o = Origin(lambda r, w: asyncio.sleep(0))
    o.serve = make(o)
    o.server = await asyncio.start_server(o._accept, "127.0.0.1", 0)
    try:
        yield o
    finally:
        o.server.close()
        for writer in list(o._writers):
            writer.transport.abort()
        for task in list(o._tasks):
            task.cancel()
        await asyncio.gather(*o._tasks, return_exceptions=True)


@asynccontextmanager
async def client(
    limit: int = 8, keepalive: float = 10.0
) -> AsyncIterator[tuple[OriginClient, list[tuple[str, str, int]]]]:
    reports: list[tuple[str, str, int]] = []
    c = OriginClient(
        limit=limit,
        keepalive_timeout=keepalive,
        ssl_context=ssl.create_default_context(),
        on_protocol_error=lambda where, kind, size: reports.append((where, kind, size)),
    )
    try:
        yield c, reports
    finally:
        await c.close()


def keep_alive(o: Origin, body: Callable[[bytes], bytes] | None = None) -> Serve:
    """Answers every request on the connection with its target (or `body(target)`)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(1000):
            head = await o.head(reader)
            target = head.split(b" ", 2)[1]
            writer.write(ok(body(target) if body else target))
            await writer.drain()

    return serve


async def get(c: OriginClient, base: str, target: str, method: str = "GET") -> bytes:
    resp = await c.request(base, method, target, [("Host", "a.test")], TIMEOUTS)
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_a_clean_connection_is_reused_and_the_host_is_sent() -> None:
    async with origin(keep_alive) as o, client() as (c, reports):
        for i in range(3):
            assert await get(c, o.base, f"/r{i}") == f"/r{i}".encode()
        resp = await c.request(o.base, "GET", "/nohost", [], TIMEOUTS)
        assert await resp.read() == b"/nohost"
        resp.release()
        assert o.connections == 1 and not reports
        assert o.heads[0].startswith(b"GET /r0 HTTP/1.1\r\nHost: a.test\r\n")
        assert b"\r\nHost: 127.0.0.1:" in o.heads[3]


async def test_idle_connections_close_after_the_keepalive_timeout() -> None:
    async with origin(keep_alive) as o, client(keepalive=0.2) as (c, _):
        await get(c, o.base, "/a")
        assert o.open == 1
        # closed by the sweep, not only skipped at the next request
        assert await until(lambda: o.open == 0)
        await get(c, o.base, "/b")
        assert o.connections == 2


async def test_requests_over_the_limit_wait_for_a_connection() -> None:
    def slow(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(100):
                head = await o.head(reader)
                await asyncio.sleep(0.05)
                writer.write(ok(head.split(b" ", 2)[1]))

        return serve

    async with origin(slow) as o, client(limit=2) as (c, _):
        bodies = await asyncio.gather(*(get(c, o.base, f"/p{i}") for i in range(6)))
        assert bodies == [f"/p{i}".encode() for i in range(6)]
        assert o.most_open <= 2 and o.connections == 2


async def test_a_kept_connection_the_origin_closed_is_replaced_unseen() -> None:
    # The origin answers one request per connection and closes the next one it reads
    # without a word, as one whose idle timeout is shorter than ours does at the moment a
    # request comes: that request is sent again on a new connection.
    def once(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await o.head(reader)
            writer.write(ok(head.split(b" ", 2)[1]))
            await writer.drain()
            await o.head(reader)  # the second request: dropped with the connection

        return serve

    async with origin(once) as o, client() as (c, _):
        assert await get(c, o.base, "/one") == b"/one"
        assert await get(c, o.base, "/two") == b"/two"
        assert [h.split(b" ", 2)[1] for h in o.heads] == [b"/one", b"/two", b"/two"]
        assert o.connections == 2


async def test_a_silent_origin_times_out_and_a_closed_port_fails_to_connect() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with origin(lambda o: silent) as o, client() as (c, _):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await c.request(o.base, "GET", "/", [], Timeouts(connect=1.0, read=0.3, total=5.0))
        assert time.monotonic() - started < 3
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with client() as (c, _):
        with pytest.raises(OriginConnectError):
            await c.request(f"http://127.0.0.1:{port}", "GET", "/", [], TIMEOUTS)


async def test_a_body_cut_short_is_an_error_and_the_connection_is_not_kept() -> None:
    def short(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await o.head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            await writer.drain()

        return serve

    async with origin(short) as o, client() as (c, _):
        resp = await c.request(o.base, "GET", "/", [], TIMEOUTS)
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.release()
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await get(c, o.base, "/again")
        assert o.connections == 2


async def test_a_large_body_streams_with_flow_control() -> None:
    # 32 MiB, more than the sockets hold: while the body is not read, the client stops
    # reading the origin (which then cannot finish writing) instead of buffering it all.
    big = bytes(range(256)) * 131_072
    written: list[bool] = []

    def large(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(2):
                await o.head(reader)
                writer.write(ok(big))
                await writer.drain()
                written.append(True)

        return serve

    async with origin(large) as o, client() as (c, _):
        resp = await c.request(o.base, "GET", "/big", [], TIMEOUTS)
        await asyncio.sleep(0.5)
        assert not written  # held back by the paused connection
        got = bytearray()
        async for piece in resp.content.iter_chunked(65536):
            assert len(piece) <= 65536
            got += piece
        resp.release()
        assert bytes(got) == big and written == [True]
        assert await get(c, o.base, "/again") == big  # the same connection, clean
        assert o.connections == 1


async def test_bytes_nobody_asked_for_close_the_connection_and_are_reported() -> None:
    def chatty(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(10):
                head = await o.head(reader)
                target = head.split(b" ", 2)[1]
                if target == b"/excess":
                    writer.write(ok(target, extra=b"HTTP/1.1 200 OK\r\n"))
                else:
                    writer.write(ok(target))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nBAD")

        return serve

    async with origin(chatty) as o, client() as (c, reports):
        assert await get(c, o.base, "/unsolicited") == b"/unsolicited"
        await asyncio.sleep(0.2)
        assert await get(c, o.base, "/excess") == b"/excess"
        assert await get(c, o.base, "/after") == b"/after"
        kinds = [kind for _, kind, _ in reports]
        assert kinds == ["unsolicited_bytes", "excess_bytes"]
        port = o.base.rsplit(":", 1)[1]
        assert all(where == f"http://127.0.0.1:{port}" for where, _, _ in reports)
        assert o.connections == 3
