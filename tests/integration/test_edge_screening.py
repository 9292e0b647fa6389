"""Screening rules on a real edge (issue 11): a flood from one network limited while another
is served, a country rule with the GeoIP fixture, bans that end, the connection-close action,
limits that survive SIGHUP, and two workers drawing on one budget and one concurrency limit.

Clients come from distinct loopback addresses (127.0.1.x, 127.0.2.x: Linux routes all of
127/8 to lo), so the edge sees distinct networks on real connections. Cacheable paths are
answered by the fast hit path once stored, no-store paths by the full handler: both screen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from edge.config import EdgeConfig
from tests.integration.edge_helpers import (
    Origin,
    base_url,
    edge_config,
    origins,
    running_edge,
    until,
)
from tests.integration.proc_helpers import children as _children
from tests.integration.test_edge_cli import ROOT, _env, edge_process


async def _cacheable(request: web.Request) -> web.Response:
    return web.Response(text="cached " * 20, headers={"Cache-Control": "max-age=600"})


def _origin_routes(origin: Origin) -> None:
    origin.routes["/hit"] = _cacheable
    origin.routes["/flood"] = _cacheable


@asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose connections leave from `address` (a loopback address)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def statuses(
    session: aiohttp.ClientSession, url: str, n: int, **kwargs: Any
) -> list[tuple[int, dict[str, str]]]:
    out = []
    for _ in range(n):
        async with session.get(url, **kwargs) as r:
            await r.read()
            out.append((r.status, dict(r.headers)))
    return out


async def metric_samples(url: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return {
                tuple(sorted(x.labels.items())): x.value
                for x in fam.samples
                if not x.name.endswith("_created")
            }
    return {}


def _config(origin: Origin, rules: list[dict[str, Any]], **sections: Any) -> EdgeConfig:
    return edge_config([origin], screening={"rule": rules}, **sections)


@pytest.mark.parametrize("path", ["/hit", "/nostore"])
async def test_a_flood_from_one_network_is_limited_while_another_is_served(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    rule = {"name": "per-net", "action": "limit", "rate": "1/h", "burst": 5, "prefix_v4": 24}
    caplog.set_level(logging.WARNING, "edge.screening")
    async with origins("a") as (origin,):
        _origin_routes(origin)
        async with running_edge(_config(origin, [rule])) as edge:
            url = base_url(edge) + path
            async with client_from("127.0.1.1") as flood:
                answers = await statuses(flood, url, 12)
            assert [s for s, _ in answers] == [200] * 5 + [429] * 7
            if path == "/hit":  # stored by the first: the others were fast-path hits
                assert "hit" in answers[4][1]["Cache-Status"]
            refused = answers[-1][1]
            assert 3500 <= int(refused["Retry-After"]) <= 3600
            assert refused["RateLimit-Policy"] == '"per-net";q=5;w=18000'
            assert refused["RateLimit"] == f'"per-net";r=0;t={refused["Retry-After"]}'
            assert 'detail="refused"' in refused["Cache-Status"]
            assert refused["Cache-Control"] == "no-store"
            async with client_from("127.0.1.2") as neighbour:  # the same /24
                assert [s for s, _ in await statuses(neighbour, url, 2)] == [429, 429]
            async with client_from("127.0.2.1") as other:
                assert [s for s, _ in await statuses(other, url, 5)] == [200] * 5
            admin = base_url(edge, "admin")
            hits = await metric_samples(admin, "edge_screening_rule_hits")
            assert hits == {(("action", "limit"), ("rule", "per-net")): 9.0}
            requests = await metric_samples(admin, "edge_requests")
            assert requests[(("cache", "refused"), ("status", "429"))] == 9.0
    lines = [r.getMessage() for r in caplog.records if "screening: rule" in r.getMessage()]
    assert len(lines) == 1, lines  # nine refusals, one line (log_interval)
    assert "per-net" in lines[0] and "127.0.1.1" in lines[0]


async def test_a_country_rule_reads_the_geoip_database(geo_db: Path) -> None:
    rules = [{"name": "no-jp", "action": "deny", "countries": ["JP"]}]
    async with origins("a") as (origin,):
        _origin_routes(origin)
        config = _config(
            origin,
            rules,
            server={"listen": ["127.0.0.1:0"], "trusted_proxies": ["127.0.0.1/32"]},
            geo={"database": str(geo_db)},
        )
        async with running_edge(config) as edge:
            for path in ("/hit", "/nostore"):
                url = base_url(edge) + path
                async with aiohttp.ClientSession() as s:  # from 127.0.0.1, a trusted proxy
                    tokyo = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
                    london = {"X-Forwarded-For": "192.0.2.1"}
                    for _ in range(2):
                        async with s.get(url, headers=tokyo) as r:
                            assert r.status == 403
                            assert await r.text() == "403 Forbidden\n"
                        async with s.get(url, headers=london) as r:
                            assert r.status == 200
                # Not from a trusted proxy: its X-Forwarded-For is the client's own claim.
                async with client_from("127.0.3.1") as s, s.get(url, headers=tokyo) as r:
                    assert r.status == 200
            hits = await metric_samples(base_url(edge, "admin"), "edge_screening_rule_hits")
            assert hits == {(("action", "deny"), ("rule", "no-jp")): 4.0}


async def test_a_ban_ends() -> None:
    rule = {
        "name": "banning",
        "action": "limit",
        "rate": "1/h",
        "burst": 1,
        "ban_after": 2,
        "ban_seconds": 1,
    }
    async with origins("a") as (origin,):
        _origin_routes(origin)
        async with running_edge(_config(origin, [rule])) as edge:
            url = base_url(edge) + "/hit"
            admin = base_url(edge, "admin")
            async with client_from("127.0.4.1") as s:
                answers = await statuses(s, url, 3)
                assert [a for a, _ in answers] == [200, 429, 429]
                assert answers[2][1]["Retry-After"] == "1"  # the ban's, not the bucket's
                banned = await metric_samples(admin, "edge_screening_banned_keys")
                assert banned == {(): 1.0}
                bans = await metric_samples(admin, "edge_screening_bans")
                assert bans == {(("rule", "banning"),): 1.0}
                # After the ban the bucket (1/h) is still empty: refused, but no longer banned.
                for _ in range(100):
                    if await metric_samples(admin, "edge_screening_banned_keys") == {(): 0.0}:
                        break
                    await asyncio.sleep(0.05)
                answers = await statuses(s, url, 1)
                assert answers[0][0] == 429
                assert int(answers[0][1]["Retry-After"]) > 1


async def test_the_close_action_drops_the_connection_without_an_answer() -> None:
    rules = [
        {"name": "flood", "action": "close", "rate": "1/h", "burst": 2, "path_prefix": "/flood"}
    ]
    async with origins("a") as (origin,):
        _origin_routes(origin)
        async with running_edge(_config(origin, rules)) as edge:
            port = edge.addresses["http"][0].port
            request = b"GET /flood HTTP/1.1\r\nHost: a.test\r\n\r\n"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for answer in ("miss", "hit", None):  # the hit and the close: the fast path
                    writer.write(request)
                    data = await asyncio.wait_for(_response(reader), 10)
                    if answer is None:
                        assert data == b""  # over budget: closed, nothing written
                    else:
                        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and answer.encode() in data
            finally:
                writer.close()
            async with aiohttp.ClientSession() as s:  # the full handler closes as well
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    await s.post(base_url(edge) + "/flood", data=b"x")
            hits = await metric_samples(base_url(edge, "admin"), "edge_screening_rule_hits")
            assert hits == {(("action", "close"), ("rule", "flood")): 2.0}


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length body; b"" when the connection closes first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b""
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def _write_config(path: Path, origin: Origin, workers: int, extra: str = "") -> None:
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = {workers}\n[log]\naccess_log = ""\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
        f'[pool]\norigins = ["{origin.url}"]\n[pool.probe]\nenabled = false\n'
        "[[screening.rule]]\n"
        'name = "budget"\naction = "limit"\nrate = "1/h"\nburst = 10\n' + extra
    )


@pytest.mark.parametrize("path", ["/hit", "/nostore"])
async def test_two_workers_enforce_one_node_budget(tmp_path: Path, path: str) -> None:
    async with origins("a") as (origin,):
        _origin_routes(origin)
        conf = tmp_path / "edge.toml"
        _write_config(conf, origin, workers=2)
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            # A new connection per request: SO_REUSEPORT spreads them over both workers.
            fresh = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=fresh) as s:
                answers = await statuses(s, edge.url() + path, 30)
            codes = [a for a, _ in answers]
            assert codes.count(200) == 10, codes  # the node's burst, not 2 x 10
            assert codes.count(429) == 20
            samples: dict[tuple[tuple[str, str], ...], float] = {}
            for _ in range(100):  # the other worker's record arrives within a second
                samples = await metric_samples(edge.url("admin"), "edge_screening_rule_hits")
                if samples.get((("action", "limit"), ("rule", "budget"))) == 20.0:
                    break
                await asyncio.sleep(0.05)
            assert samples == {(("action", "limit"), ("rule", "budget")): 20.0}


async def test_limits_survive_sighup(tmp_path: Path) -> None:
    async with origins("a") as (origin,):
        _origin_routes(origin)
        conf = tmp_path / "edge.toml"
        log = tmp_path / "edge.log"
        _write_config(conf, origin, workers=1)
        async with edge_process("-c", str(conf), stderr=log) as edge, aiohttp.ClientSession() as s:
            codes = [a for a, _ in await statuses(s, edge.url() + "/hit", 12)]
            assert codes == [200] * 10 + [429] * 2
            # A reload with a second rule: the first keeps its spent budget.
            _write_config(
                conf,
                origin,
                workers=1,
                extra='[[screening.rule]]\nname = "nope"\naction = "deny"\npath_prefix = "/no"\n',
            )
            edge.proc.send_signal(signal.SIGHUP)
            assert await until(lambda: "configuration reloaded" in log.read_text())
            assert [a for a, _ in await statuses(s, edge.url() + "/hit", 2)] == [429, 429]
            assert [a for a, _ in await statuses(s, edge.url() + "/no", 1)] == [429]


async def _check_config(conf: Path) -> tuple[int | None, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "check-config",
        str(conf),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_check_config_names_the_rule_key_and_problem(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    rule = '[[screening.rule]]\nname = "x"\naction = "limit"\nrate = "100'
    conf.write_text(f'[pool]\norigins = ["http://127.0.0.1:9"]\n{rule}/s"\n')
    assert await _check_config(conf) == (0, f"{conf}: ok (1 origins, 1 screening rules)\n", "")
    conf.write_text(f'[pool]\norigins = ["http://127.0.0.1:9"]\n{rule}"\n')
    code, _, err = await _check_config(conf)
    assert code == 1
    assert f"{conf}: screening.rule[0].rate: expected a number per unit" in err


class _Gate:
    """An origin route that holds every request until `open` is set, counting arrivals."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrived = 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.open.wait()
        return web.Response(text="slow", headers={"Cache-Control": "no-store"})


async def _get_status(session: aiohttp.ClientSession, url: str) -> int:
    """The status of a GET on a fresh connection; 0 when the connection failed, -1 when no
    answer came within 20 s (a request admitted that should not have been, held)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=20)) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return 0
    except TimeoutError:
        return -1


async def _node_pids(admin: str) -> set[int]:
    try:
        async with aiohttp.ClientSession() as s, s.get(admin + "/__edge/status") as r:
            doc = await r.json()
    except aiohttp.ClientError:
        return set()
    return {w["pid"] for w in doc.get("workers", [])}


async def test_two_workers_enforce_one_concurrency_limit(tmp_path: Path) -> None:
    """At most `concurrency` requests of a client in flight on the node: the rest get 429
    whichever worker they reach; finished (and abandoned) requests give their place back,
    and so do the requests of workers killed with -9, once their replacements start."""
    limit, extra = 3, 5
    async with origins("a") as (origin,):
        gate = _Gate()
        origin.routes["/slow"] = gate
        conf = tmp_path / "edge.toml"
        conf.write_text(
            '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n[log]\naccess_log = ""\n'
            '[admin]\nlisten = "127.0.0.1:0"\n'
            f'[pool]\norigins = ["{origin.url}"]\n[pool.probe]\nenabled = false\n'
            "[[screening.rule]]\n"
            f'name = "parallel"\naction = "limit"\nconcurrency = {limit}\n'
        )
        async with edge_process("-c", str(conf), tmpdir=str(tmp_path)) as edge:
            parent = edge.proc.pid
            fresh = aiohttp.TCPConnector(force_close=True, limit=0)  # one connection each
            async with aiohttp.ClientSession(connector=fresh) as s:
                url = edge.url() + "/slow?n="
                held = [asyncio.create_task(_get_status(s, f"{url}{i}")) for i in range(limit)]
                assert await until(lambda: gate.arrived == limit, tries=400)
                refused = [_get_status(s, f"{url}x{i}") for i in range(extra)]
                assert await asyncio.gather(*refused) == [429] * extra
                held[0].cancel()  # a client that leaves while its request is in flight
                gate.open.set()
                assert sorted(await asyncio.gather(*held[1:])) == [200] * (limit - 1)
                assert await asyncio.gather(held[0], return_exceptions=True)
                assert gate.arrived == limit

                # Every place is back, on the node: `limit` new requests are in flight at once.
                # (The abandoned request's edge handler ends when the origin answers it.)
                gate.open.clear()
                second = [asyncio.create_task(_get_status(s, f"{url}b{i}")) for i in range(limit)]
                assert await until(lambda: gate.arrived == 2 * limit, tries=400)
                assert await _get_status(s, f"{url}c") == 429

                # Both workers die holding them: their replacements zero their columns.
                workers = _children(parent)
                assert len(workers) == 2
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                admin = edge.url("admin")

                async def replaced() -> bool:
                    pids = await _node_pids(admin)
                    return len(pids) == 2 and not pids & workers

                for _ in range(400):
                    if await replaced():
                        break
                    await asyncio.sleep(0.05)
                assert await replaced()
                assert set(await asyncio.gather(*second)) <= {0, 502, 504}  # cut off
                third = [asyncio.create_task(_get_status(s, f"{url}d{i}")) for i in range(limit)]
                assert await until(lambda: gate.arrived == 3 * limit, tries=400)
                assert await _get_status(s, f"{url}e") == 429
                gate.open.set()
                assert await asyncio.gather(*third) == [200] * limit
