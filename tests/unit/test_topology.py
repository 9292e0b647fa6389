"""Topology files (`gslb run`): the default layout, rendering through the programs' own config
loaders, errors that name file, key and problem, the run directory and what is printed."""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RR, A, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

import edge.config
from geo import GeoIPLocator, distance_km
from gslb.cli import main
from gslb.config import load_config
from gslb.errors import TopologyError
from gslb.launcher import RunDir, answer_addresses, dns_query, edge_ready, gslb_ready, hints
from gslb.topology import default_topology, load_topology, parse_topology, plan, toml_text

MINIMAL = """
[[edge]]
name = "fra"
latitude = 50.11
longitude = 8.68
listen = "127.0.0.11:8080"
admin = "127.0.0.11:9090"

[[origin]]
name = "o"
listen = "127.0.0.1:9001"
"""


def test_the_default_topology_is_the_make_run_layout() -> None:
    t = default_topology()
    assert (t.gslb.listen, t.gslb.api, t.gslb.pool_name) == (
        ("127.0.0.1", 5353),
        ("127.0.0.1", 8053),
        "www.example.test.",
    )
    assert [(e.name, e.place, e.listen, e.admin) for e in t.edges] == [
        ("fra", "Frankfurt", ("127.0.0.11", 8080), ("127.0.0.11", 9090)),
        ("iad", "Ashburn", ("127.0.0.12", 8080), ("127.0.0.12", 9090)),
        ("nrt", "Tokyo", ("127.0.0.13", 8080), ("127.0.0.13", 9090)),
    ]
    assert [o.url for o in t.origins] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert (t.probes.interval, t.probes.rise, t.probes.fall) == (1.0, 1, 2)
    assert t.run_dir == ".run"


def test_the_default_clients_are_nearest_to_the_edge_of_their_city() -> None:
    """The bundled GeoLite2 snapshot places each client network where the topology says."""
    t = default_topology()
    expected = {"London": ("GB", "fra"), "New York": ("US", "iad"), "Tokyo": ("JP", "nrt")}
    with GeoIPLocator() as locator:
        for client in t.clients:
            where = locator.locate(client.subnet.network_address)
            assert where is not None, client
            nearest = min(
                t.edges,
                key=lambda e: distance_km(where.latitude, where.longitude, e.latitude, e.longitude),
            )
            assert (where.country, nearest.name) == expected[client.place], client


def test_the_rendered_configs_load_with_the_programs_own_loaders(tmp_path: Path) -> None:
    run_plan = plan(default_topology(), tmp_path)
    for path, text in run_plan.configs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    gslb = load_config(tmp_path / "etc" / "gslb.toml")
    assert [(e.name, str(e.ipv4), e.status_url) for e in gslb.edges] == [
        ("fra", "127.0.0.11", "http://127.0.0.11:9090/__edge/status"),
        ("iad", "127.0.0.12", "http://127.0.0.12:9090/__edge/status"),
        ("nrt", "127.0.0.13", "http://127.0.0.13:9090/__edge/status"),
    ]
    assert (gslb.health.interval, gslb.health.rise, gslb.health.fall) == (1.0, 1, 2)
    assert [p.name for p in gslb.pools] == ["www.example.test."]
    fra = edge.config.load(str(tmp_path / "etc" / "edge-fra.toml"))
    assert [str(a) for a in fra.server.listen] == ["127.0.0.11:8080"]
    assert str(fra.admin.listen) == "127.0.0.11:9090"
    assert fra.cache.dir == str(tmp_path / "cache" / "fra")
    assert [o.url for o in fra.pool.origins] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert fra.pool.probe.path == "/health"
    assert run_plan.cache_dirs == tuple(tmp_path / "cache" / n for n in ("fra", "iad", "nrt"))
    assert [(p.name, p.args[1:3]) for p in run_plan.processes] == [
        ("origin-a", ("edge", "demo-origin")),
        ("origin-b", ("edge", "demo-origin")),
        ("fra", ("edge", "serve")),
        ("iad", ("edge", "serve")),
        ("nrt", ("edge", "serve")),
        ("gslb", ("gslb", "serve")),
    ]


@pytest.mark.parametrize(
    ("before", "after", "error"),
    [
        ("colour = 1\n", "", "colour: unknown key"),
        ("", "[gslb]\nlisten = 'localhost:5353'\n", "gslb.listen: 'localhost' is not an IP"),
        ("", "[gslb]\napi = '127.0.0.1:0'\n", "gslb.api: port 0 is not allowed"),
        ("", "[gslb]\npool = 'a.b'\n", "gslb.pool: 'a.b' is not one label"),
        ("", "[gslb]\nwokers = 2\n", "gslb.wokers: unknown key"),
        ("", "[probes]\ninterval = 0\n", "probes.interval: 0 is out of range"),
        ("", "[probes]\nrise = '1'\n", "probes.rise: must be an integer, not a string"),
        (
            "",
            "[[edge]]\nname = 'fra'\nlatitude = 1\nlongitude = 2\n"
            "listen = '127.0.0.12:80'\nadmin = '127.0.0.12:90'\n",
            "edge[1].name: 'fra' is already the name of edge[0]",
        ),
        (
            "",
            "[[origin]]\nname = 'gslb'\nlisten = '127.0.0.1:9002'\n",
            "origin[1].name: 'gslb' is already the name of gslb",
        ),
        ("", "[[origin]]\nname = 'Big O'\nlisten = '127.0.0.1:9002'\n", "is not a name"),
        (
            "",
            "[[edge]]\nname = 'iad'\nlatitude = 1\nlongitude = 2\n"
            "listen = '[::1]:80'\nadmin = '[::1]:90'\n",
            "edge[1].listen: ::1 is not IPv4",
        ),
        (
            "",
            "[[edge]]\nname = 'iad'\nlatitude = 1\nlongitude = 2\n"
            "listen = '127.0.0.11:81'\nadmin = '127.0.0.12:90'\n",
            "edge[1].listen: host 127.0.0.11 is already edge[0]'s",
        ),
        (
            "",
            "[[origin]]\nname = 'p'\nlisten = '127.0.0.11:9090'\n",
            "origin[1].listen: 127.0.0.11:9090 is already edge[0].admin",
        ),
        (
            "",
            "[[edge]]\nname = 'iad'\nlongitude = 2\nlisten = '127.0.0.12:80'\n"
            "admin = '127.0.0.12:90'\n",
            "edge[1].latitude: is required",
        ),
        (
            "",
            "[[edge]]\nname = 'iad'\nlatitude = 91\nlongitude = 2\nlisten = '127.0.0.12:80'\n"
            "admin = '127.0.0.12:90'\n",
            "edge[1].latitude: 91 is out of range",
        ),
        (
            "",
            "[[client]]\nplace = 'London'\nsubnet = '81.2.69.1/24'\n",
            "client[0].subnet: '81.2.69.1/24' is not a network",
        ),
        ("", "[[client]]\nsubnet = '81.2.69.0/24'\n", "client[0].place: is required"),
        ("", "[[edge]\n", "invalid TOML"),
    ],
)
def test_errors_name_the_file_the_key_and_the_problem(before: str, after: str, error: str) -> None:
    with pytest.raises(TopologyError) as exc:
        parse_topology(before + MINIMAL + after, "topo.toml")
    assert str(exc.value).startswith("topo.toml: ")
    assert error in str(exc.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (MINIMAL.replace('[[origin]]\nname = "o"\nlisten = "127.0.0.1:9001"\n', ""), "origin"),
        ("[[origin]]\nname = 'o'\nlisten = '127.0.0.1:9001'\n", "edge"),
    ],
)
def test_an_edge_and_an_origin_are_required(text: str, error: str) -> None:
    with pytest.raises(TopologyError, match=rf"^t.toml: {error}: at least one \[\[{error}\]\]"):
        parse_topology(text, "t.toml")


def test_edges_are_an_array_of_tables() -> None:
    with pytest.raises(TopologyError, match=r"^t\.toml: edge: must be an array of tables"):
        parse_topology("edge = 3\n", "t.toml")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.toml: cannot read"):
        load_topology(tmp_path / "nope.toml")


def test_gslb_run_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--check", "--run-dir", str(tmp_path / "run")]) == 0
    assert "topology.toml: OK: gslb on 127.0.0.1:5353, 3 edge(s), 2 origin(s)" in (
        capsys.readouterr().out
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("127.0.0.11:8080", "127.0.0.11"))
    assert main(["run", "--topology", str(bad), "--check"]) == 1
    assert f"error: {bad}: edge[0].listen: '127.0.0.11' is not \"host:port\"" in (
        capsys.readouterr().err
    )
    assert main(["run", "--print-topology"]) == 0
    printed = parse_topology(capsys.readouterr().out, "printed")
    assert printed == dataclasses.replace(default_topology(), source="printed")


TREE: dict[str, Any] = {
    "top": 1,
    "server": {"listen": ["127.0.0.1:1"], "ratio": 0.25, "on": True},
    "pool": {"origins": ["a", "b"], "probe": {"path": "/health"}},
    "zone": [{"origin": "x.", "soa": {"mname": "ns1"}}, {"origin": "y.", "records": []}],
}


def test_toml_text_round_trips() -> None:
    assert tomllib.loads(toml_text(TREE, "a comment")) == TREE


@given(st.text())
def test_any_string_survives_toml_text(value: str) -> None:
    assert tomllib.loads(toml_text({"t": {"s": value}}))["t"]["s"] == value


def test_the_run_directory_is_locked_and_emptied(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = RunDir(run)
    first.open()
    try:
        (run / "logs").mkdir()
        (run / "logs" / "old.log").write_text("old")
        (run / "mine.txt").write_text("kept")
        with pytest.raises(TopologyError, match="in use by another `gslb run`"):
            RunDir(run).open()
    finally:
        first.close()
    again = RunDir(run)
    again.open()
    again.close()
    assert not (run / "logs").exists()
    assert (run / "mine.txt").read_text() == "kept"


def test_a_directory_that_is_not_a_run_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(TopologyError, match="not empty and not a run directory"):
        RunDir(tmp_path).open()
    assert (tmp_path / "precious.txt").exists()


def test_a_query_and_its_answer() -> None:
    wire = dns_query("www.example.test.", ipaddress.ip_network("81.2.69.0/24"), 77)
    query = DNSRecord.parse(wire)
    reply = query.reply()
    reply.add_answer(RR("www.example.test.", QTYPE.A, rdata=A("127.0.0.11"), ttl=5))
    assert answer_addresses(reply.pack(), 77) == ["127.0.0.11"]
    assert answer_addresses(reply.pack(), 78) is None  # not the answer to our query
    assert answer_addresses(b"\x00\x01", 77) is None


def test_readiness_documents() -> None:
    assert edge_ready({"healthy": True}) is None
    assert edge_ready({"healthy": False}) is not None
    up = {"up": True, "probe": {"last_ok": True}}
    assert gslb_ready({"edges": {"fra": up, "iad": up}}, ["fra", "iad"]) is None
    unprobed = {"up": True}  # a new gslb counts an edge up until its first probe
    assert gslb_ready({"edges": {"fra": up, "iad": unprobed}}, ["fra", "iad"]) == (
        "edges not probed up yet: iad"
    )


def test_hints_name_the_edge_each_client_gets(tmp_path: Path) -> None:
    run_plan = plan(default_topology(), tmp_path)
    pids = {p.name: 100 + i for i, p in enumerate(run_plan.processes)}
    text = hints(run_plan, pids, [["127.0.0.11"], ["127.0.0.12"], None])
    assert (
        "dig @127.0.0.1 -p 5353 www.example.test A +subnet=81.2.69.0/24 +short"
        "    # London: 127.0.0.11 (fra, Frankfurt)"
    ) in text
    assert "# New York: 127.0.0.12 (iad, Ashburn)" in text
    assert "# Tokyo: no answer" in text
    assert "--resolve www.example.test:8080:127.0.0.11 http://www.example.test:8080/" in text
    assert f"kill -STOP -- -{pids['fra']}" in text
