"""The cold path of `nearest` pools (Responder._placed, GeoIPLocator.place4): a new client
/24 in a query shape seen before is placed straight from the GeoIP search tree and answered
from the pool tier. It must send the bytes the full path sends, and follow health changes.

Driven over the bundled GeoLite2 snapshot (many real networks and places) with an override,
against a responder whose locator offers no place4, so it always takes the full path."""

from __future__ import annotations

import functools
import io
import ipaddress
import random
from pathlib import Path

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.location import IPAddress, Location
from geo.locator import GeoIPLocator
from gslb import answer
from gslb.answer import Responder
from gslb.health import HealthStore
from gslb.metrics import QueryMetrics
from tests.geodb import bundled_table_dir
from tests.unit.answer_support import Recorder, addresses, make_config, query

# An office network placed in Tokyo by an override: the override wins over the database,
# and place4 must leave such addresses to locate().
OVERRIDE = ipaddress.IPv4Network("81.2.0.0/16")
TOKYO = Location(35.68, 139.69, "JP", "AS", OVERRIDE)
LONDON_NET = "81.2.69.0"  # GeoLite2: Great Britain; inside the override
PARIS_NET = "2.2.2.0"  # GeoLite2: France
FRANCE_NETS = ("2.2.2.0", "2.2.3.0", "2.2.4.0", "2.2.5.0")


class PlainLocator:
    """The same database and override behind `locate` alone: no place4, so a responder over
    it never takes the cold path."""

    def __init__(self, inner: GeoIPLocator) -> None:
        self.inner = inner

    def locate(self, address: IPAddress) -> Location | None:
        return self.inner.locate(address)


@functools.cache
def locators() -> tuple[GeoIPLocator, GeoIPLocator, GeoIPLocator]:
    """(walking the search tree, the same for the full path, with the /24 table)."""
    tabled = GeoIPLocator(overrides=[TOKYO], table_dir=bundled_table_dir())
    tabled.poll_table()  # built already: mapped at once
    assert tabled.table_ready
    return GeoIPLocator(overrides=[TOKYO]), GeoIPLocator(overrides=[TOKYO]), tabled


def pair(tabled: bool = False) -> tuple[Responder, Responder, HealthStore, Recorder]:
    """(cold-path responder, full-path responder, their shared health, the first's observer);
    `tabled`: the cold path places /24s from the /24 table (geo.table), else by the walk."""
    cfg = make_config()
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    walking, plain, table = locators()
    placed = table if tabled else walking
    recorder = Recorder()
    fast = Responder(cfg, placed, health, observer=recorder)
    slow = Responder(cfg, PlainLocator(plain), health)
    return fast, slow, health, recorder


@functools.cache
def shared(tabled: bool) -> tuple[Responder, Responder, HealthStore, Recorder]:
    return pair(tabled)


def with_address(wire: bytes, qid: int, address: bytes) -> bytes:
    """`wire` (ending in a /24 ECS address) with another ID and ECS address."""
    return qid.to_bytes(2, "big") + wire[2:-3] + address


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["www", "WwW", "two", "static"]),
    tcp=st.booleans(),
    asks=st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.one_of(
                st.binary(min_size=3, max_size=3),
                st.sampled_from([LONDON_NET, PARIS_NET, "81.2.255.0", "10.0.0.0"]).map(
                    lambda a: ipaddress.IPv4Address(a).packed[:3]
                ),
            ),
        ),
        min_size=1,
        max_size=40,
    ),
    tabled=st.booleans(),
)
def test_the_cold_path_sends_what_the_full_path_sends(
    name: str, tcp: bool, asks: list[tuple[int, bytes]], tabled: bool
) -> None:
    fast, slow, _, _ = shared(tabled)
    first = query(f"{name}.example.test.", ecs=PARIS_NET, rd=False)  # a place: registers
    client = ipaddress.ip_address("192.0.2.1")
    for qid, address in [(7, first[-3:]), *asks]:
        wire = with_address(first, qid, address)
        assert fast.respond(wire, client, tcp=tcp) == slow.respond(wire, client, tcp=tcp)
    if name != "static":  # a pool answer: its shape now takes the cold path
        assert len(fast._placeable) >= 1
    assert len(slow._placeable) == 0


@pytest.mark.parametrize("tabled", [False, True])
def test_many_networks_answer_alike_and_mostly_through_the_cold_path(tabled: bool) -> None:
    fast, slow, _, recorder = pair(tabled)
    rnd = random.Random(20261202)
    first = query("www.example.test.", ecs=PARIS_NET)
    client = ipaddress.ip_address("192.0.2.1")
    fast.respond(first, client, tcp=False)
    calls = 0
    original = fast._placed

    def counted(*args: object) -> bytes | None:
        nonlocal calls
        out = original(*args)  # type: ignore[arg-type]
        calls += out is not None
        return out

    fast._placed = counted  # type: ignore[method-assign, assignment]
    for i in range(3000):
        wire = with_address(first, i, rnd.getrandbits(24).to_bytes(3, "big"))
        assert fast.respond(wire, client, tcp=False) == slow.respond(wire, client, tcp=False)
    assert calls > 1500  # most were answered by the cold path
    assert len(recorder.calls) == 3001  # and the observer heard of every one


def test_a_cold_query_enters_the_exact_tier_when_it_comes_again() -> None:
    """A stream of new /24s would make an insert and an eviction in the exact tier per
    query: a cold-path answer is kept there only for a query seen before, and the second
    answer of the same query (another ID) keeps the same bytes either way."""
    fast, slow, _, _ = pair(tabled=True)
    client = ipaddress.ip_address("192.0.2.1")
    first = query("www.example.test.", ecs=PARIS_NET)
    fast.respond(first, client, tcp=False)  # the full path: registers the shape
    before = len(fast._exact)
    rnd = random.Random(7)
    wires = [with_address(first, i, rnd.getrandbits(24).to_bytes(3, "big")) for i in range(1, 400)]
    for wire in wires:
        assert fast.respond(wire, client, tcp=False) == slow.respond(wire, client, tcp=False)
    once = len(fast._exact) - before
    assert once < 100  # the full path's answers (no place at hand: no GeoIP data there)
    for i, wire in enumerate(wires):  # again, with other IDs
        again = (i + 1000).to_bytes(2, "big") + wire[2:]
        assert fast.respond(again, client, tcp=False) == slow.respond(again, client, tcp=False)
    assert len(fast._exact) - before > 380  # now kept
    exact_hits = 0
    for i, wire in enumerate(wires):  # a third time: from the exact tier
        third = (i + 2000).to_bytes(2, "big") + wire[2:]
        exact_hits += fast._exact.get((third[2:], False)) is not None
        assert fast.respond(third, client, tcp=False) == slow.respond(third, client, tcp=False)
    assert exact_hits > 380


@pytest.mark.parametrize("tabled", [False, True])
def test_a_shape_keeps_answers_by_place_and_by_choice_in_bounded_rounds(
    tabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each query shape keeps its answers by place (the table's number, or the place itself
    # without a table) and by what the selection chose: many places, few choices, one entry
    # per choice. At POOL_ENTRIES entries a new round starts every shape's memo afresh.
    monkeypatch.setattr(answer, "POOL_ENTRIES", 500)
    fast, slow, _, recorder = pair(tabled)
    first = query("www.example.test.", ecs=PARIS_NET)
    client = ipaddress.ip_address("192.0.2.1")
    fast.respond(first, client, tcp=False)
    (shape,) = fast._placeable._data.values()
    rnd = random.Random(99)
    rounds = set()
    for i in range(3000):
        wire = with_address(first, i, rnd.getrandbits(24).to_bytes(3, "big"))
        assert fast.respond(wire, client, tcp=False) == slow.respond(wire, client, tcp=False)
        assert len(shape.memo) <= 500
        rounds.add(fast._placed_round)
        # the config's pool has 3 edges: at most one choice per edge and ECS scope
        assert len(shape.choices) <= 3 * 25
        assert len({id(hit) for hit in shape.memo.values()}) == len(shape.choices)
    assert len(rounds) > 1
    # by the table's numbers, but for /24s split into smaller networks (placed by place4)
    numbered = sum(isinstance(k, int) for k in shape.memo)
    assert numbered > len(shape.memo) // 2 if tabled else numbered == 0
    assert len(recorder.calls) == 3001


@pytest.mark.parametrize("which", [0, 2])
def test_place4_says_what_locate_says(which: int) -> None:
    locator = locators()[which]
    rnd = random.Random(7)
    values = [rnd.getrandbits(32) for _ in range(5000)]
    values += [int(ipaddress.IPv4Address(a)) for a in (LONDON_NET, PARIS_NET, "10.0.0.1")]
    answered = 0
    for _ in range(2):  # records new to the locator, then known
        for value in values:
            place = locator.place4(value)
            where = locator.locate(ipaddress.IPv4Address(value))
            if place is not None:
                answered += 1
                assert where is not None
                assert place == (where.latitude, where.longitude, where.network.prefixlen)
            elif where is not None:  # only an override leaves a known address to locate()
                assert where is TOKYO
    assert answered > 2000
    assert locator.place4(int(ipaddress.IPv4Address(LONDON_NET))) is None  # the override


def test_place4_agrees_on_the_fixture_database_and_without_the_walk(geo_db: Path) -> None:
    # The fixture stores IPv4 under ::/96 of an IPv6 tree; cache_size=0 turns the walk off,
    # and place4 then asks locate().
    for locator in (GeoIPLocator(geo_db), GeoIPLocator(geo_db, cache_size=0)):
        located = 0
        for text in ("192.0.2.0", "198.51.100.0", "203.0.113.0", "10.1.2.0", "0.0.0.0"):
            value = int(ipaddress.IPv4Address(text))
            where = locator.locate(ipaddress.IPv4Address(value))
            expected = None
            if where is not None:
                expected = (where.latitude, where.longitude, where.network.prefixlen)
            assert locator.place4(value) == expected
            assert locator.place4(value) == expected  # the record known now
            located += expected is not None
        assert located == 3
        locator.close()


def france_answers(fast: Responder, slow: Responder) -> list[list[str]]:
    """The addresses `fast` answers for www's query from each of FRANCE_NETS (over the cold
    path once the first has made the shape), checked against the full path's `slow`."""
    first = query("www.example.test.", ecs=PARIS_NET)
    client = ipaddress.ip_address("192.0.2.1")
    out = []
    for i, net in enumerate(FRANCE_NETS):
        wire = with_address(first, i, ipaddress.IPv4Address(net).packed[:3])
        reply = fast.respond(wire, client, tcp=False)
        assert reply is not None and reply == slow.respond(wire, client, tcp=False)
        out.append(addresses(dns.message.from_wire(reply)))
    return out


@pytest.mark.parametrize("tabled", [False, True])
def test_a_health_change_reaches_answers_of_the_cold_path(tabled: bool) -> None:
    fast, slow, health, recorder = pair(tabled)
    answers = functools.partial(france_answers, fast, slow)
    assert answers() == [["127.0.0.11"]] * 4  # Frankfurt
    assert len(fast._placeable) == 1
    misses = len(recorder.misses)
    health.set_drained("fra", True)
    assert answers() == [["127.0.0.12"]] * 4  # Ashburn: the pool's generation moved
    assert len(recorder.misses) > misses  # the selection ran again
    health.set_drained("fra", False)
    assert answers() == [["127.0.0.11"]] * 4


@pytest.mark.parametrize("tabled", [False, True])
def test_a_load_step_that_changes_no_answer_keeps_the_cold_paths_answers(tabled: bool) -> None:
    # Probes move a pool's generation with every load step. While no member crosses the
    # overload threshold the selection answers every place as before, and the cold path
    # keeps its answers by place: no selection runs again. Crossing it starts them over.
    fast, slow, health, recorder = pair(tabled)
    answers = functools.partial(france_answers, fast, slow)
    assert answers() == [["127.0.0.11"]] * 4  # Frankfurt
    misses = len(recorder.misses)
    generation = health.generations[health.slot("www.example.test.")]
    health.set_load("fra", 0.3)
    assert health.generations[health.slot("www.example.test.")] != generation
    assert answers() == [["127.0.0.11"]] * 4
    assert len(recorder.misses) == misses  # answered from what the cold path kept
    health.set_load("fra", 0.95)  # overloaded: the candidates change
    assert answers() == [["127.0.0.12"]] * 4  # spilled to Ashburn
    assert len(recorder.misses) > misses


@settings(max_examples=60, deadline=None)
@given(
    asks=st.lists(
        st.tuples(
            st.sampled_from(["www", "two", "static", "nothere", "WWW"]),
            st.one_of(
                st.none(),
                st.binary(min_size=3, max_size=3),
                st.sampled_from([LONDON_NET, PARIS_NET, "81.2.255.0"]).map(
                    lambda a: ipaddress.IPv4Address(a).packed[:3]
                ),
            ),
            st.booleans(),  # tcp
        ),
        min_size=1,
        max_size=40,
    ),
    garbage=st.lists(st.binary(max_size=40), max_size=3),
)
def test_counting_replies_in_the_tally_counts_what_telling_each_one_counts(
    asks: list[tuple[str, bytes | None, bool]], garbage: list[bytes]
) -> None:
    # Without a query log the engine counts replies in the observer's tally (exact-query
    # hits, the cold path, the full path); with one it tells each through answered. The
    # counters must come out the same.
    cfg = make_config()
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    placed = locators()[2]
    log = io.StringIO()
    # (counting: by slot; tallying: one slot, so mostly in the tally dict)
    counting, telling, tallying = QueryMetrics(), QueryMetrics(query_log=log), QueryMetrics(slots=1)
    responders = [
        Responder(cfg, placed, health, observer=counting),
        Responder(cfg, placed, health, observer=telling),
        Responder(cfg, placed, health, observer=tallying),
    ]
    client = ipaddress.ip_address("192.0.2.1")
    sent = 0
    for name, address, tcp in asks:
        wire = query(f"{name}.example.test.", ecs=PARIS_NET if address is not None else None)
        if address is not None:
            wire = with_address(wire, 9, address)
        replies = [r.respond(wire, client, tcp=tcp) for r in responders]
        assert replies[0] == replies[1] == replies[2]
        sent += replies[0] is not None
    for wire in garbage:
        replies = [r.respond(wire, client, tcp=False) for r in responders]
        assert replies[0] == replies[1] == replies[2]
        sent += replies[0] is not None
    assert not telling.tally and len(log.getvalue().splitlines()) == sent
    exports = [m.export() for m in (counting, telling, tallying)]
    for e in exports:  # the order of first appearance differs: counted ones come at a read
        e["queries"] = {(r, t, p): n for r, t, p, n in e["queries"]}
    assert exports[0] == exports[1] == exports[2]
    assert sum(counting.queries.values()) == sent and not counting.tally
    assert not any(counting.counts) and not any(tallying.counts) and not tallying.tally
