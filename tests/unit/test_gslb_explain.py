"""Answers explained (gslb.selection.explain, gslb.explain) against a real HealthStore.

The explanation must come from the decision itself: the selection invariants property test
(test_gslb_selection.py) checks that `explain` names exactly what `select` answers for any
pool, state and place; these tests pin the step and the per-edge notes of each rule.
gslb.explain is driven through real zones (built from a config) and a small real Locator.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from pathlib import Path

import pytest

from geo.distance import distance_km
from geo.location import IPAddress, Location
from gslb.config import parse_config
from gslb.errors import ExplainError
from gslb.explain import catchment, client_subnet, explain_answer, render, target
from gslb.health import HealthStore
from gslb.models import Edge, Policy, Pool
from gslb.selection import Status, Step, explain
from gslb.zone import Zones
from tests.unit.test_gslb_selection import EDGES, FRA, IAD, LONDON, TOKYO, pool


def notes(p: Pool, where: Location | None, health: HealthStore) -> dict[str, str]:
    return {c.edge.name: c.note for c in explain(p, where, health).candidates}


def test_explanations_are_frozen_values() -> None:
    p = pool()
    exp = explain(p, LONDON, HealthStore([p]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.step = Step.ALL  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.candidates[0].note = "x"  # type: ignore[misc]


# -- each rule ------------------------------------------------------------------------------


def test_nearest() -> None:
    p = pool()
    exp = explain(p, LONDON, HealthStore([p]))
    assert exp.step is Step.NEAREST and exp.selection.edges == (FRA,)
    by_name = {c.edge.name: c for c in exp.candidates}
    assert by_name["fra"].rank == 1 and by_name["fra"].note == "answer #1"
    assert by_name["iad"].note == "not named: farther away"
    assert by_name["fra"].distance_km == pytest.approx(distance_km(51.5, -0.12, 50.11, 8.68))
    assert "nearest serving" in exp.reason


def test_load_spill_names_the_overloaded_edge() -> None:
    p = pool()
    health = HealthStore([p])
    health.set_load("fra", 0.85)
    exp = explain(p, LONDON, health)
    assert exp.step is Step.SPILL and exp.selection.edges == (IAD,)
    assert notes(p, LONDON, health)["fra"] == "not named: overloaded (load_threshold 0.8)"
    assert "fra are overloaded" in exp.reason and "back below 0.7" in exp.reason
    # Tokyo's nearest (nrt) has headroom: fra's load decided nothing there.
    assert explain(p, TOKYO, health).step is Step.NEAREST


def test_hysteresis_keeps_the_spill_until_below_threshold_minus_hysteresis() -> None:
    p = pool()
    health = HealthStore([p])
    health.set_load("fra", 0.9)
    health.set_load("fra", 0.75)  # inside the band: still overloaded
    exp = explain(p, LONDON, health)
    assert exp.step is Step.SPILL
    assert {c.edge.name: c.status for c in exp.candidates}["fra"] is Status.OVERLOADED
    health.set_load("fra", 0.65)
    assert explain(p, LONDON, health).step is Step.NEAREST


def test_least_loaded_when_every_serving_member_is_overloaded() -> None:
    p = pool()
    health = HealthStore([p])
    for name, load in (("fra", 0.95), ("iad", 0.85), ("nrt", 0.9)):
        health.set_load(name, load)
    exp = explain(p, LONDON, health)
    assert exp.step is Step.LEAST_LOADED and exp.selection.edges == (IAD,)
    n = notes(p, LONDON, health)
    assert n["iad"] == "answer #1: overloaded, but no serving member has headroom"
    assert n["fra"] == "not named: more loaded (or farther among equals)"


def test_unlocated_ranks_by_weight_and_headroom() -> None:
    p = pool()
    health = HealthStore([p])
    health.set_load("fra", 0.5)
    exp = explain(p, None, health)
    assert exp.step is Step.UNLOCATED and exp.selection.edges == (IAD,)  # 1 x 1 > 1 x 0.5
    assert all(c.distance_km is None for c in exp.candidates)


def test_weighted_reports_rendezvous_scores() -> None:
    p = pool(Policy.WEIGHTED)
    exp = explain(p, LONDON, HealthStore([p]))
    assert exp.step is Step.WEIGHTED
    scores = {c.edge.name: c.score for c in exp.candidates}
    assert all(s is not None for s in scores.values())
    assert min(scores, key=lambda n: scores[n] or 0.0) == exp.selection.edges[0].name
    assert "192.0.2.0/24" in exp.reason


def test_failover_all_and_down_or_drained() -> None:
    p = pool(Policy.FAILOVER)
    health = HealthStore([p])
    health.set_up("fra", False)
    exp = explain(p, LONDON, health)
    assert exp.step is Step.FAILOVER and exp.selection.edges == (IAD,)
    n = notes(p, LONDON, health)
    assert n["fra"] == "not named: down"
    assert n["nrt"] == "not named: after the first serving members in configured order"
    q = pool(Policy.ALL)
    health = HealthStore([q])
    health.set_drained("nrt", True)
    exp = explain(q, LONDON, health)
    assert exp.step is Step.ALL and exp.selection.edges == (FRA, IAD)
    assert notes(q, LONDON, health)["nrt"] == "not named: drained"


def test_fallback_lists_the_fallback_edges() -> None:
    spare = Edge("spare", 0.0, 0.0, ipv4=ipaddress.IPv4Address("127.0.0.99"))
    p = pool(fallback=(spare, IAD))
    health = HealthStore([p])
    for e in EDGES:
        health.set_up(e.name, False)
    exp = explain(p, LONDON, health)
    assert exp.step is Step.FALLBACK and exp.selection.edges == (spare, IAD)
    by_name = {c.edge.name: c for c in exp.candidates}
    assert by_name["spare"].member is False and by_name["spare"].rank == 1
    assert by_name["iad"].rank == 2 and "fallback set, although down" in by_name["iad"].note
    assert by_name["fra"].rank is None
    assert "listed fallback edges" in exp.reason


# -- gslb.explain: names, clients, scope, text ----------------------------------------------

CONFIG = """
[[zone]]
origin = "example.test."
soa = { mname = "ns1", rname = "hostmaster" }
records = ["@ NS ns1", "ns1 A 127.0.0.1", "alias CNAME www", "static A 127.0.0.30"]

[[edge]]
name = "fra"
ipv4 = "127.0.0.11"
ipv6 = "fd00::11"
latitude = 50.11
longitude = 8.68

[[edge]]
name = "iad"
ipv4 = "127.0.0.12"
latitude = 39.04
longitude = -77.49

[[pool]]
name = "www.example.test."
edges = ["fra", "iad"]

[[pool]]
name = "fixed.example.test."
edges = ["iad", "fra"]
policy = "failover"
"""


class TableLocator:
    """A Locator over a few networks (most specific first): a real, small implementation."""

    def __init__(self, places: Mapping[str, tuple[float, float]]) -> None:
        self.places = sorted(
            ((ipaddress.ip_network(n), ll) for n, ll in places.items()),
            key=lambda item: -item[0].prefixlen,
        )
        self.asked: list[IPAddress] = []

    def locate(self, address: IPAddress) -> Location | None:
        self.asked.append(address)
        for net, (lat, lon) in self.places:
            if address in net:
                return Location(lat, lon, "GB", "EU", net)
        return None


@pytest.fixture
def setup() -> tuple[Zones, TableLocator, HealthStore]:
    config = parse_config(CONFIG, "test.toml", base=Path("."))
    locator = TableLocator(
        {"62.254.0.0/16": (51.5, -0.12), "192.0.2.0/25": (40.7, -74.0), "2001:db8::/32": (1, 1)}
    )
    return Zones(config.zones), locator, HealthStore(config.pools)


def test_explain_answer_locates_like_an_ecs_query(
    setup: tuple[Zones, TableLocator, HealthStore],
) -> None:
    zones, locator, health = setup
    doc = explain_answer(zones, locator, health, "WWW.example.test", "62.254.7.9")
    assert doc["name"] == "www.example.test." and doc["type"] == "A"
    assert doc["client"] == "62.254.7.9/32"
    assert locator.asked == [ipaddress.ip_address("62.254.7.0")]  # cut to /24, as ECS is
    assert doc["located"]["location"]["network"] == "62.254.0.0/16"
    assert doc["ecs_scope"] == 16  # the deciding network's prefix
    assert doc["answer"] == [{"edge": "fra", "address": "127.0.0.11"}]
    assert doc["step"] == "nearest" and doc["tailored"] is True
    assert [c["edge"] for c in doc["candidates"]] == ["fra", "iad"]
    # A GeoIP network longer than /24 still gives scope 24: the decision saw a /24.
    doc = explain_answer(zones, locator, health, "www.example.test", "192.0.2.0/24")
    assert doc["answer"][0]["edge"] == "iad" and doc["ecs_scope"] == 24


def test_explain_answer_follows_cnames_and_narrows_the_family(
    setup: tuple[Zones, TableLocator, HealthStore],
) -> None:
    zones, locator, health = setup
    doc = explain_answer(zones, locator, health, "alias.example.test.", "62.254.0.0/16")
    assert doc["via"] == ["alias.example.test. CNAME www.example.test."]
    assert doc["pool"]["name"] == "www.example.test."
    doc = explain_answer(zones, locator, health, "www.example.test", "2001:db8::1", "aaaa")
    assert doc["type"] == "AAAA" and doc["pool"]["members"] == ["fra"]  # only fra has IPv6
    assert doc["answer"] == [{"edge": "fra", "address": "fd00::11"}]


def test_untailored_answers_have_scope_zero_and_unknown_places_say_so(
    setup: tuple[Zones, TableLocator, HealthStore],
) -> None:
    zones, locator, health = setup
    doc = explain_answer(zones, locator, health, "fixed.example.test", "62.254.0.1")
    assert doc["step"] == "failover" and doc["ecs_scope"] == 0 and doc["tailored"] is False
    doc = explain_answer(zones, locator, health, "www.example.test", "198.18.0.1")
    assert doc["located"]["location"] is None and doc["step"] == "unlocated"
    assert "unknown to the GeoIP database" in render(doc)


@pytest.mark.parametrize(
    ("name", "client", "rtype", "status", "needle"),
    [
        ("www.example.test", "62.254.0.1", "MX", 400, "not A or AAAA"),
        ("www.example.test", "nowhere", "A", 400, "not an address or subnet"),
        ("www.example.test", "0.0.0.0/0", "A", 400, "/0"),
        ("static.example.test", "62.254.0.1", "A", 404, "not answered by a pool"),
        ("www.elsewhere.test", "62.254.0.1", "A", 404, "in no zone"),
        ("a..b", "62.254.0.1", "A", 400, "not a domain name"),
    ],
)
def test_explain_errors(
    setup: tuple[Zones, TableLocator, HealthStore],
    name: str,
    client: str,
    rtype: str,
    status: int,
    needle: str,
) -> None:
    zones, locator, health = setup
    with pytest.raises(ExplainError, match=needle) as info:
        explain_answer(zones, locator, health, name, client, rtype)
    assert info.value.status == status


def test_client_subnet_forms() -> None:
    assert client_subnet("192.0.2.77/24").text() == "192.0.2.0/24"
    assert client_subnet(" 2001:db8::1 ").source == 128


def test_render_shows_the_decision(setup: tuple[Zones, TableLocator, HealthStore]) -> None:
    zones, locator, health = setup
    health.set_drained("fra", True)
    text = render(explain_answer(zones, locator, health, "www.example.test", "62.254.0.1"))
    assert "www.example.test. A for client 62.254.0.1/32" in text
    assert "network 62.254.0.0/16" in text and "ECS scope: /16" in text
    assert "answer: iad 127.0.0.12" in text
    assert "decided by: nearest" in text
    assert any(line.split()[:2] == ["fra", "drained"] for line in text.splitlines())


# -- catchments -------------------------------------------------------------------------------


def test_catchment_cells_get_their_nearest_edge() -> None:
    p = pool()
    health = HealthStore([p])
    grid = catchment(p, health, 10)
    assert len(grid["rows"]) == 18 and all(len(r) == 36 for r in grid["rows"])
    assert grid["tailored"] is True and set(grid["edges"]) == {"fra", "iad", "nrt"}
    for r, row in enumerate(grid["rows"]):
        for c, index in enumerate(row):
            lat, lon = -85.0 + 10 * r, -175.0 + 10 * c
            best = min(EDGES, key=lambda e: distance_km(lat, lon, e.latitude, e.longitude))
            assert grid["edges"][index] == best.name
    health.set_drained("fra", True)
    assert "fra" not in catchment(p, health, 10)["edges"]


def test_catchment_of_an_untailored_pool_and_bad_steps() -> None:
    p = pool(Policy.FAILOVER)
    grid = catchment(p, HealthStore([p]), 30)
    assert grid["edges"] == ["fra"] and grid["tailored"] is False
    with pytest.raises(ExplainError, match="step must be one of"):
        catchment(p, HealthStore([p]), 7)


def test_target_resolves_a_pool_name(setup: tuple[Zones, TableLocator, HealthStore]) -> None:
    zones, _, _ = setup
    t = target(zones, "www.example.test.")
    assert t.answer.pool.name == "www.example.test." and t.rtype == "A" and t.chain == ()
