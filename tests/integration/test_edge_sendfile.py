"""Disk hits of bodies in files of their own, sent with sendfile (edge.filebody) by the raw
fast path: whole and in order on a kept-alive connection, a big body as a slow client reads
it with its next request answered after, only once the body was checked in this process,
and never short when the file was cut after the body was verified; and ranges of them, by
the fast path and by the full handler alike, every file closed and the access log counting
what was sent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from edge.cache_layer import CacheLayer
from edge.config import EdgeConfig
from edge.filebody import FileBody
from edge.hits import INLINE_READ_MAX
from tests.integration.edge_helpers import Origin, edge_config, origins, running_edge

# Bodies past diskcache's min_file_size (32 KiB): each in a file of its own.
SIZES = (40_000, 100 * 1024, INLINE_READ_MAX)


def _config(origin: Origin, tmp_path: Path) -> EdgeConfig:
    # No body of these sizes is held in the memory tier: every hit reads the disk.
    cache = {"dir": str(tmp_path / "cache"), "memory_object_max": "16KiB"}
    return edge_config([origin], cache=cache)


def _serve(origin: Origin, path: str, body: bytes) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Cache-Control": "max-age=600"})

    origin.routes[path] = handler


@asynccontextmanager
async def _serving(
    tmp_path: Path, bodies: dict[str, bytes]
) -> AsyncIterator[tuple[Origin, CacheLayer, int]]:
    """An origin serving `bodies` by path, an edge in front of it (_config): the origin,
    the edge's cache layer and its port."""
    async with origins("a") as (origin,):
        for path, body in bodies.items():
            _serve(origin, path, body)
        async with running_edge(_config(origin, tmp_path)) as edge:
            cache = edge.proxy.cache
            assert cache is not None
            yield origin, cache, edge.addresses["http"][0].port


def _from_file(cache: CacheLayer, path: str) -> int | None:
    """The length of the FileBody the fast path would send for `path` now, if any."""
    hit = cache.hits.hit_wire(f"http://h.test{path}", files=True)
    if hit is None or not isinstance(hit[2], FileBody):
        return None
    hit[2].close()
    return len(hit[2])


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[bytes, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: h.test\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head, await asyncio.wait_for(reader.readexactly(_length(head)), 10)


async def test_disk_hits_of_file_bodies_are_sent_whole_from_their_files(tmp_path: Path) -> None:
    bodies = {f"/f{size}": os.urandom(size) for size in SIZES}
    async with _serving(tmp_path, bodies) as (origin, cache, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for round_ in range(3):  # a miss, then hits, one connection throughout
                for path, body in bodies.items():
                    head, got = await _exchange(reader, writer, path)
                    assert got == body, (round_, path)
                    assert (b"; hit" in head) == (round_ > 0), head
        finally:
            writer.close()
        # What the fast path answered them with: the body's file, not its bytes.
        for path, body in bodies.items():
            assert _from_file(cache, path) == len(body)
            # Without files (a TLS connection, a request screening may refuse): bytes.
            plain = cache.hits.hit_wire(f"http://h.test{path}")
            assert plain is not None and plain[2] == body
        assert all(origin.hits[path] == 1 for path in bodies)


async def test_a_body_file_cut_short_after_it_was_verified_is_never_sent_short(
    tmp_path: Path,
) -> None:
    body = os.urandom(100 * 1024)
    async with _serving(tmp_path, {"/cut": body}) as (origin, _, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(2):
                assert (await _exchange(reader, writer, "/cut"))[1] == body
            files = [
                p for p in (tmp_path / "cache").rglob("*.val") if p.stat().st_size == len(body)
            ]
            assert len(files) == 1
            os.truncate(files[0], len(body) // 2)
            head, got = await _exchange(reader, writer, "/cut")
            assert got == body
            assert b"; hit" not in head  # fetched again, not served from the cut file
            assert origin.hits["/cut"] == 2
        finally:
            writer.close()


async def test_a_big_body_goes_out_as_the_client_reads_and_the_next_request_waits(
    tmp_path: Path,
) -> None:
    big, small = os.urandom(4 << 20), os.urandom(40_000)
    async with _serving(tmp_path, {"/big": big, "/small": small}) as (origin, cache, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for path, body in (("/big", big), ("/small", small)):
                assert (await _exchange(reader, writer, path))[1] == body
        finally:
            writer.close()
        assert _from_file(cache, "/big") == len(big)
        # A client with a small window that reads nothing for a while: most of the big
        # body waits for it, and the request it sends meanwhile is answered after.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: h.test\r\n\r\n")
            await asyncio.sleep(0.3)
            writer.write(b"GET /small HTTP/1.1\r\nHost: h.test\r\n\r\n")
            await asyncio.sleep(0.1)
            for body in (big, small):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert b"; hit" in head
                assert await asyncio.wait_for(reader.readexactly(len(body)), 10) == body
        finally:
            writer.close()
        assert origin.hits["/big"] == origin.hits["/small"] == 1


async def test_after_a_restart_a_big_body_is_sent_from_its_file_once_read_whole(
    tmp_path: Path,
) -> None:
    big = os.urandom(1 << 20)
    async with origins("a") as (origin,):
        _serve(origin, "/big", big)
        config = _config(origin, tmp_path)
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await _exchange(reader, writer, "/big"))[1] == big
            writer.close()
        async with running_edge(config) as edge:
            cache = edge.proxy.cache
            assert cache is not None
            # Not read in this process yet: not sent from its file unchecked.
            assert _from_file(cache, "/big") is None
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                head, got = await _exchange(reader, writer, "/big")  # streamed and checked
                assert got == big and b"; hit" in head
                assert _from_file(cache, "/big") == len(big)
                assert (await _exchange(reader, writer, "/big"))[1] == big
            finally:
                writer.close()
        assert origin.hits["/big"] == 1


# A body past the memory tier's object limit, and one within it that the tier cannot hold.
@pytest.mark.parametrize(
    ("size", "tier"),
    [(3 << 20, {"memory_object_max": "16KiB"}), (512 << 10, {"memory_bytes": "64KiB"})],
)
async def test_ranges_of_a_body_on_disk_are_sent_from_its_file_by_either_path(
    tmp_path: Path, size: int, tier: dict[str, str]
) -> None:
    """Each range is asked for in one segment (the raw fast path answers it) and in two a
    moment apart (only the full handler can): the same part either way."""
    big = os.urandom(size)
    log = tmp_path / "access.log"
    async with origins("a") as (origin,):
        _serve(origin, "/big", big)
        config = edge_config(
            [origin],
            cache={"dir": str(tmp_path / "cache"), **tier},
            log={"access_log": str(log)},
        )
        async with running_edge(config) as edge:
            cache = edge.proxy.cache
            assert cache is not None
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert (await _exchange(reader, writer, "/big"))[1] == big
                assert _from_file(cache, "/big") == len(big)
                fds = len(os.listdir("/proc/self/fd"))
                cases = [
                    (f"bytes=1000-{size - 5}", 206, big[1000 : size - 4]),
                    ("bytes=-5000", 206, big[-5000:]),
                    ("bytes=0-", 206, big),
                ]
                heads: dict[tuple[str, bool], list[bytes]] = {}
                for spec, status, want in cases:
                    for cut in (False, True):
                        request = f"GET /big HTTP/1.1\r\nHost: h.test\r\nRange: {spec}\r\n\r\n"
                        if cut:
                            writer.write(request[:20].encode())
                            await writer.drain()
                            await asyncio.sleep(0.03)
                        writer.write(request[20 if cut else 0 :].encode())
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                        assert head.startswith(b"HTTP/1.1 %d " % status), head
                        assert f"content-length: {len(want)}".encode() in head.lower()
                        got = await asyncio.wait_for(reader.readexactly(len(want)), 10)
                        assert got == want, (spec, cut)
                        heads[spec, cut] = _fields(head)
                    assert heads[spec, False] == heads[spec, True], spec
                writer.write(b"GET /big HTTP/1.1\r\nHost: h.test\r\nRange: bytes=9999999-\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 416 "), head
                await asyncio.wait_for(reader.readexactly(_length(head)), 10)
                assert len(os.listdir("/proc/self/fd")) == fds  # every body file closed
            finally:
                writer.close()
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        sent = [line["bytes"] for line in lines if line["status"] == 206]
        # The access log counts what went by sendfile too (the full handler the head with it).
        assert len(sent) == 2 * len(cases)
        wants = [len(want) for _, _, want in cases for _ in range(2)]
        assert all(n >= want for n, want in zip(sent, wants, strict=True))
    assert origin.hits["/big"] == 1


async def test_the_access_log_counts_what_went_of_a_body_sent_from_its_file(
    tmp_path: Path,
) -> None:
    """A fast-path hit sent from its file is logged once its send ended, with the bytes
    that went: the whole body for a client that took it, a part for one that left."""
    size = 8 << 20
    big = os.urandom(size)
    log = tmp_path / "access.log"
    async with origins("a") as (origin,):
        _serve(origin, "/big", big)
        cache = {"dir": str(tmp_path / "cache"), "memory_object_max": "16KiB"}
        config = edge_config([origin], cache=cache, log={"access_log": str(log)})
        async with running_edge(config) as edge:
            layer = edge.proxy.cache
            assert layer is not None
            port = edge.addresses["http"][0].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await _exchange(reader, writer, "/big"))[1] == big  # the miss
            assert _from_file(layer, "/big") == size
            assert (await _exchange(reader, writer, "/big"))[1] == big  # a whole hit
            writer.close()
            lines: list[dict[str, Any]] = []
            # Clients that read the head and a little, then leave: the request in one
            # segment (the fast path's) and in two (the full handler's).
            for cut in (0, 20):
                request = b"GET /big HTTP/1.1\r\nHost: h.test\r\n\r\n"
                leaving = socket.socket()
                leaving.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                leaving.connect(("127.0.0.1", port))
                if cut:
                    leaving.sendall(request[:cut])
                    await asyncio.sleep(0.03)
                leaving.sendall(request[cut:])
                got = await asyncio.to_thread(leaving.recv, 65536)
                assert got.startswith(b"HTTP/1.1 200 ")
                leaving.close()  # unread bytes: a reset
                for _ in range(100):  # until the edge has seen the reset and logged it
                    await asyncio.sleep(0.05)
                    edge.proxy.access_log.flush()
                    lines = [json.loads(x) for x in log.read_text().splitlines()]
                    if len(lines) == 3 + (cut > 0):
                        break
    assert [x["cache"] for x in lines] == ["miss", "hit", "hit", "hit"]
    assert lines[1]["bytes"] == size
    assert 0 < lines[2]["bytes"] < size, lines[2]  # the fast path: body bytes
    assert 0 < lines[3]["bytes"] < size, lines[3]  # the full handler: head and body bytes


def _length(head: bytes) -> int:
    return int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])


def _fields(head: bytes) -> list[bytes]:
    """A response head's status line and fields, sorted, but those that count seconds
    (Date, Age, the ttl in Cache-Status)."""
    lines = head.split(b"\r\n")
    kept = [re.sub(rb"; ttl=-?\d+", b"", x) for x in lines[1:] if x]
    return [lines[0], *sorted(x for x in kept if not x.lower().startswith((b"date:", b"age:")))]


@pytest.mark.parametrize(
    "case",
    [
        test_disk_hits_of_file_bodies_are_sent_whole_from_their_files,
        test_a_body_file_cut_short_after_it_was_verified_is_never_sent_short,
        test_a_big_body_goes_out_as_the_client_reads_and_the_next_request_waits,
        test_after_a_restart_a_big_body_is_sent_from_its_file_once_read_whole,
    ],
    ids=lambda case: case.__name__.removeprefix("test_"),
)
def test_on_uvloop(case: Callable[[Path], Coroutine[Any, Any, None]], tmp_path: Path) -> None:
    """The same on uvloop, which `edge` runs on (its transports write and report their
    buffers in their own way)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case(tmp_path))


def test_ranges_on_uvloop(tmp_path: Path) -> None:
    case = test_ranges_of_a_body_on_disk_are_sent_from_its_file_by_either_path
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case(tmp_path, 3 << 20, {"memory_object_max": "16KiB"}))
