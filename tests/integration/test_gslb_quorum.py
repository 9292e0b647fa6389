"""A health quorum across three DNS nodes (gslb.quorum, [[peers]]): three `gslb serve`
processes on 127.0.0.1 probe one edge, and a fault-injecting status proxy cuts one node off
from it. Alone, that node answers differently; with peers, all three answer alike (one
vantage point of three is no majority); when its peers stop, it falls back to its own view
and says so in /v1/edges and /metrics."""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.integration.gslb_helpers import (
    EDGE_IPS,
    LONDON,
    NEW_YORK,
    TOKYO,
    GslbProcess,
    write_config,
)
from tests.integration.status_helpers import LoopThread, StatusServer, eventually

HEALTH = "\n[health]\ninterval = 0.3\ntimeout = 0.25\njitter = 0\nrise = 1\nfall = 1\n"


class FaultProxy:
    """Forwards GET /__edge/status to `upstream`; while `blocked`, drops the connection
    without a reply (a partition between one DNS node and the edge)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.blocked = False
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/__edge/status"

    async def _status(self, request: web.Request) -> web.StreamResponse:
        if self.blocked or self.session is None:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        async with self.session.get(self.upstream) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/__edge/status", self._status)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


def _node_config(path: Path, geo_db: Path, status_url: str) -> Path:
    write_config(path, geo_db)
    text = path.read_text().replace(
        "weight = 3.0\n", f'weight = 3.0\nstatus_url = "{status_url}"\n', 1
    )
    path.write_text(text + HEALTH, encoding="utf-8")
    return path


def _answer(node: GslbProcess, subnet: str) -> list[str]:
    return node.addresses("www.example.test.", subnet=subnet)


def _fra_probe(node: GslbProcess) -> dict[str, object]:
    status, body = node.http("GET", "/v1/edges/fra")
    assert status == 200, body
    probe = body.get("probe")
    assert isinstance(probe, dict), body
    return probe


@contextlib.contextmanager
def _nodes(configs: list[Path]) -> Iterator[list[GslbProcess]]:
    nodes: list[GslbProcess] = []
    try:
        for config in configs:
            nodes.append(GslbProcess(config))
        yield nodes
    finally:
        for node in nodes:
            assert node.stop() == 0, node.log_text()


def _reload(node: GslbProcess, config: Path, peers: list[GslbProcess]) -> None:
    tables = "".join(f'\n[[peers]]\nname = "n{i}"\napi = "{p.api}"\n' for i, p in enumerate(peers))
    config.write_text(config.read_text() + tables, encoding="utf-8")
    mark = len(node.lines)
    node.signal(signal.SIGHUP)
    node.wait_for("reloaded config", start=mark)


def test_three_nodes_answer_alike_when_one_is_cut_off(tmp_path: Path, geo_db: Path) -> None:
    loop = LoopThread()
    edge = StatusServer("fra")
    proxy = FaultProxy("")
    try:
        loop.run(edge.start())
        proxy.upstream = edge.url
        loop.run(proxy.start())
        proxy.blocked = True  # node c cannot reach fra's status endpoint
        urls = [edge.url, edge.url, proxy.url]
        configs = [
            _node_config(tmp_path / f"{n}.toml", geo_db, u)
            for n, u in zip("abc", urls, strict=True)
        ]
        with _nodes(configs) as (a, b, c):
            fra, iad = [EDGE_IPS["fra"]], [EDGE_IPS["iad"]]
            # Alone, c takes fra out and sends London elsewhere; a and b answer fra.
            eventually(lambda: _answer(c, LONDON) == iad, "c without fra")
            assert _answer(a, LONDON) == fra and _answer(b, LONDON) == fra
            for node, config in zip((a, b, c), configs, strict=True):
                _reload(node, config, [p for p in (a, b, c) if p is not node])
            # One vantage point of three sees fra down: no majority, all three answer alike.
            eventually(lambda: _answer(c, LONDON) == fra, "c back on fra with the quorum")
            for subnet in (LONDON, NEW_YORK, TOKYO):
                assert _answer(a, subnet) == _answer(b, subnet) == _answer(c, subnet), subnet
            probe = eventually(
                lambda: (p := _fra_probe(c)).get("quorum", {}).get("views") == 3 and p,
                "c's quorum view",
            )
            assert probe["probed_up"] is False
            assert probe["quorum"] == {"up": True, "views": 3, "down": 1, "fallback": False}
            assert _fra_probe(a)["quorum"] == {"up": True, "views": 3, "down": 1, "fallback": False}
            # Its peers gone, c falls back to its own view and says so.
            a.stop()
            b.stop()
            eventually(lambda: _answer(c, LONDON) == iad, "c alone again")
            assert _fra_probe(c)["quorum"] == {"up": False, "views": 1, "down": 1, "fallback": True}
            _, metrics = c.http("GET", "/metrics")
            assert re.search(r"^gslb_quorum_fallback 1\.0$", metrics, re.M), metrics
            assert re.search(r"^gslb_quorum_peers_answering 0\.0$", metrics, re.M), metrics
            assert "peers not answering: n0, n1" in c.log_text()
    finally:
        loop.run(proxy.stop())
        loop.run(edge.stop())
        loop.close()
