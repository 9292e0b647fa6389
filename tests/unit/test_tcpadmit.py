"""TCP admission under pressure (gslb.tcpadmit.TcpTable): the least recently active
connection makes room, a network's share is capped, and the idle timeout shortens (and
sweeps) while half the slots are taken. Pure: connections are plain strings, time a number."""

from __future__ import annotations

import ipaddress

from gslb.tcpadmit import SWEEP, Admission, TcpLimits, TcpTable


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_full_table_closes_the_least_recently_active() -> None:
    limits = TcpLimits(max_connections=3, per_network=10, busy_idle_timeout=10.0)  # no sweep
    table: TcpTable[str] = TcpTable(limits)
    for i, name in enumerate("abc"):
        assert table.admit(name, ip(f"192.0.{i}.1"), 0.0) == (Admission.ADMIT, [])
    table.touch("a", 1.0)  # a queried: b is now the least recently active
    assert table.admit("d", ip("192.0.9.1"), 2.0) == (Admission.ADMIT, ["b"])
    assert table.connections() == ["c", "a", "d"] and table.evicted == 1
    assert "b" not in table


def test_a_network_beyond_its_share_is_refused() -> None:
    table: TcpTable[str] = TcpTable(TcpLimits(max_connections=100, per_network=2))
    assert table.admit("a", ip("198.51.100.1"), 0.0)[0] is Admission.ADMIT
    assert table.admit("b", ip("198.51.100.200"), 0.0)[0] is Admission.ADMIT  # same /24
    assert table.admit("c", ip("198.51.100.7"), 0.0) == (Admission.REFUSE, [])
    assert table.admit("d", ip("198.51.101.7"), 0.0)[0] is Admission.ADMIT  # another /24
    table.remove("a")
    assert table.admit("c", ip("198.51.100.7"), 0.0)[0] is Admission.ADMIT
    assert table.refused == 1


def test_ipv6_networks_are_slash_56() -> None:
    table: TcpTable[str] = TcpTable(TcpLimits(per_network=1))
    assert table.admit("a", ip("2001:db8:0:1::1"), 0.0)[0] is Admission.ADMIT
    assert table.admit("b", ip("2001:db8:0:ff::2"), 0.0)[0] is Admission.REFUSE  # same /56
    assert table.admit("c", ip("2001:db8:0:100::1"), 0.0)[0] is Admission.ADMIT


def test_idle_timeout_shortens_at_half_full_and_sweeps() -> None:
    limits = TcpLimits(max_connections=4, per_network=10, idle_timeout=10.0, busy_idle_timeout=1)
    table: TcpTable[str] = TcpTable(limits)
    table.admit("a", ip("192.0.2.1"), 0.0)
    assert table.idle_timeout() == 10.0
    assert table.sweep(100.0) == []  # not under pressure: each connection's timer decides
    table.admit("b", ip("192.0.2.2"), 0.5)
    assert table.idle_timeout() == 1.0
    # c arrives at 1.2: a (idle 1.2 s) is swept, b (idle 0.7 s) stays.
    assert table.admit("c", ip("192.0.2.3"), 1.2) == (Admission.ADMIT, ["a"])
    assert table.connections() == ["b", "c"]


def test_sweep_is_bounded() -> None:
    limits = TcpLimits(max_connections=100, per_network=100, busy_idle_timeout=1.0)
    table: TcpTable[int] = TcpTable(limits)
    for i in range(60):
        table.admit(i, ip("192.0.2.1"), 0.0)
    _, closed = table.admit(99, ip("192.0.2.1"), 5.0)
    assert closed == list(range(SWEEP))
    assert len(table) == 60 - SWEEP + 1


def test_remove_is_idempotent() -> None:
    table: TcpTable[str] = TcpTable(TcpLimits(per_network=1))
    table.admit("a", ip("192.0.2.1"), 0.0)
    table.remove("a")
    table.remove("a")
    table.touch("a", 1.0)
    assert len(table) == 0
    assert table.admit("b", ip("192.0.2.1"), 0.0)[0] is Admission.ADMIT
