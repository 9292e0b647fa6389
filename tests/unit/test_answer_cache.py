"""The encoded-response caches: bounded, and never serving one query's reply to another."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.location import IPAddress, Location, Locator
from geo.locator import GeoIPLocator
from gslb.answer import Responder
from gslb.health import HealthStore
from gslb.respcache import BoundedCache, FifoCache
from tests.unit.answer_support import (
    LONDON,
    Recorder,
    addresses,
    ask,
    build,
    ecs_option,
    make_config,
    query,
)


@pytest.fixture
def responder(geo_db: Path) -> Responder:
    return build(geo_db)[0]


def test_bounded_cache_empties_when_full() -> None:
    cache: BoundedCache[int, str] = BoundedCache(3)
    for i in range(3):
        cache.put(i, str(i))
    assert len(cache) == 3 and cache.get(2) == "2"
    cache.put(2, "two")  # replacing a key does not count as growth
    assert len(cache) == 3 and cache.clears == 0
    cache.put(3, "3")
    assert len(cache) == 1 and cache.clears == 1
    assert cache.get(0) is None and cache.getter(3) == "3"
    cache.clear()
    assert 3 not in cache
    with pytest.raises(ValueError):
        BoundedCache(0)


def test_ecs_address_is_patched_per_query(responder: Responder) -> None:
    # Same /24 network (same cache entry), different /32 sources: each echo is its own.
    for host in ("192.0.2.5", "192.0.2.6", "192.0.2.5"):
        m = ask(responder, query("www.example.test.", ecs=host, prefix=32))
        opt = ecs_option(m)
        assert opt is not None and opt.address == host and opt.srclen == 32
    for host in ("192.0.2.77", "192.0.2.78"):
        m = ask(responder, query("static.example.test.", ecs=host, prefix=32))
        opt = ecs_option(m)
        assert opt is not None and opt.address == host and opt.scopelen == 0


def test_flags_and_transport_are_not_mixed_up(responder: Responder) -> None:
    udp = ask(responder, query("big1.example.test.", "TXT"))
    tcp = ask(responder, query("big1.example.test.", "TXT"), tcp=True)
    again = ask(responder, query("big1.example.test.", "TXT"))
    assert udp.flags & dns.flags.TC and again.flags & dns.flags.TC
    assert not tcp.flags & dns.flags.TC and tcp.answer
    do = ask(responder, query("static.example.test.", edns=0, do=True))
    plain = ask(responder, query("static.example.test.", edns=0))
    assert do.ednsflags & dns.flags.DO and not plain.ednsflags & dns.flags.DO
    no_rd = ask(responder, query("static.example.test.", rd=False, qid=9))
    assert not no_rd.flags & dns.flags.RD and no_rd.id == 9


def test_pool_answers_depend_on_the_client_not_the_cache(responder: Responder) -> None:
    wire = query("www.example.test.")
    seen = {client: addresses(ask(responder, wire, client)) for client in (LONDON, "203.0.113.9")}
    assert seen == {LONDON: ["127.0.0.11"], "203.0.113.9": ["127.0.0.13"]}
    assert addresses(ask(responder, wire, LONDON)) == ["127.0.0.11"]


def test_many_distinct_names_stay_correct(responder: Responder) -> None:
    # More distinct queries than any single response is reused for: answers stay right.
    for i in range(300):
        m = ask(responder, query(f"n{i}.wild.example.test."))
        assert addresses(m) == ["192.0.2.40"]
        assert str(m.answer[0].name) == f"n{i}.wild.example.test."


def test_fifo_cache_evicts_the_oldest_entry_per_insert() -> None:
    cache: FifoCache[int, str] = FifoCache(3)
    for i in range(3):
        cache.put(i, str(i))
    cache.put(1, "one")  # replacing a key neither grows nor reorders
    assert len(cache) == 3 and cache.evictions == 0 and cache.getter(1) == "one"
    cache.put(3, "3")
    assert len(cache) == 3 and cache.evictions == 1
    assert 0 not in cache and cache.get(1) == "one" and cache.get(3) == "3"
    cache.clear()
    assert len(cache) == 0 and cache.get(3) is None
    cache.put(4, "4")
    assert cache.get(4) == "4"
    with pytest.raises(ValueError):
        FifoCache(0)


@given(
    size=st.integers(1, 8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=200),
)
def test_fifo_cache_matches_a_model(size: int, ops: list[tuple[bool, int]]) -> None:
    cache: FifoCache[int, int] = FifoCache(size)
    model: dict[int, int] = {}  # insertion-ordered, like the cache
    for n, (is_put, key) in enumerate(ops):
        if is_put:
            if key not in model and len(model) >= size:
                del model[next(iter(model))]
            model[key] = n
            cache.put(key, n)
        else:
            assert cache.get(key) == model.get(key)
        assert len(cache) == len(model) <= size
    assert all(cache.get(k) == v for k, v in model.items())


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["www", "WwW", "static", "two", "nothing-here"]),
    qid=st.integers(0, 0xFFFF),
    address=st.binary(min_size=3, max_size=3),
    tcp=st.booleans(),
)
def test_parsed_query_shapes_give_the_replies_a_full_parse_gives(
    geo_db: Path, name: str, qid: int, address: bytes, tcp: bool
) -> None:
    # Queries that differ from one seen before only in the ID and a trailing /24 ECS address
    # skip parsing; the replies must be the ones a responder that parses everything sends.
    fast, slow = build(geo_db)[0], build(geo_db)[0]
    slow._shapes_get = lambda key: None  # type: ignore[method-assign]
    first = query(f"{name}.example.test.", ecs="198.51.100.0")
    wire = bytes((qid >> 8, qid & 0xFF)) + first[2:-3] + address
    client = ipaddress.ip_address(LONDON)
    assert fast.respond(first, client, tcp=tcp) == slow.respond(first, client, tcp=tcp)
    assert len(fast._shapes) == 1
    assert fast.respond(wire, client, tcp=tcp) == slow.respond(wire, client, tcp=tcp)


def test_cached_query_bytes_stay_small_whatever_the_queries_carry(geo_db: Path) -> None:
    # A valid query may carry kilobytes of ignored options; the caches keyed by query bytes
    # are bounded in entries, so keeping such keys would let 50,000 entries hold gigabytes.
    responder, fresh = build(geo_db)[0], build(geo_db)[0]
    client = ipaddress.ip_address(LONDON)
    sent = 0
    for i in range(20):
        padding = dns.edns.GenericOption(65001, i.to_bytes(2, "big") * 2000)
        for options in ([padding], [padding, dns.edns.ECSOption("192.0.2.0", 24)]):
            for name in ("static.example.test.", "www.example.test."):
                q = dns.message.make_query(name, "A", use_edns=0, options=options, id=i)
                wire = q.to_wire(max_size=65535)
                assert len(wire) > 4000
                sent += 1
                out = responder.respond(wire, client, tcp=False)
                assert out is not None and out == fresh.respond(wire, client, tcp=False)
                assert dns.message.from_wire(out).rcode() == dns.rcode.NOERROR
    held = sum(len(key[0]) for key in responder._exact._data)
    held += sum(len(key) for key in responder._shapes._data)
    assert held <= sent * 512


class CountingLocator:
    """The real locator, counting lookups: a tier-1 (query bytes) hit locates nobody."""

    def __init__(self, inner: Locator) -> None:
        self.inner = inner
        self.lookups = 0

    def locate(self, address: IPAddress) -> Location | None:
        self.lookups += 1
        return self.inner.locate(address)


def test_a_health_change_drops_only_the_cached_answers_of_the_edges_pools(geo_db: Path) -> None:
    # www holds fra, iad and nrt; noaaaa holds nrt; mixed holds v6only. Each pool is asked
    # with an ECS subnet (served from tier 1, the query bytes) and without (the pool tier,
    # keyed by the client's place); a pool answer that no cache held runs the selection,
    # which the observer is told about (pool_miss).
    cfg = make_config()
    health = HealthStore(cfg.pools, [e.name for e in cfg.edges])
    locator = CountingLocator(GeoIPLocator(geo_db))
    recorder = Recorder()
    responder = Responder(cfg, locator, health, observer=recorder)
    asks = [
        query(name, rdtype, ecs=ecs)
        for name, rdtype in (
            ("www.example.test.", "A"),
            ("noaaaa.example.test.", "A"),
            ("mixed.example.test.", "AAAA"),
        )
        for ecs in ("192.0.2.0", None)
    ]
    static = query("static.example.test.", ecs="192.0.2.0")

    def ask_all() -> tuple[dict[str, int], int, list[str]]:
        """Ask everything once: (selections run per pool, client lookups, www's answer)."""
        misses, lookups = len(recorder.misses), locator.lookups
        www = addresses(ask(responder, asks[0]))
        assert addresses(ask(responder, asks[1])) == www  # with and without ECS alike
        for wire in asks[2:]:
            ask(responder, wire)
        assert addresses(ask(responder, static)) == ["192.0.2.30"]
        ran = Counter(name.split(".")[0] for name in recorder.misses[misses:])
        return dict(ran), locator.lookups - lookups, www

    assert ask_all() == ({"www": 2, "noaaaa": 2, "mixed": 2}, 6, ["127.0.0.11"])
    # warm: only the 3 queries without ECS locate their client, and every pool answer hits
    assert ask_all() == ({}, 3, ["127.0.0.11"])
    health.set_drained("fra", True)  # in www only
    assert ask_all() == ({"www": 2}, 4, ["127.0.0.12"])
    assert ask_all() == ({}, 3, ["127.0.0.12"])
    health.set_load("nrt", 0.5)  # in www and noaaaa
    assert ask_all() == ({"www": 2, "noaaaa": 2}, 5, ["127.0.0.12"])
    health.set_drained("v6only", True)  # in mixed only
    assert ask_all() == ({"mixed": 2}, 4, ["127.0.0.12"])
    health.set_drained("fra", True)  # an update that changes nothing
    assert ask_all() == ({}, 3, ["127.0.0.12"])
    health.set_drained("fra", False)
    assert ask_all() == ({"www": 2}, 4, ["127.0.0.11"])
    # static answers never depended on the health state: slot 0, which never moves
    assert health.generations[0] == 0
    assert responder._exact.get((static[2:], False))[4:6] == (0, 0)  # type: ignore[index]
