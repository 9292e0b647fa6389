"""Bounded dictionaries for encoded responses and other per-Responder memos.

`FifoCache` (what the Responder uses): a dict plus a queue of its keys in insertion order;
when full, each insert evicts the oldest key. A hit is one dict lookup with no bookkeeping, an
insert a dict store and a deque append (plus one eviction when full), memory stays bounded,
and there is never a pause: a flood of distinct names or client subnets cycles the entries
one at a time. Not an LRU: a hot entry that reaches the head is evicted and comes back on its
next miss, which costs one rebuild per cache turnover.

`BoundedCache`: the simplest bound, emptied when full. Emptying a large one frees every entry
at once (a pause) and then everything misses, so it suits only small memos.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    __slots__ = ("_data", "_max", "clears")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._data: dict[K, V] = {}
        self._max = max_entries
        self.clears = 0  # how often it filled up (a metric for tuning the size)

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    @property
    def getter(self) -> Callable[[K], V | None]:
        """The underlying dict's bound `get`, for hot paths (valid for the cache's life: the
        dict is emptied in place, never replaced)."""
        return self._data.get

    def put(self, key: K, value: V) -> None:
        data = self._data
        if len(data) >= self._max and key not in data:
            data.clear()
            self.clears += 1
        data[key] = value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class FifoCache(Generic[K, V]):
    __slots__ = ("_data", "_max", "_order", "evictions")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._data: dict[K, V] = {}
        self._order: deque[K] = deque()  # every key of _data once, oldest first
        self._max = max_entries
        self.evictions = 0

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    @property
    def getter(self) -> Callable[[K], V | None]:
        """The underlying dict's bound `get`, for hot paths (valid for the cache's life: the
        dict is only ever changed in place)."""
        return self._data.get

    def put(self, key: K, value: V) -> None:
        data = self._data
        size = len(data)
        data[key] = value  # one hash of the key: keys here are tuples, rehashed every time
        if len(data) != size:  # a new key
            order = self._order
            order.append(key)
            if size >= self._max:
                del data[order.popleft()]
                self.evictions += 1

    def clear(self) -> None:
        self._data.clear()
        self._order.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
