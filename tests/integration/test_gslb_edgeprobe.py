"""gslb reading health and load from edges' status endpoints (gslb.poller), end to end.

The real `gslb serve` process probes small aiohttp status servers on 127.0.0.1 whose
documents the tests set, and (last test) the admin port of a real `edge serve` process. The
status servers run on their own thread and event loop, so the blocking DNS and HTTP clients
of the tests never stall them. Probing is fast here (interval 0.25 s, rise 2, fall 2); every
wait is a bounded polling loop with a deadline.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.fleet_helpers import EdgeServe
from tests.integration.gslb_helpers import (
    EDGE_IPS,
    LONDON,
    NEW_YORK,
    GslbProcess,
    serving,
)
from tests.integration.status_helpers import (
    HEALTHY,
    LoopThread,
    StatusServer,
    edge_toml,
    eventually,
    status_servers,
)

FRA, IAD, NRT = EDGE_IPS["fra"], EDGE_IPS["iad"], EDGE_IPS["nrt"]
SYD = "127.0.0.14"

CONFIG = """
[api]
listen = "127.0.0.1:0"

[server]
listen = ["127.0.0.1:0"]

[geo]
database = "{geo_db}"

[health]
interval = 0.25
timeout = 0.25
rise = 2
fall = 2
jitter = 0.05

[[zone]]
origin = "example.test."
soa = {{ mname = "ns1", rname = "hostmaster" }}
records = ["@ NS ns1", "ns1 A 127.0.0.1"]
{edges}
[[edge]]
name = "syd"
ipv4 = "127.0.0.14"
latitude = -33.87
longitude = 151.21

[[pool]]
name = "www.example.test."
edges = ["fra", "iad", "nrt"]
load_threshold = 0.8
hysteresis = 0.1

[[pool]]
name = "au.example.test."
edges = ["syd"]
"""

PLACES = {"fra": (50.11, 8.68), "iad": (39.04, -77.49), "nrt": (35.68, 139.69)}


def render(geo_db: Path, urls: dict[str, str | None]) -> str:
    edges = [
        edge_toml(name, EDGE_IPS[name], lat, lon, urls.get(name))
        for name, (lat, lon) in PLACES.items()
    ]
    return CONFIG.format(geo_db=str(geo_db), edges="\n".join(edges))


@pytest.fixture(scope="module")
def servers(loop_thread: LoopThread) -> Iterator[dict[str, StatusServer]]:
    with status_servers(loop_thread, PLACES) as started:
        yield started


@pytest.fixture(scope="module")
def gslb(
    tmp_path_factory: pytest.TempPathFactory, geo_db: Path, servers: dict[str, StatusServer]
) -> Iterator[GslbProcess]:
    text = render(geo_db, {n: s.url for n, s in servers.items()})
    with serving(tmp_path_factory.mktemp("probe"), text) as proc:
        yield proc


def london(gslb: GslbProcess) -> list[str]:
    return gslb.addresses("www.example.test", subnet=LONDON)


def edge_state(gslb: GslbProcess, name: str) -> dict[str, Any]:
    status, body = gslb.http("GET", f"/v1/edges/{name}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def probes_seen(gslb: GslbProcess, edge: str) -> int:
    status, text = gslb.http("GET", "/metrics")
    assert status == 200
    total = 0
    for m in re.finditer(rf'gslb_edge_probes_total{{edge="{edge}",[^}}]*}} (\S+)', str(text)):
        total += int(float(m.group(1)))
    return total


@pytest.fixture
def env(
    gslb: GslbProcess, servers: dict[str, StatusServer], loop_thread: LoopThread
) -> Iterator[tuple[GslbProcess, dict[str, StatusServer], LoopThread]]:
    """Every status server running and healthy with no load, every edge back up and serving."""

    def settled() -> bool:
        for name in PLACES:
            st = edge_state(gslb, name)
            if not (st["serving"] and st["load"] == 0.0 and not st["overloaded"]):
                return False
        return london(gslb) == [FRA]

    for s in servers.values():
        s.doc = dict(HEALTHY)
        if s.runner is None:
            loop_thread.run(s.start())
    for name in PLACES:
        gslb.http("POST", f"/v1/edges/{name}/undrain")
    eventually(settled, "every edge up, unloaded and London answered by fra")
    yield gslb, servers, loop_thread


# -- tests ----------------------------------------------------------------------------------------


def test_probed_state_is_visible_in_the_api(env: Any) -> None:
    gslb, servers, _ = env
    st = edge_state(gslb, "fra")
    assert st["probe"]["status_url"] == servers["fra"].url
    assert st["probe"]["probed_up"] is True and st["probe"]["last_ok"] is True
    assert "probe" not in edge_state(gslb, "syd")  # no status_url: not probed
    eventually(lambda: probes_seen(gslb, "fra") >= 2, "probe counters in /metrics")


def test_unhealthy_edge_leaves_answers_and_comes_back(env: Any) -> None:
    gslb, servers, _ = env
    start = len(gslb.lines)
    servers["fra"].doc = {**HEALTHY, "healthy": False}
    eventually(lambda: london(gslb) == [IAD], "London to move to iad")
    gslb.wait_for(r"edge fra is down: 2 failed probe\(s\), last: the edge reports", start=start)
    st = edge_state(gslb, "fra")
    assert st["up"] is False and st["drained"] is False
    assert st["probe"]["last_error"] == "the edge reports unhealthy"
    start = len(gslb.lines)
    servers["fra"].doc = dict(HEALTHY)
    eventually(lambda: london(gslb) == [FRA], "London back on fra")
    gslb.wait_for(r"edge fra is up: 2 good probe\(s\)", start=start)


def test_unreachable_edge_goes_down_and_recovers(env: Any) -> None:
    gslb, servers, loop_thread = env
    start = len(gslb.lines)
    loop_thread.run(servers["fra"].stop())
    eventually(lambda: london(gslb) == [IAD], "London to move to iad")
    gslb.wait_for(r"edge fra is down: 2 failed probe\(s\)", start=start)
    status, text = gslb.http("GET", "/metrics")
    assert status == 200
    assert re.search(r'probes_total\{edge="fra",reason="unreachable",result="failure"\}', text)
    loop_thread.run(servers["fra"].start())
    eventually(lambda: london(gslb) == [FRA], "London back on fra")


def test_malformed_status_counts_as_failure(env: Any) -> None:
    gslb, servers, _ = env
    servers["fra"].doc = {"healthy": "very"}
    eventually(lambda: london(gslb) == [IAD], "London to move to iad")
    assert edge_state(gslb, "fra")["probe"]["last_error"] == '"healthy" is not a boolean'


def test_high_load_spills_to_the_next_nearest_with_hysteresis(env: Any) -> None:
    gslb, servers, _ = env
    servers["fra"].doc = {**HEALTHY, "load_factor": 0.95}
    eventually(lambda: london(gslb) == [IAD], "London to spill to iad")
    st = edge_state(gslb, "fra")
    assert st["up"] is True and st["overloaded"] is True
    # Inside the hysteresis band (0.7 <= load < 0.8): still spilled.
    servers["fra"].doc = {**HEALTHY, "load_factor": 0.75}
    eventually(lambda: edge_state(gslb, "fra")["load"] == 0.75, "load 0.75 applied")
    assert london(gslb) == [IAD]
    assert gslb.addresses("www.example.test", subnet=NEW_YORK) == [IAD]
    servers["fra"].doc = {**HEALTHY, "load_factor": 0.5}
    eventually(lambda: london(gslb) == [FRA], "London back on fra")


def test_load_from_requests_per_second_without_load_factor(env: Any) -> None:
    gslb, servers, _ = env
    doc = {k: v for k, v in HEALTHY.items() if k != "load_factor"}
    servers["fra"].doc = {**doc, "requests_per_second": 900.0}  # capacity 1000 (default)
    eventually(lambda: edge_state(gslb, "fra")["load"] == 0.9, "load 0.9 from 900 rps")
    assert london(gslb) == [IAD]


def test_api_drain_survives_probes_and_probes_own_up_and_load(env: Any) -> None:
    gslb, _, _ = env
    status, _ = gslb.http("POST", "/v1/edges/fra/drain")
    assert status == 200
    assert london(gslb) == [IAD]
    seen = probes_seen(gslb, "fra")
    eventually(lambda: probes_seen(gslb, "fra") >= seen + 4, "four more probes of fra")
    st = edge_state(gslb, "fra")
    assert st["drained"] is True and st["up"] is True and not st["serving"]
    assert london(gslb) == [IAD]
    status, body = gslb.http("POST", "/v1/edges/fra", {"up": False})
    assert status == 409 and "status_url" in body["error"]
    status, body = gslb.http("POST", "/v1/edges/fra", {"load": 0.5})
    assert status == 409
    # An edge without a status_url is still the API's to set.
    status, body = gslb.http("POST", "/v1/edges/syd", {"up": False, "load": 0.3})
    assert status == 200 and body["up"] is False and body["load"] == 0.3
    status, _ = gslb.http("POST", "/v1/edges/syd", {"up": True, "load": 0.0})
    assert status == 200
    status, _ = gslb.http("POST", "/v1/edges/fra/undrain")
    assert status == 200
    assert london(gslb) == [FRA]


# -- SIGHUP and workers ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_reload_reschedules_and_workers_follow(
    tmp_path: Path,
    geo_db: Path,
    loop_thread: LoopThread,
    servers: dict[str, StatusServer],
    workers: int,
) -> None:
    # Own status servers: this test changes their documents while its own gslb runs.
    own = {name: StatusServer(name) for name in PLACES}
    for s in own.values():
        loop_thread.run(s.start())
    path = tmp_path / "gslb.toml"
    path.write_text(render(geo_db, {"fra": own["fra"].url}), encoding="utf-8")
    proc = GslbProcess(path, "--workers", str(workers))

    def all_answers(subnet: str, expect: str) -> bool:
        # Several queries from fresh sockets reach every worker (SO_REUSEPORT hashing).
        return all(proc.addresses("www.example.test", subnet=subnet) == [expect] for _ in range(8))

    try:
        eventually(lambda: edge_state(proc, "fra").get("probe", {}).get("last_ok"), "fra probed")
        assert "probe" not in edge_state(proc, "iad")
        own["fra"].doc = {**HEALTHY, "healthy": False}
        eventually(lambda: all_answers(LONDON, IAD), "every worker answering London with iad")
        # Reload: iad gets a status URL reporting unhealthy; fra loses its URL (keeps its state).
        own["iad"].doc = {**HEALTHY, "healthy": False}
        path.write_text(render(geo_db, {"iad": own["iad"].url}), encoding="utf-8")
        start = len(proc.lines)
        proc.signal(signal.SIGHUP)
        proc.wait_for(r"reloaded config", start=start)
        eventually(lambda: not edge_state(proc, "iad")["up"], "iad down after the reload")
        st = edge_state(proc, "fra")
        assert "probe" not in st and st["up"] is False  # no longer probed: kept as it was
        # fra and iad are both down: New York is answered by the nearest serving edge, nrt.
        eventually(lambda: all_answers(NEW_YORK, NRT), "New York answered by nrt")
        status, _ = proc.http("POST", "/v1/edges/fra", {"up": True})  # the API's again
        assert status == 200
        eventually(lambda: all_answers(LONDON, FRA), "London back on fra")
    finally:
        assert proc.stop() == 0, proc.log_text()
        for s in own.values():
            loop_thread.run(s.stop())


# -- a real edge --------------------------------------------------------------------------------


async def _start_origin() -> web.AppRunner:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="origin")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def test_real_edge_admin_status(
    tmp_path: Path, geo_db: Path, loop_thread: LoopThread, servers: dict[str, StatusServer]
) -> None:
    origin = loop_thread.run(_start_origin())
    edge: EdgeServe | None = None
    proc: GslbProcess | None = None
    try:
        edge = EdgeServe(
            "--listen",
            "127.0.0.1:0",
            "--origin",
            f"http://127.0.0.1:{origin.addresses[0][1]}",
            "--admin",
            "127.0.0.1:0",
        )
        url = f"http://{edge.addresses['admin']}/__edge/status"
        path = tmp_path / "gslb.toml"
        path.write_text(render(geo_db, {"fra": url}), encoding="utf-8")
        proc = GslbProcess(path)
        gslb = proc
        st = eventually(
            lambda: (s := edge_state(gslb, "fra"))["probe"]["last_ok"] and s, "fra probed"
        )
        assert st["up"] is True and 0.0 <= st["load"] <= 1.0
        assert london(gslb) == [FRA]
        edge.stop()  # the edge goes away: its admin port refuses connections
        eventually(lambda: london(gslb) == [IAD], "London to move to iad")
        assert edge_state(gslb, "fra")["up"] is False
    finally:
        if proc is not None:
            assert proc.stop() == 0, proc.log_text()
        if edge is not None:
            edge.stop()
        loop_thread.run(origin.cleanup())
