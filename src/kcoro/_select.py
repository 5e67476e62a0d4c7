"""select: wait on several channel operations; exactly one of them happens.

    index, value = await kcoro.select(a.on_recv(), b.on_send(x), timeout=1.0)

The protocol (C kcoro spec, kotlinx ``select``, Go ``selectgo``), in three named phases, all
inside kernel-lock sections (one lock for every channel: the whole registration is atomic, as
Go's select locks all its channels):

1. **probe** — try each clause in order (argument order, or a random permutation when
   ``fair=True``); the first that can complete now completes, exactly like the plain operation.
   A clause on a closed channel is ready: its outcome is ``ChannelClosed`` with ``.index``.
2. **register** — nothing was ready: one ticket for the whole select, and one entry per clause
   in the matching wait queue (a send entry carries its item).  A partner that pops an entry
   claims the ticket (first-wins, under the lock), so exactly one clause fires; an entry whose
   ticket is already claimed is skipped by everyone (it never receives an item, and a losing send
   entry's item is never delivered or reported).
3. **unregister** — after waking, every entry still linked is unlinked before ``select``
   returns, so no ghost waiter is left and waiting counts return to what they were.

A select never pairs with itself: its entries are passive and only *other* operations pop them.
Stats: completions are counted by the channels exactly like plain operations; a select that
fails (timeout, cancellation, would-block) is not attributed to any one channel, except
``ChannelClosed``, which counts as a closed op on that clause's channel.

Invariants: each entry belongs to exactly one select ticket and one channel queue; after
``select`` returns none of its entries is linked (``check_entries_unlinked``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from . import _klock
from ._chan import (
    _CLOSED,
    _DROPPED,
    _EMPTY,
    _FULL,
    _OK,
    _SIZED_TYPES,
    RecvClause,
    SendClause,
    _nbytes,
)
from ._context import tls
from ._errors import Cancelled, ChannelClosed, OperationCancelled, WouldBlock
from ._runtime import Task, trap
from ._tokens import CANCELLED, COMPLETED, READY, WHY_CLOSED, WHY_TOKEN, Ticket
from ._wait import (
    check_blocking_allowed,
    check_timeout,
    check_token,
    context,
    error_for,
    park,
    park_blocking,
    waker_for,
)
from ._wakers import thread_waker

if TYPE_CHECKING:
    from ._scopes import CancelToken

__all__ = ["RecvClause", "SendClause", "select", "select_blocking"]

_acquire, _release = _klock.acquire, _klock.release


Clause: TypeAlias = "RecvClause | SendClause"


class _SelEntry:
    """One clause's registration in a channel queue; quacks like a plain waiter ticket."""

    __slots__ = ("index", "item", "linked", "sel")

    def __init__(self, sel: Ticket, index: int, item: Any) -> None:
        self.sel = sel
        self.index = index
        self.item = item
        self.linked = False

    # Called by channel code inside a kernel section.
    def _hand(self, value: Any) -> Ticket | None:
        t = self.sel
        if t._state < READY:
            t._state = READY
            t.payload = value
            t.item = self.index
            return t
        return None

    def _fail(self, why: int, reason: Any = None) -> Ticket | None:
        return self.sel._fail(why, self.index)

    @property
    def _state(self) -> int:
        return self.sel._state


def _check(clauses: tuple[Any, ...]) -> None:
    if not clauses:
        raise ValueError("select() needs at least one clause (ch.on_recv() or ch.on_send(x))")
    for c in clauses:
        if type(c) is not RecvClause and type(c) is not SendClause:
            i = clauses.index(c)
            raise TypeError(f"select() argument {i} is {c!r}, not a clause: use ch.on_recv() "
                            f"or ch.on_send(item)")


_IN_ORDER = [tuple(range(n)) for n in range(17)]


def _order(n: int, fair: bool) -> Sequence[int]:
    if fair and n > 1:
        order = list(range(n))
        random.shuffle(order)
        return order
    return _IN_ORDER[n] if n < 17 else tuple(range(n))


# Results of a probe: (status, index, value, to_wake_or_dropped)
_NONE, _WON, _WON_DROPPED, _CLOSED_AT, _PARKED, _TOKEN = range(6)


def _attempt(clauses: tuple[Any, ...], order: Sequence[int], sel: Ticket | None,
             entries: list[_SelEntry] | None, cancel: CancelToken | None,
             ) -> tuple[int, int, Any, Any, Any]:
    """Phase 1 (probe) and, if ``sel`` is given and nothing is ready, phase 2 (register)."""
    n = len(order)
    status = _NONE
    index = -1
    value: Any = None
    x: Any = None  # a partner ticket to wake
    d: Any = None  # an item evicted by DROP_OLDEST (reported)
    _acquire()
    try:
        j = 0
        while j < n:
            i = order[j]
            j += 1
            c = clauses[i]
            ch = c.ch
            if type(c) is RecvClause and ch._buf and not ch._nsend:
                # The common case, inlined: take the head of a buffer with no parked sender.
                value = ch._buf.popleft()
                ch.recvs += 1
                if type(value) in _SIZED_TYPES:
                    n_ = _nbytes(value)
                    ch.bytes_recv += n_
                    ch._buf_bytes -= n_
                ch._stamp()
                index = i
                status = _WON
                break
            if c.is_send:
                st = ch._put(c.item)
                if st == _FULL:
                    continue
                index = i
                if st == _OK:
                    status = _WON
                    x, d = ch._x, ch._xd
                    ch._x = ch._xd = None
                elif st == _DROPPED:
                    status = _WON_DROPPED
                    ch._count_dropped(c.item)
                else:  # _REFUSED
                    status = _CLOSED_AT
                    ch.send_closed += 1
                break
            item = ch._get()
            if item is _EMPTY:
                continue
            index = i
            if item is _CLOSED:
                status = _CLOSED_AT
                ch.recv_closed += 1
            else:
                status = _WON
                value = item
                x = ch._x
                ch._x = None
            break
        if status == _NONE and sel is not None:
            if cancel is not None and cancel._cancelled:
                status = _TOKEN
            else:
                assert entries is not None
                k = 0
                while k < n:
                    e = entries[k]
                    k += 1
                    e.linked = True
                    ch = clauses[e.index].ch
                    if e.item is not _NOITEM:
                        ch._sendq.append(e)
                        ch._nsend += 1
                    else:
                        ch._recvq.append(e)
                        ch._nrecv += 1
                if cancel is not None:
                    cancel._tickets.add(sel)
                status = _PARKED
    finally:
        _release()
    return status, index, value, x, d


_NOITEM: Any = object()  # marks a receive entry (a send entry's item may be None)


def _unregister(clauses: tuple[Any, ...], entries: list[_SelEntry], sel: Ticket,
                cancel: CancelToken | None) -> None:
    """Phase 3: unlink every entry still linked; count a closed outcome on its channel."""
    _acquire()
    try:
        k = 0
        n = len(entries)
        while k < n:
            e = entries[k]
            k += 1
            sender = e.item is not _NOITEM
            if e.linked:
                ch = clauses[e.index].ch
                ch._unlink(e, sender)
            if sender:  # a dead entry may linger in a queue: let go of the item (the clause
                e.item = None  # still holds it, so this is never the last reference)
        if cancel is not None:
            cancel._tickets.discard(sel)
        if sel._state == CANCELLED and sel._why == WHY_CLOSED:
            c = clauses[sel.reason]
            if c.is_send:
                c.ch.send_closed += 1
            else:
                c.ch.recv_closed += 1
        elif sel._state == READY:
            sel._state = COMPLETED
    finally:
        _release()


def _finish_probe(clauses: tuple[Any, ...], status: int, index: int, value: Any,
                  x: Any, d: Any) -> tuple[int, Any]:
    """Outside the lock: wake the partner / report drops / raise for a closed clause."""
    if status == _CLOSED_AT:
        ch = clauses[index].ch
        exc = ch._closed_error(clauses[index].is_send)
        exc.index = index
        raise exc
    if status == _WON_DROPPED:
        clauses[index].ch._report((clauses[index].item,))
        return index, None
    if x is not None:
        x._wake()
    if d is not None:  # an item evicted by DROP_OLDEST / conflated
        clauses[index].ch._report((d,))
    return index, value


def _make_entries(sel: Ticket, clauses: tuple[Any, ...],
                  order: Sequence[int]) -> list[_SelEntry]:
    return [_SelEntry(sel, i, clauses[i].item if clauses[i].is_send else _NOITEM)
            for i in order]


def _result(clauses: tuple[Any, ...], sel: Ticket, ctx: Any) -> tuple[int, Any]:
    if sel._state == CANCELLED:
        if sel._why == WHY_CLOSED:
            index = sel.reason
            c = clauses[index]
            exc = c.ch._closed_error(c.is_send)
            exc.index = index
            raise exc
        raise error_for(sel, ctx, "select")
    value = sel.payload
    sel.payload = None
    return sel.item, value


async def select(*clauses: Clause, timeout: float | None = None, fair: bool = False,
                 cancel: CancelToken | None = None) -> tuple[int, Any]:
    """Wait until exactly one clause completes; return ``(index, value)``.

    ``value`` is the received item for ``on_recv`` clauses, None for ``on_send``.
    ``timeout``: None waits forever, 0 is a try (``WouldBlock``), > 0 is bounded
    (``TimeoutError``).  ``fair=False`` prefers the first ready clause in argument order;
    ``fair=True`` picks uniformly among ready clauses.  A clause whose channel is closed raises
    ``ChannelClosed`` with ``.index`` set.
    """
    _check(clauses)
    rt = tls.rt
    task = rt.current if rt is not None else None
    ctx: Any = task if task is not None else context()
    if task is not None and task._scope._eff:
        raise Cancelled()
    if timeout is not None:
        timeout = check_timeout(timeout)
    if cancel is not None:
        check_token(cancel)
        if cancel._cancelled:
            raise OperationCancelled("select cancelled by its CancelToken",
                                     reason=cancel._reason)
    order = _order(len(clauses), fair)
    status, index, value, x, d = _attempt(clauses, order, None, None, None)
    if status != _NONE:
        result = _finish_probe(clauses, status, index, value, x, d)
        if task is not None:
            b = task._budget - 1
            if b:
                task._budget = b
            else:
                await trap(None)
        return result
    if timeout == 0:
        raise WouldBlock("select: no clause is ready")
    sel = Ticket(task if task is not None else waker_for(ctx))
    entries = _make_entries(sel, clauses, order)
    status, index, value, x, d = _attempt(clauses, order, sel, entries, cancel)
    if status != _PARKED:
        if status == _TOKEN:
            raise OperationCancelled("select cancelled by its CancelToken",
                                     reason=cancel._reason if cancel is not None else None)
        return _finish_probe(clauses, status, index, value, x, d)
    if task is not None:
        task._on = clauses
    try:
        await park(sel, ctx, timeout)
    finally:  # also when the coroutine is closed or thrown into while parked
        _unregister(clauses, entries, sel, cancel)
        if task is not None:
            task._on = None
    return _result(clauses, sel, ctx)


def select_blocking(*clauses: Clause, timeout: float | None = None, fair: bool = False,
                    cancel: CancelToken | None = None) -> tuple[int, Any]:
    """:func:`select` for a plain OS thread (RuntimeError from a thread running a loop)."""
    _check(clauses)
    check_blocking_allowed("kcoro.select_blocking()")
    if timeout is not None:
        timeout = check_timeout(timeout)
    if cancel is not None:
        check_token(cancel)
        if cancel._cancelled:
            raise OperationCancelled("select cancelled by its CancelToken",
                                     reason=cancel._reason)
    order = _order(len(clauses), fair)
    status, index, value, x, d = _attempt(clauses, order, None, None, None)
    if status != _NONE:
        return _finish_probe(clauses, status, index, value, x, d)
    if timeout == 0:
        raise WouldBlock("select: no clause is ready")
    sel = Ticket(thread_waker())
    entries = _make_entries(sel, clauses, order)
    status, index, value, x, d = _attempt(clauses, order, sel, entries, cancel)
    if status != _PARKED:
        if status == _TOKEN:
            raise OperationCancelled("select cancelled by its CancelToken",
                                     reason=cancel._reason if cancel is not None else None)
        return _finish_probe(clauses, status, index, value, x, d)
    try:
        park_blocking(sel, timeout)
    finally:
        _unregister(clauses, entries, sel, cancel)
    return _result(clauses, sel, None)


def check_entries_unlinked(entries: list[_SelEntry]) -> None:
    for e in entries:
        assert not e.linked, f"select entry {e.index} still linked after select returned"


_ = (WHY_TOKEN, ChannelClosed, Task)
