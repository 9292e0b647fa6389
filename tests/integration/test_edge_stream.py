"""L4 streams through a real in-process edge on 127.0.0.1: TCP echo and a large transfer,
half-close, back-pressure, an origin killed mid-test, limits and idle timeout, PROXY v2,
UDP flows, probes, status, metrics and reload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

import aiohttp
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from edge.app import STREAMS, EdgeRuntime
from edge.config import EdgeConfig
from edge.stream_tcp import HIGH_WATER, TcpListener
from tests.integration.edge_helpers import edge_config, origins, running, running_edge, until
from tests.integration.stream_helpers import (
    TcpOrigin,
    UdpOrigin,
    echo,
    stream_config,
    udp_exchange,
)
from tests.integration.stream_helpers import roundtrip as stream_roundtrip


def tcp_origins(
    *names: str, proxy_protocol: bool = False
) -> AbstractAsyncContextManager[list[TcpOrigin]]:
    return running([TcpOrigin(n, proxy_protocol=proxy_protocol) for n in names])


def tcp_stream(origins: list[TcpOrigin], **keys: object) -> dict[str, object]:
    return {"listen": "tcp://127.0.0.1:0", "origins": [o.address for o in origins], **keys}


def listen(runtime: EdgeRuntime, kind: str = "tcp") -> tuple[str, int]:
    addr = runtime.addresses[kind][0]
    return addr.host, addr.port


async def roundtrip(runtime: EdgeRuntime, payload: bytes) -> bytes:
    return await stream_roundtrip(*listen(runtime), payload)


async def refused(runtime: EdgeRuntime, payload: bytes) -> bool:
    """Whether the edge closed a new connection without an answer (EOF, or a reset when
    the payload it never read was still in its socket)."""
    try:
        return await roundtrip(runtime, payload) == b""
    except (ConnectionResetError, BrokenPipeError, OSError):  # ENOTCONN on shutdown
        return True


async def status(runtime: EdgeRuntime) -> dict[str, object]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{runtime.addresses['admin'][0]}/__edge/status") as resp:
            doc: dict[str, object] = await resp.json()
            return doc


async def metric(runtime: EdgeRuntime, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{runtime.addresses['admin'][0]}/metrics") as resp:
            text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def tcp_listener(runtime: EdgeRuntime) -> TcpListener:
    listener = runtime.app[STREAMS].listeners["s0"]
    assert isinstance(listener, TcpListener)
    return listener


async def test_tcp_echo_round_robin_and_metrics() -> None:
    async with tcp_origins("a", "b") as (a, b):
        async with running_edge(stream_config(tcp_stream([a, b]))) as edge:
            for i in range(4):
                assert await roundtrip(edge, b"hello %d" % i) == b"hello %d" % i
            assert (a.connections, b.connections) == (2, 2)
            assert await metric(edge, "edge_stream_connections_total", stream="s0") == 4
            bytes_in = await metric(edge, "edge_stream_bytes_total", direction="in")
            bytes_out = await metric(edge, "edge_stream_bytes_total", direction="out")
            assert bytes_in == bytes_out == 4 * len(b"hello 0")
            assert await until(lambda: not tcp_listener(edge).relays)
            assert await metric(edge, "edge_stream_active", stream="s0") == 0


async def test_large_transfer_both_ways_checksummed() -> None:
    size = 64 << 20
    block = os.urandom(1 << 20)
    async with tcp_origins("a") as origins:
        async with running_edge(stream_config(tcp_stream(origins))) as edge:
            reader, writer = await asyncio.open_connection(*listen(edge))

            async def send() -> str:
                digest = hashlib.sha256()
                for i in range(size // len(block)):
                    chunk = block[i % 7 :] + block[: i % 7]  # no two MiB alike in a row
                    digest.update(chunk)
                    writer.write(chunk)
                    await writer.drain()
                writer.write_eof()
                return digest.hexdigest()

            async def receive() -> tuple[int, str]:
                digest = hashlib.sha256()
                got = 0
                while chunk := await reader.read(1 << 20):
                    digest.update(chunk)
                    got += len(chunk)
                return got, digest.hexdigest()

            sent, (got, received) = await asyncio.wait_for(asyncio.gather(send(), receive()), 300)
            writer.close()
            assert got == size and received == sent
            assert await metric(edge, "edge_stream_bytes_total", direction="in") == size
            assert await metric(edge, "edge_stream_bytes_total", direction="out") == size


async def test_half_close_keeps_the_other_way_open() -> None:
    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        for _ in range(3):  # the edge's side towards the client is still open for writing
            writer.write(b"got " + request + b"\n")
            await writer.drain()
        writer.write_eof()

    async with tcp_origins("a") as (origin,):
        origin.handler = answer_after_eof
        async with running_edge(stream_config(tcp_stream([origin]))) as edge:
            reply = await roundtrip(edge, b"question")
            assert reply == b"got question\n" * 3


async def test_slow_reader_keeps_the_edge_buffer_bounded() -> None:
    total = 48 << 20
    block = b"x" * (1 << 20)

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    async with tcp_origins("a") as (origin,):
        origin.handler = firehose
        async with running_edge(stream_config(tcp_stream([origin]))) as edge:
            reader, writer = await asyncio.open_connection(*listen(edge), limit=1 << 16)
            writer.transport.pause_reading()  # a client that does not read at all
            listener = tcp_listener(edge)
            assert await until(lambda: len(listener.relays) == 1)
            (relay,) = listener.relays
            peak = 0
            for _ in range(40):  # the origin keeps writing meanwhile; the edge must not take it
                assert relay.client.transport is not None
                peak = max(peak, relay.client.transport.get_write_buffer_size())
                await asyncio.sleep(0.02)
            relayed = relay.counts.bytes_out
            assert relayed < total // 2, "the edge kept reading the origin"
            assert 0 < peak <= HIGH_WATER + (1 << 20)  # one read past the high-water mark
            writer.transport.resume_reading()
            got = 0
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
                got += len(chunk)
            writer.close()
            assert got == total


async def test_origin_killed_mid_test_new_connections_go_to_the_other() -> None:
    async with tcp_origins("a", "b") as (a, b):
        config = stream_config(tcp_stream([a, b], max_fails=1))
        async with running_edge(config) as edge:
            held_reader, held_writer = await asyncio.open_connection(*listen(edge))
            held_writer.write(b"ping")
            assert await held_reader.readexactly(4) == b"ping"
            victim = a if a.connections else b
            survivor = b if victim is a else a
            await victim.stop()
            # the connection that was on it is cut, visibly
            assert await asyncio.wait_for(held_reader.read(), 10) == b""
            held_writer.close()
            before = survivor.connections
            for i in range(6):
                assert await roundtrip(edge, b"after %d" % i) == b"after %d" % i
            assert survivor.connections == before + 6
            doc = await status(edge)
            (pool,) = doc["streams"]  # type: ignore[misc]
            assert pool["down"] == [f"tcp://{victim.address}"]  # passive ejection
            errors = await metric(edge, "edge_stream_errors_total", kind="connect")
            assert errors >= 1


async def test_connect_timeout_moves_on_to_the_next_origin() -> None:
    # An origin whose accept queue is full: Linux drops further SYNs, so a connect hangs.
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(stuck.getsockname())
        fillers.append(filler)
    try:
        async with tcp_origins("b") as (b,):
            stuck_address = f"127.0.0.1:{stuck.getsockname()[1]}"
            stream = tcp_stream([b], connect_timeout=0.2)
            stream["origins"] = [stuck_address, b.address]  # round robin tries it first
            async with running_edge(stream_config(stream)) as edge:
                assert await roundtrip(edge, b"through") == b"through"
                errors = await metric(edge, "edge_stream_errors_total", kind="connect_timeout")
                assert errors == 1 and b.echoed == 1
    finally:
        for sock in (stuck, *fillers):
            sock.close()


async def test_no_origin_reachable_closes_the_client_and_counts_it() -> None:
    async with tcp_origins("a") as (origin,):
        config = stream_config(tcp_stream([origin]))
        await origin.stop()
        async with running_edge(config) as edge:
            assert await refused(edge, b"hello")
            assert await metric(edge, "edge_stream_refused_total", reason="no_origin") == 1


async def test_connection_limit_refuses_at_once() -> None:
    async with tcp_origins("a") as (origin,):
        async with running_edge(stream_config(tcp_stream([origin], max_connections=1))) as edge:
            reader, writer = await asyncio.open_connection(*listen(edge))
            writer.write(b"first")
            assert await reader.readexactly(5) == b"first"
            assert await refused(edge, b"second")
            assert await metric(edge, "edge_stream_refused_total", reason="limit") == 1
            writer.write(b"still")
            assert await reader.readexactly(5) == b"still"
            writer.close()


async def test_idle_timeout_closes_the_connection() -> None:
    async with tcp_origins("a") as (origin,):
        async with running_edge(stream_config(tcp_stream([origin], idle_timeout=0.2))) as edge:
            reader, writer = await asyncio.open_connection(*listen(edge))
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""
            except ConnectionResetError:
                pass
            writer.close()
            assert await metric(edge, "edge_stream_closed_total", reason="idle") == 1


async def test_proxy_v2_header_parsed_by_the_origin() -> None:
    async with tcp_origins("a", proxy_protocol=True) as (origin,):
        async with running_edge(stream_config(tcp_stream([origin], proxy_protocol="v2"))) as edge:
            reader, writer = await asyncio.open_connection(*listen(edge))
            writer.write(b"payload")
            assert await reader.readexactly(7) == b"payload"
            client = writer.get_extra_info("sockname")[:2]
            writer.close()
            (header,) = origin.headers
            assert header.version == 2 and header.protocol == "tcp"
            assert header.source == client
            assert header.destination == listen(edge)


async def test_udp_request_reply_from_the_listening_address() -> None:
    a, b = UdpOrigin("a"), UdpOrigin("b")
    await a.start()
    await b.start()
    try:
        stream = {
            "listen": "udp://127.0.0.1:0",
            "origins": [a.address, b.address],
            "max_connections": 2,
        }
        async with running_edge(stream_config(stream)) as edge:
            target = listen(edge, "udp")
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
            for s in socks:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            try:
                first, source = await udp_exchange(socks[0], target, b"q1")
                assert source == target  # the reply comes from the address the client used
                again, _ = await udp_exchange(socks[0], target, b"q2")
                assert first[:2] == again[:2]  # one flow, one origin
                assert first.endswith(b":q1") and again.endswith(b":q2")
                other, _ = await udp_exchange(socks[1], target, b"q3")
                assert other[:2] != first[:2]  # a new client, the next origin
                await udp_exchange(socks[2], target, b"q4")  # a full table: LRU evicted
                assert await metric(edge, "edge_stream_closed_total", reason="evicted") == 1
                assert await metric(edge, "edge_stream_active", stream="s0") == 2
                assert await metric(edge, "edge_stream_connections_total") == 3
            finally:
                for s in socks:
                    s.close()
    finally:
        a.stop()
        b.stop()


async def test_udp_idle_flows_expire() -> None:
    origin = UdpOrigin("a")
    await origin.start()
    try:
        stream = {"listen": "udp://127.0.0.1:0", "origins": [origin.address], "idle_timeout": 0.2}
        async with running_edge(stream_config(stream)) as edge:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                await udp_exchange(s, listen(edge, "udp"), b"hello")
            pool = edge.app[STREAMS].pools["s0"]
            assert await until(lambda: pool.stats.active == 0)
            assert pool.stats.closed["idle"] == 1
    finally:
        origin.stop()


async def test_probes_take_a_dead_origin_out_and_status_reports_streams() -> None:
    async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readexactly(5) == b"PING\n":
            writer.write(b"PONG\n")
            await writer.drain()
        await echo(reader, writer)

    probe = {"interval": 0.1, "timeout": 1, "rise": 1, "fall": 1, "jitter": 0}
    async with tcp_origins("a", "b") as (a, b):
        a.handler = b.handler = pong
        stream = tcp_stream([a, b], probe={**probe, "send": "PING\n", "expect": "PONG"})
        async with running_edge(stream_config(stream)) as edge:
            doc = await status(edge)
            assert doc["healthy"] is True
            await a.stop()
            pool = edge.app[STREAMS].pools["s0"]
            assert await until(lambda: [o.up for o in pool.pool.origins] == [False, True])
            for _ in range(3):
                assert await roundtrip(edge, b"PING\nhi") == b"PONG\nhi"
            doc = await status(edge)
            assert doc["healthy"] is True  # one stream pool origin is still up
            await b.stop()
            assert await until(lambda: not any(o.up for o in pool.pool.origins))
            doc = await status(edge)
            assert doc["healthy"] is False  # a stream-only edge with all its pools down
            (section,) = doc["streams"]  # type: ignore[misc]
            assert section["name"] == "s0" and section["healthy"] is False
            assert await metric(edge, "edge_stream_probes_total", result="fail") >= 2
            assert await metric(edge, "edge_stream_origin_up") == 0


async def test_reload_applies_origins_and_keeps_the_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with tcp_origins("a", "b") as (a, b):
        config = stream_config(tcp_stream([a]))
        async with running_edge(config) as edge:
            assert await roundtrip(edge, b"1") == b"1" and a.connections == 1
            (stream,) = config.streams
            moved = replace(stream, listen=replace(stream.listen, port=1))
            new = stream_config(tcp_stream([b], max_connections=5))
            edge.reload(replace(new, streams=(replace(new.streams[0], listen=moved.listen),)))
            assert await roundtrip(edge, b"2") == b"2"  # still on the old address
            assert (a.connections, b.connections) == (1, 1)
            assert edge.app[STREAMS].pools["s0"].stream.max_connections == 5
            assert "reload: stream s0 listen changed" in caplog.text


async def test_stream_next_to_http_keeps_http_health() -> None:
    async with origins("http") as http_origins, tcp_origins("a") as (tcp,):
        config: EdgeConfig = edge_config(http_origins)
        config = replace(config, streams=stream_config(tcp_stream([tcp])).streams)
        async with running_edge(config) as edge:
            assert await roundtrip(edge, b"x") == b"x"
            await tcp.stop()
            pool = edge.app[STREAMS].pools["s0"]
            for origin in pool.pool.origins:
                for _ in range(pool.stream.probe.fall):
                    pool.pool.probe_result(origin, ok=False)
            doc = await status(edge)
            assert doc["healthy"] is True  # the HTTP origins decide for an HTTP edge
            assert doc["streams"][0]["healthy"] is False  # type: ignore[index]


async def test_proxy_v1_header_parsed_by_the_origin() -> None:
    async with tcp_origins("a", proxy_protocol=True) as (origin,):
        async with running_edge(stream_config(tcp_stream([origin], proxy_protocol="v1"))) as edge:
            assert await roundtrip(edge, b"data") == b"data"
            (header,) = origin.headers
            assert header.version == 1 and header.destination == listen(edge)


async def test_udp_refused_origin_is_ejected_and_the_client_moves() -> None:
    alive = UdpOrigin("alive")
    await alive.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"  # nobody listens there once closed
    try:
        stream = {
            "listen": "udp://127.0.0.1:0",
            "origins": [dead, alive.address],  # smooth round robin starts with the first
            "max_fails": 1,
        }
        async with running_edge(stream_config(stream)) as edge:
            pool = edge.app[STREAMS].pools["s0"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                replies = []
                for attempt in range(5):  # a datagram to the dead origin is lost
                    try:
                        async with asyncio.timeout(1):
                            replies.append(
                                await udp_exchange(s, listen(edge, "udp"), b"%d" % attempt)
                            )
                        break
                    except TimeoutError:
                        continue
            assert replies and replies[0][0].startswith(b"alive:")
            tried_dead = pool.stats.origin(f"udp://{dead}")
            assert tried_dead.connections == 1 and tried_dead.errors["refused"] == 1
            assert [o.up for o in pool.pool.origins] == [False, True]  # passive ejection
    finally:
        alive.stop()


async def test_udp_probes_send_and_expect() -> None:
    origin = UdpOrigin("u")
    await origin.start()
    probe = {"send": "ping", "expect": "u:ping", "interval": 0.1, "rise": 1, "fall": 1}
    stream = {
        "listen": "udp://127.0.0.1:0",
        "origins": [origin.address],
        "probe": {**probe, "jitter": 0, "timeout": 1},
    }
    async with running_edge(stream_config(stream)) as edge:
        pool = edge.app[STREAMS].pools["s0"]
        url = f"udp://{origin.address}"
        assert await until(lambda: pool.stats.origin(url).probes["ok"] >= 2)
        assert (b"ping", origin.received[0][1]) == origin.received[0]
        origin.stop()
        assert await until(lambda: not pool.pool.origins[0].up)
        assert (await status(edge))["healthy"] is False


@pytest.mark.parametrize(
    "case",
    [
        test_tcp_echo_round_robin_and_metrics,
        test_large_transfer_both_ways_checksummed,
        test_half_close_keeps_the_other_way_open,
        test_slow_reader_keeps_the_edge_buffer_bounded,
        test_origin_killed_mid_test_new_connections_go_to_the_other,
        test_connection_limit_refuses_at_once,
        test_proxy_v2_header_parsed_by_the_origin,
        test_udp_request_reply_from_the_listening_address,
        test_udp_probes_send_and_expect,
    ],
    ids=lambda case: case.__name__.removeprefix("test_"),
)
def test_on_uvloop(case: Callable[[], Coroutine[None, None, None]]) -> None:
    """The same on uvloop, which `edge` runs on: the loops differ in details that matter
    here (when an accepted socket starts being read, pause_reading or not)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())
