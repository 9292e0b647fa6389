"""Origin pool behaviour end to end: failures, retries, algorithms, probe-driven failover."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from edge.app import POOL
from tests.integration.edge_helpers import (
    Origin,
    base_url,
    edge_config,
    origins,
    raw_reply,
    running_edge,
    until,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _who(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as r:
        assert r.status == 200, r.status
        return str(json.loads(await r.read())["origin"])


async def test_broken_origin_gives_502_and_dead_origin_502() -> None:
    async with origins("a") as (origin,):
        origin.routes["/broken"] = raw_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        origin.routes["/garbage"] = raw_reply(b"NOT HTTP AT ALL\r\n\r\n")
        config = edge_config([origin], pool={"retry": False, "max_fails": 100})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/garbage") as r:
                assert r.status == 502
                assert "Cache-Status" in r.headers
            # Headers arrived, then the body broke off: the client must see a truncation.
            truncated = False
            try:
                async with s.get(base_url(edge) + "/broken") as r:
                    await r.read()
            except aiohttp.ClientPayloadError:
                truncated = True
            assert truncated
    dead = f"http://127.0.0.1:{_free_port()}"
    config = edge_config(
        [Origin("x")], pool={"origins": [{"url": dead}], "probe": {"enabled": False}}
    )
    async with running_edge(config) as edge, aiohttp.ClientSession() as s:
        async with s.get(base_url(edge) + "/x") as r:
            assert r.status == 502


async def test_slow_origin_gives_504() -> None:
    async with origins("a") as (origin,):
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.StreamResponse:
            await asyncio.wait_for(release.wait(), 10)
            return web.Response(text="late")

        origin.routes["/slow"] = slow
        config = edge_config([origin], pool={"first_byte_timeout": 0.3, "retry": False})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/slow") as r:
                assert r.status == 504
            release.set()


async def test_idempotent_request_retried_on_another_origin() -> None:
    dead_port = _free_port()
    async with origins("good") as (good,):
        config = edge_config(
            [good],
            pool={
                "origins": [{"url": f"http://127.0.0.1:{dead_port}"}, {"url": good.url}],
                "algorithm": "round_robin",
                "max_fails": 100,
                "probe": {"enabled": False},
            },
        )
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            for _ in range(4):
                assert await _who(s, base_url(edge) + "/r") == "good"
            # A POST is not retried: it fails on the dead origin when picked.
            statuses = []
            for _ in range(4):
                async with s.post(base_url(edge) + "/p", data=b"x") as r:
                    statuses.append(r.status)
            assert 502 in statuses and 200 in statuses


async def test_passive_failures_never_eject_the_last_origin_but_probes_do() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    probe_off = {"enabled": False, "interval": 60}
    config = edge_config(
        [Origin("x")], pool={"origins": [{"url": dead}], "max_fails": 2, "probe": probe_off}
    )
    async with running_edge(config) as edge, aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(4):
            async with s.get(base_url(edge) + "/x") as r:
                statuses.append(r.status)
        assert statuses == [502, 502, 502, 502]
    probe = {"enabled": True, "interval": 0.1, "fall": 1, "jitter": 0.0, "timeout": 0.5}
    config = edge_config([Origin("x")], pool={"origins": [{"url": dead}], "probe": probe})
    async with running_edge(config) as edge, aiohttp.ClientSession() as s:
        pool = edge.app[POOL]
        assert await until(lambda: not pool.origins[0].up)
        async with s.get(base_url(edge) + "/x") as r:
            assert r.status == 503
            assert "no_healthy_origin" in r.headers["Cache-Status"]
        async with s.get(base_url(edge, "admin") + "/__edge/status") as r:
            doc = await r.json()
        assert doc["healthy"] is False
        assert doc["origins"]["down"] == [dead]


async def test_passive_ejection_moves_traffic_to_the_other_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead_port = _free_port()
    async with origins("good") as (good,):
        config = edge_config(
            [good],
            pool={
                "origins": [{"url": f"http://127.0.0.1:{dead_port}"}, {"url": good.url}],
                "max_fails": 1,
                "retry": False,
                "probe": {"enabled": False, "interval": 60},
            },
        )
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(6):
                async with s.get(base_url(edge) + "/e") as r:
                    statuses.append(r.status)
            assert statuses.count(502) == 1
            assert statuses[-4:] == [200, 200, 200, 200]
            assert not edge.app[POOL].origins[0].up
        # The ejection is logged like a probe's verdict (it used to be silent).
        ejections = [r for r in caplog.records if "is now down (passive" in r.getMessage()]
        assert len(ejections) == 1 and f":{dead_port}" in ejections[0].getMessage()


async def test_preserve_host_off_sends_the_origin_authority() -> None:
    async with origins("a") as (origin,):
        config = edge_config([origin], pool={"preserve_host": False})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            async with s.get(base_url(edge) + "/h", headers={"Host": "www.example.test"}) as r:
                sent = {k.lower(): v for k, v in (await r.json())["headers"]}
        assert sent["host"] == f"127.0.0.1:{origin.port}"
        assert sent["x-forwarded-host"] == "www.example.test"


async def test_round_robin_and_weighted() -> None:
    async with origins("a", "b") as (a, b):
        async with running_edge(edge_config([a, b])) as edge, aiohttp.ClientSession() as s:
            seen = [await _who(s, base_url(edge) + "/rr") for _ in range(6)]
        assert Counter(seen) == Counter({"a": 3, "b": 3})
        assert all(x != y for x, y in itertools.pairwise(seen))
        config = edge_config(
            [a, b],
            pool={
                "algorithm": "weighted",
                "origins": [{"url": a.url, "weight": 3}, {"url": b.url, "weight": 1}],
                "probe": {"enabled": False},
            },
        )
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            seen = [await _who(s, base_url(edge) + "/w") for _ in range(8)]
        assert Counter(seen) == Counter({"a": 6, "b": 2})


async def test_consistent_hash_keeps_urls_on_one_origin() -> None:
    async with origins("a", "b", "c") as trio:
        config = edge_config(trio, pool={"algorithm": "consistent_hash"})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            owners = {}
            for i in range(12):
                path = f"/obj/{i}"
                first = await _who(s, base_url(edge) + path)
                assert await _who(s, base_url(edge) + path) == first
                owners[path] = first
        assert len(set(owners.values())) >= 2


async def test_least_connections_avoids_the_busy_origin() -> None:
    async with origins("a", "b") as (a, b):
        gate = asyncio.Event()
        entered = asyncio.Event()

        async def hold(request: web.Request) -> web.Response:
            entered.set()
            await asyncio.wait_for(gate.wait(), 10)
            return web.Response(text="held")

        a.routes["/hold"] = hold
        b.routes["/hold"] = hold
        config = edge_config([a, b], pool={"algorithm": "least_conn"})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            held = asyncio.ensure_future(s.get(base_url(edge) + "/hold"))
            await asyncio.wait_for(entered.wait(), 10)
            busy = "a" if a.hits["/hold"] else "b"
            free = {"a": "b", "b": "a"}[busy]
            seen = [await _who(s, base_url(edge) + "/lc") for _ in range(4)]
            assert seen == [free] * 4
            gate.set()
            resp = await held
            assert resp.status == 200
            resp.release()


async def test_probes_move_traffic_away_and_back() -> None:
    async with origins("a", "b") as (a, b):
        probe = {
            "enabled": True,
            "path": "/health",
            "interval": 0.1,
            "timeout": 1.0,
            "rise": 2,
            "fall": 2,
            "jitter": 0.0,
            "expected_status": [200],
        }
        config = edge_config([a, b], pool={"probe": probe})
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            pool = edge.app[POOL]
            assert await until(lambda: a.hits["/health"] >= 2 and b.hits["/health"] >= 2)
            a.healthy = False
            assert await until(lambda: not pool.origins[0].up)
            seen = {await _who(s, base_url(edge) + "/f") for _ in range(6)}
            assert seen == {"b"}
            async with s.get(base_url(edge, "admin") + "/__edge/status") as r:
                doc = await r.json()
            assert doc["healthy"] is True
            assert doc["origins"]["down"] == [a.url]
            # A real outage: the listening socket goes away, then comes back on the same port.
            a.healthy = True
            probed = pool.origins[0].probes
            await a.stop()
            # Two more probes while nothing listens (polled, not slept on): still down.
            assert await until(lambda: pool.origins[0].probes >= probed + 2)
            assert not pool.origins[0].up
            await a.start()
            assert await until(lambda: pool.origins[0].up)
            seen = {await _who(s, base_url(edge) + "/f") for _ in range(6)}
            assert seen == {"a", "b"}
            async with s.get(base_url(edge, "admin") + "/metrics") as r:
                text = await r.text()
            assert f'edge_probes_total{{origin="{a.url}",result="fail"}}' in text
            assert f'edge_origin_up{{origin="{b.url}"}} 1.0' in text


async def _abort_after_head(port: int, request: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.transport.abort()


async def test_clients_going_away_never_eject_a_healthy_origin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # aiohttp reports a write to a closed client as ClientConnectionResetError, which is
    # also an aiohttp.ClientError: client aborts used to count as origin failures.
    async with origins("a", "b") as pair:
        release = asyncio.Event()

        async def slow_body(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Cache-Control": request.query["cc"]})
            resp.content_length = 4 * 65536
            await resp.prepare(request)
            await resp.write(b"x" * 65536)
            await release.wait()
            with contextlib.suppress(ConnectionError):
                await resp.write(b"x" * 3 * 65536)
            return resp

        for o in pair:
            o.routes["/slow"] = slow_body
        config = edge_config(
            pair,
            cache={"dir": str(tmp_path / "cache")},
            pool={"max_fails": 1, "retry": False, "probe": {"enabled": False, "interval": 60}},
        )
        async with running_edge(config) as edge:
            port = edge.addresses["http"][0].port
            for i, cc in enumerate(("max-age=60", "no-store") * 2):
                head = f"GET /slow?cc={cc}&i={i} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
                await _abort_after_head(port, head)
                release.set()
                # Polled: the origin request is over (read to the end for the fill, or
                # given up with the client), not a fixed wait.
                assert await until(lambda: all(o.active == 0 for o in edge.app[POOL].origins))
                release.clear()
            # An upload the client gives up on half way.
            for n in range(2):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
                writer.write(b"a" * 50000)
                await writer.drain()
                await until(lambda n=n: sum(o.hits["/up"] for o in pair) > n)
                writer.transport.abort()
                assert await until(lambda: all(o.active == 0 for o in edge.app[POOL].origins))
            assert await until(lambda: all(o.active == 0 for o in edge.app[POOL].origins))
            assert [o.up for o in edge.app[POOL].origins] == [True, True]


async def test_refresh_too_big_for_the_cache_is_no_origin_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # stale-while-revalidate refetch of an object over cache.max_object_bytes: the writer
    # gives up, which used to be reported as a failure of the origin (and ejected it).
    async with origins("a", "b") as pair:
        served = Counter[str]()

        async def grows(request: web.Request) -> web.Response:
            served["n"] += 1
            if served["n"] == 1:  # small, and stale on arrival
                cc = {"Cache-Control": "max-age=1, stale-while-revalidate=600", "Age": "5"}
                return web.Response(body=b"x" * 10, headers=cc)
            return web.Response(body=b"x" * 5000, headers={"Cache-Control": "max-age=60"})

        for o in pair:
            o.routes["/grow"] = grows
        config = edge_config(
            pair,
            cache={"dir": str(tmp_path / "cache"), "max_object_bytes": 1024},
            pool={"max_fails": 1, "retry": False, "probe": {"enabled": False, "interval": 60}},
        )
        async with running_edge(config) as edge, aiohttp.ClientSession() as s:
            url = base_url(edge) + "/grow"
            async with s.get(url) as r:
                assert len(await r.read()) == 10
            async with s.get(url) as r:  # stale: answered, refreshed in the background
                assert len(await r.read()) == 10
            assert await until(lambda: sum(o.hits["/grow"] for o in pair) == 2)
            assert await until(lambda: all(o.active == 0 for o in edge.app[POOL].origins))
            assert [o.up for o in edge.app[POOL].origins] == [True, True]


async def test_a_probe_that_outlives_its_config_is_not_counted() -> None:
    # A probe of the old probe.path (failing) still in flight when a reload moves the path
    # to a healthy one ends after the reload's own probe: its failure must not take the
    # origin out (fall = 1); it probes again under the new config instead.
    from edge.origins import OriginPool
    from edge.probes import Prober

    held, release = asyncio.Event(), asyncio.Event()

    async def old_path(request: web.Request) -> web.Response:
        held.set()
        await release.wait()
        return web.Response(status=500)

    async def new_path(request: web.Request) -> web.Response:
        return web.Response(status=200)

    def probe(path: str) -> dict[str, object]:
        return {"enabled": True, "path": path, "interval": 3600, "timeout": 30, "rise": 1}

    async with origins("a") as (a,), aiohttp.ClientSession() as session:
        a.routes["/old"], a.routes["/new"] = old_path, new_path
        pool = OriginPool(edge_config([a], pool={"probe": {**probe("/old"), "fall": 1}}).pool)
        prober = Prober(pool, session)
        first = asyncio.ensure_future(prober.probe_once(a.url))
        await asyncio.wait_for(held.wait(), 10)
        pool.update(edge_config([a], pool={"probe": {**probe("/new"), "fall": 1}}).pool)
        assert await prober.probe_once(a.url) is True
        release.set()
        assert await asyncio.wait_for(first, 10) is True  # asked again, under /new
        assert pool.origins[0].up and pool.origins[0].probe_bad == 0
        # A reload that turns probes off while one runs: it counts for nothing (no probe
        # would ever come to undo it).
        held.clear()
        release.clear()
        pool.update(edge_config([a], pool={"probe": {**probe("/old"), "fall": 1}}).pool)
        first = asyncio.ensure_future(prober.probe_once(a.url))
        await asyncio.wait_for(held.wait(), 10)
        pool.update(edge_config([a], pool={"probe": {"enabled": False}}).pool)
        release.set()
        assert await asyncio.wait_for(first, 10) is False
        assert pool.origins[0].up and pool.healthy() == pool.origins


async def test_a_probe_slower_than_the_interval_skips_runs_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An origin whose health check hangs, probed every 100 ms with a 3 s timeout: one
    # probe at a time, the runs due meanwhile skipped without a warning each (APScheduler
    # warned at every one), and nothing logged when the edge stops with one on its way.
    async def hangs(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response()

    probe = {"path": "/hangs", "interval": 0.1, "timeout": 3, "jitter": 0.0}
    caplog.set_level("DEBUG")
    async with origins("a") as (a,):
        a.routes["/hangs"] = hangs
        async with running_edge(edge_config([a], pool={"probe": probe})):
            assert await until(lambda: a.hits["/hangs"] == 1)
            await asyncio.sleep(0.8)  # eight runs due
            assert a.hits["/hangs"] == 1
            skipped = [r for r in caplog.records if "still on its way" in r.getMessage()]
            assert len(skipped) >= 4 and all(r.levelname == "DEBUG" for r in skipped)
        loud = [r for r in caplog.records if r.levelno >= 30]  # WARNING and above
        assert loud == [], [r.getMessage() for r in loud]
