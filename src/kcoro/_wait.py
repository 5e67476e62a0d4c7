"""Parking on a ticket from any context: kcoro task, asyncio task or plain thread.

The abort contract (see ``TOKENS.md``): an interrupted wait (timeout, cancel token, task
cancellation) tries to *cancel* its own ticket.  If that wins, nothing was transferred and the
waiter raises.  If a completion already won, the waiter returns normally with what it was given
and the interruption is delivered later (a kcoro task's cancel scope stays cancelled, so its
next checkpoint raises; an asyncio task is re-cancelled; a thread interrupted by Ctrl-C gets the
interrupt re-delivered with ``_thread.interrupt_main``).

Usage by an operation::

    ctx = context()                      # Task or asyncio loop; RuntimeError if neither
    t = internal_ticket(waker_for(ctx))  # waker installed before the ticket is visible
    ... make t visible (queue it) under the kernel lock ...
    await park(t, ctx, timeout)          # returns once t is finished (never raises for t)
    if t._state == CANCELLED: ... unregister, then raise error_for(t, ctx, what)
"""

from __future__ import annotations

import _thread
import asyncio
import math
import numbers
import threading
import time
from typing import Any, TypeAlias

from . import _klock, _tokens
from ._context import tls
from ._errors import Cancelled, OperationCancelled, WouldBlock, make_timeout
from ._runtime import Task, _expire, _ring, trap
from ._tokens import (
    C_PUB_PARKED,
    CANCELLED,
    COMPLETED,
    NEW,
    PARKED,
    READY,
    WHY_TASK,
    WHY_TIMEOUT,
    WHY_TOKEN,
    Ticket,
    internal_ticket,
)
from ._wakers import AioWaker, ThreadWaker, thread_waker

__all__ = [
    "check_blocking_allowed",
    "context",
    "error_for",
    "foreign_cancelled",
    "park",
    "park_blocking",
    "wait_internal",
    "waker_for",
]

Ctx: TypeAlias = "Task[Any] | asyncio.AbstractEventLoop"
_get_running_loop = asyncio._get_running_loop
_TIMEOUT_MAX = threading.TIMEOUT_MAX


def context() -> Ctx:
    """The waiting context of the caller: the running kcoro task, else the running asyncio loop."""
    rt = tls.rt
    if rt is not None:
        task = rt.current
        if task is not None:
            return task
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeError(
            "kcoro operation awaited with no loop running in this thread: await it inside "
            "kcoro.run() or an asyncio task, or use the *_blocking / try_* forms")
    return loop


def waker_for(ctx: Ctx) -> Any:
    if type(ctx) is Task:
        return ctx
    return AioWaker(ctx)  # type: ignore[arg-type]


def check_blocking_allowed(what: str) -> None:
    rt = tls.rt
    if rt is not None:
        raise RuntimeError(
            f"{what} called from a thread running a kcoro runtime: it would block every task "
            f"(and deadlock if the partner is a task); await the async form instead")
    if _get_running_loop() is not None:
        raise RuntimeError(
            f"{what} called from a thread running an asyncio loop: it would block the loop; "
            f"await the async form instead")


def check_timeout(timeout: float | None) -> float | None:
    """Validate a ``timeout=`` argument: None, or a real number of seconds >= 0 (inf = None)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
    t = float(timeout)
    if not t >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
    return None if t == math.inf else t


def check_token(cancel: Any) -> None:
    from ._scopes import CancelToken

    if not isinstance(cancel, CancelToken):
        raise TypeError(f"cancel= must be a kcoro.CancelToken, got {type(cancel).__name__}")


def fail(t: Ticket, why: int, reason: Any = None) -> bool:
    """Try to cancel ``t`` (first wins); wake it if we won."""
    _klock.acquire()
    try:
        won = t._fail(why, reason)
    finally:
        _klock.release()
    if won is None:
        return False
    won._wake()
    return True


async def park(t: Ticket, ctx: Ctx, timeout: float | None,
               timeout_completes: bool = False) -> None:
    """Wait until ``t`` is finished.  Never raises on behalf of ``t`` (inspect it after)."""
    if type(ctx) is Task:
        rt = ctx._rt
        entry = None
        if timeout is not None:
            entry = rt.timers.call_at(rt.clock() + timeout,
                                      _ring if timeout_completes else _expire, t)
        await trap(t)
        if entry is not None:
            rt.timers.cancel(entry)
        return
    loop: asyncio.AbstractEventLoop = ctx  # type: ignore[assignment]
    fut = t._waker.fut  # type: ignore[union-attr]
    h = None
    if timeout is not None:
        h = loop.call_later(timeout, _ring if timeout_completes else _expire, t)
    _foreign_park(t, 1)
    try:
        await fut
    except asyncio.CancelledError as exc:
        foreign_cancelled(t, exc)
    finally:
        _foreign_park(t, -1)
        if h is not None:
            h.cancel()


def foreign_cancelled(t: Ticket, exc: BaseException) -> None:
    """An asyncio task parked on ``t`` got ``CancelledError``: cancel ``t``.  If a completion
    won the race, the operation returns what it was given and the cancellation is re-delivered
    at the task's next await, unless by then it was consumed (``asyncio.timeout()`` uncancels
    on exit) or the task has finished."""
    msg = exc.args[0] if exc.args else None
    if not fail(t, WHY_TASK, msg):
        task = asyncio.current_task()
        if task is not None:
            task.get_loop().call_soon(_redeliver_cancel, task, msg)


def _redeliver_cancel(task: asyncio.Task[Any], msg: Any) -> None:
    if not task.done() and task.cancelling():
        task.uncancel()
        task.cancel(msg)


def _foreign_park(t: Ticket, delta: int) -> None:
    """Count a park by an asyncio task or a thread (delta=1 at start, -1 at the end)."""
    _klock.acquire()
    try:
        if delta > 0:
            _tokens.COUNTS[_tokens.C_FOREIGN_PARKS] += 1
        if t.id == 0:
            _tokens.COUNTS[_tokens.C_FOREIGN_LIVE] += delta
    finally:
        _klock.release()


def park_blocking(t: Ticket, timeout: float | None, timeout_completes: bool = False) -> None:
    """Block this thread until ``t`` is finished (its waker must be the thread's waker)."""
    _foreign_park(t, 1)
    try:
        _park_blocking(t, timeout, timeout_completes)
    finally:
        _foreign_park(t, -1)


def _park_blocking(t: Ticket, timeout: float | None, timeout_completes: bool) -> None:
    w: ThreadWaker = t._waker  # type: ignore[assignment]
    lk = w.lock
    base = w.wakes  # a completion of ``t`` brings exactly one wake: base + 1
    w.busy = True
    try:
        if timeout is None:
            lk.acquire()
        elif not lk.acquire(True, min(timeout, _TIMEOUT_MAX)):
            if timeout_completes:
                _klock.acquire()
                try:
                    won = t._hand(None)
                finally:
                    _klock.release()
                if won is None:
                    lk.acquire()
            elif not _fail_quiet(t, WHY_TIMEOUT):
                lk.acquire()  # a completion won; its wake is on the way
    except BaseException as exc:
        if _fail_quiet(t, WHY_TASK):
            raise
        # A completion won.  Its wake may or may not have been consumed when the exception hit
        # (it can arrive right after ``acquire`` returned): wait until the waker has released,
        # then take the lock back without blocking if it is still free.
        while w.wakes <= base:
            time.sleep(0)
        lk.acquire(False)
        if isinstance(exc, KeyboardInterrupt):
            _thread.interrupt_main()  # keep the result, re-deliver Ctrl-C right after
            return
        raise
    finally:
        w.busy = False


def _fail_quiet(t: Ticket, why: int) -> bool:
    """Cancel our own ticket without waking ourselves."""
    _klock.acquire()
    try:
        return t._fail(why) is not None
    finally:
        _klock.release()


def error_for(t: Ticket, ctx: Ctx | None, what: str) -> BaseException:
    """The exception a cancelled wait raises."""
    why = t._why
    if why == WHY_TIMEOUT:
        return make_timeout(what)
    if why == WHY_TASK:
        if ctx is None or type(ctx) is Task:
            return Cancelled()
        return asyncio.CancelledError(*(() if t.reason is None else (t.reason,)))
    if why == WHY_TOKEN:
        return OperationCancelled(f"{what} cancelled by its CancelToken", reason=t.reason)
    return OperationCancelled(f"{what} cancelled ({t.reason!r})", reason=t.reason)


async def wait_internal(t: Ticket, timeout: float | None, token: Any, on: object,
                        *, timeout_completes: bool = False) -> None:
    """Park on a fresh internal ticket nobody else can see yet (sleep, join).

    ``t`` must have been created with no waker; the waker is installed here, under the
    kernel lock, before any completer can find it.  Raises per the abort contract.
    """
    ctx = context()
    native = type(ctx) is Task
    if native and ctx._scope._eff:  # type: ignore[union-attr]
        raise Cancelled()
    waker = waker_for(ctx)
    _klock.acquire()
    try:
        ready = t._state >= READY
        if not ready:
            t._waker = waker
    finally:
        _klock.release()
    if not ready:
        if native:
            ctx._on = on  # type: ignore[union-attr]
        await _park_with_token(t, ctx, timeout, token, timeout_completes)
    if t._state == CANCELLED:
        raise error_for(t, ctx, str(on))


async def _park_with_token(t: Ticket, ctx: Ctx, timeout: float | None, token: Any,
                           timeout_completes: bool) -> None:
    if token is None:
        await park(t, ctx, timeout, timeout_completes)
        return
    if not token._watch(t):
        fail(t, WHY_TOKEN, token._reason)
    try:
        await park(t, ctx, timeout, timeout_completes)
    finally:
        token._unwatch(t)


# -- public tickets ------------------------------------------------------------------------------
def _begin_public_wait(t: Ticket, waker: Any, timeout: float | None) -> bool:
    """True if we must park (waker installed), False if finished.  Errors are raised after the
    section (their messages run the key's ``__repr__``)."""
    _klock.acquire()
    try:
        st = t._state
        if st >= READY:
            if st == READY:
                t._state = COMPLETED
            outcome = 0
        elif t._waker is not None:
            outcome = 1
        elif timeout == 0:
            outcome = 2
        else:
            t._waker = waker
            if st == NEW:
                t._state = PARKED
                _tokens.COUNTS[C_PUB_PARKED] += 1
            outcome = 3
    finally:
        _klock.release()
    if outcome == 1:
        raise RuntimeError(f"another waiter is already parked on {t!r}")
    if outcome == 2:
        raise WouldBlock(f"{t!r} is not completed yet")
    return outcome == 3


def _end_public_wait(t: Ticket, ctx: Ctx | None) -> Any:
    k = t._kernel
    _klock.acquire()
    try:
        t._waker = None
        st = t._state
        if st == READY:
            t._state = COMPLETED
        if k is not None and st >= READY and k._by_id.get(t.id) is t:
            del k._by_id[t.id]  # (usually the finisher already did)
    finally:
        _klock.release()
    if k is not None and t.key is not None:
        k._forget(t)
    if st == CANCELLED:
        raise error_for(t, ctx, f"wait on {t!r}")
    return t.payload


class _Parkers:
    async def wait_async(self, t: Ticket, timeout: float | None, cancel: Any) -> Any:
        rt = tls.rt
        task = rt.current if rt is not None else None
        if task is not None and timeout is None and cancel is None:
            # The common case in one coroutine: a kcoro task parks on the ticket itself.
            if task._scope._eff:
                raise Cancelled()
            _klock.acquire()
            try:
                st = t._state
                if st < READY:
                    if t._waker is not None:
                        st = -1
                    else:
                        t._waker = task
                        if st == NEW:
                            t._state = PARKED
                            _tokens.COUNTS[C_PUB_PARKED] += 1
            finally:
                _klock.release()
            if st == -1:
                raise RuntimeError(f"another waiter is already parked on {t!r}")
            if st < READY:
                task._on = t
                await trap(t)
            return _end_public_wait(t, task)
        return await self._wait_async(t, timeout, cancel)

    async def _wait_async(self, t: Ticket, timeout: float | None, cancel: Any) -> Any:
        timeout = check_timeout(timeout)
        ctx = context()
        if type(ctx) is Task and ctx._scope._eff:
            raise Cancelled()
        if cancel is not None and cancel.cancelled:
            raise OperationCancelled(f"wait on {t!r} cancelled by its CancelToken",
                                     reason=cancel._reason)
        if _begin_public_wait(t, waker_for(ctx), timeout):
            if type(ctx) is Task:
                ctx._on = t
            await _park_with_token(t, ctx, timeout, cancel, False)
        return _end_public_wait(t, ctx)

    def wait_blocking(self, t: Ticket, timeout: float | None, cancel: Any) -> Any:
        timeout = check_timeout(timeout)
        check_blocking_allowed("Ticket.wait_blocking()")
        if cancel is not None and cancel.cancelled:
            raise OperationCancelled(f"wait on {t!r} cancelled by its CancelToken",
                                     reason=cancel._reason)
        if _begin_public_wait(t, thread_waker(), timeout):
            if cancel is not None and not cancel._watch(t):
                fail(t, WHY_TOKEN, cancel._reason)
            try:
                park_blocking(t, timeout)
            except BaseException:  # interrupted (Ctrl-C): the ticket was cancelled; tidy up
                try:
                    _end_public_wait(t, None)
                except BaseException:  # the interruption is what we raise
                    pass
                raise
            finally:
                if cancel is not None:
                    cancel._unwatch(t)
        return _end_public_wait(t, None)


_tokens.install_parkers(_Parkers())


async def join_task(task: Task[Any]) -> None:
    """Park until ``task`` finishes (from a kcoro task, an asyncio task, any thread's loop)."""
    ctx = context()
    if type(ctx) is Task and ctx._scope._eff:
        raise Cancelled()
    t = internal_ticket(waker_for(ctx))
    _klock.acquire()
    try:
        finished = task._state == "FINISHED"
        if not finished:
            task._joiners.append(t)
    finally:
        _klock.release()
    if finished:
        return
    if type(ctx) is Task:
        ctx._on = task
    await park(t, ctx, None)
    if t._state == CANCELLED:
        _klock.acquire()
        try:
            joiners = task._joiners
            if t in joiners:  # joins abandoned in a loop must not pile up
                joiners.remove(t)
        finally:
            _klock.release()
        raise error_for(t, ctx, f"join {task.name!r}")


__all__ += ["check_timeout", "fail", "internal_ticket", "join_task"]
_ = (PARKED,)
