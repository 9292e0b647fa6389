"""Answers explained by a running `gslb serve`: /v1/explain, `gslb explain`, /v1/topology.

The explanation must be the answer: for every pool, several client subnets and several edge
states, the edges /v1/explain names and its ECS scope are compared with what the same
process answers over DNS for the same subnet. The CLI is run as a real subprocess, against
the API and offline from the config file.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import pytest

from tests.integration.gslb_helpers import (
    EDGE_IPS,
    FRANKFURT6,
    LONDON,
    NEW_YORK,
    TOKYO,
    GslbProcess,
    gslb_cmd,
    reset_edges,
    running,
    write_config,
)

POOLS = ("www", "two", "weighted", "failover", "all", "spare", "alias")
SUBNETS = (LONDON, NEW_YORK, TOKYO, "100.64.0.128/25", "100.64.1.0/24", "198.18.0.0/24")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Path:
    return write_config(tmp_path_factory.mktemp("explain") / "gslb.toml", geo_db)


@pytest.fixture(scope="module")
def gslb(config: Path) -> Iterator[GslbProcess]:
    with running(config) as proc:
        yield proc


@pytest.fixture
def clean(gslb: GslbProcess) -> Iterator[GslbProcess]:
    """The server, with every edge reset to up / undrained / no load after the test."""
    yield gslb
    reset_edges(gslb, EDGE_IPS)


def explain(gslb: GslbProcess, name: str, client: str, rtype: str = "A") -> dict[str, Any]:
    query = f"/v1/explain?name={name}&client={client}&type={rtype}"
    status, body = gslb.http("GET", query)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def dns_answer(gslb: GslbProcess, name: str, subnet: str, rtype: str) -> tuple[list[str], int]:
    reply = gslb.query(name, rtype, subnet=subnet)
    addrs = sorted(
        rr.to_text() for rrset in reply.answer for rr in rrset if rrset.rdtype in (1, 28)
    )
    scopes = [o.scopelen for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    return addrs, scopes[0]


def assert_explained_as_answered(gslb: GslbProcess) -> None:
    for pool in POOLS:
        name = f"{pool}.example.test"
        for subnet in SUBNETS:
            doc = explain(gslb, name, subnet)
            got = (sorted(a["address"] for a in doc["answer"]), doc["ecs_scope"])
            assert got == dns_answer(gslb, name, subnet, "A"), (name, subnet, doc)
    doc = explain(gslb, "www.example.test", FRANKFURT6, "AAAA")
    got = (sorted(a["address"] for a in doc["answer"]), doc["ecs_scope"])
    assert got == dns_answer(gslb, "www.example.test", FRANKFURT6, "AAAA")


def test_explanations_match_the_dns_answers_in_every_state(clean: GslbProcess) -> None:
    gslb = clean
    assert_explained_as_answered(gslb)
    assert gslb.http("POST", "/v1/edges/fra/drain")[0] == 200
    assert gslb.http("POST", "/v1/edges/iad", {"load": 0.9})[0] == 200
    assert_explained_as_answered(gslb)
    doc = explain(gslb, "www.example.test", LONDON)
    assert doc["step"] == "load_spill" and doc["answer"][0]["edge"] == "nrt"
    notes = {c["edge"]: c["note"] for c in doc["candidates"]}
    assert notes == {
        "fra": "not named: drained",
        "iad": "not named: overloaded (load_threshold 0.8)",
        "nrt": "answer #1",
    }
    for name in ("fra", "iad", "nrt"):
        assert gslb.http("POST", f"/v1/edges/{name}", {"up": False})[0] == 200
    doc = explain(gslb, "spare.example.test", LONDON)
    assert doc["step"] == "fallback" and doc["answer"] == [{"edge": "nrt", "address": "127.0.0.13"}]
    assert_explained_as_answered(gslb)


def test_explain_errors_over_http(gslb: GslbProcess) -> None:
    status, body = gslb.http("GET", "/v1/explain?name=static.example.test&client=192.0.2.1")
    assert status == 404 and "not answered by a pool" in body["error"]
    status, body = gslb.http("GET", "/v1/explain?name=www.example.test")
    assert status == 400 and "client" in body["error"]
    status, body = gslb.http("GET", "/v1/catchment?pool=www.example.test&step=7")
    assert status == 400 and "step must be one of" in body["error"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return gslb_cmd("explain", *args)


def test_cli_explains_live_and_offline(clean: GslbProcess, config: Path) -> None:
    gslb = clean
    assert gslb.http("POST", "/v1/edges/fra/drain")[0] == 200
    live = run_cli("www.example.test", "192.0.2.1", "--api", gslb.api)
    assert live.returncode == 0, live.stderr
    assert "www.example.test. A for client 192.0.2.1/32" in live.stdout
    assert "network 192.0.2.0/24" in live.stdout and "ECS scope: /24" in live.stdout
    assert "answer: iad 127.0.0.12" in live.stdout
    assert re.search(r"^\s+fra\s+drained\s", live.stdout, re.M), live.stdout
    # Offline, from the file: every edge up, so London gets fra.
    offline = run_cli("alias.example.test", "192.0.2.1", "-c", str(config))
    assert offline.returncode == 0, offline.stderr
    assert "via alias.example.test. CNAME www.example.test." in offline.stdout
    assert "answer: fra 127.0.0.11" in offline.stdout and "offline" in offline.stdout
    as_json = run_cli("www.example.test", "192.0.2.1", "--api", gslb.api, "--json", "-t", "aaaa")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["type"] == "AAAA" and doc["pool"]["members"] == ["fra", "iad"]  # IPv6 ones
    bad = run_cli("static.example.test", "192.0.2.1", "--api", gslb.api)
    assert bad.returncode == 1 and "not answered by a pool" in bad.stderr
    gone = run_cli("www.example.test", "192.0.2.1", "--api", "http://127.0.0.1:1")
    assert gone.returncode == 1 and "error:" in gone.stderr


def test_topology_shows_edges_pools_node_and_changes(clean: GslbProcess) -> None:
    gslb = clean
    assert gslb.http("POST", "/v1/edges/nrt/drain")[0] == 200
    assert gslb.http("POST", "/v1/edges/iad", {"load": 0.85})[0] == 200
    status, topo = gslb.http("GET", "/v1/topology")
    assert status == 200
    assert topo["node"]["config"].endswith("gslb.toml") and topo["node"]["workers"] == 1
    edges = {e["name"]: e for e in topo["edges"]}
    assert list(edges) == ["fra", "iad", "nrt"]
    fra = edges["fra"]
    assert (fra["latitude"], fra["longitude"]) == (50.11, 8.68)
    assert fra["addresses"] == ["127.0.0.11", "fd00::11"] and fra["status"] == "up"
    assert "www.example.test." in fra["pools"]
    assert fra["thresholds"]["www.example.test."] == {"load_threshold": 0.8, "hysteresis": 0.1}
    assert edges["nrt"]["status"] == "drained" and edges["iad"]["status"] == "overloaded"
    assert edges["nrt"]["fallback_for"] == ["spare.example.test."]
    last = edges["nrt"]["last_change"]
    assert last["kind"] == "drained" and last["reason"].startswith(
        "API POST /v1/edges/nrt/drain from 127.0.0.1"
    )
    pools = {p["name"]: p for p in topo["pools"]}
    assert pools["spare.example.test."]["fallback"] == ["nrt"]
    assert pools["weighted.example.test."]["policy"] == "weighted"
    recent = topo["transitions"]
    assert recent[0]["edge"] == "iad" and recent[0]["kind"] == "overloaded"
    assert any(t["edge"] == "nrt" and t["to"] == "drained" for t in recent)
    gslb.wait_for(r"edge iad is overloaded in pool www.example.test.: load 0.85 >= ")
    status, text = gslb.http("GET", "/metrics")
    assert 'gslb_edge_transitions_total{edge="nrt",kind="drained"}' in text
    # /v1/edges carries the facts too.
    status, body = gslb.http("GET", "/v1/edges")
    assert body["edges"]["fra"]["latitude"] == 50.11 and body["edges"]["fra"]["ipv6"] == "fd00::11"


def test_the_parent_of_workers_explains_and_draws(two_workers: GslbProcess) -> None:
    """With --workers the API runs in the parent: it reads the config the parent's probes
    were given and its authoritative health store."""
    assert two_workers.http("POST", "/v1/edges/fra/drain")[0] == 200
    try:
        doc = explain(two_workers, "www.example.test", LONDON)
        assert doc["answer"][0]["edge"] == "iad"
        assert (["127.0.0.12"], 24) == dns_answer(two_workers, "www.example.test", LONDON, "A")
        status, topo = two_workers.http("GET", "/v1/topology")
        assert status == 200 and topo["node"]["workers"] == 2
        assert [w["ready"] for w in topo["node"]["worker_processes"]] == [True, True]
        status, grid = two_workers.http("GET", "/v1/catchment?pool=www.example.test.&step=30")
        assert status == 200 and "fra" not in grid["edges"] and len(grid["rows"]) == 6
        status, page = two_workers.http("GET", "/")
        assert status == 200 and "GeoEdge GSLB" in page
    finally:
        assert two_workers.http("POST", "/v1/edges/fra/undrain")[0] == 200
