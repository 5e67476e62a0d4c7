"""Timer heap of a native runtime.

Entries are small lists ``[when, seq, fn, arg]``; cancelling an entry sets ``fn`` to None (lazy
deletion, O(1)); the heap is rebuilt when dead entries outnumber live ones, so memory stays
proportional to live timers.  Only the runtime's own thread touches a ``Timers``.

Invariants: ``0 <= dead <= len(heap)``; every entry with ``fn is None`` that is still in the heap
is counted in ``dead``; entries fire in (when, seq) order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["Timers"]

TimerEntry = list[Any]


class Timers:
    __slots__ = ("_dead", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._seq = itertools.count()
        self._dead = 0

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def call_at(self, when: float, fn: Callable[[Any], object], arg: Any) -> TimerEntry:
        entry: TimerEntry = [when, next(self._seq), fn, arg]
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, entry: TimerEntry) -> None:
        if entry[2] is not None:
            entry[2] = None
            entry[3] = None
            self._dead += 1
            heap = self._heap
            if self._dead > 64 and self._dead * 2 > len(heap):
                heap[:] = [e for e in heap if e[2] is not None]
                heapq.heapify(heap)
                self._dead = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def fire_due(self, now: float) -> int:
        """Run every live timer due at ``now``; return how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            fn = entry[2]
            if fn is None:
                self._dead -= 1
                continue
            arg = entry[3]
            entry[2] = None
            entry[3] = None
            fn(arg)
            ran += 1
        return ran

    def check_invariants(self) -> None:
        dead = sum(1 for e in self._heap if e[2] is None)
        assert dead == self._dead, f"timer dead count {self._dead} != {dead}"
        for i in range(1, len(self._heap)):
            parent = self._heap[(i - 1) // 2]
            assert parent[:2] <= self._heap[i][:2], "timer heap order broken"
