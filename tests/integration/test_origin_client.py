"""edge.origin_client against raw origins on 127.0.0.1: pooling, keep-alive expiry, the
connection limit, a kept connection the origin closed, timeouts, broken bodies, flow control
and the pool's guard against bytes nobody asked for."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import uvloop

from edge.origin_client import OriginClient, OriginConnectError, Timeouts
from tests.integration.edge_helpers import until
from tests.integration.test_edge_tls import _cert

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


async def test_a_response_read_and_released_is_freed_without_the_cycle_collector() -> None:
    async with origin(keep_alive) as o, client() as (c, _):
        for read in ("whole", "chunks"):
            resp = await c.request(o.base, "GET", "/r", [("Host", "a.test")], TIMEOUTS)
            if read == "whole":
                assert await resp.read() == b"/r"
            else:
                assert [p async for p in resp.content.iter_chunked(1)] == [b"/", b"r"]
            resp.release()
            gone = weakref.ref(resp)
            gc.disable()
            try:
                del resp
                assert gone() is None  # freed by its reference count: in no cycle
            finally:
                gc.enable()


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


async def test_an_origin_that_closes_at_once_fails_requests_and_frees_their_slots() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with origin(lambda o: slam) as o, client(limit=1) as (c, _):
        for _ in range(5):  # with one slot, a leaked one would make the next wait and time out
            with pytest.raises(aiohttp.ClientPayloadError):
                await c.request(o.base, "GET", "/", [], TIMEOUTS)


async def test_a_reset_is_no_end_of_a_body_delimited_by_the_close() -> None:
    def reset(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await o.head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(0.1)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # with SO_LINGER 0: a reset, not a FIN

        return serve

    async with origin(reset) as o, client() as (c, _):
        resp = await c.request(o.base, "GET", "/", [], TIMEOUTS)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.release()


async def test_the_total_timeout_holds_while_body_bytes_keep_coming() -> None:
    def endless(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await o.head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(2000):  # 32 MiB: about 5 s at the reader's pace below
                writer.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")

        return serve

    async with origin(endless) as o, client() as (c, _):
        resp = await c.request(o.base, "GET", "/", [], Timeouts(connect=1.0, read=1.0, total=1.0))

        async def drain() -> None:
            async for _ in resp.content.iter_chunked(16384):
                await asyncio.sleep(0.002)  # slower than the origin: bytes are always queued

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(drain(), 30)  # (this bound is the test's own)
        resp.close()


async def test_a_flood_of_interim_responses_is_refused() -> None:
    def flood(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await o.head(reader)
            for _ in range(1000):
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
                await writer.drain()

        return serve

    sent: list[int] = []

    async def interim(status: int, raw: tuple[tuple[bytes, bytes], ...]) -> None:
        sent.append(status)

    async with origin(flood) as o, client() as (c, _):
        with pytest.raises(aiohttp.ClientPayloadError, match="interim"):
            await c.request(o.base, "GET", "/", [], TIMEOUTS, interim)
        assert len(sent) <= 16  # those parsed before the refusal, if any


async def test_a_waiter_woken_then_cancelled_passes_the_connection_on() -> None:
    async with origin(keep_alive) as o, client(limit=1) as (c, _):
        first = await c.request(o.base, "GET", "/a", [], TIMEOUTS)
        second = asyncio.create_task(get(c, o.base, "/b"))
        third = asyncio.create_task(get(c, o.base, "/c"))
        await asyncio.sleep(0.05)  # both wait for the one connection
        assert await first.read() == b"/a"
        first.release()  # wakes the second...
        second.cancel()  # ...which is cancelled before it runs
        assert await asyncio.wait_for(third, 5) == b"/c"
        with pytest.raises(asyncio.CancelledError):
            await second


async def test_a_response_dropped_unreleased_frees_its_connection() -> None:
    async with origin(keep_alive) as o, client(limit=1) as (c, _):
        resp = await c.request(o.base, "GET", "/a", [], TIMEOUTS)
        del resp  # as a caller cancelled on its way would drop it
        gc.collect()
        assert await get(c, o.base, "/b") == b"/b"


async def test_unasked_bytes_already_in_the_socket_are_found_before_reuse() -> None:
    # The origin (a thread of its own) pushes a response nobody asked for while the edge's
    # loop is busy, so its bytes sit unread in the socket when the next request would take
    # the kept connection.
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    connections: list[socket.socket] = []

    def serve() -> None:
        for n in range(2):
            conn, _ = server.accept()
            connections.append(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(ok(head.split(b" ", 2)[1]))
            if n == 0:
                time.sleep(0.05)
                conn.sendall(ok(b"EVIL!"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        async with client() as (c, reports):
            assert await get(c, base, "/one") == b"/one"
            time.sleep(0.3)  # noqa: ASYNC251 - the busy loop: nothing reads the pushed bytes
            assert await get(c, base, "/two") == b"/two"
            assert [kind for _, kind, _ in reports] == ["unsolicited_bytes"]
        thread.join(10)
        assert len(connections) == 2
    finally:
        for conn in connections:
            conn.close()
        server.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_unasked_bytes_held_by_tls_are_found_before_reuse(tmp_path: Path, loop: str) -> None:
    # Over TLS, a body past the client's high water pauses its reading; a response nobody
    # asked for, sent meanwhile, then waits in the TLS layer's buffers, where poll(2) on
    # the socket does not see it. The kept connection must not take it for the next
    # request's answer.
    cert, key = _cert(tmp_path, "origin", "IP:127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    big = b"x" * (300 * 1024)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    connections: list[socket.socket] = []

    def serve() -> None:
        for n in range(2):
            conn = server_ctx.wrap_socket(server.accept()[0], server_side=True)
            conn.settimeout(10)
            connections.append(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(ok(big if n == 0 else head.split(b" ", 2)[1]))
            if n == 0:
                time.sleep(0.2)
                conn.sendall(ok(b"EVIL!"))
            with contextlib.suppress(OSError):
                conn.recv(1)  # until the client closes: its TLS shutdown gets an answer
            conn.close()

    async def exchange() -> tuple[bytes, list[str]]:
        reports: list[str] = []
        c = OriginClient(
            limit=8,
            keepalive_timeout=10.0,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
            on_protocol_error=lambda where, kind, size: reports.append(kind),
        )
        base = f"https://127.0.0.1:{server.getsockname()[1]}"
        try:
            resp = await c.request(base, "GET", "/one", [], TIMEOUTS)
            await asyncio.sleep(0.6)  # the body, then the unasked response, arrive
            assert await resp.read() == big
            resp.release()
            return await get(c, base, "/two"), reports
        finally:
            await c.close()
            await asyncio.sleep(0.2)  # the TLS transports' close, before the loop's

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        run = uvloop.run if loop == "uvloop" else asyncio.run
        answer, reports = run(exchange())
        # Found with the response's last bytes (excess) or once the connection was back in
        # the pool (unsolicited), as the TLS layer hands them over: either way not reused.
        assert answer == b"/two" and reports in (["unsolicited_bytes"], ["excess_bytes"])
        thread.join(10)
    finally:
        for conn in connections:
            conn.close()
        server.close()


async def test_a_request_cancelled_while_checking_a_kept_connection_frees_it() -> None:
    async with origin(keep_alive) as o, client(limit=1) as (c, _):
        assert await get(c, o.base, "/a") == b"/a"  # one connection, kept
        task = asyncio.create_task(get(c, o.base, "/b"))
        await asyncio.sleep(0)  # it has taken the kept connection and waits a loop turn
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        short = Timeouts(connect=1.0, read=1.0, total=2.0)  # a leaked slot: TimeoutError
        resp = await c.request(o.base, "GET", "/c", [], short)
        assert await resp.read() == b"/c"
        resp.release()


async def test_an_origin_ending_lines_with_bare_lf_is_understood() -> None:
    def lf(o: Origin) -> Serve:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(10):
                target = (await o.head(reader)).split(b" ", 2)[1]
                writer.write(b"HTTP/1.1 200 OK\nContent-Length: %d\n\n%s" % (len(target), target))

        return serve

    async with origin(lf) as o, client() as (c, reports):
        for i in range(3):  # within the read timeout, on one kept connection
            assert await get(c, o.base, f"/lf{i}") == f"/lf{i}".encode()
        assert o.connections == 1 and not reports
