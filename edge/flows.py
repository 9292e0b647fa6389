"""The UDP flow table of a stream: flows keyed by client address, idle expiry, a bound.

Pure: time comes in as arguments. The table keeps its entries in recency order, so both
the idle sweep and the eviction of the least recently used flow (when a new client comes
to a full table) look at its front only. The caller owns what an entry holds (edge.stream's
origin sockets) and closes what `put`, `expire` and `resize` hand back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    last: float


class FlowTable(Generic[K, V]):
    def __init__(self, max_flows: int, idle_timeout: float) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def values(self) -> Iterator[V]:
        return (e.value for e in self._entries.values())

    def get(self, key: K, now: float) -> V | None:
        """The flow of `key`, marked as used at `now`; None when there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.last = now
        self._entries.move_to_end(key)
        return entry.value

    def touch(self, key: K, now: float) -> None:
        """Traffic on the flow of `key` (a reply): it is not idle."""
        self.get(key, now)

    def put(self, key: K, value: V, now: float) -> list[tuple[K, V]]:
        """Add a flow; the flows evicted to stay within `max_flows`, least recently used
        first (the flow `key` had before, if any, is not among them: it is replaced)."""
        self._entries.pop(key, None)
        self._entries[key] = _Entry(value, now)
        return self._trim(self.max_flows)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry.value

    def expire(self, now: float) -> list[tuple[K, V]]:
        """Remove and return the flows idle for `idle_timeout` or longer."""
        gone: list[tuple[K, V]] = []
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last < self.idle_timeout:
                break
            del self._entries[key]
            gone.append((key, entry.value))
        return gone

    def resize(self, max_flows: int, idle_timeout: float) -> list[tuple[K, V]]:
        """New limits (a reload); the flows evicted by a smaller bound."""
        self.max_flows = max(1, max_flows)
        self.idle_timeout = idle_timeout
        return self._trim(self.max_flows)

    def clear(self) -> list[tuple[K, V]]:
        gone = [(k, e.value) for k, e in self._entries.items()]
        self._entries.clear()
        return gone

    def _trim(self, bound: int) -> list[tuple[K, V]]:
        evicted: list[tuple[K, V]] = []
        while len(self._entries) > bound:
            key, entry = self._entries.popitem(last=False)
            evicted.append((key, entry.value))
        return evicted
