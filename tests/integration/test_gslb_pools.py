"""Pool policies, ECS scope, the HTTP API changing answers, and metrics, against the real
`gslb serve` process (one per module; each test restores the edge state it changes)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import pytest

from tests.integration.gslb_helpers import (
    EDGE_IPS,
    FRANKFURT6,
    LONDON,
    NEW_YORK,
    TOKYO,
    GslbProcess,
    dig,
    write_config,
)

FRA, IAD, NRT = EDGE_IPS["fra"], EDGE_IPS["iad"], EDGE_IPS["nrt"]


@pytest.fixture(scope="module")
def gslb(tmp_path_factory: pytest.TempPathFactory, geo_db: Path) -> Iterator[GslbProcess]:
    config = write_config(tmp_path_factory.mktemp("gslb") / "gslb.toml", geo_db, query_log=True)
    proc = GslbProcess(config)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()


@pytest.fixture
def api(gslb: GslbProcess) -> Iterator[GslbProcess]:
    """The server, with every edge reset to up / undrained / no load after the test."""
    yield gslb
    for edge in EDGE_IPS:
        status, _ = gslb.http(
            "POST", f"/v1/edges/{edge}", {"up": True, "drained": False, "load": 0.0}
        )
        assert status == 200


def ecs_scope(reply: dns.message.Message) -> int | None:
    for opt in reply.options:
        if isinstance(opt, dns.edns.ECSOption):
            return int(opt.scopelen)
    return None


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    ("subnet", "edge"),
    [(LONDON, FRA), (NEW_YORK, IAD), (TOKYO, NRT)],
    ids=["london", "new-york", "tokyo"],
)
def test_nearest_by_client_subnet(gslb: GslbProcess, subnet: str, edge: str, tcp: bool) -> None:
    reply = gslb.query("www.example.test", subnet=subnet, tcp=tcp)
    assert [rr.to_text() for rr in reply.answer[0]] == [edge]
    assert reply.answer[0].ttl == 30
    assert ecs_scope(reply) == 24  # the GeoIP network's prefix


def test_nearest_ipv6_subnet_and_aaaa(gslb: GslbProcess) -> None:
    reply = gslb.query("www.example.test", "AAAA", subnet=FRANKFURT6)
    assert [rr.to_text() for rr in reply.answer[0]] == ["fd00::11"]
    assert ecs_scope(reply) == 32  # 2001:db8::/32 in the test database


def test_no_ecs_echo_without_ecs(gslb: GslbProcess) -> None:
    reply = gslb.query("www.example.test")
    assert reply.answer and ecs_scope(reply) is None


def test_untailored_answers_have_scope_zero(gslb: GslbProcess) -> None:
    assert ecs_scope(gslb.query("static.example.test", subnet=LONDON)) == 0
    assert ecs_scope(gslb.query("all.example.test", subnet=LONDON)) == 0
    # a subnet the database does not know: not tailored either
    assert ecs_scope(gslb.query("www.example.test", subnet="10.9.8.0/24")) == 0


def test_answers_count(gslb: GslbProcess) -> None:
    assert gslb.addresses("two.example.test", subnet=LONDON) == [FRA, IAD]
    assert gslb.addresses("two.example.test", subnet=TOKYO) == [FRA, NRT]  # FRA 9.4k km, IAD 10.9k


def test_all_policy(api: GslbProcess) -> None:
    assert api.addresses("all.example.test", subnet=TOKYO) == [FRA, IAD, NRT]
    assert api.http("POST", "/v1/edges/iad/drain")[0] == 200
    assert api.addresses("all.example.test", subnet=TOKYO) == [FRA, NRT]


def test_failover_policy(api: GslbProcess) -> None:
    assert api.addresses("failover.example.test", subnet=LONDON) == [NRT]
    assert api.http("POST", "/v1/edges/nrt", {"up": False})[0] == 200
    assert api.addresses("failover.example.test", subnet=LONDON) == [IAD]
    assert api.http("POST", "/v1/edges/iad", {"up": False})[0] == 200
    assert api.addresses("failover.example.test", subnet=LONDON) == [FRA]


def test_weighted_policy(api: GslbProcess) -> None:
    seen = set()
    for subnet in (LONDON, NEW_YORK, TOKYO):
        first = api.addresses("weighted.example.test", subnet=subnet)
        assert first == api.addresses("weighted.example.test", subnet=subnet)  # deterministic
        assert len(first) == 1 and first[0] in (FRA, IAD)
        seen.add(first[0])
    # unknown location: the heaviest edge (fra, weight 3)
    assert api.addresses("weighted.example.test") == [FRA]
    assert api.http("POST", "/v1/edges/fra/drain")[0] == 200
    for subnet in (LONDON, NEW_YORK, TOKYO):
        assert api.addresses("weighted.example.test", subnet=subnet) == [IAD]


def test_drain_and_undrain_change_answers(api: GslbProcess) -> None:
    assert api.addresses("www.example.test", subnet=LONDON) == [FRA]
    status, body = api.http("POST", "/v1/edges/fra/drain")
    assert status == 200 and body["drained"] is True
    assert api.addresses("www.example.test", subnet=LONDON) == [IAD]
    assert api.addresses("www.example.test", subnet=LONDON, tcp=True) == [IAD]
    status, body = api.http("POST", "/v1/edges/fra/undrain")
    assert status == 200 and body["drained"] is False
    assert api.addresses("www.example.test", subnet=LONDON) == [FRA]


def test_up_down_and_load_spill_with_hysteresis(api: GslbProcess) -> None:
    assert api.http("PUT", "/v1/edges/fra", {"up": False})[0] == 200
    assert api.addresses("www.example.test", subnet=LONDON) == [IAD]
    assert api.http("PUT", "/v1/edges/fra", {"up": True})[0] == 200
    assert api.addresses("www.example.test", subnet=LONDON) == [FRA]
    for load, expected in [(0.85, IAD), (0.75, IAD), (0.65, FRA), (0.75, FRA)]:
        assert api.http("POST", "/v1/edges/fra", {"load": load})[0] == 200
        assert api.addresses("www.example.test", subnet=LONDON) == [expected], load


def test_fallback_when_every_member_is_down(api: GslbProcess) -> None:
    for edge in ("fra", "iad"):
        assert api.http("POST", f"/v1/edges/{edge}", {"up": False})[0] == 200
    assert api.addresses("spare.example.test", subnet=LONDON) == [NRT]  # configured fallback
    assert api.http("POST", "/v1/edges/nrt", {"up": False})[0] == 200
    # www's fallback is every member: never an empty answer, never SERVFAIL
    assert api.addresses("www.example.test", subnet=LONDON) == [FRA, IAD, NRT]


def test_api_errors(gslb: GslbProcess) -> None:
    status, body = gslb.http("POST", "/v1/edges/nope/drain")
    assert status == 404 and "nope" in body["error"]
    status, body = gslb.http("POST", "/v1/edges/fra", {"load": 2})
    assert status == 400 and "between 0 and 1" in body["error"]
    status, body = gslb.http("POST", "/v1/edges/fra", {"up": "no"})
    assert status == 400
    status, body = gslb.http("GET", "/v1/edges")
    assert status == 200 and set(body["edges"]) == {"fra", "iad", "nrt"}
    status, body = gslb.http("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"


def test_metrics(gslb: GslbProcess) -> None:
    for _ in range(3):
        gslb.query("www.example.test", subnet=TOKYO)
    gslb.query("nope.example.test", "AAAA")
    status, text = gslb.http("GET", "/metrics")
    assert status == 200
    www = re.search(
        r'gslb_queries_total\{pool="www.example.test.",qtype="A",rcode="NOERROR"\} (\d+)', text
    )
    assert www and int(www.group(1)) >= 3
    assert re.search(r'gslb_queries_total\{pool="",qtype="AAAA",rcode="NXDOMAIN"\} [1-9]', text)
    nrt = re.search(r'gslb_answers_total\{edge="nrt"\} (\d+)', text)
    assert nrt and int(nrt.group(1)) >= 3
    count = re.search(r"gslb_answer_latency_seconds_count (\d+)", text)
    assert count and int(count.group(1)) >= 4
    assert 'gslb_edge_serving{edge="fra"}' in text


def test_query_log(gslb: GslbProcess) -> None:
    start = len(gslb.lines)
    gslb.query("static.example.test", subnet=NEW_YORK)
    m = gslb.wait_for(r'^\{.*"qname":"static.example.test."', start=start, timeout=10)
    assert '"ecs":"198.51.100.0/24"' in m.string and '"rcode":"NOERROR"' in m.string


def test_dig_subnets(api: GslbProcess) -> None:
    for subnet, edge in ((LONDON, FRA), (NEW_YORK, IAD), (TOKYO, NRT)):
        out = dig(
            f"@{api.host}", "-p", str(api.port), "www.example.test", f"+subnet={subnet}", "+short"
        )
        assert out.split() == [edge]
    api.http("POST", "/v1/edges/nrt/drain")
    out = dig(f"@{api.host}", "-p", str(api.port), "www.example.test", f"+subnet={TOKYO}", "+short")
    assert out.split() == [FRA]  # next nearest to Tokyo
