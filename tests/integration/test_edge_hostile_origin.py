"""An origin that breaks HTTP/1.1 framing must never make the edge answer one request with
another's response (issue 7): bytes sent unasked on a pooled connection, bytes beyond a
response's framing, an unrequested 101 Switching Protocols, status codes outside 100-599.

The origins here are raw asyncio servers on 127.0.0.1 that write exactly the bytes a
misbehaving server would; the edge runs in process with its real client connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager

import aiohttp
import pytest

from edge.config import from_mapping
from tests.integration.edge_helpers import base_url, running_edge, until

# Writes the reply for one request head (the request line's target is passed) on `writer`.
Reply = Callable[[str, asyncio.StreamWriter], Awaitable[None]]

INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nCache-Control: max-age=300\r\n\r\nINJECTED"


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: max-age=300\r\n\r\n" % len(body)
        + body
        + extra
    )


class RawOrigin:
    """A keep-alive HTTP/1.1 origin whose replies are raw bytes chosen per test."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.targets: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        """Stop listening and close every connection, also one accepted so late that its
        task never ran (its transport would otherwise outlive the test's event loop)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[None, None, None]:
        self._writers.add(writer)  # at accept, before the connection's task first runs
        return self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            for _ in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                self.targets.append(target)
                await self.reply(target, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()


@asynccontextmanager
async def raw_origin(reply: Reply) -> AsyncIterator[RawOrigin]:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        yield origin
    finally:
        await origin.stop()


def _config(origin: RawOrigin, **pool: object) -> object:
    return from_mapping(
        {
            "server": {"listen": ["127.0.0.1:0"]},
            "admin": {"listen": "127.0.0.1:0"},
            "log": {"access_log": ""},
            "pool": {
                "origins": [{"url": origin.url}],
                "probe": {"enabled": False},
                "retry": False,
                **pool,
            },
        },
        "<test>",
    )


async def _metrics(edge: object) -> str:
    admin = edge.addresses["admin"][0]  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as s, s.get(f"http://{admin}/metrics") as r:
        return await r.text()


def _protocol_errors(text: str, kind: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("edge_origin_errors_total{") and f'kind="{kind}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_bytes_sent_unasked_on_a_pooled_connection_close_it() -> None:
    # The origin answers, then 50 ms later pushes a second, unsolicited response on the
    # same kept-alive connection. Before the fix the next request (from any client) got
    # the injected response and every later one the previous request's response, each
    # cached under the wrong URL.
    pushed = asyncio.Event()

    async def reply(target: str, writer: asyncio.StreamWriter) -> None:
        writer.write(_ok(target.encode()))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(INJECTED)
        pushed.set()

    async with raw_origin(reply) as origin, running_edge(_config(origin)) as edge:
        url = base_url(edge)
        async with aiohttp.ClientSession() as s:
            for i in range(6):
                pushed.clear()
                async with s.get(f"{url}/obj{i}") as r:
                    assert r.status == 200
                    assert await r.read() == f"/obj{i}".encode()
                await asyncio.wait_for(pushed.wait(), 5)
                await asyncio.sleep(0.05)  # the injected bytes reach the idle connection
            # Every entry was cached under its own URL: hits give the right bodies.
            for i in range(6):
                async with s.get(f"{url}/obj{i}") as r:
                    assert await r.read() == f"/obj{i}".encode()
                    assert "hit" in r.headers["Cache-Status"]
        assert origin.targets == [f"/obj{i}" for i in range(6)]
        # Each poisoned connection was closed, not reused.
        assert origin.connections == 6
        assert await until(lambda: True)
        assert _protocol_errors(await _metrics(edge), "unsolicited_bytes") >= 5


async def test_bytes_beyond_a_responses_framing_close_the_connection() -> None:
    # The injected response arrives in the same segment as the real one.
    async def reply(target: str, writer: asyncio.StreamWriter) -> None:
        writer.write(_ok(target.encode(), extra=INJECTED))

    async with raw_origin(reply) as origin, running_edge(_config(origin)) as edge:
        url = base_url(edge)
        async with aiohttp.ClientSession() as s:
            for i in range(4):
                async with s.get(f"{url}/x{i}") as r:
                    assert await r.read() == f"/x{i}".encode()
        assert origin.targets == [f"/x{i}" for i in range(4)]
        assert origin.connections == 4
        assert _protocol_errors(await _metrics(edge), "excess_bytes") >= 3


async def test_a_clean_origin_connection_is_still_reused() -> None:
    async def reply(target: str, writer: asyncio.StreamWriter) -> None:
        writer.write(_ok(target.encode()))

    async with raw_origin(reply) as origin, running_edge(_config(origin)) as edge:
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                async with s.get(f"{base_url(edge)}/c{i}") as r:
                    assert await r.read() == f"/c{i}".encode()
                await asyncio.sleep(0.02)
        assert origin.connections == 1


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "bad_status",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "bad_status"),
        # aiohttp's parser refuses these itself: a broken response.
        (b"HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nno", "broken"),
        (b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nno", "broken"),
    ],
)
async def test_unrequested_101_and_statuses_outside_100_599_are_502(head: bytes, kind: str) -> None:
    # Before the fix a 101 reached the client as final, and the switched connection was
    # reused for other clients; 600 and 999 were passed on.
    bad = {"/bad"}

    async def reply(target: str, writer: asyncio.StreamWriter) -> None:
        if target in bad:
            writer.write(head + b"GARBAGE FROM THE SWITCHED PROTOCOL")
        else:
            writer.write(_ok(target.encode()))

    async with raw_origin(reply) as origin, running_edge(_config(origin)) as edge:
        url = base_url(edge)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/bad") as r:
                assert r.status == 502
                assert "GARBAGE" not in await r.text()
            for i in range(3):
                async with s.get(f"{url}/good{i}") as r:
                    assert r.status == 200
                    assert await r.read() == f"/good{i}".encode()
        # The connection the bad answer came on was closed: the good requests came on a
        # connection of their own.
        assert origin.connections == 2, origin.targets
        text = await _metrics(edge)
        assert _protocol_errors(text, kind) == 1, [
            line for line in text.splitlines() if "origin_errors_total{" in line
        ]


async def test_interim_103_is_still_forwarded_and_the_connection_reused() -> None:
    async def reply(target: str, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        writer.write(_ok(target.encode()))

    async with raw_origin(reply) as origin, running_edge(_config(origin)) as edge:
        port = edge.addresses["http"][0].port
        for i in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /e%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % i)
                raw = await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            assert raw.startswith(b"HTTP/1.1 103 Early Hints\r\n"), raw[:60]
            assert b"\r\nHTTP/1.1 200 OK\r\n" in raw
            assert raw.endswith(b"/e%d" % i)
        assert origin.connections == 1
