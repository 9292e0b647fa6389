"""The fast path's plain miss (CacheLayer.plain_miss, EdgeRequestHandler._start_plain): a
plain GET of a URL with nothing stored is answered below aiohttp's request objects, or
handed over to the full handler once the origin's response says it must be. These tests
hold the connection-level promises: order, a client that leaves, a graceful stop, the
keep-alive timer, 1xx, failures, and nothing left behind (no lead, no origin connection).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edge.aiohttp_internals import HELD_MAX
from edge.app import EdgeRuntime
from edge.config import EdgeConfig
from tests.integration.edge_helpers import Origin, early_hints, edge_config, origins, running_edge


def _config(origin: Origin, tmp_path: Path, **sections: object) -> EdgeConfig:
    return edge_config([origin], cache={"dir": str(tmp_path / "cache")}, **sections)


class Gate:
    """An origin route that answers once `open` is called, counting who waits."""

    def __init__(self, cache_control: str = "max-age=60", body: bytes = b"slow body") -> None:
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()
        self.cache_control = cache_control
        self.body = body

    async def __call__(self, request: web.Request) -> web.Response:
        self.waiting.set()
        await asyncio.wait_for(self.opened.wait(), 20)
        return web.Response(body=self.body, headers={"Cache-Control": self.cache_control})


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


def _get(path: str, *fields: str) -> bytes:
    extra = "".join(f"{f}\r\n" for f in fields)
    return f"GET {path} HTTP/1.1\r\nHost: h.test\r\n{extra}\r\n".encode()


def _idle(edge: EdgeRuntime) -> None:
    """Nothing of a miss is left: no lead in flight, every origin connection back idle."""
    cache = edge.proxy.cache
    assert cache is not None and not cache._inflight
    client = edge.proxy.origin_client
    assert client is not None and client.in_use() == 0


async def _settled(edge: EdgeRuntime) -> None:
    """`_idle`, once the last miss's lead has settled (when its commit ends) and its origin
    connection is back (polled for up to 2 s)."""
    cache, client = edge.proxy.cache, edge.proxy.origin_client
    assert cache is not None and client is not None
    for _ in range(100):
        if not cache._inflight and client.in_use() == 0:
            break
        await asyncio.sleep(0.02)
    _idle(edge)


async def test_bytes_sent_during_a_plain_miss_are_answered_after_it_in_order(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with origins("a") as (origin,):
        origin.routes["/slow"] = gate
        origin.routes["/next"] = Gate(body=b"next body")
        origin.routes["/next"].opened.set()  # type: ignore[attr-defined]
        async with running_edge(_config(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/slow"))
            await asyncio.wait_for(gate.waiting.wait(), 10)
            # Behind it, more than HELD_MAX of pipelined requests: reading pauses, then
            # resumes once the miss is answered.
            pad = "X-Pad: " + "p" * 100
            count = HELD_MAX // len(_get("/next", pad)) + 50
            writer.write(_get("/next", pad) * count)
            await writer.drain()
            await asyncio.sleep(0.1)
            gate.opened.set()
            head, body = await _response(reader)
            assert body == b"slow body" and b"fwd=uri-miss" in head
            for _ in range(count):
                head, body = await _response(reader)
                assert body == b"next body"
            writer.close()
            assert origin.hits["/slow"] == 1 and origin.hits["/next"] == 1
            _idle(edge)


async def test_a_client_that_leaves_during_a_plain_miss_leaves_it_stored(
    tmp_path: Path,
) -> None:
    stored, handed = Gate(), Gate(cache_control="no-store")
    async with origins("a") as (origin,):
        origin.routes["/stored"] = stored
        origin.routes["/handed"] = handed
        async with running_edge(_config(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            for path, gate in (("/stored", stored), ("/handed", handed)):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(_get(path))
                await asyncio.wait_for(gate.waiting.wait(), 10)
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0.05)
                gate.opened.set()
            # The stored one was filled all the same (its fill is not the client's); the
            # handed-over one (no-store: the full handler's to stream) let its origin
            # connection and its lead go.
            await _settled(edge)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/stored"))
            head, body = await _response(reader)
            assert body == b"slow body" and b"; hit" in head
            writer.close()
        assert origin.hits["/stored"] == 1


@pytest.mark.parametrize("cache_control", ["max-age=60", "no-store"])
async def test_a_graceful_stop_answers_a_plain_miss_in_flight(
    tmp_path: Path, cache_control: str
) -> None:
    """Answered by the fast path itself (stored) or handed over to the full handler
    (no-store) while the runner is stopping: the client gets its whole response."""
    gate = Gate(cache_control=cache_control)
    async with origins("a") as (origin,):
        origin.routes["/slow"] = gate
        edge = EdgeRuntime(_config(origin, tmp_path))
        await edge.start()
        port = edge.addresses["http"][0].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_get("/slow"))
        await asyncio.wait_for(gate.waiting.wait(), 10)
        stopping = asyncio.ensure_future(edge.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waiting for the miss
        gate.opened.set()
        raw = await asyncio.wait_for(reader.read(), 20)  # then the edge closes
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nslow body")
        await asyncio.wait_for(stopping, 20)
        writer.close()


async def test_the_keepalive_timer_does_not_cut_a_plain_miss(tmp_path: Path) -> None:
    gate = Gate()
    async with origins("a") as (origin,):
        origin.routes["/slow"] = gate
        config = _config(origin, tmp_path, limits={"keepalive_timeout": 0.2})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/slow"))
            await asyncio.wait_for(gate.waiting.wait(), 10)
            await asyncio.sleep(0.6)  # three keep-alive periods with no byte either way
            gate.opened.set()
            _, body = await _response(reader)
            assert body == b"slow body"
            # Idle after its answer: closed by the timer then.
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()


async def test_a_plain_miss_passes_1xx_on_before_its_answer(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        origin.routes["/hints"] = early_hints("max-age=60")
        async with running_edge(_config(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/hints"))
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n")
            assert b"Link: </s.css>; rel=preload" in interim
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"final"
            assert b"fwd=uri-miss; fwd-status=200; stored" in head
            writer.close()


@pytest.mark.parametrize(
    ("route", "status", "detail"),
    [("/down", 502, b"origin-body-broke-off"), ("/refused", 503, b"no_healthy_origin")],
)
async def test_a_plain_miss_that_fails_is_answered_by_the_full_handler(
    tmp_path: Path, route: str, status: int, detail: bytes
) -> None:
    async with origins("a") as (origin,):

        async def broken(request: web.Request) -> web.StreamResponse:
            # A declared length the body never reaches: the whole fill's 502.
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b"x" * 10)
            assert request.transport is not None
            request.transport.close()
            return resp

        origin.routes["/down"] = broken
        config = _config(origin, tmp_path)
        async with running_edge(config) as edge:
            if route == "/refused":
                for o in edge.proxy.pool.origins:
                    o.up = False
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get(route))
            head, _ = await _response(reader)
            assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
            assert detail in head
            # The connection stays usable.
            writer.write(_get(route))
            head, _ = await _response(reader)
            assert head.startswith(f"HTTP/1.1 {status} ".encode())
            writer.close()
            _idle(edge)


async def test_a_handed_over_miss_is_logged_from_its_start(tmp_path: Path) -> None:
    """The access log's duration of a miss the full handler finishes counts the origin's
    time, which the fast path spent before handing it over."""
    log_path = tmp_path / "access.log"
    async with origins("a") as (origin,):

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(0.3)
            return web.Response(body=b"late", headers={"Cache-Control": "no-store"})

        origin.routes["/late"] = slow
        config = _config(origin, tmp_path, log={"access_log": str(log_path)})
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/late"))
            head, body = await _response(reader)
            assert body == b"late" and b"fwd=uri-miss" in head
            writer.close()
    (record,) = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert record["path"] == "/late" and record["cache"] == "miss"
    assert record["duration_ms"] >= 300


@pytest.mark.parametrize("body_kib", [1, 100])
async def test_a_plain_miss_sends_one_cache_status_ours(tmp_path: Path, body_kib: int) -> None:
    """An origin's own Cache-Status (a tier in front of it) is replaced by ours, whether
    the fast path answers the miss itself (1 KiB, stored whole) or hands it over (100 KiB)."""
    async with origins("a") as (origin,):

        async def tiered(request: web.Request) -> web.Response:
            return web.Response(
                body=b"t" * (body_kib * 1024),
                headers={"Cache-Control": "max-age=60", "Cache-Status": "Shield; hit"},
            )

        origin.routes["/t"] = tiered
        async with running_edge(_config(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/t"))
            head, _ = await _response(reader)
            writer.close()
    lines = [line for line in head.split(b"\r\n") if line.lower().startswith(b"cache-status:")]
    assert lines == [b"Cache-Status: GeoEdge; fwd=uri-miss; fwd-status=200; stored"]


async def test_a_plain_miss_that_breaks_is_a_500_and_lets_its_key_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault inside the fast path's miss (here its plan raises) is answered as the full
    handler answers its own: a 500; the connection stays usable and the key's lead goes."""
    from edge.cache_layer import CacheLayer

    def broken(*args: object) -> None:
        raise RuntimeError("injected")

    async with origins("a") as (origin,):
        origin.routes["/b"] = Gate()
        origin.routes["/b"].opened.set()  # type: ignore[attr-defined]
        async with running_edge(_config(origin, tmp_path)) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with monkeypatch.context() as patch:
                patch.setattr(CacheLayer, "_plan", broken)
                writer.write(_get("/b"))
                head, _ = await _response(reader)
                assert head.startswith(b"HTTP/1.1 500 "), head
                assert b'detail="error"' in head
            writer.write(_get("/b"))
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"slow body"
            writer.close()
            await _settled(edge)


async def test_a_miss_collapsed_onto_a_plain_miss_does_not_wait_for_its_linger(
    tmp_path: Path,
) -> None:
    """A request that arrives while a plain miss of its URL is at the origin waits for that
    miss's commit, which the lead then starts at once: with a linger far past the collapse
    timeout, the follower is still answered from the cache, not by a second origin fetch."""
    gate = Gate()
    async with origins("a") as (origin,):
        origin.routes["/gate"] = gate
        async with running_edge(_config(origin, tmp_path)) as edge:
            cache = edge.proxy.cache
            assert cache is not None
            cache._commits._linger = 60.0  # only a hurry() ends a transaction's wait
            port = edge.addresses["http"][0].port
            lead = await asyncio.open_connection("127.0.0.1", port)
            follower = await asyncio.open_connection("127.0.0.1", port)
            lead[1].write(_get("/gate"))
            await asyncio.wait_for(gate.waiting.wait(), 10)
            follower[1].write(_get("/gate"))
            for _ in range(200):  # until the follower waits on the lead (bounded)
                if cache._inflight["http://h.test/gate"].awaited:
                    break
                await asyncio.sleep(0.01)
            gate.opened.set()
            head, body = await _response(lead[0])
            assert body == b"slow body" and b"fwd=uri-miss" in head
            head, body = await _response(follower[0])
            assert body == b"slow body"
            assert b"Cache-Status: GeoEdge; hit; " in head and b"; collapsed\r\n" in head, head
            for _, writer in (lead, follower):
                writer.close()
        assert origin.hits["/gate"] == 1


async def test_a_plain_miss_is_written_in_the_step_that_learns_its_answer(
    tmp_path: Path,
) -> None:
    """The answer of a plain miss goes to the client in the step of its task that has it,
    not in a done callback a turn of the loop later (under load, after the hits of every
    other connection the turn's poll found). Observed with a callback the miss's
    coroutine schedules as it returns, which runs before any done callback of its task:
    by then the client's socket must hold the answer."""
    async with origins("a") as (origin,):
        origin.routes["/m"] = Gate()
        origin.routes["/m"].opened.set()  # type: ignore[attr-defined]
        async with running_edge(_config(origin, tmp_path)) as edge:
            proxy = edge.proxy
            answer_plain_miss = proxy._answer_plain_miss
            held: list[bool] = []
            client = socket.create_connection(("127.0.0.1", edge.addresses["http"][0].port))

            def peek() -> None:
                try:
                    held.append(bool(client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)))
                except BlockingIOError:
                    held.append(False)

            async def observed(*args: Any) -> Any:
                wire = await answer_plain_miss(*args)
                asyncio.get_running_loop().call_soon(peek)
                return wire

            proxy._answer_plain_miss = observed  # type: ignore[method-assign]
            try:
                client.sendall(_get("/m"))
                for _ in range(500):  # until the peek ran (bounded: 10 s)
                    if held:
                        break
                    await asyncio.sleep(0.02)
                assert held == [True]
                client.settimeout(10)
                assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
            finally:
                client.close()
            await _settled(edge)


async def test_a_graceful_stop_with_a_request_held_behind_a_plain_miss_is_prompt(
    tmp_path: Path,
) -> None:
    # The miss is answered, then the connection closes: the request pipelined behind it is
    # not taken, and nothing waits for its head's deadline (which once delayed the stop by
    # header_timeout and wrote a stray 408 after the answer).
    gate = Gate()
    async with origins("a") as (origin,):
        origin.routes["/slow"] = gate
        edge = EdgeRuntime(_config(origin, tmp_path, limits={"header_timeout": 30}))
        await edge.start()
        stopping: asyncio.Future[None] | None = None
        try:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get("/slow"))
            await asyncio.wait_for(gate.waiting.wait(), 10)
            writer.write(_get("/next"))  # pipelined behind the miss: held
            await asyncio.sleep(0.1)
            stopping = asyncio.ensure_future(edge.stop())
            await asyncio.sleep(0.2)
            gate.opened.set()
            head, body = await _response(reader)
            try:
                rest: bytes | None = await asyncio.wait_for(reader.read(), 10)
            except TimeoutError:
                rest = None  # still open
            stopped, _ = await asyncio.wait({stopping}, timeout=5)
            writer.close()
        finally:
            gate.opened.set()
            if stopping is None:
                await edge.stop()
            else:
                await asyncio.wait_for(stopping, 40)
        assert head.startswith(b"HTTP/1.1 200") and body == b"slow body"
        assert rest == b"", f"after the answer: {rest!r} (None: the connection stayed open)"
        assert stopped, "the stop waited for the held request's head deadline"
