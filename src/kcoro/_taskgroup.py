"""TaskGroup: structured concurrency for kcoro tasks.

``async with TaskGroup() as tg: tg.spawn(fn, *args)`` runs the body inside the group's cancel
scope; children are spawned with their root scope under it.  ``__aexit__`` waits for every child.
The first failure (of a child or of the body) cancels the scope, so siblings and the body get
``Cancelled`` at their next checkpoint.  One failure is raised as itself; several as an
``ExceptionGroup``.  ``Cancelled`` caused by the group's own cancellation is absorbed.

Invariants: ``_children`` holds exactly the unfinished children; once ``_closed`` no child can be
added; the waiter ticket exists only while ``__aexit__`` is parked.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from ._context import tls
from ._errors import Cancelled
from ._runtime import Task, _coro_of, _ring, trap
from ._scopes import CancelScope
from ._tokens import Ticket, internal_ticket

__all__ = ["TaskGroup"]

T = TypeVar("T")
_get_ident = threading.get_ident


class TaskGroup:
    """A nursery: children are awaited on exit, failures cancel the rest."""

    def __init__(self) -> None:
        self._scope: CancelScope | None = None
        self._task: Task[Any] | None = None
        self._children: set[Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._waiter: Ticket | None = None
        self._closed = False

    async def __aenter__(self) -> TaskGroup:
        rt = tls.rt
        task = rt.current if rt is not None else None
        if task is None:
            raise RuntimeError("kcoro.TaskGroup must be used inside a kcoro task "
                               "(asyncio code should use asyncio.TaskGroup)")
        if self._task is not None:
            raise RuntimeError("a TaskGroup can be entered only once")
        self._task = task
        self._scope = CancelScope()
        self._scope.__enter__()
        return self

    def spawn(self, fn: Callable[..., Awaitable[T]] | Coroutine[Any, Any, T], *args: Any,
              name: str | None = None) -> Task[T]:
        """Start ``fn(*args)`` as a child of the group."""
        if self._task is None:
            raise RuntimeError("TaskGroup.spawn() before 'async with'")
        if self._closed:
            raise RuntimeError("TaskGroup is closed: its 'async with' block has finished")
        if _get_ident() != self._task._rt._tid:
            raise RuntimeError("TaskGroup.spawn() must be called from the runtime's own thread "
                               "(send the request through a channel instead)")
        coro = _coro_of(fn, args, "TaskGroup.spawn()")
        child = self._task._rt.spawn(coro, name or getattr(fn, "__qualname__", None),
                                     parent_scope=self._scope, tg=self)
        self._children.add(child)
        return child

    @property
    def cancel_scope(self) -> CancelScope:
        if self._scope is None:
            raise RuntimeError("TaskGroup not entered")
        return self._scope

    def _child_done(self, task: Task[Any]) -> None:
        self._children.discard(task)
        exc = task._exc
        if exc is not None:
            task._retrieved = True
            if not isinstance(exc, Cancelled):
                self._errors.append(exc)
                assert self._scope is not None
                self._scope.cancel()
        if not self._children and self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            _ring(waiter)

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> bool:
        scope = self._scope
        task = self._task
        assert scope is not None and task is not None
        if ev is not None and not isinstance(ev, Cancelled):
            self._errors.append(ev)
            scope.cancel()
        while self._children:
            # Parked until the last child finishes.  If our own task is cancelled meanwhile, the
            # children are cancelled through the scope tree; keep waiting for them (shielded).
            t = internal_ticket(task)
            self._waiter = t
            task._on = self
            await trap(t)
        self._waiter = None
        self._closed = True
        errors = self._errors
        if errors:
            scope.__exit__(None, None, None)
            if len(errors) == 1:
                raise errors[0]
            raise BaseExceptionGroup("several tasks of a kcoro.TaskGroup failed", errors)
        if ev is None and scope._eff:
            # Cancelled while waiting for the children (e.g. an enclosing deadline): the block
            # ends with Cancelled, which the scope that was cancelled absorbs.
            ev = Cancelled()
            if scope.__exit__(Cancelled, ev, None):
                return False
            raise ev
        return scope.__exit__(et, ev, tb)

    def check_invariants(self) -> None:
        for child in self._children:
            assert child._tg is self and child._state != "FINISHED", f"stale child {child!r}"
        if self._closed:
            assert not self._children and self._waiter is None, "closed group still waiting"
        if self._scope is not None:
            self._scope.check_invariants()

    def __repr__(self) -> str:
        return f"<TaskGroup children={len(self._children)} errors={len(self._errors)}>"
