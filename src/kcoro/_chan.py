"""Channels: rendezvous, buffered, unlimited and conflated, with overflow policies.

State (all of it guarded by the kernel lock, :mod:`kcoro._klock`):

* ``_buf``    deque of accepted items not yet received (never longer than ``_cap``);
* ``_recvq``  FIFO of parked receivers, ``_sendq`` FIFO of parked senders.  An entry is a
  :class:`~kcoro._tokens.Ticket` (plain operation) or a select entry; both have ``linked``,
  ``item``, ``_hand(value)`` and ``_fail(why, reason)``.  ``_nrecv``/``_nsend`` count *linked*
  entries; unlinked ones are skipped by pops and swept by compaction, so unlinking is O(1);
* ``_closed`` (closed for send), ``_cancelled`` (``cancel()`` was called).

Invariants (``check_invariants``)::

    len(_buf) <= _cap
    _nrecv == number of linked entries in _recvq ;  _nsend likewise for _sendq
    _nrecv > 0  implies  _buf is empty                  (a waiting receiver would have got it)
    _nsend > 0  implies  len(_buf) == _cap and not _closed   (senders park only when full)
    not (_nrecv > 0 and _nsend > 0)                    (they would have been paired)
    _closed and _buf empty  implies  _nrecv == 0 and _nsend == 0
    _cancelled implies _closed and _buf empty
    len(queue) <= 2 * linked + 16                       (memory stays proportional to waiters)

Algorithms (the kcoro channel spec):

* send: closed → ChannelClosed.  A parked receiver exists → hand the item to the first live one by
  completing its ticket (direct hand-off: the item never enters the buffer, nobody can steal it).
  Room in the buffer → append.  Full: DROP_OLDEST evicts the head (reported), DROP_LATEST drops
  the new item (reported by ``send``; ``try_send`` returns False instead), SUSPEND parks.
* recv: buffer non-empty → take the head; if a sender is parked (buffer was full) move its item
  into the buffer and complete its ticket.  Rendezvous: take the item of the first live parked
  sender.  Closed and drained → ChannelClosed.  Otherwise park.
* An entry whose ticket can no longer be completed (cancelled, or its select won elsewhere) is
  skipped: an item is never handed to an already-cancelled receiver.
* close: no more sends; fail every parked sender (it keeps its item); once the buffer is empty
  fail every parked receiver.  cancel: close, discard the buffer through ``on_undelivered``.
* Wake after unlock: tickets to wake and items to report are collected inside the section and
  handled after the lock is released.

Section discipline (why no user code can run under the lock): sections allocate no objects the
cyclic GC tracks (a collection could run finalizers that re-enter kcoro), and never drop the last
reference to a user object (entries clear ``item`` while the op still holds it).  Exceptions are
created after the lock is released.

Ownership: a send that raises leaves the item with the sender; a send that returns has given it
to the channel, which either delivers it or reports it to ``on_undelivered`` exactly once.
"""

from __future__ import annotations

import enum
import math
import os
import sys
import time
from asyncio import CancelledError as _CancelledError
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _klock, _registry
from ._accel import speedups as _speedups
from ._context import tls
from ._errors import (
    Cancelled,
    ChannelClosed,
    OperationCancelled,
    UndeliveredElementError,
    WouldBlock,
)
from ._runtime import Task, trap
from ._tokens import (
    C_FOREIGN_LIVE,
    C_FOREIGN_PARKS,
    CANCELLED,
    COMPLETED,
    COUNTS,
    PARKED,
    READY,
    WHY_CLOSED,
    WHY_TASK,
    WHY_TIMEOUT,
    WHY_TOKEN,
    Ticket,
    internal_ticket,
)
from ._wait import (
    check_blocking_allowed,
    check_timeout,
    check_token,
    context,
    error_for,
    foreign_cancelled,
    park,
    park_blocking,
    waker_for,
)
from ._wakers import AioWaker, thread_waker

__all__ = [
    "CONFLATED",
    "DROP_LATEST",
    "DROP_OLDEST",
    "RENDEZVOUS",
    "SUSPEND",
    "UNLIMITED",
    "Channel",
    "ChannelRate",
    "ChannelStats",
    "Overflow",
    "stats_rate",
]

T = TypeVar("T")

RENDEZVOUS = 0
CONFLATED = -1
UNLIMITED = math.inf
_UNBOUNDED = sys.maxsize  # internal int capacity of UNLIMITED (no preallocation: a deque)


class Overflow(enum.Enum):
    """What a full buffered channel does with one more ``send``."""

    SUSPEND = "suspend"
    DROP_OLDEST = "drop_oldest"
    DROP_LATEST = "drop_latest"

    def __repr__(self) -> str:
        return f"kcoro.{self.name}"


SUSPEND = Overflow.SUSPEND
DROP_OLDEST = Overflow.DROP_OLDEST
DROP_LATEST = Overflow.DROP_LATEST
_DROP_CODE = {SUSPEND: 0, DROP_OLDEST: 1, DROP_LATEST: 2}

# Results of the locked helpers.
_EMPTY: Any = object()   # nothing to receive now
_CLOSED: Any = object()  # closed (and drained, for receives)
_FULL = 0
_OK = 1
_DROPPED = 2             # accepted, then dropped by DROP_LATEST (the op decides to report)
_REFUSED = 3             # closed for send
_PARKED = 4              # registered a ticket: the caller must park
_TOKEN = 5               # its CancelToken was already cancelled
_SLOW = 6                # not handled by the inlined fast path
_PARKED_ITEM: Any = object()
_TOKEN_ITEM: Any = object()
_SLOW_ITEM: Any = object()

_acquire, _release = _klock.acquire, _klock.release
_now_ns = time.monotonic_ns
_get_running_loop = __import__("asyncio")._get_running_loop


def _nbytes(item: Any) -> int:
    t = type(item)
    if t is bytes or t is bytearray:
        return len(item)
    if t is memoryview:
        try:
            return item.nbytes  # type: ignore[no-any-return]
        except ValueError:  # a released view: nothing to count (and never raise in a section)
            return 0
    f = _SIZERS.get(t)
    return f(item) if f is not None else 0


# Extra sized types (e.g. zero-copy payloads) register how to count their bytes.
_SIZERS: dict[type, Callable[[Any], int]] = {}
_SIZED_TYPES: set[type] = {bytes, bytearray, memoryview}


_ZREF: list[Any] = []


def _zref_module() -> Any:
    """``kcoro._zref`` (imported on first use: it imports this module)."""
    if _ZREF:
        return _ZREF[0]
    from . import _zref

    _ZREF.append(_zref)
    return _zref


def register_sized_type(cls: type, nbytes: Callable[[Any], int]) -> None:
    """Count ``nbytes(item)`` in bytes_sent/bytes_recv for items of type ``cls``."""
    _SIZERS[cls] = nbytes
    _SIZED_TYPES.add(cls)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A frozen snapshot of a channel's counters (cumulative since it was made)."""

    name: str
    kind: str
    capacity: float
    buffered: int
    peak: int
    waiting_senders: int
    waiting_receivers: int
    closed_for_send: bool
    closed_for_recv: bool
    sends: int
    recvs: int
    bytes_sent: int
    bytes_recv: int
    send_would_block: int
    send_timeout: int
    send_closed: int
    send_cancelled: int
    send_dropped: int
    recv_would_block: int
    recv_timeout: int
    recv_closed: int
    recv_cancelled: int
    undelivered: int
    zref_sent: int
    zref_received: int
    zref_fallback_small: int
    zref_fallback_capacity: int
    zref_canceled: int
    zref_aborted_close: int
    first_op_ns: int
    last_op_ns: int
    snapshot_ns: int

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COUNTERS = tuple(
    f.name for f in fields(ChannelStats)
    if f.type == "int" and f.name not in ("buffered", "peak", "waiting_senders",
                                          "waiting_receivers", "first_op_ns", "last_op_ns",
                                          "snapshot_ns")
)
# The counters a channel stores (the others are derived in Channel.stats()).
_STORED = tuple(k for k in _COUNTERS if k not in ("sends", "bytes_sent"))


@dataclass(frozen=True, slots=True)
class ChannelRate:
    """Deltas between two :class:`ChannelStats` of one channel, and per-second rates."""

    interval_s: float
    deltas: dict[str, int]
    sends_per_s: float
    recvs_per_s: float
    bytes_sent_per_s: float
    bytes_recv_per_s: float

    def __getattr__(self, name: str) -> int:
        # d_sends, d_recv_timeout, ...: the delta of any counter
        if name.startswith("d_") and name[2:] in self.deltas:
            return self.deltas[name[2:]]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"interval_s": self.interval_s, "sends_per_s": self.sends_per_s,
                             "recvs_per_s": self.recvs_per_s,
                             "bytes_sent_per_s": self.bytes_sent_per_s,
                             "bytes_recv_per_s": self.bytes_recv_per_s}
        d.update({f"d_{k}": v for k, v in self.deltas.items()})
        return d


def stats_rate(prev: ChannelStats | None, curr: ChannelStats) -> ChannelRate:
    """Deltas of every counter between two snapshots plus per-second rates (C
    ``kc_chan_compute_rate``).  ``prev=None`` means "first sample": deltas are the totals and the
    interval runs from the channel's first operation.  The interval is clamped to >= 1 µs."""
    if prev is None:
        start = curr.first_op_ns or curr.snapshot_ns
        deltas = {k: getattr(curr, k) for k in _COUNTERS}
    else:
        if prev.name != curr.name:
            raise ValueError(f"stats_rate: snapshots of different channels "
                             f"({prev.name!r} vs {curr.name!r})")
        start = prev.snapshot_ns
        deltas = {k: getattr(curr, k) - getattr(prev, k) for k in _COUNTERS}
    interval = max((curr.snapshot_ns - start) / 1e9, 1e-6)
    return ChannelRate(
        interval_s=interval,
        deltas=deltas,
        sends_per_s=deltas["sends"] / interval,
        recvs_per_s=deltas["recvs"] / interval,
        bytes_sent_per_s=deltas["bytes_sent"] / interval,
        bytes_recv_per_s=deltas["bytes_recv"] / interval,
    )


def _check_capacity(capacity: Any) -> tuple[int, str]:
    if isinstance(capacity, bool):
        raise TypeError("Channel capacity must be an int, kcoro.UNLIMITED or kcoro.CONFLATED, "
                        "not a bool")
    if isinstance(capacity, float):
        if capacity == math.inf:
            return _UNBOUNDED, "unlimited"
        raise TypeError(f"Channel capacity must be an int (or kcoro.UNLIMITED), got "
                        f"{capacity!r}")
    if not isinstance(capacity, int):
        raise TypeError(f"Channel capacity must be an int, kcoro.UNLIMITED or kcoro.CONFLATED, "
                        f"got {type(capacity).__name__}")
    if capacity == CONFLATED:
        return 1, "conflated"
    if capacity < 0:
        raise ValueError(f"Channel capacity must be >= 0, kcoro.UNLIMITED or kcoro.CONFLATED, "
                         f"got {capacity}")
    if capacity == 0:
        return 0, "rendezvous"
    return capacity, "buffered"


class _PyChanOps(Generic[T]):
    """The pure-Python ``send``/``recv`` of :class:`Channel` (the reference implementation).

    The hot path is a kcoro task with no timeout and no token: everything a ping-pong or a
    stream does per item is inlined (each Python call costs ~150 ns on the reference machine).
    Every other case goes through ``Channel._send_slow`` / ``Channel._recv_slow``.
    ``kcoro._speedups`` implements exactly these branches in C.
    """

    __slots__ = ()

    async def send(self, item: T, *, timeout: float | None = None,
                   cancel: Any = None) -> None:
        """Send ``item``; park while the channel is full (rendezvous: until a receiver takes it).

        ``timeout``: None waits forever, 0 is a try (``WouldBlock``), > 0 is bounded
        (``TimeoutError``).  ``cancel``: a :class:`CancelToken` (``OperationCancelled``).
        """
        ch: Channel[Any] = self  # type: ignore[assignment]  # only Channel uses this base
        rt = tls.rt
        task = rt.current if rt is not None else None
        if task is None or timeout is not None or cancel is not None or task._scope._eff:
            await ch._send_slow(item, timeout, cancel, task)
            return
        x = t = None
        _acquire()
        try:
            if ch._nrecv:  # (a closed channel has no parked receivers)
                e = ch._recvq[0]
                if type(e) is Ticket and e._state == PARKED and e.linked:
                    # Direct hand-off to the first parked receiver: complete its ticket.
                    ch._recvq.popleft()
                    e.linked = False
                    ch._nrecv -= 1
                    e._state = READY
                    e.payload = item
                    ch.recvs += 1
                    if type(item) in _SIZED_TYPES:
                        ch.bytes_recv += _nbytes(item)
                    x = e
                    st = _OK
                else:
                    st = _SLOW
            elif len(ch._buf) < ch._cap and not ch._closed:
                buf = ch._buf
                buf.append(item)
                if len(buf) > ch._peak:
                    ch._peak = len(buf)
                if type(item) in _SIZED_TYPES:
                    ch._buf_bytes += _nbytes(item)
                st = _OK
            elif ch._closed or ch._drop:
                st = _SLOW
            else:
                # Park, reusing the task's ticket: its last wait ended by a hand-off
                # (COMPLETED), so no queue, timer or token can still reference it.
                t = task._tk
                if t is not None and t._state == COMPLETED:
                    t._state = PARKED
                    t.item = item
                    t.linked = True
                    ch._sendq.append(t)
                    ch._nsend += 1
                    st = _PARKED
                else:
                    st = _SLOW
            if st != _SLOW:
                ch.last_op_ns = rt.now_ns  # type: ignore[union-attr]  # coarse runtime clock
                if not ch.first_op_ns:
                    ch.first_op_ns = rt.now_ns  # type: ignore[union-attr]
        finally:
            _release()
        if st == _OK:
            if x is not None:
                w = x._waker
                if type(w) is Task:  # inline Task.wake
                    r = w._rt
                    w._state = "READY"
                    r._ready.append(w)
                    if r._asleep:
                        r._poke()
                else:
                    x._wake()
            b = task._budget - 1
            if b:
                task._budget = b
            else:
                await trap(None)
            return
        if st == _PARKED:
            task._on = self
            try:
                await trap(t)
            except BaseException:  # the coroutine was closed or thrown into while parked
                ch._abandon(t, True)  # type: ignore[arg-type]
                raise
            if t._state == READY:  # type: ignore[union-attr]
                t._state = COMPLETED  # type: ignore[union-attr]  # READY is left only by us
                return
            ch._finish_wait(t, True, None)  # type: ignore[arg-type]
            raise ch._wait_error(t, task, True)  # type: ignore[arg-type]
        await ch._send_slow(item, None, None, task)

    async def recv(self, *, timeout: float | None = None,
                   cancel: Any = None) -> T:
        """Receive the next item; park while there is none.  ``ChannelClosed`` once closed and
        drained.  ``timeout``/``cancel`` as for :meth:`send`."""
        ch: Channel[Any] = self  # type: ignore[assignment]  # only Channel uses this base
        rt = tls.rt
        task = rt.current if rt is not None else None
        if task is None or timeout is not None or cancel is not None or task._scope._eff:
            return await ch._recv_slow(timeout, cancel, task)  # type: ignore[no-any-return]
        x = t = None
        _acquire()
        try:
            buf = ch._buf
            if ch._nsend:
                e = ch._sendq[0]
                if type(e) is Ticket and e._state == PARKED and e.linked:
                    # Take from the first parked sender (rendezvous), or refill the full
                    # buffer with its item; complete its ticket.
                    ch._sendq.popleft()
                    e.linked = False
                    ch._nsend -= 1
                    e._state = READY
                    moved = e.item
                    e.item = None  # ``moved`` still references it: not the last reference
                    if buf:
                        item = buf.popleft()
                        buf.append(moved)
                        if type(item) in _SIZED_TYPES:
                            ch._buf_bytes -= _nbytes(item)
                        if type(moved) in _SIZED_TYPES:
                            ch._buf_bytes += _nbytes(moved)
                    else:
                        item = moved
                    ch.recvs += 1
                    if type(item) in _SIZED_TYPES:
                        ch.bytes_recv += _nbytes(item)
                    x = e
                else:
                    item = _SLOW_ITEM
            elif buf:
                item = buf.popleft()
                ch.recvs += 1
                if type(item) in _SIZED_TYPES:
                    n = _nbytes(item)
                    ch.bytes_recv += n
                    ch._buf_bytes -= n
            elif ch._closed:
                item = _SLOW_ITEM
            else:
                t = task._tk
                if t is not None and t._state == COMPLETED:
                    t._state = PARKED
                    t.linked = True
                    ch._recvq.append(t)
                    ch._nrecv += 1
                    item = _PARKED_ITEM
                else:
                    item = _SLOW_ITEM
            if item is not _SLOW_ITEM:
                ch.last_op_ns = rt.now_ns  # type: ignore[union-attr]
                if not ch.first_op_ns:
                    ch.first_op_ns = rt.now_ns  # type: ignore[union-attr]
        finally:
            _release()
        if item is _PARKED_ITEM:
            task._on = self
            try:
                await trap(t)
            except BaseException:
                ch._abandon(t, False)  # type: ignore[arg-type]
                raise
            if t._state == READY:  # type: ignore[union-attr]
                t._state = COMPLETED  # type: ignore[union-attr]
                item = t.payload  # type: ignore[union-attr]
                t.payload = None  # type: ignore[union-attr]
                return item  # type: ignore[no-any-return]
            ch._finish_wait(t, False, None)  # type: ignore[arg-type]
            raise ch._wait_error(t, task, False)  # type: ignore[arg-type]
        if item is _SLOW_ITEM:
            return await ch._recv_slow(None, None, task)  # type: ignore[no-any-return]
        if x is not None:
            w = x._waker
            if type(w) is Task:  # inline Task.wake
                r = w._rt
                w._state = "READY"
                r._ready.append(w)
                if r._asleep:
                    r._poke()
            else:
                x._wake()
        b = task._budget - 1
        if b:
            task._budget = b
        else:
            try:
                await trap(None)
            except BaseException:  # closed or thrown into at the schedule point: the item
                ch._report((item,))  # was received and cannot be returned; report it
                raise
        return item  # type: ignore[no-any-return]

    def send_blocking(self, item: T, *, timeout: float | None = None,
                      cancel: Any = None) -> None:
        """``send`` for a plain OS thread (RuntimeError from a thread running a loop)."""
        ch: Channel[Any] = self  # type: ignore[assignment]
        ch._send_blocking_slow(item, timeout, cancel)

    def recv_blocking(self, *, timeout: float | None = None, cancel: Any = None) -> T:
        """``recv`` for a plain OS thread (RuntimeError from a thread running a loop)."""
        ch: Channel[Any] = self  # type: ignore[assignment]
        return ch._recv_blocking_slow(timeout, cancel)  # type: ignore[no-any-return]

    def try_send(self, item: T) -> bool:
        """Send without waiting.  ``WouldBlock`` if full, ``ChannelClosed`` if closed.

        Returns True if the item was accepted; False only for DROP_LATEST when the buffer is full
        (the item is dropped and not reported: the caller still owns it).
        """
        ch: Channel[Any] = self  # type: ignore[assignment]
        return ch._try_send_slow(item)

    def try_recv(self) -> T:
        """Receive without waiting: ``WouldBlock`` if empty, ``ChannelClosed`` if closed and
        drained."""
        ch: Channel[Any] = self  # type: ignore[assignment]
        return ch._try_recv_slow()  # type: ignore[no-any-return]

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None


if TYPE_CHECKING:
    _ChanOps = _PyChanOps
else:  # the C twins when built (see _accel)
    _ChanOps = _PyChanOps if _speedups is None else _speedups.ChanOps


class RecvClause:
    """``ch.on_recv()``: receive from ``ch``; the select's value is the item."""

    __slots__ = ("ch",)
    is_send = False

    def __init__(self, ch: Channel[Any]) -> None:
        self.ch = ch

    def __repr__(self) -> str:
        return f"<on_recv {self.ch.name!r}>"


class SendClause:
    """``ch.on_send(item)``: send ``item`` on ``ch``; the select's value is None."""

    __slots__ = ("ch", "item")
    is_send = True

    def __init__(self, ch: Channel[Any], item: Any) -> None:
        self.ch = ch
        self.item = item

    def __repr__(self) -> str:
        return f"<on_send {self.ch.name!r} {self.item!r}>"



def _fresh_ticket(task: Task[Any] | None, ctx: Any) -> Ticket:
    """A new ticket for a wait; a kcoro task caches it for reuse by the inlined fast paths."""
    if task is not None:
        t = task._tk = Ticket(task)
        return t
    return Ticket(waker_for(ctx))


class Channel(_ChanOps[T], Generic[T]):
    """A channel of items of type ``T``; see the module docstring for the algorithms."""

    __slots__ = (  # noqa: RUF023 - state, then counters
        "__weakref__", "_buf", "_cancelled", "_cap", "_cause", "_closed", "_drop", "_kind",
        "_name", "_nrecv", "_nsend", "_on_undelivered", "_origin", "_peak", "_recvq", "_sendq",
        "_rclause", "_x", "_xd",
        # counters (sends and bytes_sent are derived: see stats())
        "_buf_bytes", "_lost_bytes", "bytes_recv", "first_op_ns", "last_op_ns",
        "recv_cancelled", "recv_closed", "recv_timeout", "recv_would_block", "recvs",
        "send_cancelled", "send_closed", "send_dropped", "send_timeout", "send_would_block",
        "undelivered", "zref_aborted_close", "zref_canceled", "zref_fallback_capacity",
        "zref_fallback_small", "zref_received", "zref_sent",
    )

    def __init__(self, capacity: int | float = RENDEZVOUS, *, overflow: Overflow = SUSPEND,
                 on_undelivered: Callable[[T], object] | None = None,
                 name: str | None = None) -> None:
        cap, kind = _check_capacity(capacity)
        if not isinstance(overflow, Overflow):
            raise TypeError(f"overflow must be kcoro.SUSPEND, kcoro.DROP_OLDEST or "
                            f"kcoro.DROP_LATEST, got {overflow!r}")
        if on_undelivered is not None and not callable(on_undelivered):
            raise TypeError(f"on_undelivered must be callable or None, got "
                            f"{type(on_undelivered).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"channel name must be a str, got {type(name).__name__}")
        drop = _DROP_CODE[overflow]
        if kind == "conflated" and overflow is not SUSPEND:
            raise ValueError("a CONFLATED channel already drops the oldest item; "
                             "do not combine it with an overflow policy")
        if kind == "unlimited" and overflow is not SUSPEND:
            raise ValueError("an UNLIMITED channel never overflows; an overflow policy has no "
                             "effect on it")
        if kind == "conflated":
            drop = 1
        elif kind == "rendezvous" and drop:
            # As in kotlinx: a rendezvous channel with a drop policy is a size-1 dropping buffer.
            cap, kind = 1, ("conflated" if drop == 1 else "buffered")
        self._cap = cap
        self._kind = kind
        self._drop = drop
        self._on_undelivered = on_undelivered
        self._name = name
        self._origin: tuple[str, int] | None = None
        if name is None:
            f = sys._getframe(1)
            self._origin = (f.f_code.co_filename, f.f_lineno)
        self._buf: deque[T] = deque()
        self._recvq: deque[Any] = deque()
        self._sendq: deque[Any] = deque()
        self._nrecv = 0
        self._nsend = 0
        self._closed = False
        self._cancelled = False
        self._cause: Any = None
        self._rclause: RecvClause | None = None
        self._x: Any = None  # scratch: a ticket to wake, read before unlock
        self._xd: Any = None  # scratch: an item evicted by DROP_OLDEST, read before unlock
        self._peak = 0
        self.recvs = self.bytes_recv = self._buf_bytes = self._lost_bytes = 0
        self.send_would_block = self.send_timeout = self.send_closed = 0
        self.send_cancelled = self.send_dropped = 0
        self.recv_would_block = self.recv_timeout = self.recv_closed = self.recv_cancelled = 0
        self.undelivered = 0
        self.zref_sent = self.zref_received = self.zref_fallback_small = 0
        self.zref_fallback_capacity = self.zref_canceled = self.zref_aborted_close = 0
        self.first_op_ns = self.last_op_ns = 0
        _on_new_channel(self)

    # -- shape -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        n = self._name
        if n is None:
            fn, line = self._origin  # type: ignore[misc]
            n = self._name = f"{os.path.basename(fn)}:{line}#{id(self) & 0xFFFFFF:06x}"
        return n

    @property
    def kind(self) -> str:
        """``"rendezvous" | "buffered" | "unlimited" | "conflated"``."""
        return self._kind

    @property
    def capacity(self) -> float:
        """How many items the buffer holds (``math.inf`` for UNLIMITED, 1 for CONFLATED)."""
        return UNLIMITED if self._kind == "unlimited" else self._cap

    @property
    def overflow(self) -> Overflow:
        return (SUSPEND, DROP_OLDEST, DROP_LATEST)[self._drop]

    @property
    def closed_for_send(self) -> bool:
        return self._closed

    @property
    def closed_for_recv(self) -> bool:
        """True once closed *and* drained: a receive would raise ChannelClosed."""
        return self._closed and not self._buf

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def sends(self) -> int:
        """Accepted sends (unlocked read; ``stats()`` gives a consistent snapshot)."""
        return self.recvs + len(self._buf) + self.undelivered

    @property
    def bytes_sent(self) -> int:
        """Bytes of accepted sends (unlocked read)."""
        return self.bytes_recv + self._buf_bytes + self._lost_bytes

    # -- locked helpers (caller holds the kernel lock) ---------------------------------------
    # Counting: ``sends`` and ``bytes_sent`` are derived in ``stats()`` (every accepted item is
    # received, still buffered, or undelivered), so only the receive side counts items.
    def _put(self, item: Any) -> int:
        """Offer ``item`` now.  Sets ``self._x`` to a ticket to wake, ``self._xd`` to an evicted
        item (separate slots: an item may itself be a Ticket)."""
        if self._closed:
            return _REFUSED
        if self._nrecv:
            q = self._recvq
            while self._nrecv:
                e = q.popleft()
                if not e.linked:
                    continue
                e.linked = False
                self._nrecv -= 1
                t = e._hand(item)
                if t is not None:
                    self._x = t
                    self.recvs += 1
                    self._stamp()
                    if type(item) in _SIZED_TYPES:
                        self.bytes_recv += _nbytes(item)
                    return _OK
        buf = self._buf
        if len(buf) < self._cap:
            buf.append(item)
            if len(buf) > self._peak:
                self._peak = len(buf)
        elif self._drop == 1:  # DROP_OLDEST (and conflated)
            old = self._xd = buf.popleft()
            buf.append(item)
            self.undelivered += 1
            if type(old) in _SIZED_TYPES:
                n = _nbytes(old)
                self._buf_bytes -= n
                self._lost_bytes += n
        elif self._drop == 2:  # DROP_LATEST
            return _DROPPED
        else:
            return _FULL
        self._stamp()
        if type(item) in _SIZED_TYPES:
            self._buf_bytes += _nbytes(item)
        return _OK

    def _get(self) -> Any:
        """Take an item now, or return ``_EMPTY`` / ``_CLOSED``.  May set ``self._x``."""
        buf = self._buf
        if buf:
            item = buf.popleft()
            if type(item) in _SIZED_TYPES:
                self._buf_bytes -= _nbytes(item)
            if self._nsend:
                q = self._sendq
                while self._nsend:
                    e = q.popleft()
                    if not e.linked:
                        continue
                    e.linked = False
                    self._nsend -= 1
                    t = e._hand(None)
                    if t is not None:
                        moved = e.item
                        buf.append(moved)  # keeps a reference: clearing e.item is safe
                        e.item = None
                        self._x = t
                        if type(moved) in _SIZED_TYPES:
                            self._buf_bytes += _nbytes(moved)
                        break
        elif self._nsend:
            q = self._sendq
            while True:
                e = q.popleft()
                if not e.linked:
                    continue
                e.linked = False
                self._nsend -= 1
                t = e._hand(None)
                if t is not None:
                    item = e.item
                    e.item = None
                    self._x = t
                    break
                if not self._nsend:
                    return _CLOSED if self._closed else _EMPTY
        elif self._closed:
            return _CLOSED
        else:
            return _EMPTY
        self.recvs += 1
        self._stamp()
        if type(item) in _SIZED_TYPES:
            self.bytes_recv += _nbytes(item)
        return item

    def _count_dropped(self, item: Any) -> None:
        """An accepted item dropped by DROP_LATEST (caller holds the lock)."""
        self.undelivered += 1
        if type(item) in _SIZED_TYPES:
            self._lost_bytes += _nbytes(item)

    def _stamp(self) -> None:
        self.last_op_ns = now = _now_ns()
        if not self.first_op_ns:
            self.first_op_ns = now

    def _unlink(self, e: Any, sender: bool) -> None:
        """Owner-side removal of a registration that was cancelled (O(1) + amortised sweep)."""
        if not e.linked:
            return
        e.linked = False
        if sender:
            self._nsend -= 1
            q, live = self._sendq, self._nsend
        else:
            self._nrecv -= 1
            q, live = self._recvq, self._nrecv
        if len(q) > 2 * live + 16:
            for _ in range(len(q)):  # a range iterator is not GC-tracked
                x = q.popleft()
                if x.linked:
                    q.append(x)

    def _register(self, e: Any, sender: bool) -> None:
        e.linked = True
        if not self.first_op_ns:
            self._stamp()
        if sender:
            self._sendq.append(e)
            self._nsend += 1
        else:
            self._recvq.append(e)
            self._nrecv += 1

    def _count_fail(self, why: int, sender: bool) -> None:
        if why == WHY_TIMEOUT:
            if sender:
                self.send_timeout += 1
            else:
                self.recv_timeout += 1
        elif why == WHY_CLOSED:
            if sender:
                self.send_closed += 1
            else:
                self.recv_closed += 1
        elif sender:
            self.send_cancelled += 1
        else:
            self.recv_cancelled += 1

    # -- reporting ---------------------------------------------------------------------------
    def _report(self, items: list[Any] | tuple[Any, ...]) -> None:
        """Give undelivered items to the handler (outside the lock), each exactly once."""
        h = self._on_undelivered
        if h is None or not items:
            if items:
                _release_undelivered(self, items)
            return
        first: BaseException | None = None
        for item in items:
            try:
                h(item)
            except Exception as exc:
                if first is None:
                    first = exc
        _release_undelivered(self, items)  # zero-copy payloads: after the handler saw them
        if first is not None:
            raise UndeliveredElementError(
                f"on_undelivered handler of channel {self.name!r} raised") from first

    def _closed_error(self, sending: bool) -> ChannelClosed:
        what = "send on" if sending else "receive from"
        state = "cancelled" if self._cancelled else "closed"
        exc = ChannelClosed(f"{what} {state} channel {self.name!r}", cause=self._cause)
        if isinstance(self._cause, BaseException):
            exc.__cause__ = self._cause
        return exc

    # -- one locked attempt, shared by every form except the inlined fast paths ---------------
    def _send_attempt(self, item: Any, t: Ticket | None, cancel: Any,
                      mode: int, foreign: bool = False) -> tuple[int, Any, Any]:
        """Offer ``item``; if it must wait and ``t`` is given, register ``t`` (``_PARKED``).

        ``mode``: 0 a waiting send, 1 a send with timeout=0, 2 ``try_send``.  Counts the failure
        it reports (would-block for 1 and 2, closed, token; a DROP_LATEST drop is undelivered
        for 0 and 1, and ``send_dropped`` for ``try_send``, which returns False instead).
        ``foreign``: an asyncio park, counted here (``park_foreign``)."""
        _acquire()
        try:
            st = self._put(item)
            x, d = self._x, self._xd
            self._x = self._xd = None
            if st == _FULL:
                if t is not None:
                    if cancel is None or not cancel._cancelled:
                        self._register(t, True)
                        if cancel is not None:
                            cancel._tickets.add(t)
                        if foreign:
                            COUNTS[C_FOREIGN_PARKS] += 1
                            COUNTS[C_FOREIGN_LIVE] += 1
                        st = _PARKED
                    else:
                        self.send_cancelled += 1
                        st = _TOKEN
                elif mode:
                    self.send_would_block += 1
            elif st == _REFUSED:
                self.send_closed += 1
            elif st == _DROPPED:
                if mode == 2:
                    self.send_dropped += 1
                else:
                    self._count_dropped(item)
        finally:
            _release()
        return st, x, d

    def _recv_attempt(self, t: Ticket | None, cancel: Any, try_only: bool,
                      foreign: bool = False) -> tuple[Any, Any]:
        """Take an item; if there is none and ``t`` is given, register ``t`` (``_PARKED``)."""
        _acquire()
        try:
            item = self._get()
            x = self._x
            self._x = None
            if item is _EMPTY:
                if t is not None:
                    if cancel is None or not cancel._cancelled:
                        self._register(t, False)
                        if cancel is not None:
                            cancel._tickets.add(t)
                        if foreign:
                            COUNTS[C_FOREIGN_PARKS] += 1
                            COUNTS[C_FOREIGN_LIVE] += 1
                        item = _PARKED_ITEM
                    else:
                        self.recv_cancelled += 1
                        item = _TOKEN_ITEM
                elif try_only:
                    self.recv_would_block += 1
            elif item is _CLOSED:
                self.recv_closed += 1
        finally:
            _release()
        return item, x

    def _sent(self, st: int, x: Any, d: Any, item: Any, cancel: Any) -> None:
        """Finish a send attempt that did not park: wake ``x`` / report ``d`` / raise."""
        if st == _OK:
            if x is not None:
                x._wake()
            if d is not None:
                self._report((d,))
            return
        if st == _DROPPED:
            self._report((item,))
            return
        if st == _REFUSED:
            raise self._closed_error(True)
        if st == _TOKEN:
            raise OperationCancelled(f"send on {self.name!r} cancelled by its CancelToken",
                                     reason=cancel._reason)
        raise WouldBlock(f"channel {self.name!r} is full")

    def _received(self, item: Any, x: Any, cancel: Any) -> Any:
        if item is _CLOSED:
            raise self._closed_error(False)
        if item is _EMPTY:
            raise WouldBlock(f"channel {self.name!r} is empty")
        if item is _TOKEN_ITEM:
            raise OperationCancelled(f"receive from {self.name!r} cancelled by its "
                                     f"CancelToken", reason=cancel._reason)
        if x is not None:
            x._wake()
        return item

    def _precheck(self, timeout: float | None, cancel: Any, sender: bool) -> float | None:
        if timeout is not None:
            timeout = check_timeout(timeout)
        if cancel is not None:
            check_token(cancel)
        if cancel is not None and cancel._cancelled:
            _klock.acquire()
            try:
                if sender:
                    self.send_cancelled += 1
                else:
                    self.recv_cancelled += 1
            finally:
                _klock.release()
            what = "send on" if sender else "receive from"
            raise OperationCancelled(f"{what} {self.name!r} cancelled by its CancelToken",
                                     reason=cancel._reason)
        return timeout

    def _finish_wait(self, t: Ticket, sender: bool, cancel: Any, foreign: bool = False) -> Any:
        """After a park: settle the outcome under the lock; return the received item (or
        raise).  Clears the ticket's item/payload so a cached ticket keeps nothing alive."""
        _acquire()
        try:
            if foreign:
                COUNTS[C_FOREIGN_LIVE] -= 1
            if cancel is not None:
                cancel._tickets.discard(t)
            st = t._state
            if st == CANCELLED:
                self._unlink(t, sender)
                self._count_fail(t._why, sender)
            else:
                t._state = COMPLETED
        finally:
            _release()
        t.item = None
        item = t.payload
        t.payload = None
        return item

    def _wait_error(self, t: Ticket, ctx: Any, sender: bool) -> BaseException:
        if t._why == WHY_CLOSED:
            return self._closed_error(sender)
        what = f"{'send on' if sender else 'receive from'} channel {self.name!r}"
        return error_for(t, ctx, what)

    # -- send --------------------------------------------------------------------------------
    # ``send`` and ``recv`` come from the base class: the C twins in ``_speedups`` when built,
    # else ``_PyChanOps`` below (the reference).  Both hand every case they do not inline to
    # these slow paths.
    async def _send_any(self, item: T, timeout: float | None, cancel: Any) -> None:
        """Entry used by the C ``send`` when no kcoro task runs here, or timeout/cancel given."""
        rt = tls.rt
        await self._send_slow(item, timeout, cancel, rt.current if rt is not None else None)

    async def _recv_any(self, timeout: float | None, cancel: Any) -> T:
        rt = tls.rt
        return await self._recv_slow(timeout, cancel, rt.current if rt is not None else None)

    def _abandon(self, t: Ticket, sender: bool, cancel: Any = None,
                 foreign: bool = False) -> None:
        """A parked wait whose coroutine is being closed (or thrown into): withdraw it so no
        partner hands it anything; if a completion already won, a received item can no longer
        be returned — report it as undelivered (a sent one was delivered)."""
        _acquire()
        try:
            lost = t._fail(WHY_TASK) is None  # no wake: nobody waits for it any more
        finally:
            _release()
        item = self._finish_wait(t, sender, cancel, foreign)
        if lost and not sender and t._state == COMPLETED:
            self._report((item,))

    def _park_failed(self, t: Ticket, sender: bool, task: Task[Any]) -> Any:
        """A fast-path park ended without a hand-off: settle it and raise."""
        self._finish_wait(t, sender, None)
        raise self._wait_error(t, task, sender)

    async def _send_slow(self, item: T, timeout: float | None, cancel: Any,
                         task: Task[Any] | None) -> None:
        """Every form of async send: asyncio, timeouts, tokens, closed, drop policies."""
        ctx: Any = task if task is not None else context()
        if type(ctx) is Task:
            task = ctx
            if task._scope._eff:
                raise Cancelled()
        elif timeout is None and cancel is None:
            await self._send_foreign(item, ctx)
            return
        if timeout is not None or cancel is not None:
            timeout = self._precheck(timeout, cancel, True)
        st, x, d = self._send_attempt(item, None, None, 1 if timeout == 0 else 0)
        if st == _FULL and timeout != 0:
            # Park on a ticket allocated outside the lock, then retry + register.
            t = _fresh_ticket(task, ctx)
            t.item = item
            st, x, d = self._send_attempt(item, t, cancel, 0)
            if st == _PARKED:
                if task is not None:
                    task._on = self
                try:
                    await park(t, ctx, timeout)
                except BaseException:
                    self._abandon(t, True, cancel)
                    raise
                self._finish_wait(t, True, cancel)
                if t._state == CANCELLED:
                    raise self._wait_error(t, ctx, True)
                return
            t.item = None
        self._sent(st, x, d, item, cancel)
        if task is not None:
            b = task._budget - 1
            if b:
                task._budget = b
            else:
                await trap(None)

    async def _send_foreign(self, item: T, loop: Any) -> None:
        """An asyncio task's send with no timeout or token: one section tries and, if it must
        wait, registers a ticket made beforehand (the C twin of ``send`` tried already); the park
        is counted in those sections (the ``_tokens.C_FOREIGN_*`` counters)."""
        t = Ticket(AioWaker(loop))
        t.item = item
        st, x, d = self._send_attempt(item, t, None, 0, True)
        if st == _PARKED:
            try:
                await t._waker.fut  # type: ignore[union-attr]
            except _CancelledError as exc:
                foreign_cancelled(t, exc)
            except BaseException:
                self._abandon(t, True, None, True)
                raise
            self._finish_wait(t, True, None, True)
            if t._state == CANCELLED:
                raise self._wait_error(t, loop, True)
            return
        t.item = None
        self._sent(st, x, d, item, None)

    async def _recv_foreign(self, loop: Any) -> T:
        """The receiving twin of :meth:`_send_foreign`."""
        t = Ticket(AioWaker(loop))
        item, x = self._recv_attempt(t, None, False, True)
        if item is _PARKED_ITEM:
            try:
                await t._waker.fut  # type: ignore[union-attr]
            except _CancelledError as exc:
                foreign_cancelled(t, exc)
            except BaseException:
                self._abandon(t, False, None, True)
                raise
            item = self._finish_wait(t, False, None, True)
            if t._state == CANCELLED:
                raise self._wait_error(t, loop, False)
            return item  # type: ignore[no-any-return]
        return self._received(item, x, None)  # type: ignore[no-any-return]

    def _try_send_slow(self, item: T) -> bool:
        """Every ``try_send`` the C twin does not complete itself (the public method comes from
        the ops base class)."""
        st, x, d = self._send_attempt(item, None, None, 2)
        if st == _DROPPED:
            return False
        self._sent(st, x, d, item, None)
        return True

    def _send_blocking_slow(self, item: T, timeout: float | None, cancel: Any) -> None:
        """Every form of ``send_blocking`` (the public method comes from the ops base class)."""
        check_blocking_allowed("Channel.send_blocking()")
        timeout = self._precheck(timeout, cancel, True)
        st, x, d = self._send_attempt(item, None, None, 1 if timeout == 0 else 0)
        if st == _FULL and timeout != 0:
            t = internal_ticket(thread_waker())
            t.item = item
            st, x, d = self._send_attempt(item, t, cancel, 0)
            if st == _PARKED:
                try:
                    park_blocking(t, timeout)
                finally:  # also when interrupted (Ctrl-C): unregister, unwatch the token
                    self._finish_wait(t, True, cancel)
                if t._state == CANCELLED:
                    raise self._wait_error(t, None, True)
                return
            t.item = None
        self._sent(st, x, d, item, cancel)

    # -- recv --------------------------------------------------------------------------------
    async def _recv_slow(self, timeout: float | None, cancel: Any, task: Task[Any] | None) -> T:
        """Every form of async receive: asyncio, timeouts, tokens, closed, select entries."""
        ctx: Any = task if task is not None else context()
        if type(ctx) is Task:
            task = ctx
            if task._scope._eff:
                raise Cancelled()
        elif timeout is None and cancel is None:
            return await self._recv_foreign(ctx)
        if timeout is not None or cancel is not None:
            timeout = self._precheck(timeout, cancel, False)
        item, x = self._recv_attempt(None, None, timeout == 0)
        if item is _EMPTY and timeout != 0:
            t = _fresh_ticket(task, ctx)
            item, x = self._recv_attempt(t, cancel, False)
            if item is _PARKED_ITEM:
                if task is not None:
                    task._on = self
                try:
                    await park(t, ctx, timeout)
                except BaseException:
                    self._abandon(t, False, cancel)
                    raise
                item = self._finish_wait(t, False, cancel)
                if t._state == CANCELLED:
                    raise self._wait_error(t, ctx, False)
                return item  # type: ignore[no-any-return]
        item = self._received(item, x, cancel)
        if task is not None:
            b = task._budget - 1
            if b:
                task._budget = b
            else:
                await trap(None)
        return item  # type: ignore[no-any-return]

    def _try_recv_slow(self) -> T:
        """Every ``try_recv`` the C twin does not complete itself."""
        item, x = self._recv_attempt(None, None, True)
        return self._received(item, x, None)  # type: ignore[no-any-return]

    def _recv_blocking_slow(self, timeout: float | None, cancel: Any) -> T:
        """Every form of ``recv_blocking``."""
        check_blocking_allowed("Channel.recv_blocking()")
        timeout = self._precheck(timeout, cancel, False)
        item, x = self._recv_attempt(None, None, timeout == 0)
        if item is _EMPTY and timeout != 0:
            t = internal_ticket(thread_waker())
            item, x = self._recv_attempt(t, cancel, False)
            if item is _PARKED_ITEM:
                try:
                    park_blocking(t, timeout)
                except BaseException:
                    # An exception (other than Ctrl-C, which is re-delivered) hit after a
                    # sender handed us its item: nobody will get it now; report it.
                    item = self._finish_wait(t, False, cancel)
                    if t._state == COMPLETED:
                        self._report((item,))
                    raise
                item = self._finish_wait(t, False, cancel)
                if t._state == CANCELLED:
                    raise self._wait_error(t, None, False)
                return item  # type: ignore[no-any-return]
        return self._received(item, x, cancel)  # type: ignore[no-any-return]

    def iter_blocking(self, *, timeout: float | None = None) -> Iterator[T]:
        """Iterate with ``recv_blocking`` until the channel is closed and drained."""
        while True:
            try:
                yield self.recv_blocking(timeout=timeout)
            except ChannelClosed:
                return

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def _anext_any(self) -> T:
        """``__anext__`` where no kcoro task runs (the C twin's entry)."""
        try:
            return await self._recv_any(None, None)
        except ChannelClosed:
            raise StopAsyncIteration from None

    # -- close / cancel ----------------------------------------------------------------------
    def _fail_all(self, sender: bool, woken: list[Ticket]) -> None:
        q = self._sendq if sender else self._recvq
        while q:
            e = q.popleft()
            if not e.linked:
                continue
            e.linked = False
            if sender:
                e.item = None  # the parked sender still holds its item
            t = e._fail(WHY_CLOSED, None)
            if t is not None:
                woken.append(t)
        if sender:
            self._nsend = 0
        else:
            self._nrecv = 0

    def close(self) -> bool:
        """No more sends.  Buffered items still drain; parked senders get ChannelClosed (they
        keep their items); parked receivers get it once the buffer is empty.  True only for the
        call that closed the channel."""
        woken: list[Ticket] = []
        _klock.acquire()
        try:
            if self._closed:
                return False
            self._closed = True
            self._fail_all(True, woken)
            if not self._buf:
                self._fail_all(False, woken)
        finally:
            _klock.release()
        for t in woken:
            t._wake()
        return True

    def cancel(self, cause: Any = None) -> None:
        """Close and discard: every buffered item goes to ``on_undelivered`` (exactly once) and
        every waiter fails with ChannelClosed.  A later ``close()`` returns False."""
        woken: list[Ticket] = []
        dropped: list[Any] = []
        _klock.acquire()
        try:
            if self._cancelled:
                return
            self._closed = True
            self._cancelled = True
            self._cause = cause
            buf = self._buf
            while buf:  # no iterator allocation inside the section
                dropped.append(buf.popleft())
            self.undelivered += len(dropped)
            self._lost_bytes += self._buf_bytes
            self._buf_bytes = 0
            self._fail_all(True, woken)
            self._fail_all(False, woken)
        finally:
            _klock.release()
        for t in woken:
            t._wake()
        self._report(dropped)

    # -- select clauses ----------------------------------------------------------------------
    def on_recv(self) -> RecvClause:
        """A select clause receiving from this channel (one cached object: it has no state)."""
        c = self._rclause
        if c is None:
            c = self._rclause = RecvClause(self)
        return c

    def on_send(self, item: T) -> SendClause:
        """A select clause sending ``item`` on this channel."""
        return SendClause(self, item)

    # -- introspection -----------------------------------------------------------------------
    def stats(self) -> ChannelStats:
        """A frozen snapshot of every counter (see :class:`ChannelStats`)."""
        vals: list[int] = []
        _klock.acquire()
        try:
            for i in range(len(_STORED)):  # no iterator the GC tracks inside the section
                vals.append(getattr(self, _STORED[i]))
            buffered = len(self._buf)
            peak, ns, nr = self._peak, self._nsend, self._nrecv
            closed = self._closed
            buf_bytes, lost_bytes = self._buf_bytes, self._lost_bytes
            first, last = self.first_op_ns, self.last_op_ns
        finally:
            _klock.release()
        kw: dict[str, Any] = dict(zip(_STORED, vals))
        # Every accepted item is received, still buffered, or undelivered (exactly once).
        kw["sends"] = kw["recvs"] + buffered + kw["undelivered"]
        kw["bytes_sent"] = kw["bytes_recv"] + buf_bytes + lost_bytes
        return ChannelStats(
            name=self.name, kind=self._kind, capacity=self.capacity, buffered=buffered,
            peak=max(peak, buffered), waiting_senders=ns, waiting_receivers=nr,
            closed_for_send=closed, closed_for_recv=closed and buffered == 0,
            first_op_ns=first, last_op_ns=last, snapshot_ns=_now_ns(), **kw)

    def zstats(self) -> dict[str, int]:
        """Zero-copy counters: zref_sent, zref_received, fallback_small, fallback_capacity,
        canceled, aborted_close."""
        s = self.stats()
        return {"zref_sent": s.zref_sent, "zref_received": s.zref_received,
                "fallback_small": s.zref_fallback_small,
                "fallback_capacity": s.zref_fallback_capacity,
                "canceled": s.zref_canceled, "aborted_close": s.zref_aborted_close}

    def check_invariants(self) -> None:
        _klock.acquire()
        try:
            buf, cap = self._buf, self._cap
            lr = sum(1 for e in self._recvq if e.linked)
            ls = sum(1 for e in self._sendq if e.linked)
            assert len(buf) <= cap, f"{self!r}: {len(buf)} buffered > capacity {cap}"
            assert lr == self._nrecv, f"{self!r}: nrecv {self._nrecv} != linked {lr}"
            assert ls == self._nsend, f"{self!r}: nsend {self._nsend} != linked {ls}"
            assert not (lr and buf), f"{self!r}: receivers wait while items are buffered"
            assert not (ls and (len(buf) < cap or self._closed)), \
                f"{self!r}: senders wait with room in the buffer or after close"
            if lr and ls:  # only one select's own send and receive entries may both wait
                sels = {getattr(e, "sel", e) for q in (self._recvq, self._sendq)
                        for e in q if e.linked and getattr(e, "_state", 0) < READY}
                assert len(sels) <= 1, f"{self!r}: senders and receivers both waiting"
            if self._closed and not buf:
                assert lr == 0 and ls == 0, f"{self!r}: waiters left after close"
            if self._cancelled:
                assert self._closed and not buf
            for q, live in ((self._recvq, lr), (self._sendq, ls)):
                assert len(q) <= 2 * live + 16, f"{self!r}: wait queue not swept"
        finally:
            _klock.release()

    def __repr__(self) -> str:
        cap = "inf" if self._kind == "unlimited" else str(self._cap)
        state = " cancelled" if self._cancelled else " closed" if self._closed else ""
        return (f"<Channel {self.name!r} {self._kind} {len(self._buf)}/{cap}"
                f" senders={self._nsend} receivers={self._nrecv}{state}>")

    # -- zero-copy payloads (kcoro._zref: ownership, release and zstats rules) ----------------
    async def send_zref(self, obj: Any, *, timeout: float | None = None,
                        cancel: Any = None) -> None:
        """Move a Payload reference (a foreign buffer is aliased, never freed by kcoro)."""
        z = _zref_module()
        rt = tls.rt
        task = rt.current if rt is not None else None
        if task is not None and task._budget <= 1:
            # Take this task's schedule point now rather than right after the send completes:
            # an exception thrown into the coroutine there (``close()``) would look like a
            # failed send, and the payload, already accepted, would be released under its
            # receiver.  (The runtime refills the budget when it steps the task again.)
            await trap(None)
        p, small, cap = z._prepare(obj)
        try:
            await self.send(p, timeout=timeout, cancel=cancel)
        except BaseException as exc:
            z._failed(self, p, exc, small, cap)
            raise
        z._count_sent(self, small, cap)

    async def recv_zref(self, *, timeout: float | None = None, cancel: Any = None) -> Any:
        """Receive a Payload (the receiver owns its reference)."""
        z = _zref_module()
        return z._received(self, await self.recv(timeout=timeout, cancel=cancel))

    def try_send_zref(self, obj: Any) -> bool:
        from ._zref import try_send_zref

        return try_send_zref(self, obj)

    def try_recv_zref(self) -> Any:
        from ._zref import try_recv_zref

        return try_recv_zref(self)

    def send_zref_blocking(self, obj: Any, *, timeout: float | None = None,
                           cancel: Any = None) -> None:
        from ._zref import send_zref_blocking

        send_zref_blocking(self, obj, timeout, cancel)

    def recv_zref_blocking(self, *, timeout: float | None = None, cancel: Any = None) -> Any:
        from ._zref import recv_zref_blocking

        return recv_zref_blocking(self, timeout, cancel)


def _release_undelivered(ch: Channel[Any], items: list[Any] | tuple[Any, ...]) -> None:
    """Undelivered zero-copy payloads are released exactly once (see kcoro._zref)."""
    global _release_payloads
    if _release_payloads is None:
        from ._zref import release_undelivered

        _release_payloads = release_undelivered
    _release_payloads(ch, items)


_release_payloads: Callable[[Channel[Any], list[Any] | tuple[Any, ...]], None] | None = None


# Every new channel is registered (weakly) for kcoro.metrics.
_on_new_channel: Callable[[Channel[Any]], None] = _registry.channels.add

if _speedups is not None:
    from ._runtime import Runtime
    from ._scopes import CancelScope

    _speedups.configure(Channel, Ticket, Task, CancelScope, Runtime, _klock._OWNER,
                        _SIZED_TYPES, _nbytes, ChannelClosed)


_ = (READY, WHY_TOKEN, Task, _get_running_loop)
