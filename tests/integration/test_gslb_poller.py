"""The edge status poller (gslb.poller) in-process against real aiohttp servers on 127.0.0.1:
timeouts, bad replies, batching into one health version, reloads and a clean close."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from gslb.config import GslbConfig, parse_config
from gslb.edgeprobe import MAX_BODY
from gslb.health import HealthStore
from gslb.poller import EdgePoller

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GOOD = {"healthy": True, "load_factor": 0.25}


@asynccontextmanager
async def server(handler: Handler, path: str = "/__edge/status") -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()


def doc(body: object, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=json.dumps(body), content_type="application/json")

    return handler


def config(
    urls: dict[str, str | None], *, timeout: float = 1.0, rise: int = 2, peers: tuple[str, ...] = ()
) -> GslbConfig:
    edges = []
    for i, (name, url) in enumerate(urls.items()):
        extra = f'status_url = "{url}"\n' if url else ""
        edges.append(
            f'[[edge]]\nname = "{name}"\nipv4 = "127.0.0.{10 + i}"\n'
            f"latitude = {i}\nlongitude = {i}\n{extra}"
        )
    text = f"""
[health]
interval = 3600
timeout = {timeout}
rise = {rise}
fall = 2
jitter = 0

[[zone]]
origin = "example.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A 127.0.0.1"]

{"".join(edges)}
[[pool]]
name = "www.example.test."
edges = {json.dumps(list(urls))}
"""
    text += "".join(f'\n[[peers]]\napi = "{api}"\n' for api in peers)
    return parse_config(text, "poller.toml", base=Path("/nonexistent"))


def store(cfg: GslbConfig) -> HealthStore:
    return HealthStore(cfg.pools, [e.name for e in cfg.edges])


async def until(predicate: Callable[[], bool], tries: int = 200) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.02)
    assert predicate()


def total(poller: EdgePoller) -> int:
    return sum(poller.counts.values())


@asynccontextmanager
async def running(poller: EdgePoller) -> AsyncIterator[EdgePoller]:
    await poller.start()
    try:
        # The first round runs at once; wait for it so the test's own rounds do not overlap.
        await until(lambda: total(poller) >= len(poller.probed()))
        yield poller
    finally:
        await poller.close()


async def test_one_round_one_version_and_quiet_when_unchanged() -> None:
    async with server(doc(GOOD)) as a, server(doc({**GOOD, "load_factor": 0.5})) as b:
        cfg = config({"a": a, "b": b, "c": None})
        health = store(cfg)
        versions: list[int] = []
        health.add_listener(lambda s: versions.append(s.version))
        async with running(EdgePoller(health, cfg)) as poller:
            assert versions == [1]  # both loads applied in one change
            assert health.state("a").load == 0.25 and health.state("b").load == 0.5
            await poller.probe_round()
            assert versions == [1]  # nothing changed: no new version
            assert set(poller.probed()) == {"a", "b"}
            assert poller.export()["probes"] == [
                ["a", "success", "", 2],
                ["b", "success", "", 2],
            ]


async def test_timeouts_and_bad_replies_are_failures() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(GOOD)

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b" " * (MAX_BODY + 10))

    async with (
        server(slow) as s,
        server(doc(GOOD, status=503)) as e,
        server(huge) as h,
        server(doc({"healthy": False, "load_factor": 0.9})) as u,
    ):
        cfg = config({"slow": s, "err": e, "huge": h, "unhealthy": u}, timeout=0.2)
        health = store(cfg)
        async with running(EdgePoller(health, cfg)) as poller:
            reasons = {edge: why for edge, _, why, _ in poller.export()["probes"]}
            assert reasons == {
                "slow": "timeout",
                "err": "http_status",
                "huge": "malformed",
                "unhealthy": "unhealthy",
            }
            for name in ("slow", "err", "huge", "unhealthy"):
                assert not health.state(name).up  # the first probe decides
            assert health.state("unhealthy").load == 0.9  # its load is still taken
            assert poller.probed()["slow"]["last_error"] == "no reply within 0.2s"


async def test_rise_and_drain() -> None:
    body: dict[str, object] = {"healthy": False}

    async def status(request: web.Request) -> web.Response:
        return web.json_response(body)

    async with server(status) as url:
        cfg = config({"a": url}, rise=2)
        health = store(cfg)
        async with running(EdgePoller(health, cfg)) as poller:
            assert not health.state("a").up
            health.set_drained("a", True)
            body["healthy"] = True
            await poller.probe_round()
            assert not health.state("a").up  # one good probe of two
            await poller.probe_round()
            assert health.state("a").up and health.state("a").drained  # drain stays


async def test_reconfigure_keeps_counters_of_unchanged_urls() -> None:
    async with server(doc({"healthy": False})) as bad, server(doc(GOOD)) as good:
        cfg = config({"a": bad, "b": bad})
        health = store(cfg)
        async with running(EdgePoller(health, cfg)) as poller:
            assert not health.state("a").up and not health.state("b").up
            # a: same URL, keeps its counters; b: a new URL, whose first probe decides
            new = config({"a": bad, "b": good, "c": None})
            health.reconfigure(new.pools, [e.name for e in new.edges])
            poller.reconfigure(new)
            await until(lambda: health.state("b").up)  # the rescheduled job ran at once
            assert not health.state("a").up
            # An edge that loses its status_url keeps its state; the API owns it now.
            last = config({"a": None, "b": good})
            health.reconfigure(last.pools, [e.name for e in last.edges])
            poller.reconfigure(last)
            assert set(poller.probed()) == {"b"}
            await poller.probe_round()
            assert not health.state("a").up


async def test_a_round_that_outlives_its_config_is_not_applied() -> None:
    """A round begun before a reload that added [[peers]] ends after the reload's own round:
    its results (no quorum) must not overwrite the verdict of the round that had the peers."""
    release = asyncio.Event()
    held = asyncio.Event()
    hold = [True]

    async def status(request: web.Request) -> web.Response:
        if hold[0]:
            hold[0] = False
            held.set()
            await release.wait()
        return web.json_response(GOOD)

    async def edges(request: web.Request) -> web.Response:
        return web.json_response({"edges": {"a": {"probe": {"probed_up": True}}}})

    async with server(status) as url, server(edges, "/v1/edges") as peer:
        old = config({"a": url}, timeout=30)
        poller = EdgePoller(store(old), old)
        await poller.start()
        try:
            await asyncio.wait_for(held.wait(), 10)  # the first round, without peers, waits
            poller.reconfigure(
                config({"a": url}, timeout=30, peers=(peer.removesuffix("/v1/edges"),))
            )
            await poller.probe_round()
            assert poller.probed()["a"]["quorum"]["views"] == 2
            release.set()
            await until(lambda: total(poller) >= 2)  # both rounds are over
            await asyncio.sleep(0.05)
            assert poller.probed()["a"]["quorum"]["views"] == 2
        finally:
            await poller.close()


async def test_close_cancels_a_round_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.json_response(GOOD)

    async with server(hang) as url:
        cfg = config({"a": url}, timeout=60)
        poller = EdgePoller(store(cfg), cfg)
        await poller.start()
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(poller.close(), 5)
        assert poller.counts == {}
    # The cancelled round is not reported as a failed job.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
