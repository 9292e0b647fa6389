"""The UDP flow table: recency, idle expiry and the bound (edge.flows)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.flows import FlowTable


def test_get_touches_and_expiry_takes_idle_flows_only() -> None:
    table: FlowTable[str, int] = FlowTable(max_flows=10, idle_timeout=5.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=1.0)
    assert table.get("a", now=3.0) == 1
    assert table.expire(now=5.5) == []
    assert table.expire(now=6.0) == [("b", 2)]
    table.touch("a", now=7.0)
    assert table.expire(now=11.9) == [] and len(table) == 1
    assert table.expire(now=12.0) == [("a", 1)] and len(table) == 0


def test_full_table_evicts_the_least_recently_used() -> None:
    table: FlowTable[str, int] = FlowTable(max_flows=2, idle_timeout=60.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=1.0)
    table.get("a", now=2.0)
    assert table.put("c", 3, now=3.0) == [("b", 2)]
    assert "a" in table and "c" in table and "b" not in table
    assert table.resize(1, 60.0) == [("a", 1)]
    assert table.put("c", 4, now=4.0) == [] and table.get("c", 5.0) == 4


def test_pop_and_clear() -> None:
    table: FlowTable[str, int] = FlowTable(max_flows=3, idle_timeout=1.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=0.0)
    assert table.pop("a") == 1 and table.pop("a") is None
    assert table.clear() == [("b", 2)] and list(table.values()) == []


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1)), max_size=200), st.integers(1, 8))
def test_never_above_the_bound_and_evictions_account_for_every_flow(
    ops: list[tuple[int, float]], bound: int
) -> None:
    table: FlowTable[int, int] = FlowTable(max_flows=bound, idle_timeout=3.0)
    now = 0.0
    live: set[int] = set()
    for key, step in ops:
        now += step
        for gone, _ in table.expire(now):
            live.discard(gone)
        if table.get(key, now) is None:
            for gone, _ in table.put(key, key, now):
                live.discard(gone)
            live.add(key)
        assert len(table) <= bound
        assert live == {k for k in range(21) if k in table}
