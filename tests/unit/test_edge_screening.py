"""Screening rules and rate limits, sans-IO (edge.screening, edge.ratelimit, edge.screen_config):
token buckets on an injected clock, bans that end, a bounded table that evicts the least
useful keys, one budget for processes sharing a table, rule matching and config errors."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import from_mapping
from edge.errors import ConfigError
from edge.ratelimit import LEASE_MAX, WAYS, Leases, Rate, RateTable, table_key
from edge.screening import Screening, Verdict, forwarded_client, match_path, refusal_head
from geo.locator import GeoIPLocator


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- token buckets ------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    table = RateTable.private(64)
    rate = Rate(per_second=2.0, burst=3)
    key = table_key("r", "client", "192.0.2.0/24")
    assert [table.take(key, rate, 10.0).allowed for _ in range(4)] == [True] * 3 + [False]
    refused = table.take(key, rate, 10.0)
    assert refused.retry_after == pytest.approx(0.5)
    assert table.take(key, rate, 10.5).allowed
    assert not table.take(key, rate, 10.5).allowed
    assert [table.take(key, rate, 100.0).allowed for _ in range(4)] == [True] * 3 + [False]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 2, allow_nan=False)), min_size=1, max_size=80
    ),
    per_second=st.floats(0.1, 20),
    burst=st.integers(1, 10),
)
def test_no_key_ever_gets_more_than_burst_plus_rate_times_time(
    steps: list[tuple[int, float]], per_second: float, burst: int
) -> None:
    table = RateTable.private(64)
    rate = Rate(per_second, burst)
    now = 0.0
    allowed: Counter[int] = Counter()
    for key, gap in steps:
        now += gap
        if table.take(key + 1, rate, now).allowed:
            allowed[key] += 1
    for n in allowed.values():
        assert n <= burst + per_second * now + 1e-9


def test_a_ban_follows_repeated_refusals_and_ends() -> None:
    table = RateTable.private(64)
    rate = Rate(per_second=1.0, burst=1, ban_after=2, ban_seconds=30.0, ban_window=10.0)
    key = 7
    assert table.take(key, rate, 0.0).allowed
    first = table.take(key, rate, 0.1)
    assert not first.allowed and not first.banned
    ban = table.take(key, rate, 0.2)
    assert ban.banned and ban.ban_started and ban.retry_after == 30.0
    assert table.bans(5.0) == 1
    during = table.take(key, rate, 20.0)  # the bucket is full by now: the ban still holds
    assert during.banned and not during.ban_started
    assert during.retry_after == pytest.approx(10.2)
    assert table.take(key, rate, 30.3).allowed  # ended
    assert table.bans(30.3) == 0


def test_violations_far_apart_never_ban() -> None:
    table = RateTable.private(64)
    rate = Rate(per_second=0.01, burst=1, ban_after=2, ban_seconds=30.0, ban_window=5.0)
    assert table.take(1, rate, 0.0).allowed
    assert not table.take(1, rate, 1.0).banned
    assert not table.take(1, rate, 20.0).banned  # 19 s after the last: a fresh count


def test_a_full_table_evicts_full_buckets_then_the_least_recent_never_a_ban() -> None:
    table = RateTable.private(WAYS)  # one set: every key competes for the same slots
    slow = Rate(per_second=0.001, burst=1, ban_after=1, ban_seconds=1000.0)
    assert table.take(1, slow, 0.0).allowed
    assert table.take(1, slow, 0.0).ban_started  # key 1: banned
    for key in range(2, WAYS + 1):  # the other slots: spent buckets, used at times 1..7
        assert table.take(key, slow, float(key)).allowed
    assert table.used() == WAYS
    for key in range(100, 110):  # newcomers: never key 1, oldest spent bucket first
        table.take(key, slow, 50.0 + key)
        assert table.used() == WAYS
        assert table.take(1, slow, 60.0 + key).banned
    # The keys of 2..8 went first, then the newcomers in turn: 102..109 and 1 are left.
    assert table.take(2, slow, 500.0).allowed  # forgotten: a full bucket again


def test_workers_sharing_a_table_share_one_budget() -> None:
    table = RateTable.shared(64, 3)
    rate = Rate(per_second=0.001, burst=50)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def drain() -> None:
        results.put(sum(table.take(42, rate, 1.0).allowed for _ in range(100)))

    procs = [ctx.Process(target=drain) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sum(results.get(timeout=5) for _ in procs) == 50


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.floats(0, 0.2, allow_nan=False)), min_size=1, max_size=300
    ),
    burst=st.integers(1, 2000),
)
def test_leases_never_admit_more_than_the_budget(
    steps: list[tuple[bool, float]], burst: int
) -> None:
    table = RateTable.private(64)
    workers = (Leases(table), Leases(table))  # two processes on one node table
    rate = Rate(per_second=5.0, burst=burst)
    now = 0.0
    allowed = 0
    for which, gap in steps:
        now += gap
        allowed += workers[which].take(9, rate, now).allowed
    assert allowed <= burst + rate.per_second * now + 1e-9


def test_a_lease_spares_the_table_and_never_lends_the_last_tokens() -> None:
    table = RateTable.private(64)
    leases = Leases(table)
    rate = Rate(per_second=0.001, burst=1000)
    assert leases.take(3, rate, 0.0).spare == LEASE_MAX  # 999 left: a full lease
    for _ in range(LEASE_MAX):  # spent without the table
        assert leases.take(3, rate, 0.01).allowed
    assert table.take(3, rate, 0.01).allowed  # the table saw 1 + 32 taken, 1 more now
    small = Rate(per_second=0.001, burst=10)
    outcomes = [leases.take(4, small, 0.0) for _ in range(11)]
    assert [o.allowed for o in outcomes] == [True] * 10 + [False]
    assert not any(o.spare for o in outcomes)  # fewer than 16 left: no lease


# -- matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/api/x?y=1", "/api/x"),
        ("/%61pi/", "/api/"),
        ("/static/../api/x", "/api/x"),
        ("//api//x", "/api/x"),
        ("/a/./b/..", "/a/"),
        ("/../../etc", "/etc"),
        ("/", "/"),
    ],
)
def test_paths_are_matched_as_an_origin_resolves_them(target: str, path: str) -> None:
    assert match_path(target) == path


def _screening(rules: list[dict[str, Any]], clock: Clock, **extra: Any) -> Screening:
    data: dict[str, Any] = {"pool": {"origins": ["http://a.test"]}, "screening": {"rule": rules}}
    data.update(extra)
    config = from_mapping(data, "<test>")
    locator = GeoIPLocator(config.geo.database) if config.geo.database else None
    return Screening(
        config.screening,
        config.server.trusted_proxies,
        RateTable.private(64),
        locator,
        Counter(),
        clock,
    )


def _decide(
    s: Screening,
    method: str = "GET",
    target: str = "/",
    host: str = "a.test",
    headers: dict[str, str] | None = None,
    peer: str = "192.0.2.1",
) -> Verdict | None:
    fields = {k.lower(): v for k, v in (headers or {}).items()}
    candidates = s.ruleset.candidates(method, target, host, fields.get)
    return s.decide(candidates, s.peer_client(peer, fields.get), target, fields.get)


def test_rules_are_checked_in_order_and_allow_ends_the_check() -> None:
    s = _screening(
        [
            {"name": "office", "action": "allow", "clients": ["198.51.100.0/24"]},
            {"name": "admin", "action": "deny", "path_prefix": ["/admin"], "hosts": ["a.test"]},
            {"name": "bots", "action": "close", "header": "user-agent", "header_regex": "bot"},
            {"name": "posts", "action": "deny", "methods": ["post"]},
        ],
        Clock(),
    )
    assert _decide(s, target="/admin/x") == Verdict("admin", "deny")
    assert _decide(s, target="/%61dmin/x") == Verdict("admin", "deny")
    assert _decide(s, target="/admin/x", peer="198.51.100.9") is None  # the office
    assert _decide(s, target="/admin/x", host="b.test") is None
    assert _decide(s, target="/admin/x", host="A.TEST:8080") == Verdict("admin", "deny")
    assert _decide(s, headers={"User-Agent": "somebot/1"}) == Verdict("bots", "close")
    assert _decide(s, method="POST") == Verdict("posts", "deny")
    assert _decide(s) is None
    assert s._counts == Counter(
        {("admin", "deny"): 3, ("office", "allow"): 1, ("bots", "close"): 1, ("posts", "deny"): 1}
    )


def test_a_budget_with_room_lets_later_rules_decide() -> None:
    clock = Clock()
    s = _screening(
        [
            {"name": "per-net", "action": "limit", "rate": "2/m", "burst": 2, "prefix_v4": 24},
            {"name": "no-x", "action": "deny", "path_prefix": "/x"},
        ],
        clock,
    )
    assert _decide(s, target="/x") == Verdict("no-x", "deny")  # per-net had room
    assert _decide(s, peer="192.0.2.200") is None  # same /24: the second token
    verdict = _decide(s, peer="192.0.2.7")
    assert verdict is not None and verdict.action == "limit"
    assert verdict.retry_after == 30
    assert verdict.policy == '"per-net";q=2;w=60' and verdict.limit == '"per-net";r=0;t=30'
    assert _decide(s, peer="192.0.3.1") is None  # another /24
    clock.now += 30
    assert _decide(s, peer="192.0.2.7") is None


def test_budgets_keyed_by_header_and_path() -> None:
    s = _screening(
        [
            {"name": "per-key", "action": "limit", "rate": "1/h", "key": "header:X-Api-Key"},
            {"name": "per-path", "action": "deny", "rate": "1/h", "key": "path", "burst": 2},
        ],
        Clock(),
    )
    assert _decide(s, headers={"X-Api-Key": "a"}, target="/1") is None
    assert _decide(s, headers={"X-Api-Key": "b"}, target="/2") is None
    refused = _decide(s, headers={"X-Api-Key": "a"}, target="/3")
    assert refused is not None and refused.rule == "per-key"
    assert _decide(s, headers={"X-Api-Key": "c"}, target="/1?q") is None  # /1: its second
    refused = _decide(s, headers={"X-Api-Key": "d"}, target="/1")
    assert refused is not None and (refused.rule, refused.status) == ("per-path", 403)


def test_concurrency_counts_requests_in_flight() -> None:
    s = _screening([{"name": "two", "action": "limit", "concurrency": 2}], Clock())
    held: list[list[int]] = []
    for _ in range(2):
        keys: list[int] = []
        candidates = s.ruleset.candidates("GET", "/", "a.test", lambda n: None)
        assert s.decide(candidates, s.client("192.0.2.1"), "/", lambda n: None, keys) is None
        assert len(keys) == 1
        held.append(keys)
    refused = _decide(s)  # the fast path's look: no budget taken
    assert refused is not None and refused.status == 429 and refused.retry_after == 1
    assert _decide(s, peer="192.0.2.2") is None  # another client
    s.leave(held[-1])
    s.leave(held.pop())  # a second leave of the same request changes nothing
    assert _decide(s) is None
    keys = []
    candidates = s.ruleset.candidates("GET", "/", "a.test", lambda n: None)
    assert s.decide(candidates, s.client("192.0.2.1"), "/", lambda n: None, keys) is None
    refused = _decide(s)
    assert refused is not None and refused.rule == "two"


def test_a_refusal_by_a_later_rule_releases_the_concurrency_taken() -> None:
    s = _screening(
        [
            {"name": "one", "action": "limit", "concurrency": 1},
            {"name": "no-post", "action": "deny", "methods": ["POST"]},
        ],
        Clock(),
    )
    keys: list[int] = []
    candidates = s.ruleset.candidates("POST", "/", "a.test", lambda n: None)
    verdict = s.decide(candidates, s.client("192.0.2.1"), "/", lambda n: None, keys)
    assert verdict is not None and verdict.rule == "no-post" and keys == []
    assert _decide(s) is None  # the denied POST holds nothing


def _two_workers(slots: int = 64) -> tuple[RateTable, RateTable]:
    """Two workers' views of one node table (a shared buffer; each counts in its column)."""
    node = RateTable.private(slots * 2)  # just a buffer big enough for 2 columns
    buffer = node._buffer
    a, b = RateTable(buffer, slots, None, 2), RateTable(buffer, slots, None, 2)
    a.claim(0)
    b.claim(1)
    return a, b


def test_concurrency_is_counted_for_the_node_and_a_dead_workers_column_is_reclaimed() -> None:
    a, b = _two_workers()
    assert a.enter(5, 3, 1.0) and a.enter(5, 3, 1.0) and b.enter(5, 3, 1.0)
    assert not a.enter(5, 3, 1.0) and not b.enter(5, 3, 1.0)
    assert a.inflight(5) == b.inflight(5) == 3
    b.leave(5)
    assert a.inflight(5) == 2 and b.enter(5, 3, 2.0)
    b.leave(5)
    b.leave(5)  # more leaves than enters: never below zero
    assert a.inflight(5) == 2
    assert b.enter(5, 3, 3.0)
    # Worker a dies holding two; its replacement claims column 0 and zeroes it.
    replacement = RateTable(a._buffer, a.slots, None, 2)
    replacement.claim(0)
    assert b.inflight(5) == 1
    assert replacement.enter(5, 3, 4.0) and replacement.enter(5, 3, 4.0)
    assert not b.enter(5, 3, 4.0)


def test_keys_in_flight_are_evicted_after_idle_ones() -> None:
    table = RateTable.private(WAYS)  # one set
    rate = Rate(per_second=1.0, burst=1)
    busy = WAYS * 10
    assert table.enter(busy, 1, 0.0)  # the oldest key of the set, in flight
    for key in range(1, WAYS):
        table.take(key, rate, 1.0)  # spent buckets, full again by t=2
    for key in range(100, 100 + WAYS):  # newcomers at t=5: the idle buckets go first
        table.take(key, rate, 5.0)
        if key < 100 + WAYS - 1:
            assert table.inflight(busy) == 1
    table.leave(busy)
    assert table.inflight(busy) == 0
    assert table.enter(busy, 1, 6.0)


def test_country_rules_and_trusted_proxies(geo_db: Path) -> None:
    s = _screening(
        [{"name": "jp", "action": "deny", "countries": ["JP"]}],
        Clock(),
        geo={"database": str(geo_db)},
        server={"trusted_proxies": ["10.0.0.0/8"]},
    )
    assert _decide(s, peer="203.0.113.5") == Verdict("jp", "deny")
    assert _decide(s, peer="::ffff:203.0.113.5") == Verdict("jp", "deny")
    assert _decide(s, peer="192.0.2.5") is None
    xff = {"X-Forwarded-For": "203.0.113.5, 10.1.1.1"}
    assert _decide(s, peer="10.0.0.1", headers=xff) == Verdict("jp", "deny")
    assert _decide(s, peer="192.0.2.5", headers=xff) is None  # not a trusted peer


def test_the_forwarded_client_is_the_rightmost_untrusted_hop() -> None:
    from ipaddress import ip_network

    trusted = [ip_network("10.0.0.0/8")]
    assert forwarded_client("10.0.0.1", "1.1.1.1, 2.2.2.2, 10.9.9.9", trusted) == "2.2.2.2"
    assert forwarded_client("10.0.0.1", None, trusted) == "10.0.0.1"
    assert forwarded_client("10.0.0.1", "10.1.1.1", trusted) == "10.1.1.1"
    assert forwarded_client("10.0.0.1", "junk, 10.1.1.1", trusted) == "10.0.0.1"


def test_a_429_carries_retry_after_and_the_ratelimit_fields() -> None:
    head, body = refusal_head(Verdict("r", "limit", 7, '"r";q=5;w=10', '"r";r=0;t=7'), "D")
    text = head.decode()
    assert text.startswith("HTTP/1.1 429 Too Many Requests\r\n")
    for line in ("Retry-After: 7", 'RateLimit-Policy: "r";q=5;w=10', 'RateLimit: "r";r=0;t=7'):
        assert f"\r\n{line}\r\n" in text
    assert f"Content-Length: {len(body)}\r\n" in text
    assert "Retry-After" not in refusal_head(Verdict("r", "deny"), "D")[0].decode()


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "key", "problem"),
    [
        ({"action": "deny"}, "rule[0].name", "expected a name"),
        ({"name": "a", "action": "block"}, "rule[0].action", "must be one of"),
        ({"name": "a", "action": "deny", "path_regex": "(["}, "path_regex", "not a regular"),
        ({"name": "a", "action": "deny", "clients": ["10.0.0.0/33"]}, "clients[0]", "CIDR"),
        ({"name": "a", "action": "limit", "rate": "100"}, "rule[0].rate", "per unit"),
        ({"name": "a", "action": "limit"}, "rule[0].action", "needs a rate"),
        ({"name": "a", "action": "deny", "burst": 3}, "rule[0].burst", "needs a rate"),
        ({"name": "a", "action": "allow", "rate": "1/s"}, "rule[0].action", "takes no rate"),
        ({"name": "a", "action": "deny", "countries": ["JP"]}, "countries", "[geo] database"),
        ({"name": "a", "action": "deny", "countries": ["Japan"]}, "countries[0]", "ISO 3166"),
        ({"name": "a", "action": "deny", "key": "cookie"}, "rule[0].key", "header:NAME"),
        ({"name": "a", "action": "deny", "header_value": "x"}, "rule[0].header", "name"),
        ({"name": "a", "action": "deny", "colour": "red"}, "rule[0].colour", "unknown key"),
    ],
)
def test_config_errors_name_the_key_and_problem(
    rule: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(
            {"pool": {"origins": ["http://a.test"]}, "screening": {"rule": [rule]}}, "edge.toml"
        )
    message = str(info.value)
    assert message.startswith("edge.toml: screening.")
    assert key in message and problem in message, message


def test_a_geoip_database_that_is_not_one_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_bytes(b"not a database")
    with pytest.raises(ConfigError, match=r"geo\.database: not a usable GeoIP database"):
        from_mapping({"pool": {"origins": ["http://a.test"]}, "geo": {"database": str(bogus)}}, "t")
