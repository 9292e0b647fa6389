"""Admission of DNS TCP connections under pressure: which to take, which to close, and how
long an idle one may stay. Pure bookkeeping on (connection, client, time); the TCP adapter
(gslb.server) acts on the answers.

RFC 7766 section 6.2.3 asks a server at its connection limit to close idle connections
rather than refuse new ones, and to shorten its idle timeout under load. Refusing new
connections (what a plain cap does) lets a client that opens `max_connections` idle ones,
and keeps reopening them, close TCP to everyone: the very clients that RRL and BADCOOKIE
send to TCP. So:

- at `max_connections`, a new connection is admitted and the one idle the longest (the least
  recently active) is closed, as NSD does;
- a client network (the address cut to `ipv4_prefix` / `ipv6_prefix` bits, like RRL's) may
  hold at most `per_network` connections: one more is refused, so one network cannot push
  out everyone else's by opening connections faster than they query;
- at or above half of `max_connections` open, the idle timeout is `busy_idle_timeout`
  instead of `idle_timeout`, and each new connection first closes (at most SWEEP of) the
  connections idle longer than that, so the shorter timeout takes effect at once rather
  than at each connection's next idle check.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Admission", "TcpLimits", "TcpTable"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
C = TypeVar("C")
SWEEP = 8  # idle connections closed at most per admission


@dataclass(frozen=True, slots=True)
class TcpLimits:
    max_connections: int = 512
    per_network: int = 64
    idle_timeout: float = 10.0
    busy_idle_timeout: float = 2.0
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56


class Admission(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"  # the client's network holds its share already


class TcpTable(Generic[C]):
    """The open connections, least recently active first, and their count per network."""

    def __init__(self, limits: TcpLimits) -> None:
        self.limits = limits
        # conn -> (network, time of its last activity), least recently active first
        self._active: OrderedDict[C, tuple[tuple[int, int], float]] = OrderedDict()
        self._per_network: dict[tuple[int, int], int] = {}
        self.evicted = 0  # connections closed to admit another (a counter for metrics)
        self.refused = 0  # connections refused by the per-network cap

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, conn: object) -> bool:
        return conn in self._active

    def network(self, client: IPAddress) -> tuple[int, int]:
        if client.version == 4:
            return 4, int(client) >> (32 - self.limits.ipv4_prefix)
        return 6, int(client) >> (128 - self.limits.ipv6_prefix)

    def admit(self, conn: C, client: IPAddress, now: float) -> tuple[Admission, list[C]]:
        """Whether to take `conn` from `client` at `now`, and the connections to close: those
        idle too long under pressure (see `sweep`), and when the table is still full, the
        least recently active one."""
        network = self.network(client)
        count = self._per_network.get(network, 0)
        if count >= self.limits.per_network:
            self.refused += 1
            return Admission.REFUSE, []
        close = self.sweep(now)
        if len(self._active) >= self.limits.max_connections:
            oldest = next(iter(self._active))
            self.remove(oldest)
            self.evicted += 1
            close.append(oldest)
        self._active[conn] = (network, now)
        self._per_network[network] = count + 1
        return Admission.ADMIT, close

    def sweep(self, now: float) -> list[C]:
        """Remove and return up to SWEEP connections idle for the idle timeout or longer
        (none unless under pressure: without it each connection's own timer does this)."""
        timeout = self.idle_timeout()
        if timeout >= self.limits.idle_timeout:
            return []
        out: list[C] = []
        for conn, (_, last) in self._active.items():
            if len(out) >= SWEEP or now - last < timeout:
                break
            out.append(conn)
        for conn in out:
            self.remove(conn)
        return out

    def touch(self, conn: C, now: float) -> None:
        """`conn` was active at `now` (a query arrived, or the client read replies)."""
        entry = self._active.get(conn)
        if entry is not None:
            self._active[conn] = (entry[0], now)
            self._active.move_to_end(conn)

    def remove(self, conn: C) -> None:
        entry = self._active.pop(conn, None)
        if entry is None:
            return
        network = entry[0]
        left = self._per_network[network] - 1
        if left:
            self._per_network[network] = left
        else:
            del self._per_network[network]

    def idle_timeout(self) -> float:
        """How long a connection may stay idle now: shorter when half the slots are taken."""
        limits = self.limits
        if 2 * len(self._active) >= limits.max_connections:
            return min(limits.busy_idle_timeout, limits.idle_timeout)
        return limits.idle_timeout

    def connections(self) -> list[C]:
        return list(self._active)
