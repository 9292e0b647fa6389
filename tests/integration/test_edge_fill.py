"""Collapsed misses and Range misses answered from a fill in progress, end to end: a real
edge in front of a real origin whose body the test holds back half-way."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.app import EdgeRuntime
from tests.integration.edge_helpers import (
    Origin,
    base_url,
    edge_config,
    origins,
    running_edge,
    until,
)

WAIT = 30  # bound on every wait for the edge; never reached when things work


class Halting:
    """An origin route sending `body` with Content-Length in two halves, the second only
    once `release` is set. Until `head` is set not even the head leaves; with `cut` the
    connection is cut instead of the second half (with `early` before the first)."""

    def __init__(self, body: bytes, **headers: str) -> None:
        self.body = body
        self.half = len(body) // 2
        self.headers = {"Cache-Control": "max-age=60", **headers}
        self.head = asyncio.Event()
        self.head.set()
        self.release = asyncio.Event()
        self.cut = False
        self.early = False
        self.calls = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        if self.calls > 1:  # whoever comes second gets it at once
            return web.Response(body=self.body, headers=self.headers)
        await asyncio.wait_for(self.head.wait(), WAIT)
        resp = web.StreamResponse(headers={**self.headers, "Content-Length": str(len(self.body))})
        await resp.prepare(request)
        if not self.early:
            await resp.write(self.body[: self.half])
        await asyncio.wait_for(self.release.wait(), WAIT)
        if self.cut:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write(self.body[self.half :])
        return resp


def _cfg(origin: Origin, tmp_path: Path, **cache: Any):  # type: ignore[no-untyped-def]
    # Bodies past memory_object_max stream through a Fill; these tests are about that,
    # so it is set below their bodies (smaller ones are filled whole: test_small_*).
    return edge_config(
        [origin],
        cache={"dir": str(tmp_path / "cache"), "memory_object_max": 512, **cache},
        pool={"retry": False, "max_fails": 100},
    )


def _fill(edge: EdgeRuntime, path: str) -> Any:
    """The fill in progress for `path`, if any (white-box: only to wait for a reader)."""
    cache = edge.proxy.cache
    assert cache is not None
    lead = next((v for k, v in cache._inflight.items() if k.endswith(path)), None)
    return None if lead is None else lead.fill


def _lead(
    s: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[asyncio.Future[bytes], asyncio.Event]:
    """The first client's GET as a task, and an event set once its response head came."""
    headed = asyncio.Event()

    async def get() -> bytes:
        async with s.get(url, headers=headers) as r:
            headed.set()
            return await r.read()

    return asyncio.ensure_future(get()), headed


@pytest.mark.parametrize("collapse_timeout", [5.0, 0.5])
async def test_a_follower_streams_from_the_fill_before_the_origin_finishes(
    tmp_path: Path, collapse_timeout: float
) -> None:
    body = os.urandom(3 << 20)
    async with origins("a") as (origin,):
        route = Halting(body)
        origin.routes["/big"] = route
        config = _cfg(origin, tmp_path, collapse_timeout=collapse_timeout)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/big"
            lead, headed = _lead(s, url)
            await asyncio.wait_for(headed.wait(), WAIT)
            async with s.get(url) as r:
                first = await asyncio.wait_for(r.content.readexactly(route.half), WAIT)
                # The first half came from the fill while the origin still holds the rest:
                # the follower neither waited for the commit nor asked the origin itself.
                assert not route.release.is_set()
                assert origin.hits["/big"] == 1
                assert r.status == 200
                assert r.headers["Content-Length"] == str(len(body))
                status = r.headers["Cache-Status"]
                assert "hit" in status and "collapsed" in status and "filling" in status
                route.release.set()
                rest = await asyncio.wait_for(r.read(), WAIT)
            assert hashlib.sha256(first + rest).digest() == hashlib.sha256(body).digest()
            assert await asyncio.wait_for(lead, WAIT) == body
            async with s.get(url) as r:
                assert await r.read() == body
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
        assert origin.hits["/big"] == 1


async def test_a_follower_that_came_before_the_head_streams_from_the_fill(
    tmp_path: Path,
) -> None:
    body = os.urandom(1 << 20)
    async with origins("a") as (origin,):
        route = Halting(body)
        route.head.clear()
        origin.routes["/late"] = route
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/late"
            lead, _ = _lead(s, url)
            assert await until(lambda: origin.hits["/late"] == 1)

            async def follower() -> tuple[bytes, str]:
                async with s.get(url) as r:
                    first = await r.content.readexactly(route.half)
                    assert not route.release.is_set()
                    route.release.set()
                    return first + await r.read(), r.headers["Cache-Status"]

            follow = asyncio.ensure_future(follower())
            assert await until(lambda: edge.proxy.metrics.active >= 2)
            route.head.set()
            got, status = await asyncio.wait_for(follow, WAIT)
            assert got == body and "collapsed" in status
            assert await asyncio.wait_for(lead, WAIT) == body
        assert origin.hits["/late"] == 1


async def test_a_follower_waiting_for_a_head_gives_up_after_collapse_timeout(
    tmp_path: Path,
) -> None:
    # The first request's head takes a minute: a concurrent miss asks the origin itself
    # once collapse_timeout has passed, rather than wait it out.
    body = b"0123456789"
    async with origins("a") as (origin,):
        route = Halting(body)
        route.head.clear()
        origin.routes["/slow"] = route
        config = _cfg(origin, tmp_path, collapse_timeout=0.2)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/slow"
            lead, _ = _lead(s, url)
            assert await until(lambda: origin.hits["/slow"] == 1)
            async with s.get(url) as r:
                assert await asyncio.wait_for(r.read(), WAIT) == body
                assert "collapsed" not in r.headers["Cache-Status"]
            assert origin.hits["/slow"] == 2
            route.head.set()
            route.release.set()
            assert await asyncio.wait_for(lead, WAIT) == body


async def test_a_follower_of_another_variant_does_not_stream_the_fill(tmp_path: Path) -> None:
    body = os.urandom(256 << 10)
    async with origins("a") as (origin,):
        route = Halting(body, Vary="Accept-Language")
        origin.routes["/v"] = route
        config = _cfg(origin, tmp_path, collapse_timeout=0.5)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/v"
            lead, headed = _lead(s, url, **{"Accept-Language": "en"})
            await asyncio.wait_for(headed.wait(), WAIT)
            # Same language, other spelling: the same variant.
            async with s.get(url, headers={"Accept-Language": "EN"}) as r:
                first = await asyncio.wait_for(r.content.readexactly(route.half), WAIT)
                assert first == body[: route.half]
                assert origin.hits["/v"] == 1
            async with s.get(url, headers={"Accept-Language": "de"}) as r:
                status = r.headers["Cache-Status"]
                assert await asyncio.wait_for(r.read(), WAIT) == body
            # Not from the fill of the "en" variant: after collapse_timeout, from the origin.
            assert "filling" not in status and "collapsed" not in status
            assert origin.hits["/v"] == 2
            assert origin.requests[1].headers["Accept-Language"] == "de"
            route.release.set()
            assert await asyncio.wait_for(lead, WAIT) == body


async def test_a_fill_failing_before_the_followers_first_byte_sends_it_to_the_origin(
    tmp_path: Path,
) -> None:
    body = os.urandom(100_000)
    async with origins("a") as (origin,):
        route = Halting(body)
        route.early = route.cut = True  # the head, then the connection is cut
        origin.routes["/f"] = route
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/f"
            lead, headed = _lead(s, url)
            await asyncio.wait_for(headed.wait(), WAIT)
            fill = _fill(edge, "/f")

            async def follower() -> tuple[bytes, str]:
                async with s.get(url) as r:
                    return await r.read(), r.headers["Cache-Status"]

            follow = asyncio.ensure_future(follower())
            assert await until(lambda: fill.readers >= 2)  # it reads from the fill
            route.release.set()
            got, status = await asyncio.wait_for(follow, WAIT)
            assert got == body
            assert "fwd=uri-miss" in status and "collapsed" not in status
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(lead, WAIT)
            assert fill.readers == 0
        assert origin.hits["/f"] == 2


async def test_a_fill_failing_after_the_followers_first_byte_cuts_it(tmp_path: Path) -> None:
    body = os.urandom(1 << 20)
    async with origins("a") as (origin,):
        route = Halting(body)
        route.cut = True
        origin.routes["/f"] = route
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/f"
            lead, headed = _lead(s, url)
            await asyncio.wait_for(headed.wait(), WAIT)
            fill = _fill(edge, "/f")
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.get(url) as r:
                    await asyncio.wait_for(r.content.readexactly(route.half), WAIT)
                    route.release.set()
                    await asyncio.wait_for(r.read(), WAIT)
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(lead, WAIT)
            assert await until(lambda: fill.readers == 0)
            assert origin.hits["/f"] == 1
            async with s.get(url) as r:  # nothing was stored
                assert await r.read() == body
                assert "fwd=uri-miss" in r.headers["Cache-Status"]
        assert origin.hits["/f"] == 2


async def test_a_follower_that_leaves_closes_its_reader(tmp_path: Path) -> None:
    body = os.urandom(32 << 20)  # far more than socket buffers hold
    async with origins("a") as (origin,):
        route = Halting(body)
        origin.routes["/f"] = route
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/f"
            lead, headed = _lead(s, url)
            await asyncio.wait_for(headed.wait(), WAIT)
            fill = _fill(edge, "/f")
            async with aiohttp.ClientSession() as other, other.get(url) as r:
                await asyncio.wait_for(r.content.readexactly(1000), WAIT)
                assert fill.readers == 2
            # The follower's connection is gone; its reader goes with it.
            assert await until(lambda: fill.readers == 1)
            route.release.set()
            assert await asyncio.wait_for(lead, WAIT) == body
            assert fill.readers == 0 and not fill.writer.reader_open
        assert origin.hits["/f"] == 1


async def test_a_range_miss_fetches_the_whole_object_and_answers_206(tmp_path: Path) -> None:
    body = os.urandom(10_000)
    async with origins("a") as (origin,):
        route = Halting(body, ETag='"v1"')
        route.release.set()
        origin.routes["/r"] = route
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/r"
            async with s.get(url, headers={"Range": "bytes=100-199"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == "bytes 100-199/10000"
                assert await r.read() == body[100:200]
                assert "fwd=uri-miss" in r.headers["Cache-Status"]
            sent = origin.requests[0].headers
            assert "Range" not in sent and "If-Range" not in sent
            assert await until(lambda: _fill(edge, "/r") is None)  # committed
            async with s.get(url, headers={"Range": "bytes=-10"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == "bytes 9990-9999/10000"
                assert await r.read() == body[-10:]
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
            if shutil.which("curl") is not None:
                proc = await asyncio.create_subprocess_exec(
                    "curl", "-sS", "-r", "5000-5099", url, stdout=asyncio.subprocess.PIPE
                )
                out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
                assert proc.returncode == 0 and out == body[5000:5100]
        assert origin.hits["/r"] == 1


async def test_a_range_in_the_first_part_is_answered_before_the_origin_finishes(
    tmp_path: Path,
) -> None:
    body = os.urandom(2 << 20)
    async with origins("a") as (origin,):
        route = Halting(body)
        origin.routes["/r"] = route
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/r"
            # The leader asks for a range; so does a follower, with curl.
            async with s.get(url, headers={"Range": "bytes=1000-1999"}) as r:
                assert r.status == 206
                assert await asyncio.wait_for(r.read(), WAIT) == body[1000:2000]
                assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(body)}"
            if shutil.which("curl") is not None:
                proc = await asyncio.create_subprocess_exec(
                    "curl",
                    "-sS",
                    "-D",
                    "-",
                    "-r",
                    "20-29",
                    url,
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
                head, _, got = out.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 206") and got == body[20:30]
                assert b"collapsed" in head
            assert not route.release.is_set() and origin.hits["/r"] == 1
            # A range in the second half waits for its bytes.
            fill = _fill(edge, "/r")
            assert fill.readers == 0  # the leader and curl have left; the fill goes on

            async def tail() -> tuple[int, bytes]:
                async with s.get(url, headers={"Range": "bytes=-100"}) as r:
                    return r.status, await r.read()

            end = asyncio.ensure_future(tail())
            assert await until(lambda: fill.readers == 1)
            route.release.set()
            assert await asyncio.wait_for(end, WAIT) == (206, body[-100:])
        assert origin.hits["/r"] == 1


async def test_range_misses_unsatisfiable_if_range_and_not_storable(tmp_path: Path) -> None:
    body = os.urandom(1000)
    async with origins("a") as (origin,):
        for path, headers in (("/u", {}), ("/i", {}), ("/n", {"Cache-Control": "no-store"})):
            route = Halting(body, ETag='"v1"', **headers)
            route.release.set()
            origin.routes[path] = route

        async def chunked(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(body)
            return resp

        origin.routes["/c"] = chunked
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge)
            async with s.get(url + "/u", headers={"Range": "bytes=5000-"}) as r:
                assert r.status == 416
                assert r.headers["Content-Range"] == "bytes */1000"
                assert await r.read() == b""
            # The object was stored all the same.
            assert await until(lambda: _fill(edge, "/u") is None)
            async with s.get(url + "/u") as r:
                assert await r.read() == body
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
            # If-Range naming another validator: the whole object, 200.
            headers = {"Range": "bytes=0-9", "If-Range": '"v0"'}
            async with s.get(url + "/i", headers=headers) as r:
                assert r.status == 200 and "Content-Range" not in r.headers
                assert await r.read() == body
            headers = {"Range": "bytes=0-9", "If-Range": '"v1"'}
            async with s.get(url + "/i", headers=headers) as r:
                assert r.status == 206 and await r.read() == body[:10]
            # Not storable: the range cut from the origin's 200.
            async with s.get(url + "/n", headers={"Range": "bytes=100-199"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == "bytes 100-199/1000"
                assert await r.read() == body[100:200]
            assert "Range" not in origin.requests[-1].headers
            # Not storable and no length: the whole 200, never a guessed Content-Range.
            async with s.get(url + "/c", headers={"Range": "bytes=100-199"}) as r:
                assert r.status == 200 and "Content-Range" not in r.headers
                assert await r.read() == body
            # HEAD with Range is forwarded as it is.
            async with s.head(url + "/h", headers={"Range": "bytes=1-2"}) as r:
                assert r.status == 200
            assert origin.requests[-1].headers["Range"] == "bytes=1-2"
        assert origin.hits["/u"] == 1 and origin.hits["/i"] == 1


async def test_an_uncollapsible_range_request_is_forwarded_with_its_range(
    tmp_path: Path,
) -> None:
    body = os.urandom(1000)
    async with origins("a") as (origin,):
        seen: list[str | None] = []

        async def ranged(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Range"))
            return web.Response(
                status=206,
                body=body[:10],
                headers={"Content-Range": "bytes 0-9/1000", "Cache-Control": "max-age=60"},
            )

        origin.routes["/a"] = ranged
        async with running_edge(_cfg(origin, tmp_path)) as edge, aiohttp.ClientSession() as s:
            headers = {"Range": "bytes=0-9", "Authorization": "Bearer x"}
            async with s.get(base_url(edge) + "/a", headers=headers) as r:
                assert r.status == 206 and await r.read() == body[:10]
        assert seen == ["bytes=0-9"]


async def test_a_follower_of_an_object_over_max_object_bytes_asks_the_origin(
    tmp_path: Path,
) -> None:
    # The Content-Length already says the object cannot be stored: no fill that the writer
    # would give up half-way, cutting off the follower reading from it by then.
    body = os.urandom(3 << 19)  # 1.5 MiB; its first half is under the limit
    async with origins("a") as (origin,):
        route = Halting(body)
        origin.routes["/o"] = route
        config = _cfg(origin, tmp_path, max_object_bytes="1MiB")
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/o"
            lead, headed = _lead(s, url)
            await asyncio.wait_for(headed.wait(), WAIT)

            async def follower() -> tuple[bytes, str]:
                async with s.get(url) as r:
                    return await r.read(), r.headers["Cache-Status"]

            follow = asyncio.ensure_future(follower())

            def started() -> bool:
                fill = _fill(edge, "/o")
                return origin.hits["/o"] == 2 or (fill is not None and fill.readers == 2)

            assert await until(started)
            route.release.set()
            got, status = await asyncio.wait_for(follow, WAIT)
            assert got == body and "fwd=uri-miss" in status
            assert await asyncio.wait_for(lead, WAIT) == body
        assert origin.hits["/o"] == 2


async def test_a_range_miss_of_an_object_over_max_object_bytes_asks_for_the_range(
    tmp_path: Path,
) -> None:
    # It can never be stored: cutting the range from the whole object would make the
    # origin send everything before it, for every such request.
    body = os.urandom(2 << 20)
    async with origins("a") as (origin,):
        seen: list[str | None] = []

        async def big(request: web.Request) -> web.StreamResponse:
            rng = request.headers.get("Range")
            seen.append(rng)
            headers = {"Cache-Control": "max-age=60", "ETag": '"v1"'}
            if rng == "bytes=2000000-2000099":
                headers["Content-Range"] = f"bytes 2000000-2000099/{len(body)}"
                return web.Response(status=206, body=body[2000000:2000100], headers=headers)
            return web.Response(body=body, headers=headers)

        origin.routes["/o"] = big
        config = _cfg(origin, tmp_path, max_object_bytes="1MiB")
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/o"
            for _ in range(2):
                async with s.get(url, headers={"Range": "bytes=2000000-2000099"}) as r:
                    assert r.status == 206
                    assert r.headers["Content-Range"] == f"bytes 2000000-2000099/{len(body)}"
                    assert await r.read() == body[2000000:2000100]
        assert seen[-1] == "bytes=2000000-2000099"
        assert seen.count("bytes=2000000-2000099") == 2


async def test_followers_get_the_whole_body_when_the_writer_gives_up_half_way(
    tmp_path: Path,
) -> None:
    # Issue 7: with the disk full, 24 of 32 clients following another client's fill were
    # cut mid-body. A body without Content-Length that outgrows max_object_bytes makes the
    # writer give up half-way the same way a full disk does.
    body = os.urandom(3 << 19)  # 1.5 MiB; the first half (0.75 MiB) is under the limit

    async def chunked(request: web.Request) -> web.StreamResponse:
        origin_calls.append(1)
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await asyncio.wait_for(release.wait(), WAIT)
        for i in range(len(body) // 2, len(body), 65536):
            await resp.write(body[i : i + 65536])
        return resp

    origin_calls: list[int] = []
    release = asyncio.Event()
    async with origins("a") as (origin,):
        origin.routes["/g"] = chunked
        config = _cfg(origin, tmp_path, max_object_bytes="1MiB")
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/g"
            lead, headed = _lead(s, url)
            await asyncio.wait_for(headed.wait(), WAIT)

            async def follower(read_first: int) -> bytes:
                async with s.get(url) as r:
                    assert "collapsed" in r.headers["Cache-Status"]
                    start = await r.content.readexactly(read_first) if read_first else b""
                    return start + await r.read()

            # Some followers are past their first byte when the writer gives up, some not.
            follows = [asyncio.ensure_future(follower(n)) for n in (0, 1000, 300_000) * 4]
            assert await until(lambda: _fill(edge, "/g").readers == 1 + len(follows))
            release.set()
            results = await asyncio.wait_for(asyncio.gather(*follows), WAIT)
            assert all(got == body for got in results)
            assert await asyncio.wait_for(lead, WAIT) == body
        assert len(origin_calls) == 1  # nobody was sent to the origin, nothing was cut


async def test_small_bodies_are_filled_whole_and_collapsed_misses_hit_the_stored_copy(
    tmp_path: Path,
) -> None:
    # Up to WHOLE_FILL_MAX, no Fill: the body is read whole, stored, then sent; a miss
    # collapsed onto it meanwhile waits for the commit and is answered from the cache.
    body = os.urandom(10_000)
    async with origins("a") as (origin,):
        route = Halting(body)
        origin.routes["/s"] = route
        config = _cfg(origin, tmp_path, memory_object_max=1 << 20)
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/s"
            lead, headed = _lead(s, url)
            assert await until(lambda: origin.hits["/s"] == 1)
            follow = asyncio.ensure_future(s.get(url))
            assert await until(lambda: edge.proxy.metrics.active >= 2)
            await asyncio.sleep(0.1)
            # Half the body is in: nothing went out yet, and nothing is read back.
            assert not headed.is_set() and _fill(edge, "/s") is None
            assert os.listdir(tmp_path / "cache" / "tmp") == []
            route.release.set()
            assert await asyncio.wait_for(lead, WAIT) == body
            async with await asyncio.wait_for(follow, WAIT) as r:
                assert await r.read() == body
                status = r.headers["Cache-Status"]
                assert "hit" in status and "collapsed" in status
            async with s.get(url) as r:
                assert await r.read() == body
                assert r.headers["Cache-Status"].startswith("GeoEdge; hit")
        assert origin.hits["/s"] == 1
