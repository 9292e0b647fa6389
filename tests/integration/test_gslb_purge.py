"""Fleet-wide purges (`gslb purge`, POST /v1/purge) against three real `edge serve` processes.

Each edge (fleet_helpers.Fleet) caches objects from its own origin under the Host
www.example.test; `gslb purge` goes through the real gslb API, which purges every edge
through its admin API with the edges' token, and the next request on each edge is a miss
(its origin sees it). With one edge killed, that edge's result says failed after its
retries while the others purge.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.fleet_helpers import Fleet, FleetEdge, cacheable, running_fleet
from tests.integration.gslb_helpers import gslb_cmd
from tests.integration.status_helpers import LoopThread


def tagged(body: bytes, tags: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body, headers={"Cache-Control": "max-age=600", "Surrogate-Key": tags}
        )

    return handler


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, geo_db: Path, loop_thread: LoopThread
) -> Iterator[Fleet]:
    routes = {
        "/obj": cacheable(b"object"),
        "/img/a.png": cacheable(b"a"),
        "/img/b.png": cacheable(b"b"),
        "/doc": tagged(b"doc", "docs v1"),
    }
    with running_fleet(tmp_path_factory.mktemp("fleet"), loop_thread, geo_db, routes) as f:
        yield f


def purge(
    fleet: Fleet, *args: str, token: bool = True
) -> tuple[subprocess.CompletedProcess[str], Any]:
    assert fleet.gslb is not None
    extra = ["--token-file", str(fleet.dir / "api.token")] if token else []
    done = gslb_cmd("purge", *args, "--api", fleet.gslb.api, *extra, "--json")
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = None
    return done, doc


def fetched(edge: FleetEdge, path: str) -> int:
    """GET `path` through the edge; how often its origin has served it since."""
    status, _ = edge.get(path)
    assert status == 200
    return edge.origin.hits[path]


def cache_everywhere(fleet: Fleet, *paths: str) -> dict[tuple[str, str], int]:
    """Every path cached on every edge (a second GET is a hit); the origin counts."""
    counts = {}
    for edge in fleet.edges.values():
        for path in paths:
            first = fetched(edge, path)
            assert fetched(edge, path) == first, f"{edge.name}{path} not cached"
            counts[(edge.name, path)] = first
    return counts


def test_purge_url_from_every_edge(fleet: Fleet) -> None:
    before = cache_everywhere(fleet, "/obj")
    done, doc = purge(fleet, "http://www.example.test/obj")
    assert done.returncode == 0, done.stderr
    assert doc["verdict"] == "ok" and doc["request"] == {"url": "http://www.example.test/obj"}
    assert doc["edges_ok"] == 3 and doc["edges_failed"] == 0
    for r in doc["edges"]:
        assert r["ok"] and r["status"] == 200 and r["attempts"] == 1 and r["purged"] == 1, r
        assert r["url"] == f"{fleet.edges[r['edge']].status_url.removesuffix('/status')}/purge"
    for edge in fleet.edges.values():  # the next request on each edge goes to its origin
        assert fetched(edge, "/obj") == before[(edge.name, "/obj")] + 1


def test_purge_prefix_and_tag_and_the_text_report(fleet: Fleet) -> None:
    before = cache_everywhere(fleet, "/img/a.png", "/img/b.png", "/doc")
    done, doc = purge(fleet, "--prefix", "http://www.example.test/img/")
    assert done.returncode == 0 and all(r["purged"] == 2 for r in doc["edges"]), doc
    assert fleet.gslb is not None
    text = gslb_cmd(
        "purge",
        "--tag",
        "docs",
        "--api",
        fleet.gslb.api,
        "--token-file",
        str(fleet.dir / "api.token"),
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("purge tag docs: ok (3 edge(s) ok, 0 failed)")
    assert "1 object(s) removed" in text.stdout
    for edge in fleet.edges.values():
        for path in ("/img/a.png", "/img/b.png", "/doc"):
            assert fetched(edge, path) == before[(edge.name, path)] + 1, (edge.name, path)


def test_purge_needs_the_api_token_and_a_valid_request(fleet: Fleet) -> None:
    done, _ = purge(fleet, "http://www.example.test/obj", token=False)
    assert done.returncode == 1 and "Bearer" in done.stderr
    done, _ = purge(fleet, "/obj")
    assert done.returncode == 1 and "absolute http(s) URL" in done.stderr


def test_an_edge_down_fails_after_its_retries_while_the_others_purge(fleet: Fleet) -> None:
    before = cache_everywhere(fleet, "/obj")
    nrt = fleet.edges["nrt"]
    nrt.kill()
    try:
        done, doc = purge(fleet, "http://www.example.test/obj")
        assert done.returncode == 1
        assert doc["verdict"] == "partial" and doc["edges_ok"] == 2 and doc["edges_failed"] == 1
        results = {r["edge"]: r for r in doc["edges"]}
        failed = results["nrt"]
        assert not failed["ok"] and failed["attempts"] == 3 and failed["status"] is None
        assert "Connect" in failed["error"], failed
        for name in ("fra", "iad"):
            assert results[name]["ok"] and results[name]["attempts"] == 1
            edge = fleet.edges[name]
            assert fetched(edge, "/obj") == before[(name, "/obj")] + 1
        assert fleet.gslb is not None
        _, metrics = fleet.gslb.http("GET", "/metrics")
        assert 'gslb_edge_purges_total{edge="nrt",result="failed"} 1.0' in metrics
    finally:
        nrt.start()  # same ports: gslb's status_url and admin URL stay valid
        fleet.wait_all_up()


async def test_purger_retries_5xx_and_gives_up_on_4xx(tmp_path: Path) -> None:
    """gslb.purger against small admin APIs on loopback: a 503 is asked again (and the second
    attempt purges), a 401 is final, a hung edge is bounded by purge.timeout."""
    from gslb.config import parse_config
    from gslb.purge import PurgeRequest
    from gslb.purger import Purger
    from tests.unit.test_config import MINIMAL

    seen: dict[str, list[Any]] = {"flaky": [], "locked": [], "hung": [], "busy": []}

    async def flaky(request: web.Request) -> web.Response:
        seen["flaky"].append((await request.json(), request.headers.get("Authorization")))
        if len(seen["flaky"]) == 1:
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"purged": 4})

    async def locked(request: web.Request) -> web.Response:
        seen["locked"].append(1)
        return web.json_response({"error": "purging needs a token"}, status=401)

    async def busy(request: web.Request) -> web.Response:
        # A removal that outlasts the wait it is given (edge.admin): accepted, going on.
        seen["busy"].append(await request.json())
        await asyncio.sleep(0.1)
        return web.json_response({"purged": None, "removing": True}, status=202)

    async def hung(request: web.Request) -> web.Response:
        seen["hung"].append(1)
        await asyncio.sleep(30)
        return web.json_response({})

    runners = []
    urls = {}
    for name, handler in (("flaky", flaky), ("locked", locked), ("hung", hung), ("busy", busy)):
        app = web.Application()
        app.router.add_post("/__edge/purge", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    (tmp_path / "t").write_text("edge-token-0123456789\n")
    edges = "".join(
        f'[[edge]]\nname = "{n}"\nipv4 = "127.0.0.1"\nlatitude = 0\nlongitude = 0\n'
        f'admin_url = "{u}"\n'
        for n, u in urls.items()
    )
    text = MINIMAL.replace('edges = ["fra", "iad"]', 'edges = ["flaky", "locked", "hung", "busy"]')
    text = text[: text.index("[[edge]]")] + edges + text[text.index("[[pool]]") :]
    config = parse_config(
        '[purge]\ntoken_file = "t"\ntimeout = 0.3\nattempts = 2\nbackoff = 0\n' + text,
        "g.toml",
        base=tmp_path,
    )
    purger = Purger()
    await purger.start()
    try:
        results = {r.edge: r for r in await purger.purge(config, PurgeRequest("tag", "t1"))}
    finally:
        await purger.close()
        for runner in runners:
            await runner.cleanup()
    assert results["flaky"].ok and results["flaky"].attempts == 2 and results["flaky"].purged == 4
    # Asked to answer within 80% of purge.timeout (gslb.purge.EDGE_WAIT_SHARE).
    body = {"surrogate_key": "t1", "wait": 0.24}
    assert seen["flaky"][0] == (body, "Bearer edge-token-0123456789")
    busy_result = results["busy"]
    assert busy_result.ok and busy_result.attempts == 1 and busy_result.status == 202
    assert busy_result.removing and busy_result.purged is None and seen["busy"] == [body]
    locked_result = results["locked"]
    assert not locked_result.ok and locked_result.attempts == 1 and locked_result.status == 401
    assert locked_result.error == "HTTP 401: purging needs a token" and len(seen["locked"]) == 1
    assert not results["hung"].ok and results["hung"].attempts == 2
    assert results["hung"].error == "no reply within 0.3s"
    assert purger.export()["purges"] == [
        ["busy", "ok", 1],
        ["flaky", "ok", 1],
        ["hung", "failed", 1],
        ["locked", "failed", 1],
    ]
