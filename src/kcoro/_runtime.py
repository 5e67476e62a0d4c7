"""The native runtime: tasks, the ready queue, the one trap, timers, fds and the wakeup fd.

One runtime runs in one thread (``kcoro.run``).  It is the only code that resumes coroutines.

Task state machine (``Task._state``)::

    CREATED ─spawn─▶ READY ─step─▶ RUNNING ─yield None (schedule point)─▶ READY
                                     │ └──yield ticket (park)──▶ PARKED ─ticket woken─▶ READY
                                     └─return / raise─▶ FINISHED

The trap: every suspension is ``yield`` of either ``None`` (a schedule point: "requeue me") or a
:class:`~kcoro._tokens.Ticket` whose waker is the task ("park me until this ticket is woken").
Nothing else may be yielded (a bare ``asyncio`` future awaited inside a kcoro task is refused with
a clear error).

Wake-ups: a completed ticket calls ``Task.wake``, which appends the task to ``_ready`` (a deque:
``append`` is atomic, so foreign threads may call it) and, if the runtime is asleep, pokes it
(``_poke``).  The armed-flag protocol: the loop sets ``_asleep = True`` *then* re-checks ``_ready``
and ``_calls`` before blocking; a waker appends *then* checks ``_asleep``.  Either the loop sees
the work or the waker sees the flag, so no wake-up is lost and an idle runtime spends no CPU.
The loop sleeps in one of two ways: with an fd to watch (``wait_readable``) in the selector,
poked through the wakeup fd; with none, on ``_bell`` (a lock the loop holds; a poke releases it:
one futex wake-up instead of an eventfd write plus an epoll return, ~5 µs less per cross-thread
wake here).  A poke that reads a stale mode at worst leaves a spurious wake-up behind (the next
sleep returns at once and re-checks), never a lost one.

Invariants (``Runtime.check_invariants``): a FINISHED task is not in ``_tasks``; every task in
``_tasks`` is READY, RUNNING or PARKED (or CREATED briefly); ``current`` is None between steps;
the timer heap is consistent.

Cooperative budget: every async kcoro operation is a cancellation point; it is also a schedule
point once the task has completed ``BUDGET`` operations since it last yielded (as tokio's coop
budget), so a producer that never waits cannot starve other tasks, without paying a full trip
through the scheduler on every fast-path operation.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import selectors
import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _klock, _registry
from ._accel import speedups as _speedups
from ._context import tls
from ._errors import Cancelled
from ._timers import TimerEntry, Timers
from ._tokens import C_NATIVE_DONE, COUNTS, WHY_TASK, WHY_TIMEOUT, Ticket, internal_ticket
from ._tokens import READY as T_READY

if TYPE_CHECKING:
    from ._scopes import CancelScope
    from ._taskgroup import TaskGroup

__all__ = [
    "BUDGET",
    "Runtime",
    "Task",
    "checkpoint",
    "current_runtime",
    "current_task",
    "current_time",
    "run",
    "sleep",
    "spawn",
    "wait_readable",
    "wait_writable",
]

T = TypeVar("T")
log = logging.getLogger("kcoro")

BUDGET = 64

CREATED, READY, RUNNING, PARKED, FINISHED = "CREATED", "READY", "RUNNING", "PARKED", "FINISHED"

_acquire, _release = _klock.acquire, _klock.release
_get_ident = threading.get_ident
_monotonic_ns = time.monotonic_ns
_run_steps = _speedups.run_steps if _speedups is not None else None
if _speedups is not None and _speedups.BUDGET != BUDGET:  # pragma: no cover - a stale build
    raise ImportError("kcoro._speedups was built for another BUDGET; rebuild it (pip install -e .)")
_NO_JOINERS: list[Ticket] = []  # a finished task's joiner list; never appended to


@types.coroutine
def trap(ticket: Ticket | None) -> Generator[Ticket | None, None, None]:
    """The one yield point: ``None`` = schedule point, a ticket = park on it."""
    yield ticket


class Task(Generic[T]):
    """A coroutine scheduled on a native runtime.

    ``await task`` returns its result or raises its exception (``Cancelled`` if it was
    cancelled).  ``state`` is one of ``CREATED READY RUNNING PARKED FINISHED``.
    """

    __slots__ = ("__weakref__", "_budget", "_coro", "_exc", "_joiners", "_on", "_parked",
                 "_result", "_retrieved", "_root", "_rt", "_scope", "_send", "_state", "_tg",
                 "_tk", "id", "name")

    _ids = 0

    def __init__(self, rt: Runtime, coro: Coroutine[Any, Any, T], name: str,
                 parent_scope: CancelScope | None, tg: TaskGroup | None = None) -> None:
        from ._scopes import CancelScope

        Task._ids += 1
        self.id = Task._ids
        self.name = name
        self._rt = rt
        self._coro: Coroutine[Any, Any, T] | None = coro
        self._send = coro.send
        self._state = CREATED
        self._parked: Ticket | None = None
        self._tk: Ticket | None = None  # reusable wait ticket (see _chan fast paths)
        self._on: object = None  # what it is parked on (a channel, a ticket, ...), for humans
        self._budget = BUDGET
        self._result: Any = None
        self._exc: BaseException | None = None
        self._joiners: list[Ticket] = []
        self._retrieved = False
        self._tg = tg
        root = CancelScope()
        root._attach_root(self, parent_scope)
        self._root = root
        self._scope: CancelScope = root

    # -- waker protocol ------------------------------------------------------------------
    def wake(self, ticket: Ticket) -> None:
        """Called once when the ticket this task parked on is completed or cancelled."""
        rt = self._rt
        self._state = READY
        rt._ready.append(self)
        if rt._asleep:
            rt._poke()

    # -- public surface ------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``CREATED READY RUNNING PARKED FINISHED`` (RUNNING: the task being stepped)."""
        if self._rt.current is self and self._state != FINISHED:
            return RUNNING
        return self._state

    @property
    def parked_on(self) -> object:
        """What the task is waiting for while PARKED (a channel, ticket, task ...), else None."""
        return self._on if self._state == PARKED else None

    def done(self) -> bool:
        return self._state == FINISHED

    def cancelled(self) -> bool:
        return self._state == FINISHED and isinstance(self._exc, Cancelled)

    def cancel(self) -> None:
        """Cancel the task: it gets ``Cancelled`` at its current or next checkpoint.

        Safe to call from any thread (it is forwarded to the runtime's thread).
        """
        rt = self._rt
        if _get_ident() != rt._tid:
            rt.call_soon_threadsafe(self.cancel)
            return
        if self._state != FINISHED:
            self._root.cancel()

    def result(self) -> T:
        """The task's return value; re-raises its exception; RuntimeError if not finished."""
        if self._state != FINISHED:
            raise RuntimeError(f"task {self.name!r} has not finished")
        self._retrieved = True
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        if self._state != FINISHED:
            raise RuntimeError(f"task {self.name!r} has not finished")
        self._retrieved = True
        return self._exc

    def __await__(self) -> Generator[Any, None, T]:
        return self._join().__await__()

    async def _join(self) -> T:
        from ._wait import join_task

        await join_task(self)  # a checkpoint even when the task has already finished
        return self.result()

    def _deliver_cancel(self) -> None:
        """Our effective cancel status turned on: interrupt the current park, if any."""
        t = self._parked
        if t is not None:
            _acquire()
            try:
                won = t._fail(WHY_TASK)
            finally:
                _release()
            if won is not None:
                won._wake()

    def __repr__(self) -> str:
        on = f" on {self._on!r}" if self._state == PARKED and self._on is not None else ""
        return f"<Task {self.id} {self.name!r} {self._state}{on}>"


def _wakeup_fds() -> tuple[int, int, bool]:
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd, True
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w, False


def _expire(t: Ticket) -> None:
    """Timer callback: a bounded wait ran out."""
    _klock.acquire()
    try:
        won = t._fail(WHY_TIMEOUT)
    finally:
        _klock.release()
    if won is not None:
        won._wake()


def _ring(t: Ticket) -> None:
    """Timer or fd callback: complete the ticket."""
    _klock.acquire()
    try:
        won = t._hand(None)
    finally:
        _klock.release()
    if won is not None:
        won._wake()


class Runtime:
    """A native scheduler bound to one thread.  Created by :func:`run`."""

    __slots__ = ("__weakref__", "_asleep", "_bell", "_bellmode", "_calls", "_closed", "_eventfd",
                 "_fatal", "_fds",
                 "_idle", "_main", "_main_done", "_ready", "_sel", "_tasks", "_tid",
                 "_unretrieved", "_wake_r", "_wake_w", "clock", "current", "now_ns", "parks",
                 "polls", "steps", "thread_name", "timers")

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._ready: deque[Task[Any]] = deque()
        self._calls: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._tasks: set[Task[Any]] = set()
        self.current: Task[Any] | None = None
        self.clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self.timers = Timers()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w, self._eventfd = _wakeup_fds()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        # With no fd to watch, the loop sleeps on ``_bell`` (a lock held by the loop; a waker
        # releases it: one futex wake instead of an eventfd write plus an epoll wake-up).
        self._bell = threading.Lock()
        self._bell.acquire()
        self._bellmode = False
        self._fds: dict[tuple[int, int], Ticket] = {}
        self._asleep = False
        self._idle: list[Ticket] = []
        self._tid = _get_ident()
        self.thread_name = threading.current_thread().name
        self._main: Task[Any] | None = None
        self._main_done = False
        self._fatal: BaseException | None = None
        self._unretrieved: list[Task[Any]] = []
        self.steps = 0
        self.polls = 0
        self.parks = 0  # tickets tasks parked on (the token kernel's stats read it)
        self.now_ns = time.monotonic_ns()  # coarse clock for channel timestamps
        self._closed = False
        attach = getattr(clock, "_attach", None)
        if attach is not None:
            attach(self)
        _registry.runtimes.add(self)

    # -- cross-thread entry points ----------------------------------------------------------
    def _poke(self) -> None:
        if self._bellmode:
            try:
                self._bell.release()
            except RuntimeError:
                pass  # already released: the loop will not block
            return
        try:
            if self._eventfd:
                os.eventfd_write(self._wake_w, 1)
            else:
                os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already poked (pipe full) or closing

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the runtime's thread at its next loop iteration."""
        self._calls.append((fn, args))
        if self._asleep:
            self._poke()

    # -- tasks ---------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None,
              parent_scope: CancelScope | None = None,
              tg: TaskGroup | None = None) -> Task[T]:
        if self._closed:
            raise RuntimeError("the kcoro runtime has finished; cannot spawn")
        if name is None:
            name = getattr(coro, "__qualname__", None) or repr(coro)
        task: Task[T] = Task(self, coro, name, parent_scope, tg)
        self._tasks.add(task)
        task._state = READY
        self._ready.append(task)
        if self._main_done or self._fatal is not None:
            task._root.cancel()  # spawned during teardown (e.g. from a finally): cancelled
        return task

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task._root.cancel()

    def _finish(self, task: Task[Any], value: Any, exc: BaseException | None) -> None:
        # The outcome is stored before FINISHED is published (another thread may be joining).
        if exc is not None:
            task._exc = exc
        else:
            task._result = value
        woken: list[Ticket] = []
        _klock.acquire()
        try:
            task._state = FINISHED  # joiners check this under the lock
            joiners = task._joiners
            task._joiners = _NO_JOINERS
            for t in joiners:
                if t._hand(None) is not None:
                    woken.append(t)
        finally:
            _klock.release()
        task._coro = None
        task._parked = None
        self._tasks.discard(task)
        task._root._detach_root()
        if exc is not None and isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self._fatal = self._fatal or exc
        for t in woken:
            t._wake()
        if task._tg is not None:
            task._tg._child_done(task)
        elif task is self._main:
            self._main_done = True
            self._cancel_all()  # leftover tasks are cancelled now, busy or parked
        elif exc is not None and not isinstance(exc, Cancelled):
            self._unretrieved.append(task)

    # -- timers and fds ------------------------------------------------------------------
    def call_at(self, when: float, fn: Callable[[Any], object], arg: Any) -> TimerEntry:
        return self.timers.call_at(when, fn, arg)

    def add_fd_waiter(self, fd: int, events: int, t: Ticket) -> None:
        key = (fd, events)
        if key in self._fds:
            raise RuntimeError(f"another task is already waiting for fd {fd} (events {events})")
        self._fds[key] = t
        self._reregister(fd)

    def remove_fd_waiter(self, fd: int, events: int, t: Ticket) -> None:
        if self._fds.get((fd, events)) is t:
            del self._fds[(fd, events)]
            self._reregister(fd)

    def _reregister(self, fd: int) -> None:
        mask = 0
        for ev in (selectors.EVENT_READ, selectors.EVENT_WRITE):
            if (fd, ev) in self._fds:
                mask |= ev
        try:
            self._sel.unregister(fd)
        except KeyError:
            pass
        if mask:
            self._sel.register(fd, mask, fd)

    # -- the loop ------------------------------------------------------------------------
    def _poll(self, timeout: float | None) -> None:
        self.polls += 1
        if self._asleep and not self._fds and (timeout is None or timeout > 0):
            # Nothing but wake-ups to wait for: block on the bell.  ``_bellmode`` is only
            # changed here, by the loop, while ``_asleep`` holds; a waker that read a stale
            # mode either finds the work re-checked below or leaves a spurious release (the
            # next sleep returns at once and re-checks).
            self._bellmode = True
            try:
                if self._ready or self._calls:
                    return
                self._bell.acquire(True, -1 if timeout is None else timeout)
            finally:
                self._bellmode = False
            return
        try:
            events = self._sel.select(timeout)
        except InterruptedError:
            events = []
        for key, mask in events:
            if key.data is None:
                self._drain_wakeup_fd()
                continue
            fd = key.data
            for ev in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                if mask & ev:
                    t = self._fds.pop((fd, ev), None)
                    if t is not None:
                        _ring(t)
            self._reregister(fd)

    def _drain_wakeup_fd(self) -> None:
        try:
            if self._eventfd:
                os.eventfd_read(self._wake_r)
            else:
                while os.read(self._wake_r, 4096):
                    pass
        except (BlockingIOError, OSError):
            pass

    def run_until_complete(self, main: Task[Any]) -> None:
        self._main = main
        ready = self._ready
        popleft = ready.popleft
        timers = self.timers
        heap = timers._heap
        cancelling = False
        while True:
            # Run up to 64 steps between housekeeping passes (calls from other threads, timers,
            # fd polling): cheap per step, and a due timer waits at most 64 steps.
            k = 64
            if _run_steps is not None:  # the C twin of the loop below
                while k and ready:
                    n, kind, task, value = _run_steps(self, k)
                    k -= n
                    if kind == 1:
                        self._finish(task, value, None)
                    elif kind == 2:
                        self._finish(task, None, value)
                    elif kind == 3:
                        self._bad_yield(task, value)
            while k and ready:
                k -= 1
                task = popleft()
                self.current = task
                task._budget = BUDGET
                try:
                    y = task._send(None)
                except StopIteration as e:
                    self._finish(task, e.value, None)
                    continue
                except BaseException as e:  # the task's outcome
                    self._finish(task, None, e)
                    continue
                if y is None:
                    task._state = READY
                    ready.append(task)
                elif type(y) is Ticket:
                    task._state = PARKED
                    task._parked = y  # may be stale later: cancelling a finished ticket is a no-op
                    self.parks += 1
                else:
                    self._bad_yield(task, y)
            self.current = None
            self.steps += 64 - k
            self.now_ns = _monotonic_ns()
            if self._calls:
                calls = self._calls
                for _ in range(len(calls)):
                    fn, args = calls.popleft()
                    fn(*args)
            if self._fatal is not None and not self._tasks:
                raise self._fatal
            if self._fatal is not None and not cancelling:
                # KeyboardInterrupt/SystemExit in a task: cancel everything, let the tasks
                # unwind (their waits unregister), then raise it from run().
                cancelling = True
                self._cancel_all()
            if heap:
                timers.fire_due(self.clock())
            if ready:
                if self._fds:
                    self._poll(0)
                continue
            if not self._tasks:
                return
            if self._main_done and not cancelling:
                cancelling = True
                self._cancel_all()
                continue
            if self._idle:
                if self._fds:  # a task whose fd is ready is runnable, not blocked
                    self._poll(0)
                    if ready:
                        continue
                idle, self._idle = self._idle, []
                for t in idle:
                    _ring(t)
                continue
            self._sleep()

    def _sleep(self) -> None:
        timers = self.timers
        deadline = timers.next_deadline()
        self._asleep = True
        try:
            if self._ready or self._calls:
                self._poll(0)
                return
            if deadline is None:
                self._poll(None)
                return
            timeout = min(deadline - self.clock(), 3600.0)  # select() rejects huge timeouts
            if timeout <= 0:
                self._poll(0)
                return
            jump = getattr(self.clock, "autojump_threshold", None)
            if jump is not None:  # a test clock: its time is not real time
                if not math.isfinite(jump):
                    self._poll(None)  # until clock.jump() or another thread wakes us
                    return
                self._poll(jump)
                if not self._ready and not self._calls:
                    self.clock._jump_to(deadline)  # type: ignore[attr-defined]
                return
            self._poll(timeout)
        finally:
            self._asleep = False

    def _bad_yield(self, task: Task[Any], y: object) -> None:
        if isinstance(y, asyncio.Future):
            msg = (f"task {task.name!r} awaited an asyncio future inside kcoro.run(); "
                   "asyncio objects need a running asyncio loop (use kcoro operations, or run "
                   "the code under asyncio)")
        else:
            msg = f"task {task.name!r} yielded {y!r}; only kcoro awaitables may be awaited"
        exc = RuntimeError(msg)
        coro = task._coro
        try:
            assert coro is not None
            y2 = coro.throw(exc)
        except StopIteration as e:
            self._finish(task, e.value, None)
            return
        except BaseException as e:
            self._finish(task, None, e)
            return
        # The task caught it and yielded again: treat that like a normal yield.
        if y2 is None:
            task._state = READY
            self._ready.append(task)
        elif type(y2) is Ticket:
            task._state = PARKED
            task._parked = y2
            self.parks += 1
        else:
            self._bad_yield(task, y2)

    def parked_internal(self) -> int:
        """How many tasks are parked on an internal ticket right now (for kernel stats)."""
        n = 0
        for task in list(self._tasks):
            t = task._parked
            if task._state == PARKED and t is not None and t.id == 0 and t._state < T_READY:
                n += 1
        return n

    def close(self) -> None:
        self._closed = True
        _klock.acquire()
        try:
            COUNTS[C_NATIVE_DONE] += self.parks
            self.parks = 0
        finally:
            _klock.release()
        _registry.runtimes.discard(self)
        try:
            self._sel.close()
        finally:
            os.close(self._wake_r)
            if self._wake_w != self._wake_r:
                os.close(self._wake_w)

    def tasks(self) -> list[Task[Any]]:
        return sorted(self._tasks, key=lambda t: t.id)

    def check_invariants(self) -> None:
        assert self.current is None or self.current._state != FINISHED
        for task in list(self._tasks):
            assert task._state != FINISHED, f"finished {task!r} still registered"
            task._root.check_invariants()
            if task._tg is not None:
                task._tg.check_invariants()
        for task in self._ready:
            assert task._state in (READY, FINISHED, PARKED, RUNNING), task
        self.timers.check_invariants()


def _report_unretrieved(rt: Runtime) -> None:
    for task in rt._unretrieved:
        if not task._retrieved and task._exc is not None:
            log.error("kcoro task %r failed and its exception was never retrieved", task.name,
                      exc_info=(type(task._exc), task._exc, task._exc.__traceback__))


def _coro_of(fn: Callable[..., Awaitable[T]] | Coroutine[Any, Any, T], args: tuple[Any, ...],
             what: str) -> Coroutine[Any, Any, T]:
    if inspect.iscoroutine(fn):
        if args:
            raise TypeError(f"{what}: arguments given with a coroutine object")
        return fn
    if inspect.isawaitable(fn) and not callable(fn):
        if args:
            raise TypeError(f"{what}: arguments given with an awaitable")
        return _await(fn)
    if not callable(fn):
        raise TypeError(f"{what}: expected an async function, got {type(fn).__name__}")
    coro = fn(*args)
    if not inspect.iscoroutine(coro):
        name = getattr(fn, "__qualname__", repr(fn))
        if inspect.isawaitable(coro):  # e.g. ch.recv() with the C accelerator
            return _await(coro)
        raise TypeError(f"{what}: {name} is not an async function (it returned "
                        f"{type(coro).__name__})")
    return coro  # type: ignore[return-value]


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def run(fn: Callable[..., Awaitable[T]] | Coroutine[Any, Any, T], *args: Any,
        clock: Callable[[], float] | None = None) -> T:
    """Run ``fn(*args)`` on a fresh native runtime in this thread and return its result.

    Tasks still running when ``fn`` returns are cancelled and awaited first.  ``clock`` replaces
    ``time.monotonic`` (see :class:`kcoro.testing.MockClock`).
    """
    if tls.rt is not None:
        raise RuntimeError("kcoro.run() cannot be nested: this thread is already running a "
                           "kcoro runtime (spawn a task or use a TaskGroup instead)")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("kcoro.run() called from a thread with a running asyncio loop; "
                           "await kcoro operations directly from asyncio instead")
    coro = _coro_of(fn, args, "kcoro.run()")
    rt = Runtime(clock)
    tls.rt = rt
    if _speedups is not None:
        _speedups.set_runtime(rt)
    try:
        main = rt.spawn(coro, name=getattr(coro, "__qualname__", "main"))
        rt.run_until_complete(main)
    finally:
        try:
            for task in rt.tasks():  # only after an abnormal exit: withdraw their waits
                if task._coro is not None:
                    task._coro.close()
        finally:
            tls.rt = None
            if _speedups is not None:
                _speedups.set_runtime(None)
            rt.close()
    _report_unretrieved(rt)
    return main.result()


def current_runtime() -> Runtime:
    rt = tls.rt
    if rt is None:
        raise RuntimeError("no kcoro runtime is running in this thread (use kcoro.run)")
    return rt


def current_task() -> Task[Any]:
    """The running kcoro task (RuntimeError outside one)."""
    rt = tls.rt
    task = rt.current if rt is not None else None
    if task is None:
        raise RuntimeError("no kcoro task is running in this thread")
    return task


def current_time() -> float:
    """The runtime's clock (``time.monotonic`` unless a test clock was given to ``run``)."""
    rt = tls.rt
    return rt.clock() if rt is not None else time.monotonic()


def spawn(fn: Callable[..., Awaitable[T]] | Coroutine[Any, Any, T], *args: Any,
          name: str | None = None) -> Task[T]:
    """Start ``fn(*args)`` as a new task in the current runtime."""
    rt = tls.rt
    if rt is None or rt._tid != _get_ident():
        raise RuntimeError("kcoro.spawn() needs a running kcoro runtime in this thread "
                           "(call it from inside kcoro.run)")
    coro = _coro_of(fn, args, "kcoro.spawn()")
    return rt.spawn(coro, name or getattr(fn, "__qualname__", None))


async def checkpoint() -> None:
    """Yield to other ready tasks; raise ``Cancelled`` if the task's scope is cancelled."""
    rt = tls.rt
    task = rt.current if rt is not None else None
    if task is None:
        if asyncio._get_running_loop() is None:
            raise RuntimeError("kcoro.checkpoint() must be awaited in a kcoro or asyncio task")
        await asyncio.sleep(0)
        return
    if task._scope._eff:
        raise Cancelled()
    await trap(None)
    if task._scope._eff:
        raise Cancelled()


def _check_seconds(seconds: float, what: str) -> float:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if math.isnan(s) or s < 0:
        raise ValueError(f"{what} must be >= 0, got {seconds!r}")
    return s


async def sleep(seconds: float) -> None:
    """Park for ``seconds`` (a checkpoint; ``sleep(0)`` only yields)."""
    from ._wait import wait_internal

    s = _check_seconds(seconds, "sleep()")
    if s == 0:
        await checkpoint()
        return
    t = internal_ticket(None)
    if s == math.inf:  # park until cancelled
        await wait_internal(t, None, None, "sleep forever")
    else:
        await wait_internal(t, s, None, "sleep", timeout_completes=True)


async def _wait_fd(fd: int | Any, events: int) -> None:
    from ._wait import wait_internal

    if not isinstance(fd, int):
        fd = fd.fileno()
    rt = tls.rt
    task = rt.current if rt is not None else None
    if task is None:
        loop = asyncio._get_running_loop()
        if loop is None:
            raise RuntimeError("kcoro.wait_readable() must be awaited in a kcoro or asyncio task")
        fut = loop.create_future()
        add, remove = ((loop.add_reader, loop.remove_reader) if events == selectors.EVENT_READ
                       else (loop.add_writer, loop.remove_writer))
        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add(fd, ready)
        try:
            await fut
        finally:
            remove(fd)
        return
    if task._scope._eff:
        raise Cancelled()
    assert rt is not None
    t = internal_ticket(None)
    rt.add_fd_waiter(fd, events, t)
    try:
        await wait_internal(t, None, None, f"fd {fd}")
    finally:
        rt.remove_fd_waiter(fd, events, t)


async def wait_readable(fd: int | Any) -> None:
    """Park until ``fd`` (an int or an object with ``fileno()``) is readable."""
    await _wait_fd(fd, selectors.EVENT_READ)


async def wait_writable(fd: int | Any) -> None:
    """Park until ``fd`` is writable."""
    await _wait_fd(fd, selectors.EVENT_WRITE)

