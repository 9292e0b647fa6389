"""A bounded dictionary for encoded responses and other per-Responder memos.

It is not an LRU: when full it is emptied. A hit costs one dict lookup and a miss one insert,
memory stays bounded, and a flood of distinct names (random-subdomain attacks) degrades to
the uncached path instead of thrashing an eviction order on every packet.
"""

from __future__ import annotations

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
