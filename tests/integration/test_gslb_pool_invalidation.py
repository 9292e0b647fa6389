"""Per-pool answer-cache invalidation across worker processes: a drain through the HTTP API
changes the answers of the pools holding the edge on every worker at once, and the other
pools keep answering from their caches (gslb_pool_cache_misses_total does not move)."""

from __future__ import annotations

import re
import time

import dns.edns
import dns.message
import dns.query
import pytest

from tests.integration.gslb_helpers import (
    EDGE_IPS,
    LONDON,
    TOKYO,
    GslbProcess,
)

FRA, NRT = EDGE_IPS["fra"], EDGE_IPS["nrt"]
SPREAD = 40  # queries from fresh sockets: both workers get some (all on one: p = 2**-39)


def spread(proc: GslbProcess, name: str, subnet: str) -> set[str]:
    """The addresses answered to SPREAD queries, each from a new UDP socket (a new source
    port), so SO_REUSEPORT spreads them over the workers."""
    address, _, prefix = subnet.partition("/")
    seen: set[str] = set()
    for _ in range(SPREAD):
        q = dns.message.make_query(name, "A", use_edns=0)
        q.use_edns(0, options=[dns.edns.ECSOption(address, int(prefix))])
        reply = dns.query.udp(q, proc.host, port=proc.port, timeout=5)
        seen.update(rr.to_text() for rrset in reply.answer for rr in rrset)
    return seen


def counters(proc: GslbProcess, pool: str, queries: int) -> tuple[int, int]:
    """(queries answered, cache misses) of `pool` once the workers reported at least
    `queries` answered (each reports about once a second)."""
    text = ""
    for _ in range(100):
        status, text = proc.http("GET", "/metrics")
        assert status == 200
        q = re.search(
            rf'gslb_queries_total\{{pool="{re.escape(pool)}",qtype="A",rcode="NOERROR"\}} (\S+)',
            text,
        )
        m = re.search(rf'gslb_pool_cache_misses_total\{{pool="{re.escape(pool)}"\}} (\S+)', text)
        if q and m and float(q.group(1)) >= queries:
            return int(float(q.group(1))), int(float(m.group(1)))
        time.sleep(0.1)
    pytest.fail(f"the workers never reported {queries} queries for {pool}:\n{text}")


def test_a_drain_invalidates_only_the_pools_holding_the_edge(two_workers: GslbProcess) -> None:
    # www holds fra, iad and nrt; weighted holds fra and iad only.
    proc = two_workers
    www, weighted = "www.example.test.", "weighted.example.test."
    assert spread(proc, www, TOKYO) == {NRT}
    kept = spread(proc, weighted, LONDON)
    assert len(kept) == 1
    www_queries, www_misses = counters(proc, www, SPREAD)
    queries, misses = counters(proc, weighted, SPREAD)
    assert 1 <= misses <= 2  # one per worker: the rest were cache hits
    try:
        status, body = proc.http("POST", "/v1/edges/nrt/drain")
        assert status == 200 and body["drained"] is True
        # every worker applied the drain before the 200: no one answers nrt any more
        assert spread(proc, www, TOKYO) == {FRA}
        assert spread(proc, weighted, LONDON) == kept
        after = counters(proc, weighted, queries + SPREAD)
        assert after[1] == misses, after  # weighted kept its cached answers on every worker
        www_after = counters(proc, www, www_queries + SPREAD)
        assert www_after[1] > www_misses, www_after  # www's were dropped
    finally:
        assert proc.http("POST", "/v1/edges/nrt/undrain")[0] == 200
    assert spread(proc, www, TOKYO) == {NRT}
