"""The GSLB HTTP API (gslb.api) served on 127.0.0.1 port 0, driven by a real aiohttp client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gslb.api import make_app, start_api
from gslb.config import GslbConfig, load_config
from gslb.health import HealthStore
from gslb.metrics import QueryMetrics
from gslb.models import Edge, Pool
from tests.integration.gslb_helpers import write_config

POOL = Pool("www.example.test.", (Edge("fra", 50.1, 8.7), Edge("iad", 39.0, -77.5)))


@dataclass
class Api:
    url: str
    health: HealthStore
    metrics: QueryMetrics
    session: aiohttp.ClientSession


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    health = HealthStore([POOL])
    metrics = QueryMetrics()
    runner, port = await start_api(make_app(health, metrics.export), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", health, metrics, session)
    finally:
        await runner.cleanup()


async def test_healthz(api: Api) -> None:
    async with api.session.get(f"{api.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
        assert resp.headers["Server"] == "GeoEdge"  # no aiohttp or Python version
    async with api.session.get(f"{api.url}/no-such-page") as resp:
        assert resp.status == 404 and resp.headers["Server"] == "GeoEdge"


async def test_edges_listing_and_one_edge(api: Api) -> None:
    async with api.session.get(f"{api.url}/v1/edges") as resp:
        body = await resp.json()
    assert set(body["edges"]) == {"fra", "iad"}
    assert body["edges"]["fra"] == {
        "up": True,
        "drained": False,
        "serving": True,
        "load": 0.0,
        "overloaded": False,
        "overloaded_in": [],
    }
    async with api.session.get(f"{api.url}/v1/edges/iad") as resp:
        assert resp.status == 200 and (await resp.json())["name"] == "iad"
    async with api.session.get(f"{api.url}/v1/edges/nope") as resp:
        assert resp.status == 404


async def test_set_state_and_drain(api: Api) -> None:
    async with api.session.post(f"{api.url}/v1/edges/fra", json={"up": False, "load": 0.9}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["up"] is False and body["load"] == 0.9 and body["overloaded"] is True
    assert not api.health.state("fra").up
    async with api.session.put(f"{api.url}/v1/edges/fra", json={"up": True}) as resp:
        assert resp.status == 200
    assert api.health.state("fra").up
    async with api.session.post(f"{api.url}/v1/edges/iad/drain") as resp:
        assert resp.status == 200 and (await resp.json())["drained"] is True
    assert not api.health.state("iad").serving
    async with api.session.post(f"{api.url}/v1/edges/iad/undrain") as resp:
        assert resp.status == 200
    assert api.health.state("iad").serving
    async with api.session.post(f"{api.url}/v1/edges/zzz/drain") as resp:
        assert resp.status == 404
        assert "zzz" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "non-empty"),
        (b'{"up": "yes"}', '"up" must be true or false'),
        (b'{"load": 1.5}', "between 0 and 1"),
        (b'{"load": "high"}', "between 0 and 1"),
        (b'{"load": null}', "between 0 and 1"),
        (b'{"weight": 2}', "unknown field"),
    ],
)
async def test_bad_input_is_400_with_a_message(api: Api, body: bytes, needle: str) -> None:
    version = api.health.version
    async with api.session.post(f"{api.url}/v1/edges/fra", data=body) as resp:
        assert resp.status == 400
        assert needle in (await resp.json())["error"]
    assert api.health.version == version


async def test_metrics_exposition(api: Api) -> None:
    api.metrics.answered(
        qname="www.example.test.",
        qtype=1,
        rcode=0,
        pool="www.example.test.",
        edges=("fra",),
        client="192.0.2.1",
        ecs=None,
    )
    api.metrics.answered(
        qname="nope.example.test.",
        qtype=28,
        rcode=3,
        pool=None,
        edges=(),
        client="192.0.2.1",
        ecs=None,
    )
    api.metrics.observe_latency(0.00003)
    api.metrics.observe_latency(0.2)
    async with api.session.get(f"{api.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    assert 'gslb_queries_total{pool="www.example.test.",qtype="A",rcode="NOERROR"} 1.0' in text
    assert 'gslb_queries_total{pool="",qtype="AAAA",rcode="NXDOMAIN"} 1.0' in text
    assert 'gslb_answers_total{edge="fra"} 1.0' in text
    assert 'gslb_answer_latency_seconds_bucket{le="5e-05"} 1.0' in text
    assert 'gslb_answer_latency_seconds_bucket{le="+Inf"} 2.0' in text
    assert "gslb_answer_latency_seconds_count 2.0" in text
    assert 'gslb_edge_serving{edge="iad"} 1.0' in text


async def test_changes_need_the_token_and_reads_do_not() -> None:
    health = HealthStore([POOL])
    tokens = ["first-token-0123456789"]
    app = make_app(health, QueryMetrics().export, token=lambda: tokens[0])
    runner, port = await start_api(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": tokens[0]}):
                async with s.post(f"{url}/v1/edges/fra/drain", headers=headers) as r:
                    assert r.status == 401
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                async with s.put(f"{url}/v1/edges/fra", json={"load": 0.5}, headers=headers) as r:
                    assert r.status == 401
            assert health.snapshot()["edges"]["fra"]["drained"] is False
            for path in ("/healthz", "/metrics", "/v1/edges", "/v1/edges/fra"):
                async with s.get(url + path) as r:
                    assert r.status == 200
            auth = {"Authorization": f"bearer {tokens[0]}"}  # the scheme is case-insensitive
            async with s.post(f"{url}/v1/edges/fra/drain", headers=auth) as r:
                assert r.status == 200
            assert health.snapshot()["edges"]["fra"]["drained"] is True
            tokens[0] = "second-token-0123456789"  # what a reload with a new token_file does
            async with s.post(f"{url}/v1/edges/fra/undrain", headers=auth) as r:
                assert r.status == 401
            auth = {"Authorization": f"Bearer {tokens[0]}"}
            async with s.post(f"{url}/v1/edges/fra/undrain", headers=auth) as r:
                assert r.status == 200
    finally:
        await runner.cleanup()


async def test_reads_that_need_a_config_say_so_without_one(api: Api) -> None:
    for path in ("/v1/topology", "/v1/explain?name=www.example.test&client=192.0.2.1"):
        async with api.session.get(api.url + path) as resp:
            assert resp.status == 503
            assert "no configuration" in (await resp.json())["error"]


async def test_status_page_and_reads_stay_open_with_a_token(tmp_path: Path, geo_db: Path) -> None:
    config = load_config(write_config(tmp_path / "gslb.toml", geo_db))
    health = HealthStore(config.pools, [e.name for e in config.edges])
    token = "page-token-0123456789"
    app = make_app(health, QueryMetrics().export, token=lambda: token, config=lambda: config)
    runner, port = await start_api(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                html = await r.text()
                csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "connect-src 'self'" in csp
            assert "'unsafe-inline'" not in csp and "script-src 'sha256-" in csp
            # Self-contained: no URL to any other place, the land shapes inline.
            assert not re.search(r"(src|href)=\"(https?:)?//", html)
            assert '"polygons":[[[' in html and "Natural Earth" in html
            for path in (
                "/v1/topology",
                "/v1/explain?name=www.example.test&client=192.0.2.1",
                "/v1/catchment?pool=www.example.test.&step=30",
            ):
                async with s.get(url + path) as r:
                    assert r.status == 200, await r.text()
            async with s.post(f"{url}/v1/edges/fra/drain") as r:
                assert r.status == 401
            async with s.get(url + "/v1/topology") as r:
                topo = await r.json()
            assert topo["node"]["token_required_for_changes"] is True
            assert topo["transitions"] == []
    finally:
        await runner.cleanup()


async def test_purge_requests_and_edges_without_an_admin_api(tmp_path: Path, geo_db: Path) -> None:
    """POST /v1/purge: bad bodies get 400 naming the problem, no config 503, and edges with
    neither admin_url nor status_url fail without a request (502, verdict failed)."""
    config = load_config(write_config(tmp_path / "gslb.toml", geo_db))
    health = HealthStore(config.pools, [e.name for e in config.edges])

    async def post(source: Callable[[], GslbConfig | None], data: bytes) -> tuple[int, Any]:
        app = make_app(health, QueryMetrics().export, config=source)
        runner, port = await start_api(app, "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"http://127.0.0.1:{port}/v1/purge", data=data) as r:
                    return r.status, await r.json()
        finally:
            await runner.cleanup()

    status, body = await post(lambda: config, b"{")
    assert status == 400 and "body must be JSON" in body["error"]
    status, body = await post(lambda: config, b'{"url": "x", "tag": "y"}')
    assert status == 400 and "exactly one of" in body["error"]
    status, body = await post(lambda: None, b'{"tag": "docs"}')
    assert status == 503
    status, body = await post(lambda: config, b'{"tag": "docs"}')
    assert status == 502 and body["verdict"] == "failed" and body["edges_ok"] == 0
    assert {e["edge"] for e in body["edges"]} == {"fra", "iad", "nrt"}
    assert all(
        e["attempts"] == 0 and e["error"] == "no admin_url or status_url" for e in body["edges"]
    )


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/edges/nrt/drain", None),
    ("PUT", "/v1/edges/nrt", {"drained": True}),
])  # fmt: skip
async def test_a_change_to_an_edge_a_reload_removes_meanwhile_is_a_409(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    # With workers, a change is answered once they all have it; a SIGHUP may take the edge
    # away in that time. The change went with the edge: said, not a 500.
    health = HealthStore((), ["fra", "nrt"])
    gate = asyncio.Event()

    async def synced() -> bool:
        await gate.wait()
        return True

    runner, port = await start_api(
        make_app(health, QueryMetrics().export, synced=synced), "127.0.0.1", 0
    )
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}{path}"
            sent = asyncio.ensure_future(s.request(method, url, json=body))
            await asyncio.sleep(0.2)
            health.reconfigure((), ["fra"])  # the reload
            gate.set()
            async with await sent as r:
                assert r.status == 409, await r.text()
                assert "removed by a config reload" in (await r.json())["error"]
    finally:
        await runner.cleanup()
