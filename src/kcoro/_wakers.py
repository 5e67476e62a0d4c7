"""Wakers: how a completed ticket reaches whoever is parked on it.

| waiting side               | waker                      | wake does                              |
|----------------------------|----------------------------|----------------------------------------|
| kcoro task                 | the ``Task`` itself        | append to the runtime's ready deque,   |
|                            |                            | poke its wakeup fd if it is asleep     |
| asyncio task               | :class:`AioWaker`          | ``fut.set_result`` on the loop thread, |
|                            |                            | else ``call_soon_threadsafe``          |
| OS thread (``*_blocking``) | :class:`ThreadWaker`       | release a lock the thread waits on     |

Every waker's ``wake`` is called at most once per ticket, outside the kernel lock.

Invariant of :class:`ThreadWaker`: its lock is *held* whenever the thread is not inside a wait;
each wait consumes exactly one release (the wake, or nothing when the waiter's own cancel won),
so one lock per thread is reused for all its waits.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ._context import tls
from ._tokens import Ticket

__all__ = ["AioWaker", "ThreadWaker", "thread_waker"]

_get_ident = threading.get_ident


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class AioWaker:
    __slots__ = ("fut", "loop", "tid")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[Any] = loop.create_future()
        self.tid = _get_ident()

    def wake(self, ticket: Ticket) -> None:
        if _get_ident() == self.tid:
            fut = self.fut
            if not fut.done():
                try:
                    fut.set_result(None)
                except RuntimeError:
                    pass  # the loop was closed with the task still waiting: nobody is left
        else:
            try:
                self.loop.call_soon_threadsafe(_resolve, self.fut)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more


class ThreadWaker:
    """``lock`` is held while idle; a wake releases it and then counts itself in ``wakes`` (one
    writer: the winner of the ticket).  ``busy`` is set while a wait uses it, so a nested wait
    (a signal handler doing a blocking op) gets a waker of its own."""

    __slots__ = ("busy", "lock", "wakes")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.wakes = 0
        self.busy = False

    def wake(self, ticket: Ticket) -> None:
        self.lock.release()
        self.wakes += 1


def thread_waker() -> ThreadWaker:
    w: ThreadWaker | None = tls.twaker
    if w is None:
        w = tls.twaker = ThreadWaker()
    elif w.busy:  # a nested wait (from a signal handler): never share the outer wait's lock
        return ThreadWaker()
    return w
