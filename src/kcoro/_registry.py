"""Weak registries of live kcoro objects, read by :mod:`kcoro.metrics`.

Lower layers register what they create (channels, runtimes, arenas); nothing here keeps an object
alive.  Registration is off the hot path (creation time only).  Each registry is guarded by its
own lock because ``WeakSet`` is not safe to iterate while another thread adds to it.

Invariant: every object in a registry is alive (dead ones vanish with their weak reference).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["Registry", "arenas", "channels", "runtimes"]


class Registry:
    __slots__ = ("_items", "_lock", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, obj: Any) -> None:
        with self._lock:
            self._items.add(obj)

    def discard(self, obj: Any) -> None:
        with self._lock:
            self._items.discard(obj)

    def items(self) -> list[Any]:
        """A strong snapshot of the live objects."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        return f"<Registry {self.name} live={len(self)}>"


channels = Registry("channels")
runtimes = Registry("runtimes")
arenas = Registry("arenas")
