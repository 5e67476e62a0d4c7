"""Cancel scopes (trio-style) and thread-safe cancel tokens.

Cancel scopes form a tree per runtime.  Every task has a *root* scope (its parent is the scope of
the TaskGroup that spawned it, or none for a bare ``spawn``) and a stack of entered scopes; its
innermost scope is ``task._scope``.

Invariants (``CancelScope.check_invariants``):

* ``_eff`` (effectively cancelled) == ``_cancel_called or (parent._eff and not _shield)``;
  it is recomputed downwards whenever ``cancel()`` or ``shield`` changes, and every task whose
  innermost scope turns effectively cancelled gets ``_deliver_cancel()`` (its parked ticket, if
  any, is cancelled with reason TASK: first-wins against a completion, per the abort contract).
* A checkpoint raises ``Cancelled`` iff ``task._scope._eff``.
* ``Cancelled`` is absorbed by the outermost scope that was itself cancelled
  (``_cancel_called`` and the parent's cancellation is not visible through it).

A :class:`CancelToken` is the thread-safe counterpart for single operations: any thread may call
``cancel()``; operations given ``cancel=token`` register their ticket with it while parked and
raise :class:`~kcoro.OperationCancelled`.  Tokens form a tree: cancelling a parent cancels its
children (held weakly).  Its ticket set is guarded by the kernel lock (no allocation inside);
its children and callbacks by a private lock.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _klock
from ._context import tls
from ._errors import Cancelled, make_timeout
from ._tokens import WHY_TOKEN, Ticket

if TYPE_CHECKING:
    from ._runtime import Runtime, Task

__all__ = ["CancelScope", "CancelToken", "fail_after", "move_on_after"]

log = logging.getLogger("kcoro")
_get_ident = threading.get_ident


def _scope_deadline(scope: CancelScope) -> None:
    scope._timer = None
    scope.cancel()


class CancelScope:
    """A region of a task that can be cancelled as a unit (``with CancelScope() as s: ...``).

    ``deadline`` is absolute, on :func:`kcoro.current_time`'s clock (``math.inf`` = none).
    ``shield=True`` hides cancellation of enclosing scopes.
    """

    __slots__ = ("_cancel_called", "_children", "_deadline", "_eff", "_parent", "_rt",
                 "_shield", "_state", "_task", "_tasks", "_timer", "cancelled_caught")

    def __init__(self, deadline: float | None = None, *, shield: bool = False) -> None:
        self._deadline = math.inf if deadline is None else float(deadline)
        if math.isnan(self._deadline):
            raise ValueError("CancelScope deadline must not be NaN")
        self._shield = bool(shield)
        self._cancel_called = False
        self.cancelled_caught = False
        self._parent: CancelScope | None = None
        self._children: set[CancelScope] = set()
        self._tasks: set[Task[Any]] = set()
        self._eff = False
        self._timer: list[Any] | None = None
        self._rt: Runtime | None = None
        self._task: Task[Any] | None = None
        self._state = 0  # 0 new, 1 entered, 2 exited

    # -- roots of tasks ------------------------------------------------------------------
    def _attach_root(self, task: Task[Any], parent: CancelScope | None) -> None:
        self._state = 1
        self._task = task
        self._rt = task._rt
        self._tasks.add(task)
        self._parent = parent
        if parent is not None:
            parent._children.add(self)
            self._eff = parent._eff and not self._shield

    def _detach_root(self) -> None:
        self._state = 2
        parent = self._parent
        if parent is not None:
            parent._children.discard(self)
        self._tasks.clear()

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> CancelScope:
        rt = tls.rt
        task = rt.current if rt is not None else None
        if task is None or rt is None:
            raise RuntimeError("CancelScope must be entered inside a kcoro task "
                               "(asyncio code should use asyncio.timeout)")
        if self._state != 0:
            raise RuntimeError("a CancelScope can be entered only once")
        self._state = 1
        self._task = task
        self._rt = rt
        parent = task._scope
        self._parent = parent
        parent._children.add(self)
        parent._tasks.discard(task)
        self._tasks.add(task)
        task._scope = self
        self._eff = self._cancel_called or (parent._eff and not self._shield)
        if not self._cancel_called and self._deadline != math.inf:
            if self._deadline <= rt.clock():
                self.cancel()
            else:
                self._arm()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> bool:
        task = self._task
        assert task is not None
        if task._scope is not self:
            raise RuntimeError("cancel scopes must be exited in the reverse order of entry")
        self._disarm()
        parent = self._parent
        assert parent is not None
        task._scope = parent
        self._tasks.discard(task)
        parent._tasks.add(task)
        parent._children.discard(self)
        self._state = 2
        if ev is None or not self._catches():
            return False
        if isinstance(ev, Cancelled):
            self.cancelled_caught = True
            return True
        if isinstance(ev, BaseExceptionGroup):
            match, rest = ev.split(Cancelled)
            if match is not None:
                self.cancelled_caught = True
                if rest is None:
                    return True
                raise rest
        return False

    def _catches(self) -> bool:
        if not self._cancel_called:
            return False
        parent = self._parent
        return self._shield or parent is None or not parent._eff

    # -- cancellation --------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel everything inside the scope (idempotent; forwarded if called off-thread)."""
        rt = self._rt
        if rt is not None and _get_ident() != rt._tid:
            rt.call_soon_threadsafe(self.cancel)
            return
        if self._cancel_called:
            return
        self._cancel_called = True
        self._disarm()
        self._recompute()

    def _recompute(self) -> None:
        parent = self._parent
        new = self._cancel_called or (parent is not None and parent._eff and not self._shield)
        if new == self._eff:
            return
        self._eff = new
        if new:
            for task in list(self._tasks):
                task._deliver_cancel()
        for child in list(self._children):
            child._recompute()

    @property
    def cancel_called(self) -> bool:
        return self._cancel_called

    @property
    def cancelled(self) -> bool:
        """True if the scope is effectively cancelled (itself or through an enclosing scope)."""
        return self._eff

    @property
    def shield(self) -> bool:
        return self._shield

    @shield.setter
    def shield(self, value: bool) -> None:
        self._shield = bool(value)
        if self._state == 1:
            self._recompute()

    @property
    def deadline(self) -> float:
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        value = float(value)
        if math.isnan(value):
            raise ValueError("CancelScope deadline must not be NaN")
        self._deadline = value
        if self._state == 1 and not self._cancel_called:
            self._disarm()
            rt = self._rt
            assert rt is not None
            if value <= rt.clock():
                self.cancel()
            elif value != math.inf:
                self._arm()

    def _arm(self) -> None:
        rt = self._rt
        assert rt is not None
        self._timer = rt.timers.call_at(self._deadline, _scope_deadline, self)

    def _disarm(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            rt = self._rt
            assert rt is not None
            rt.timers.cancel(timer)

    def check_invariants(self) -> None:
        parent = self._parent
        expect = self._cancel_called or (parent is not None and parent._eff and not self._shield)
        if self._state == 1:
            assert self._eff == expect, f"scope eff {self._eff} != {expect}"
        for child in self._children:
            assert child._parent is self
            child.check_invariants()

    def __repr__(self) -> str:
        state = ("cancelled" if self._cancel_called else
                 "cancelled by parent" if self._eff else "active")
        dl = "" if self._deadline == math.inf else f" deadline={self._deadline:.3f}"
        return f"<CancelScope {state}{dl}{' shielded' if self._shield else ''}>"


def move_on_after(seconds: float, *, shield: bool = False) -> CancelScope:
    """A scope cancelled ``seconds`` from now; the block is simply left when it expires."""
    from ._runtime import _check_seconds, current_time

    return CancelScope(deadline=current_time() + _check_seconds(seconds, "move_on_after()"),
                       shield=shield)


class fail_after:
    """Like :func:`move_on_after`, but raises ``TimeoutError`` when the deadline cancels it."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float, *, shield: bool = False) -> None:
        self._scope = move_on_after(seconds, shield=shield)

    def __enter__(self) -> CancelScope:
        return self._scope.__enter__()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> bool:
        swallowed = self._scope.__exit__(et, ev, tb)
        if self._scope.cancelled_caught:
            raise make_timeout("fail_after block") from None
        return swallowed


class CancelToken:
    """A thread-safe, hierarchical cancellation flag for single operations (``cancel=token``)."""

    __slots__ = ("__weakref__", "_callbacks", "_cancelled", "_children", "_lock", "_reason",
                 "_tickets")

    def __init__(self, parent: CancelToken | None = None) -> None:
        if parent is not None and not isinstance(parent, CancelToken):
            raise TypeError(f"CancelToken parent must be a CancelToken, got "
                            f"{type(parent).__name__}")
        self._cancelled = False
        self._reason: Any = None
        self._tickets: set[Ticket] = set()
        self._children: weakref.WeakSet[CancelToken] = weakref.WeakSet()
        self._callbacks: list[Callable[[CancelToken], object]] = []
        self._lock = threading.Lock()
        if parent is not None:
            with parent._lock:
                if not parent._cancelled:
                    parent._children.add(self)
                    return
            self.cancel(parent._reason)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def reason(self) -> Any:
        return self._reason

    def cancel(self, reason: Any = None) -> bool:
        """Cancel the token, its children and every operation waiting on it.

        Returns True for the call that cancelled it, False if it already was.
        """
        if _klock.owned_by_me():  # called by a signal handler that interrupted a section
            if self._cancelled:
                return False
            _klock.defer(lambda: self.cancel(reason))
            return True
        fresh: set[Ticket] = set()
        woken: list[Ticket] = []
        _klock.acquire()
        try:
            if self._cancelled:
                return False
            self._cancelled = True
            self._reason = reason
            tickets, self._tickets = self._tickets, fresh
            for t in tickets:
                if t._fail(WHY_TOKEN, reason) is not None:
                    woken.append(t)
        finally:
            _klock.release()
        for t in woken:
            t._wake()
        with self._lock:
            children = list(self._children)
            callbacks, self._callbacks = self._callbacks, []
        for child in children:
            child.cancel(reason)
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("CancelToken callback %r raised", cb)
        return True

    def on_cancel(self, fn: Callable[[CancelToken], object]) -> None:
        """Call ``fn(token)`` once when cancelled (at once if it already is)."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(fn)
                return
        fn(self)

    def raise_if_cancelled(self) -> None:
        if self._cancelled:
            from ._errors import OperationCancelled

            raise OperationCancelled("CancelToken is cancelled", reason=self._reason)

    # -- used by waits -------------------------------------------------------------------
    def _watch(self, t: Ticket) -> bool:
        """Register a parked ticket; False if the token is already cancelled."""
        _klock.acquire()
        try:
            if self._cancelled:
                return False
            self._tickets.add(t)
            return True
        finally:
            _klock.release()

    def _unwatch(self, t: Ticket) -> None:
        _klock.acquire()
        try:
            self._tickets.discard(t)
        finally:
            _klock.release()

    def check_invariants(self) -> None:
        if self._cancelled:
            assert not self._tickets, "a cancelled token still watches tickets"

    def __repr__(self) -> str:
        return f"<CancelToken {'cancelled' if self._cancelled else 'active'}>"
