"""The memory store's ready tasks: one heap per limit key, read in the queue's order across keys.

An ordinary claim takes the queue's first task (priority, then run_at, then push order) across
every key: the first entry of each key waits in a heap of heads, so a task costs a few heap
steps however many keys there are. A limited claim (`apalis_cli.fleet.claim`) walks the keys in
order and takes the first task of each key with room: the keys with waiting tasks are kept
sorted, and a key's backlog is its own heap, so a key at its limit is passed over in one step
however deep its backlog (the claim never reads the tasks behind a key's first).

Nothing is removed from the middle of a heap. An entry whose task moved on (cancelled, killed,
pushed again by a unique replace) is dropped when it comes to the top: `live` says which entries
still stand for a waiting task. The heads heap gets an entry each time a key's first entry
changes (when a limited claim took it, at the next ordinary claim), and is rebuilt from the keys
once it holds twice as many entries as there are keys.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

from .task import TaskId

__all__ = ["Entry", "ReadyTasks"]

Entry = tuple[int, float, int, TaskId]
"""A waiting task's place: (-priority, run_at, push sequence, id); the sequence is unique."""

R = TypeVar("R")

_SPARE_HEADS = 64
"""Stale heads the heap may hold beyond one per key before it is rebuilt."""


class ReadyTasks(Generic[R]):
    """Entries of waiting tasks by limit key (tasks pushed without one are under None)."""

    __slots__ = ("_heads", "_heaps", "_keys", "_live", "_moved")

    def __init__(self, live: Callable[[Entry], R | None]) -> None:
        self._live = live
        self._heaps: dict[str | None, list[Entry]] = {}  # never an empty one
        self._heads: list[tuple[Entry, str | None]] = []
        self._keys: list[str] = []  # the keys of `_heaps` but None, sorted
        self._moved: set[str | None] = set()  # keys whose first entry is not in `_heads` yet

    def __len__(self) -> int:
        """How many entries are held, stale ones included."""
        return sum(map(len, self._heaps.values()))

    def push(self, key: str | None, entry: Entry) -> None:
        """Add a waiting task's entry under its limit key."""
        heap = self._heaps.get(key)
        if heap is None:
            heap = self._heaps[key] = []
            if key is not None:
                bisect.insort(self._keys, key)
        heapq.heappush(heap, entry)
        if heap[0] is entry:
            self._add_head(entry, key)

    def first(self) -> R | None:
        """Take the queue's first waiting task, across keys."""
        heads, heaps = self._heads, self._heaps
        if self._moved:  # a limited claim took from these keys: their new firsts join the heads
            for key in self._moved:
                self._add_head(heaps[key][0], key)
            self._moved.clear()
        while heads:
            entry, key = heads[0]
            heap = heaps.get(key)
            if heap is None or heap[0] is not entry:
                heapq.heappop(heads)  # no longer the key's first: that one is in the heap too
                continue
            heapq.heappop(heap)
            if heap:
                heapq.heapreplace(heads, (heap[0], key))  # one sift, and the heap grows not
            else:
                heapq.heappop(heads)
                self._drop(key)
            found = self._live(entry)
            if found is not None:
                return found
        return None

    def first_of(self, key: str | None) -> R | None:
        """Take the first waiting task of `key`."""
        heap = self._heaps.get(key)
        while heap:
            entry = heapq.heappop(heap)
            if heap:
                self._moved.add(key)
            else:
                self._drop(key)
            found = self._live(entry)
            if found is not None:
                return found
        return None

    def keys_after(self, after: str | None, count: int) -> list[str]:
        """Up to `count` keys with waiting tasks, in order, above `after` (None: from the first)."""
        keys, found = self._keys, list[str]()
        index = 0 if after is None else bisect.bisect_right(keys, after)
        while index < len(keys) and len(found) < count:
            key = keys[index]
            if self._has_live(key):
                found.append(key)
                index += 1
            # else the key is gone from `keys`, and the next one took its index
        return found

    def _has_live(self, key: str) -> bool:
        """Whether `key` has a waiting task; the stale entries on top of its heap go."""
        heap = self._heaps[key]
        if self._live(heap[0]) is not None:
            return True
        heapq.heappop(heap)
        while heap and self._live(heap[0]) is None:
            heapq.heappop(heap)
        if not heap:
            self._drop(key)
            return False
        self._moved.add(key)
        return True

    def _add_head(self, entry: Entry, key: str | None) -> None:
        heads = self._heads
        heapq.heappush(heads, (entry, key))
        if len(heads) > 2 * len(self._heaps) + _SPARE_HEADS:
            heads[:] = [(heap[0], k) for k, heap in self._heaps.items()]
            heapq.heapify(heads)

    def _drop(self, key: str | None) -> None:
        del self._heaps[key]
        self._moved.discard(key)
        if key is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]
