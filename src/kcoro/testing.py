"""Test helpers: a controllable clock and an "every other task is blocked" barrier.

Tests must not order tasks with ``sleep``; use these instead (as trio's ``MockClock`` and
``wait_all_tasks_blocked``)::

    clock = MockClock(autojump_threshold=0)      # time jumps to the next timer when idle
    kcoro.run(main, clock=clock)

    await wait_all_tasks_blocked()               # returns once no other task can run
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import Cancelled
from ._runtime import current_runtime, current_task, trap
from ._tokens import CANCELLED, internal_ticket

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["MockClock", "check_invariants", "wait_all_tasks_blocked", "wait_until"]


class MockClock:
    """A clock for ``kcoro.run(..., clock=MockClock())`` that only moves when told to.

    ``autojump_threshold``: when every task has been blocked for this many *real* seconds, the
    clock jumps to the next timer.  ``0`` jumps at once (timeouts in tests take no real time);
    ``math.inf`` (the default) never jumps by itself: call :meth:`jump`.
    """

    def __init__(self, start: float = 0.0, autojump_threshold: float = math.inf) -> None:
        self._t = float(start)
        self.autojump_threshold = float(autojump_threshold)
        self._rt: Runtime | None = None

    def __call__(self) -> float:
        return self._t

    def current_time(self) -> float:
        return self._t

    def jump(self, seconds: float) -> None:
        """Move the clock forward (never backwards) and let the runtime fire due timers."""
        if seconds < 0:
            raise ValueError("MockClock.jump() cannot go backwards")
        self._t += seconds
        rt = self._rt
        if rt is not None:
            rt.call_soon_threadsafe(_noop)

    def _jump_to(self, when: float) -> None:
        if when > self._t:
            self._t = when

    def _attach(self, rt: Runtime) -> None:
        self._rt = rt

    def __repr__(self) -> str:
        return f"<MockClock t={self._t:.6f} autojump={self.autojump_threshold}>"


def _noop() -> None:
    pass


async def wait_all_tasks_blocked() -> None:
    """Park until every other task of this runtime is parked (nothing else can run).

    Due timers are fired first, so a task whose deadline has passed counts as runnable.
    """
    rt = current_runtime()
    task = current_task()
    if task._scope._eff:
        raise Cancelled()
    t = internal_ticket(task)
    rt._idle.append(t)
    task._on = "wait_all_tasks_blocked"
    await trap(t)
    if t._state == CANCELLED:
        raise Cancelled()


def check_invariants(shared_arenas: bool = True) -> None:
    """Check every invariant kcoro can check from outside: the kernel lock and token kernel,
    every live channel, every live runtime (its tasks, scopes, task groups and timers) and every
    arena (``shared_arenas=False`` skips the shared-memory ones, which IPC endpoints check
    themselves and fault tests break on purpose).  Call it between operations (the test suite
    calls it after every test)."""
    from . import _registry, _tokens

    _tokens.check_invariants()
    for ch in _registry.channels.items():
        ch.check_invariants()
    for rt in _registry.runtimes.items():
        rt.check_invariants()
    for arena in _registry.arenas.items():
        if shared_arenas or not getattr(arena, "shared", False):
            arena.check_invariants()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.0005) -> None:
    """Block a *thread* until ``predicate()`` is true (for tests that involve OS threads, whose
    progress no scheduler barrier can observe).  Raises AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


_ = threading
