"""Tickets and the token kernel: the one mechanism under every wait.

State machine of a ticket (``Ticket._state``)::

    NEW ──park──▶ PARKED ──complete──▶ READY ──waiter resumes──▶ COMPLETED
     │               │
     └───────────────┴──cancel──▶ CANCELLED

Invariants (checked by :func:`check_invariants` and ``TokenKernel.check_invariants``):

* Every transition out of NEW/PARKED happens inside a kernel-lock section (:mod:`kcoro._klock`),
  so ``complete`` and ``cancel`` race safely: the first wins, the loser changes nothing and gets
  ``None`` back from ``_hand``/``_fail`` (``False`` from the public calls).
* A ticket's waker is called at most once, by the winner, *after* the kernel lock is released
  ("wake after unlock").  The waker is installed before the ticket becomes visible to anyone
  who could complete it, so no wake-up is lost.
* A ticket in the kernel table (``_by_id``/``_by_key``) is NEW or PARKED; the winner of the race
  removes it.  A live key maps to exactly one ticket.
* Counters only grow: ``completed + cancelled <= published``.

Internal waits (a channel op, a sleep, a select) use tickets born PARKED that never enter the
keyed table and carry id 0; they are counted in :meth:`TokenKernel.stats` all the same.  A kcoro
task reuses one ticket for its channel waits when the previous wait ended by a hand-off
(COMPLETED): at that point no queue, timer or token can still reference it.  A ticket that parks
in a channel wait queue also serves as the queue entry (``linked``/``item``), saving an
allocation per wait.

This module knows nothing about channels or schedulers; the context that parks on a public
ticket (kcoro task, asyncio task, OS thread) is supplied by :mod:`kcoro._wait` through
:func:`install_parkers`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Awaitable, Callable, Generator, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from . import _klock, _registry

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "NEW",
    "PARKED",
    "READY",
    "Ticket",
    "TokenKernel",
    "TokenKernelStats",
    "token_kernel",
]

NEW, PARKED, READY, COMPLETED, CANCELLED = 0, 1, 2, 3, 4
STATE_NAMES = ("NEW", "PARKED", "READY", "COMPLETED", "CANCELLED")

# Why a ticket was cancelled; the waiter turns this into the right exception.
WHY_USER, WHY_TIMEOUT, WHY_TOKEN, WHY_TASK, WHY_CLOSED, WHY_SHUTDOWN = range(6)

# Process-wide counters, updated inside kernel-lock sections only (so they are exact).  A kernel
# reports them relative to a baseline taken when it was created.  Parks of kcoro tasks are
# counted by their runtime (``Runtime.parks``, folded into C_NATIVE_DONE when it closes); parks
# from asyncio tasks and threads in C_FOREIGN_PARKS.  ``completed`` is derived in stats():
# every ticket ends completed, cancelled (counted here) or is still outstanding.
(C_CANCELLED, C_ZOMBIES, C_PUB_PUBLISHED, C_PUB_PARKED, C_FOREIGN_PARKS, C_FOREIGN_LIVE,
 C_NATIVE_DONE) = range(7)
COUNTS: list[int] = [0, 0, 0, 0, 0, 0, 0]

_acquire, _release = _klock.acquire, _klock.release


class Waker(Protocol):
    """Whatever parks on a ticket: ``wake`` is called once, outside the kernel lock."""

    def wake(self, ticket: Ticket) -> None: ...


class Ticket:
    """One wait.  Public tickets come from :meth:`TokenKernel.publish`; internal ones from
    channel operations, sleeps and selects.

    ``await ticket`` (or ``await ticket.wait(timeout)``) parks until it is completed and returns
    the payload; ``ticket.wait_blocking()`` does the same from a plain thread.
    """

    __slots__ = ("_kernel", "_state", "_waker", "_why", "id", "item", "key", "linked",
                 "payload", "reason")

    def __init__(self, waker: Waker | None, ident: int = 0, state: int = PARKED) -> None:
        self.id = ident  # 0 for internal waits (they are counted, not numbered)
        self._state = state
        self._waker = waker
        self.payload: Any = None
        self.reason: Any = None
        self._why = 0
        self.key: Hashable | None = None
        self._kernel: TokenKernel | None = None
        self.linked = False  # True while counted in a channel wait queue
        self.item: Any = None  # a parked sender's item

    # -- transitions; the caller holds the kernel lock ------------------------------------
    def _hand(self, value: Any) -> Ticket | None:
        """Complete with ``value`` if still pending; return self (to wake) or None (lost)."""
        if self._state < READY:
            self._state = READY
            self.payload = value
            return self
        return None

    def _fail(self, why: int, reason: Any = None) -> Ticket | None:
        """Cancel if still pending; return self (to wake) or None (lost)."""
        if self._state < READY:
            self._state = CANCELLED
            self._why = why
            self.reason = reason
            COUNTS[C_CANCELLED] += 1
            return self
        return None

    def _wake(self) -> None:
        """Call the waker (kernel lock not held)."""
        w = self._waker
        if w is not None:
            w.wake(self)

    # -- public surface ------------------------------------------------------------------
    @property
    def state(self) -> str:
        """One of ``NEW PARKED READY COMPLETED CANCELLED``."""
        return STATE_NAMES[self._state]

    def done(self) -> bool:
        """True once completed or cancelled."""
        return self._state >= READY

    def cancelled(self) -> bool:
        return self._state == CANCELLED

    def wait(self, timeout: float | None = None, *, cancel: Any = None) -> Awaitable[Any]:
        """Park until completed; return the payload.

        Raises :class:`OperationCancelled` if the ticket is cancelled, ``TimeoutError`` when
        ``timeout`` expires (the ticket is then cancelled: a later completion is a zombie).
        """
        return _parkers.wait_async(self, timeout, cancel)

    def __await__(self) -> Generator[Any, None, Any]:
        return _parkers.wait_async(self, None, None).__await__()

    def wait_blocking(self, timeout: float | None = None, *, cancel: Any = None) -> Any:
        """``wait`` for a plain OS thread (not one running a kcoro task)."""
        return _parkers.wait_blocking(self, timeout, cancel)

    def complete(self, payload: Any = None) -> bool:
        """Shorthand for ``kernel.complete(ticket, payload)``."""
        return (self._kernel or token_kernel()).complete(self, payload)

    def cancel(self, reason: Any = None) -> bool:
        """Shorthand for ``kernel.cancel(ticket, reason)``."""
        return (self._kernel or token_kernel()).cancel(self, reason)

    def __repr__(self) -> str:
        key = "" if self.key is None else f" key={self.key!r}"
        return f"<Ticket id={self.id}{key} {STATE_NAMES[self._state]}>"


class _Parkers(Protocol):
    def wait_async(self, t: Ticket, timeout: float | None, cancel: Any) -> Awaitable[Any]: ...

    def wait_blocking(self, t: Ticket, timeout: float | None, cancel: Any) -> Any: ...


class _NoParkers:
    def wait_async(self, t: Ticket, timeout: float | None, cancel: Any) -> Awaitable[Any]:
        raise RuntimeError("kcoro._wait is not loaded")

    def wait_blocking(self, t: Ticket, timeout: float | None, cancel: Any) -> Any:
        raise RuntimeError("kcoro._wait is not loaded")


_parkers: _Parkers = _NoParkers()


def install_parkers(p: _Parkers) -> None:
    """Called once by :mod:`kcoro._wait`: how public tickets park in each context."""
    global _parkers
    _parkers = p


@dataclass(frozen=True, slots=True)
class TokenKernelStats:
    """Cumulative counters of one kernel (since it was created)."""

    published: int
    parked: int
    completed: int
    cancelled: int
    outstanding: int
    zombies: int
    keyed: int

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


class TokenKernel:
    """The correlation table: tickets reachable by id or key, completable from any thread."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._next_id = self._ids.__next__
        self._base = _raw_totals()
        self._by_id: dict[int, Ticket] = {}
        self._by_key: dict[Hashable, Ticket] = {}
        self._tlock = threading.RLock()  # guards the two dicts (user keys may run __eq__)

    # -- tickets -------------------------------------------------------------------------
    # ``_by_id`` (int keys: hashing runs no user code) is guarded by the kernel lock, so an
    # id-only ticket is published and finished with no other lock; ``_by_key`` (user keys may run
    # ``__eq__``/``__hash__``) by ``_tlock``, taken only for keyed tickets and never while the
    # kernel lock is held.
    def publish(self, key: Hashable | None = None) -> Ticket:
        """A new ticket in state NEW, with a unique id and an optional correlation key."""
        t = Ticket(None, 0, NEW)
        t._kernel = self
        if key is None:
            self._enter(t)
            return t
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"ticket key must be hashable, got {type(key).__name__}") from None
        t.key = key
        with self._tlock:
            if key in self._by_key:
                raise ValueError(f"a live ticket with key {key!r} is already published")
            self._by_key[key] = t
            self._enter(t)
        return t

    def _enter(self, t: Ticket) -> None:
        """Give ``t`` its id and make it reachable by it (one kernel-lock section)."""
        _klock.acquire()
        try:
            t.id = i = self._next_id()
            self._by_id[i] = t
            COUNTS[C_PUB_PUBLISHED] += 1
        finally:
            _klock.release()

    def lookup(self, ref: Ticket | int | Hashable) -> Ticket | None:
        """The live ticket for an id or key (or the ticket itself), else None."""
        if type(ref) is Ticket:
            return ref
        if isinstance(ref, int) and not isinstance(ref, bool):
            ref = int(ref)  # an int subclass could hash in Python inside the section
            _klock.acquire()
            try:
                t = self._by_id.get(ref)
            finally:
                _klock.release()
            if t is not None:
                return t
        with self._tlock:
            try:
                return self._by_key.get(ref)
            except TypeError:
                return None

    def _forget(self, t: Ticket) -> None:
        """Remove a finished public ticket from the table."""
        _klock.acquire()
        try:
            if self._by_id.get(t.id) is t:
                del self._by_id[t.id]
        finally:
            _klock.release()
        if t.key is not None:
            with self._tlock:
                if self._by_key.get(t.key) is t:
                    del self._by_key[t.key]

    def complete(self, ref: Ticket | int | Hashable, payload: Any = None) -> bool:
        """Complete a ticket (by ticket, id or key) with ``payload``; callable from any thread.

        First completion or cancellation wins; ``False`` (counted as a zombie) if the ticket is
        unknown or already finished.
        """
        return self._finish(ref, True, payload)

    def cancel(self, ref: Ticket | int | Hashable, reason: Any = None) -> bool:
        """As :meth:`complete`, ending in CANCELLED; the waiter gets ``OperationCancelled``."""
        return self._finish(ref, False, reason)

    def _finish(self, ref: Ticket | int | Hashable, ok: bool, value: Any) -> bool:
        t = ref if type(ref) is Ticket else self.lookup(ref)
        _klock.acquire()
        try:
            if t is None:
                COUNTS[C_ZOMBIES] += 1
                return False
            won = t._hand(value) if ok else t._fail(WHY_USER, value)
            if won is None:
                COUNTS[C_ZOMBIES] += 1
                return False
            k = t._kernel
            if k is not None and k._by_id.get(t.id) is t:  # forget it (int key: no user code)
                del k._by_id[t.id]
        finally:
            _klock.release()
        if t.key is not None and k is not None:
            with k._tlock:
                if k._by_key.get(t.key) is t:
                    del k._by_key[t.key]
        t._wake()
        return True

    # -- lifecycle and introspection -----------------------------------------------------
    def outstanding(self) -> list[Ticket]:
        """The public tickets not yet completed or cancelled, oldest first."""
        # One C-level copy (ints and tickets run no Python code while it iterates), so it is
        # atomic under the GIL without the kernel lock, and allocates outside any section.
        live = list(self._by_id.values())
        return sorted(live, key=lambda t: t.id)

    def shutdown(self) -> None:
        """Cancel every outstanding public ticket; the next ``token_kernel()`` is a fresh one."""
        global _kernel
        with _init_lock:
            if _kernel is self:
                _kernel = None
        for t in self.outstanding():
            _klock.acquire()
            try:
                won = t._fail(WHY_SHUTDOWN, "kernel shutdown")
            finally:
                _klock.release()
            self._forget(t)
            if won is not None:
                t._wake()

    def stats(self) -> TokenKernelStats:
        now = _raw_totals()
        c = [a - b for a, b in zip(now, self._base)]
        with self._tlock:
            keyed = len(self._by_key)
        live_public = len(self._by_id)
        parks = c[_T_PARKS]
        published = c[C_PUB_PUBLISHED] + parks - c[C_PUB_PARKED]
        outstanding = live_public + now[_T_LIVE_INTERNAL]
        cancelled = c[C_CANCELLED]
        return TokenKernelStats(
            published=published,
            parked=parks,
            completed=max(0, published - cancelled - outstanding),
            cancelled=cancelled,
            outstanding=outstanding,
            zombies=c[C_ZOMBIES],
            keyed=keyed,
        )

    def check_invariants(self) -> None:
        with self._tlock:
            for tid, t in list(self._by_id.items()):
                assert t.id == tid, f"table id {tid} holds ticket {t.id}"
                assert t._state < READY, f"finished ticket {t!r} still in the table"
            for key, t in self._by_key.items():
                assert t.key == key and self._by_id.get(t.id) is t, f"key {key!r} is stale"
        s = self.stats()
        assert s.completed + s.cancelled <= s.published, s

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<TokenKernel published={s.published} outstanding={s.outstanding} "
                f"zombies={s.zombies}>")


_kernel: TokenKernel | None = None
_init_lock = threading.Lock()

# Indexes of the totals list built by _raw_totals (COUNTS, then derived entries).
_T_PARKS = len(COUNTS)
_T_LIVE_INTERNAL = _T_PARKS + 1


def _raw_totals() -> list[int]:
    """COUNTS plus total parks and the internal waits parked right now.

    The counters are copied in one kernel section (into lists allocated before it); how many
    tasks are parked right now is read without the lock (it races with running tasks anyway).
    """
    runtimes = _registry.runtimes.items()
    n = len(COUNTS)
    totals = [0] * (n + 2)
    parks = [0] * len(runtimes)
    _klock.acquire()
    try:
        for i in range(n):
            totals[i] = COUNTS[i]
        for i in range(len(runtimes)):
            parks[i] = runtimes[i].parks
    finally:
        _klock.release()
    totals[_T_PARKS] = totals[C_NATIVE_DONE] + totals[C_FOREIGN_PARKS] + sum(parks)
    totals[_T_LIVE_INTERNAL] = totals[C_FOREIGN_LIVE] + sum(rt.parked_internal()
                                                             for rt in runtimes)
    return totals


def token_kernel() -> TokenKernel:
    """The process-wide kernel, created on first use (thread-safe: racing threads get one)."""
    k = _kernel
    if k is None:
        return _init_kernel()
    return k


def _init_kernel() -> TokenKernel:
    global _kernel
    with _init_lock:
        if _kernel is None:
            _kernel = TokenKernel()
        return _kernel


def internal_ticket(waker: Waker | None) -> Ticket:
    """A PARKED ticket for an internal wait (id 0; counted when it parks)."""
    return Ticket(waker)


def check_invariants() -> None:
    _klock.check_invariants()
    k = _kernel
    if k is not None:
        k.check_invariants()


# A callable type used by wakers built elsewhere.
WakeFn = Callable[[Ticket], None]
