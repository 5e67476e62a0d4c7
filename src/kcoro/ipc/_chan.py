"""``kcoro.ipc.Channel``: a channel whose ends live in different processes.

Every operation runs in the calling process, under the channel lock, on the shared region
(:mod:`._region`): no broker, no server thread in the data path.  Waiting is a kcoro ticket
(``internal_ticket``) registered in this process's local wait list *before* the attempt that
arms the region; the I/O thread (:mod:`._io`) completes the tickets when the doorbell rings.  So
one channel works from kcoro tasks, asyncio tasks and plain threads (``*_blocking``), with the
same timeout / ``CancelToken`` / task-cancellation rules as :class:`kcoro.Channel`:

* a cancelled or timed-out receive took nothing (items are only taken by a successful attempt);
* a cancelled send either delivered (its offer was TAKEN/ACCEPTED: completion wins, the
  cancellation is delivered at the next checkpoint) or withdrew its offer;
* a parked sender keeps its item when the channel is closed.

Differences from local channels (documented in docs/IPC.md): parked receivers in different
processes are woken and retry (no direct hand-off, so a ``try_recv`` elsewhere may take the
item); ``UNLIMITED`` is bounded by the shared ring (``UNLIMITED_SLOTS`` items); there is no
``on_undelivered`` hook across processes (undelivered payload blocks are freed).

Invariant of this module: the local wait list holds exactly the tickets of operations between
their attempt and their wake-up; every ticket is completed or cancelled exactly once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing import reduction, util
from typing import Any, Generic, TypeVar

from .. import _klock, _tokens
from .._chan import (
    DROP_LATEST,
    DROP_OLDEST,
    RENDEZVOUS,
    SUSPEND,
    ChannelStats,
    Overflow,
    _check_capacity,
)
from .._chan import Channel as LocalChannel
from .._errors import ChannelClosed, KcoroError, WouldBlock, make_timeout
from .._payload import ALLOC, Payload
from .._runtime import Task
from .._tokens import CANCELLED, WHY_TASK, Ticket, internal_ticket
from .._wait import (
    _park_with_token,
    check_blocking_allowed,
    check_timeout,
    context,
    error_for,
    fail,
    park_blocking,
    waker_for,
)
from .._wakers import thread_waker
from . import _codec
from ._codec import MessageTooLarge, ProtocolError
from ._io import io_thread
from ._region import (
    _E,
    CELL_ACCEPTED,
    CELL_CLOSED,
    CELL_FREE,
    CELL_PENDING,
    CELL_TAKEN,
    E_BLOCK,
    E_INLINE,
    E_PAYLOAD,
    ENTRY,
    F_BROKEN,
    F_CANCELLED,
    F_CLOSED,
    INLINE_MAX,
    KIND_NAME,
    NOCELL,
    POLICY_CLOSE,
    POLICY_IGNORE,
    QUEUED,
    Entry,
    Region,
    new_region,
)

T = TypeVar("T")

__all__ = ["UNLIMITED_SLOTS", "Channel", "PeerDied"]

UNLIMITED_SLOTS = 65536
# Before parking, a waiter in a thread (or a kcoro task with nothing else ready) watches the
# shared region this long: a partner that answers quickly is seen without any syscall on either
# side.  Then it arms and sleeps on its doorbell (no CPU while idle).
SPIN_NS = int(float(os.environ.get("KCORO_IPC_SPIN_US", "50")) * 1000)
_perf_ns = time.perf_counter_ns
_DROP = {SUSPEND: 0, DROP_OLDEST: 1, DROP_LATEST: 2}
_PID = [os.getpid()]

# attempt results
_OK, _WAIT, _REFUSED, _WOULD_BLOCK, _DROPPED, _NOSPACE = range(6)


class PeerDied(KcoroError):
    """A process attached to an IPC channel died; ``pid`` names it.  It is the ``cause`` of the
    ``ChannelClosed`` that survivors get when the channel's death policy is ``"close"``."""

    import errno as _e

    errno = _e.EPIPE

    def __init__(self, pid: int) -> None:
        super().__init__(f"peer process {pid} died (killed or exited without detaching)")
        self.pid = pid


class _Msg:
    """An encoded message owned by a sender until its send succeeds."""

    __slots__ = ("bytes", "data", "fill", "gen", "idx", "kind", "moved", "nbytes", "payload",
                 "zcap", "zsmall")

    def __init__(self) -> None:
        self.kind = E_INLINE
        self.data: bytes = b""
        self.idx = -1
        self.gen = 0
        self.nbytes = 0
        self.payload: Payload | None = None
        self.zsmall = self.zcap = 0
        self.bytes = 0
        self.fill: Callable[[memoryview], None] | None = None
        self.moved = False  # the message is the payload's own block (no copy)


class _Op:
    __slots__ = ("armed_r", "armed_s", "cell", "direct", "noarm", "spin_end")

    def __init__(self) -> None:
        self.armed_r = self.armed_s = 0
        self.cell = -1
        self.noarm = False  # spinning: do not arm (nobody needs to ring us yet)
        self.spin_end = 0
        self.direct = False  # this thread polls the direct bell itself (the leader)


class Channel(Generic[T]):
    """A cross-process channel.  Make it in one process; hand it to others by pickling
    (``multiprocessing`` fork or spawn children: pass it as an argument) or by path
    (``ch.listen(path)`` / ``kcoro.ipc.connect(path)``).

    ``capacity``/``overflow`` as for :class:`kcoro.Channel`; ``arena_bytes`` sizes the shared
    arena for large messages (sparse: pages cost memory only when touched);
    ``on_peer_death``: ``"close"`` (default: when an attached process dies, the channel closes
    with ``PeerDied`` as the cause, after its resources are reclaimed; buffered items still
    drain) or ``"ignore"`` (reclaim and carry on).
    """

    def __init__(self, capacity: int | float = RENDEZVOUS, *, overflow: Overflow = SUSPEND,
                 name: str | None = None, arena_bytes: int = 64 << 20,
                 on_peer_death: str = "close", _region: Region | None = None) -> None:
        if _region is None:
            cap, kind = _check_capacity(capacity)
            drop = _DROP[overflow]
            if kind == "conflated":
                drop = 1
            elif kind == "unlimited":
                if overflow is not SUSPEND:
                    raise ValueError("an UNLIMITED channel never overflows")
                cap = UNLIMITED_SLOTS
            elif kind == "rendezvous" and drop:
                cap, kind = 1, ("conflated" if drop == 1 else "buffered")
            if on_peer_death not in ("close", "ignore"):
                raise ValueError("on_peer_death must be 'close' or 'ignore'")
            policy = POLICY_CLOSE if on_peer_death == "close" else POLICY_IGNORE
            _region = new_region(name or f"ipc-{os.getpid()}-{id(self) & 0xFFFFFF:x}", kind,
                                 cap, drop, arena_bytes, policy)
        self._r = _region
        self._listener: Any = None
        self._setup()

    # -- process attachment ---------------------------------------------------------------------
    def _setup(self) -> None:
        r = self._r
        self._waiters: set[Ticket] = set()
        self._wake_gen = 0  # an eventcount: bumped (kernel lock) by every local wake-up
        self._pid = _PID[0]
        self._peers: dict[int, tuple[int, int]] = {}  # slot -> (pid, pidfd)
        self._epoch = -1
        r.on_wake = self._wake_local
        self.__dict__.pop("_pump", None)  # pump threads do not survive fork
        r.attach()
        import socket

        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bell.bind(r.bell_name(r.slot, r.nonce))
        self._bell.setblocking(False)
        # the direct bell: one thread at a time (the leader) polls it itself
        self._dbell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dbell.bind(r.bell_name(r.slot, r.nonce) + b"-d")
        self._dbell.setblocking(False)
        self._dpoll = select.poll()
        self._dpoll.register(self._dbell.fileno(), select.POLLIN)
        self._leader = threading.Lock()
        _live.add(self)
        io = io_thread()
        io.ticks.add(self._tick)  # before the wake-up below, so the next poll has a timeout
        io.add(self._bell.fileno(), self._on_bell)
        io.call(self._scan_peers)
        # tell the others a process joined (they start watching it)
        r.ring([s for s, _, _ in r.live_peers()])

    def _ensure(self) -> None:
        if self._pid != _PID[0]:  # a forked child: claim our own slot, doorbell, I/O thread
            self._setup()

    @property
    def arena(self) -> Any:
        """The channel's shared arena: ``ch.arena.alloc(n)`` writes a payload in place."""
        self._ensure()
        return self._r.arena

    @property
    def name(self) -> str:
        return self._r.name

    @property
    def kind(self) -> str:
        return self._r.kind

    @property
    def capacity(self) -> float:
        k = self._r.kind
        return float("inf") if k == "unlimited" else self._r.cap

    def __reduce__(self) -> tuple[Any, ...]:
        # multiprocessing (spawn/forkserver) passes the memfd over a Unix socket (SCM_RIGHTS)
        return _rebuild, (reduction.DupFd(self._r.fd),)

    # -- I/O thread side ------------------------------------------------------------------------
    def _wake_local(self) -> None:
        _klock.acquire()
        try:
            self._wake_gen += 1
            if not self._waiters:
                return
            ws = list(self._waiters)
            self._waiters.clear()
            won = [t for t in ws if t._hand(None) is not None]
        finally:
            _klock.release()
        for t in won:
            t._wake()

    def _on_bell(self, fd: int) -> None:
        try:
            while True:
                self._bell.recv(64)
        except (BlockingIOError, OSError):
            pass
        self._r.clear_bell()
        self._wake_local()
        if self._r._get64(64) != self._epoch:
            self._scan_peers()

    def _tick(self) -> None:
        if self._r.slot >= 0 and self._r._get64(64) != self._epoch:
            self._scan_peers()

    def _scan_peers(self) -> None:
        r = self._r
        if r.slot < 0:
            return
        self._epoch = r._get64(64)
        live = {s: pid for s, pid, _ in r.live_peers()}
        io = io_thread()
        for s, (pid, pfd) in list(self._peers.items()):
            if live.get(s) != pid:
                del self._peers[s]
                io.unregister(pfd, close=True)
        for s, pid in live.items():
            if s in self._peers:
                continue
            try:
                pfd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._reap(s, pid)
                continue
            self._peers[s] = (pid, pfd)
            io.register(pfd, functools.partial(self._on_pidfd_cb, s, pid))
            if not r._alive(s):
                self._on_pidfd(pfd, s, pid)

    def _on_pidfd_cb(self, s: int, pid: int, fd: int) -> None:
        self._on_pidfd(fd, s, pid)

    def _on_pidfd(self, fd: int, s: int, pid: int) -> None:
        """On the I/O thread (as every change to ``_peers``)."""
        if self._peers.get(s, (0, 0))[1] == fd:
            del self._peers[s]
            io_thread().unregister(fd, close=True)
        self._reap(s, pid)

    def _reap(self, s: int, pid: int) -> None:
        reaped, wake = self._r.reap(s, pid)
        if reaped:
            self._r.ring(wake)
            self._wake_local()

    # -- waiting ----------------------------------------------------------------------------
    def _wait_on(self, t: Ticket, gen: int) -> bool:
        """Register ``t`` for the next local wake-up, unless one happened since ``gen`` was read
        (before the attempt that armed the region): then retry at once (no lost wake-up)."""
        _klock.acquire()
        try:
            if self._wake_gen != gen:
                return False
            self._waiters.add(t)
            if _C_INTERNAL is not None:
                _tokens.COUNTS[_C_INTERNAL] += 1
        finally:
            _klock.release()
        return True

    async def _run(self, attempt: Callable[[_Op, bool], tuple[int, Any]], timeout: float | None,
                   cancel: Any, what: str) -> tuple[int, Any]:
        """Drive ``attempt`` until it does not ask to wait, parking between tries."""
        ctx: Any = context()
        if type(ctx) is Task and ctx._scope._eff:
            from .._errors import Cancelled

            raise Cancelled()
        self._ensure()
        deadline = None if timeout is None else time.monotonic() + timeout
        op = _Op()
        spin = type(ctx) is Task and SPIN_NS > 0
        op.noarm = spin and not ctx._rt._ready
        op.spin_end = _perf_ns() + SPIN_NS
        while True:
            gen = self._wake_gen
            st, val = attempt(op, False)
            if st != _WAIT:
                return st, val
            if op.noarm:
                if self._spin(op.spin_end) or ctx._rt._ready:
                    op.noarm = False
                continue
            t = internal_ticket(waker_for(ctx))
            if not self._wait_on(t, gen):
                continue
            if type(ctx) is Task:
                ctx._on = self
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await _park_with_token(t, ctx, left, cancel, False)
            if spin and t._state != CANCELLED and not ctx._rt._ready:
                op.noarm = True
                op.spin_end = _perf_ns() + SPIN_NS
            if t._state == CANCELLED:
                self._unwait(t)
                st, val = attempt(op, True)  # give up: withdraw, unless it already completed
                if st == _WAIT:
                    raise error_for(t, ctx, what)
                if t._why == WHY_TASK and not isinstance(ctx, Task):
                    task = asyncio.current_task()
                    if task is not None:  # completion won: re-deliver the cancellation later
                        task.uncancel()
                        task.cancel()
                return st, val

    def _run_blocking(self, attempt: Callable[[_Op, bool], tuple[int, Any]],
                      timeout: float | None, cancel: Any, what: str) -> tuple[int, Any]:
        self._ensure()
        deadline = None if timeout is None else time.monotonic() + timeout
        op = _Op()
        op.noarm = SPIN_NS > 0
        op.spin_end = _perf_ns() + SPIN_NS
        try:
            return self._blocking_loop(op, attempt, deadline, cancel, what)
        finally:
            if op.direct:
                self._leader.release()

    def _blocking_loop(self, op: _Op, attempt: Callable[[_Op, bool], tuple[int, Any]],
                       deadline: float | None, cancel: Any, what: str) -> tuple[int, Any]:
        while True:
            gen = self._wake_gen
            st, val = attempt(op, False)
            if st != _WAIT:
                return st, val
            if op.noarm:
                if self._spin(op.spin_end):
                    op.noarm = False
                continue
            if op.direct:  # the leader: sleep on the direct bell (one wake-up, no I/O thread)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._poll_direct(left):
                    st, val = attempt(op, True)  # timed out: disarm (an offer is withdrawn)
                    if st == _WAIT:
                        raise make_timeout(what)
                    return st, val
                if SPIN_NS > 0:
                    op.noarm = True
                    op.spin_end = _perf_ns() + SPIN_NS
                continue
            if cancel is None and self._leader.acquire(False):
                op.direct = True
                continue  # re-attempt, arming the direct bell
            t = internal_ticket(thread_waker())
            if not self._wait_on(t, gen):
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if cancel is not None and not cancel._watch(t):
                fail(t, _tokens.WHY_TOKEN, cancel._reason)
            try:
                park_blocking(t, left)
            finally:
                if cancel is not None:
                    cancel._unwatch(t)
            if SPIN_NS > 0 and t._state != CANCELLED:
                op.noarm = True
                op.spin_end = _perf_ns() + SPIN_NS
            if t._state == CANCELLED:
                self._unwait(t)
                st, val = attempt(op, True)
                if st == _WAIT:
                    raise error_for(t, None, what)
                return st, val

    def _poll_direct(self, timeout: float | None) -> bool:
        """Sleep on the direct bell; False on timeout.  Drain *then* clear the pending flag:
        a ring that lands between the two finds the flag still set and is skipped, but its
        change is seen by our next attempt; one after the clear leaves its datagram for the
        next poll.  (Clearing first could drain a datagram whose flag stays set: a lost bell.)"""
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        ready = self._dpoll.poll(ms)
        try:
            while True:
                self._dbell.recv(64)
        except OSError:
            pass
        self._r.clear_direct_bell()
        return bool(ready) or timeout is None

    def _spin(self, end: int) -> bool:
        """Watch the region for a change until ``end`` (no syscall, nobody rings us).
        True if the time is up: the caller then arms and parks."""
        h64 = self._r.h64
        seq = h64[17]  # H_SEQ
        while h64[17] == seq:
            if _perf_ns() > end:
                return True
        return False

    def _unwait(self, t: Ticket) -> None:
        _klock.acquire()
        try:
            self._waiters.discard(t)
        finally:
            _klock.release()

    # -- encoding -----------------------------------------------------------------------------
    def _encode(self, obj: Any, zref: bool) -> _Msg:
        r = self._r
        m = _Msg()
        if type(obj) is Payload:
            m.kind = E_PAYLOAD
            m.payload = obj
            m.nbytes = obj.nbytes
            m.bytes = obj.nbytes
            if obj.arena is r.arena and not obj.spilled and obj._idx >= 0:
                obj.view  # noqa: B018 - raises PayloadReleased for a released payload
                m.idx, m.gen = obj._idx, obj._gen
                m.moved = True
                return m
            m.zcap = 1  # not in this channel's arena: one copy into a block
            src = obj.view

            def w(dst: memoryview) -> None:
                dst[:] = src

            self._place(m, obj.nbytes, w)
            return m
        if zref:
            try:
                mv = memoryview(obj)
            except TypeError:
                raise TypeError(f"send_zref() needs a Payload or a bytes-like object, got "
                                f"{type(obj).__name__}") from None
            m.kind = E_PAYLOAD
            m.nbytes = m.bytes = mv.nbytes
            m.zsmall = 1
            flat = mv.cast("B")

            def w2(dst: memoryview) -> None:
                dst[:] = flat

            self._place(m, mv.nbytes, w2)
            return m
        data, bufs = _codec.pickle_obj(obj)
        if not bufs and len(data) <= INLINE_MAX:
            m.data = data
            m.nbytes = len(data)
            if type(obj) in (bytes, bytearray, memoryview):
                m.bytes = len(obj)  # type: ignore[arg-type]
            return m
        m.kind = E_BLOCK
        size, offs = _codec.block_size(data, bufs)

        def w3(dst: memoryview) -> None:
            _codec.write_block(dst, data, bufs, offs)

        self._place(m, size, w3)
        m.bytes = sum(b.nbytes for b in bufs) if bufs else 0
        if type(obj) in (bytes, bytearray):
            m.bytes = len(obj)  # type: ignore[arg-type]
        return m

    def _place(self, m: _Msg, size: int, write: Callable[[memoryview], None]) -> None:
        """Allocate a block and write the message into it (outside the lock), or keep the
        writer for later when the arena is full right now (the send waits for a free)."""
        self._alloc_into(m, size)
        if m.idx >= 0:
            a = self._r.arena
            o = a._data_off + (m.idx << a._shift)
            write(self._r.q[o:o + size])
        else:
            m.fill = write

    def _alloc_into(self, m: _Msg, size: int) -> None:
        """Allocate a block (WRITING, ours).  Raises MessageTooLarge, or sets idx = -2 when the
        arena is full right now."""
        a = self._r.arena
        if a._order_for(max(size, 1)) > a._maxorder:
            raise MessageTooLarge(f"message of {size} bytes does not fit in the arena of IPC "
                                  f"channel {self.name!r} (largest block "
                                  f"{a.min_block << a._maxorder} bytes); make it with a larger "
                                  f"arena_bytes")
        with a.lock:
            i = a._take(max(size, 1))
            if i >= 0:
                m.idx, m.gen = i, a._m.gen[i]
        m.nbytes = size
        if i < 0:
            m.idx = -2  # retry under the send lock: a free may come

    def _discard(self, m: _Msg) -> None:
        """A send failed: give back what it allocated (a moved Payload is released)."""
        if m.moved:
            assert m.payload is not None
            if not m.payload.released:
                m.payload.release()
            return
        if m.idx >= 0 and m.kind != E_INLINE:
            with self._r.lock:
                self._r.arena._give(m.idx, m.gen)
        if m.payload is not None and not m.payload.released:
            m.payload.release()

    # -- the locked attempts --------------------------------------------------------------------
    def _send_attempt(self, m: _Msg, try_only: bool) -> Callable[[_Op, bool], tuple[int, Any]]:
        r = self._r

        def attempt(op: _Op, giving_up: bool) -> tuple[int, Any]:
            wake: list[int] = []
            evicted: list[Entry] = []
            r.enter()
            try:
                if op.armed_s:
                    r.arm(0, -1, op.armed_s == 2)
                    op.armed_s = 0
                st = self._send_locked(m, op, giving_up, try_only, wake, evicted)
            finally:
                r.leave()
            if wake:
                r.ring(wake)
            return st, None

        return attempt

    def _send_locked(self, m: _Msg, op: _Op, giving_up: bool, try_only: bool,
                     wake: list[int], evicted: list[Entry]) -> int:
        r = self._r
        me = r.slot
        if op.cell >= 0:  # our offer is in the ring
            c = r.cell_get(me, op.cell)
            if c in (CELL_ACCEPTED, CELL_TAKEN):
                r.cell_set(me, op.cell, CELL_FREE)
                op.cell = -1
                self._count_send(m)
                return _OK
            if c == CELL_CLOSED:
                r.cell_set(me, op.cell, CELL_FREE)
                op.cell = -1
                r.count("send_closed")
                self._unqueue(m)
                return _REFUSED
            if giving_up:
                p = r.find_cell(me, op.cell)
                if p >= 0:
                    r.remove_at(p)
                r.cell_set(me, op.cell, CELL_FREE)
                op.cell = -1
                self._unqueue(m)
                return _WAIT
            if not op.noarm:
                r.arm(0, 1, op.direct)
                op.armed_s = 2 if op.direct else 1
            return _WAIT
        if giving_up:
            return _WAIT
        if r.h32[14] & F_CLOSED:
            r.c64[_C_SEND_CLOSED] += 1
            return _REFUSED
        if m.idx == -2:  # the arena was full when we encoded: try again now
            a = r.arena
            i = a._take(max(m.nbytes, 1))
            if i < 0:
                if try_only:
                    r.count("send_would_block")
                    return _WOULD_BLOCK
                if not op.noarm:
                    r.arm(0, 1, op.direct)
                    op.armed_s = 2 if op.direct else 1
                return _WAIT
            m.idx, m.gen = i, a._m.gen[i]
            self._fill(m)
        h64 = r.h64
        head, tail = h64[5], h64[6]
        n = tail - head
        cap = r.cap
        drop = r.drop
        if drop:
            if n >= cap:
                if drop == 2:
                    r.count("sends")
                    r.count("undelivered")
                    return _DROPPED
                evicted.append(r.read_entry(head))
                self._free_entry(evicted[-1])
                r.remove_at(head)
                r.count("undelivered")
                tail = r.tail
            self._append(m, tail, NOCELL, wake)
            return _OK
        if n < cap:
            self._append(m, tail, NOCELL, wake)
            return _OK
        if n >= r.ring_n:
            if try_only:
                r.count("send_would_block")
                return _WOULD_BLOCK
            if not op.noarm:
                r.arm(0, 1, op.direct)
                op.armed_s = 2 if op.direct else 1
            return _WAIT
        if try_only:
            # rendezvous / full buffer: succeed only if a receiver is parked for it
            if r.armed_recv_total() > n - cap:
                self._append(m, tail, NOCELL, wake)
                return _OK
            r.count("send_would_block")
            return _WOULD_BLOCK
        c = r.cell_alloc()
        if c < 0:
            if not op.noarm:
                r.arm(0, 1, op.direct)
                op.armed_s = 2 if op.direct else 1
            return _WAIT
        op.cell = c
        self._append(m, tail, c, wake, count=False)
        if not op.noarm:
            r.arm(0, 1, op.direct)
            op.armed_s = 2 if op.direct else 1
        return _WAIT

    def _fill(self, m: _Msg) -> None:
        """Write the bytes of a message whose block was allocated late (lock held)."""
        a = self._r.arena
        o = a._data_off + (m.idx << a._shift)
        assert m.fill is not None
        m.fill(self._r.q[o:o + m.nbytes])
        m.fill = None

    def _unqueue(self, m: _Msg) -> None:
        """A withdrawn or refused offer: its block is plainly ours again (lock held)."""
        if m.idx >= 0 and m.kind != E_INLINE:
            self._r.arena._m.holder[m.idx] = self._r.slot
            self._r.unpin_flag(m.idx)

    def _append(self, m: _Msg, pos: int, cell: int, wake: list[int], count: bool = True) -> None:
        r = self._r
        o = r.ring_off + (pos % r.ring_n) * ENTRY
        if m.kind == E_INLINE:
            n = len(m.data)
            _E_pack(r.map, o, E_INLINE, 0, cell, r.slot, 0, n, 0, 0, n, 0)
            r.map[o + 48:o + 48 + n] = m.data
        else:
            a = r.arena
            h = a._m.holder[m.idx]
            if h < QUEUED:
                r._ledger_remove(h, m.idx, m.gen)
            a._m.holder[m.idx] = QUEUED
            if m.moved:
                r.pin_flag(m.idx)  # until the sender's own views are gone (see _send_done)
            _E_pack(r.map, o, m.kind, 0, cell, r.slot, 0, m.bytes, m.idx, m.gen, m.nbytes, 0)
        h64 = r.h64
        h64[6] = pos + 1  # publish: the tail store comes last
        c64 = r.c64
        n = pos + 1 - h64[5]
        if n > c64[_C_PEAK]:
            c64[_C_PEAK] = n
        if count:
            self._count_send(m)
        if r.h32[32]:  # receivers armed somewhere
            wake.extend(r._armed_slots(True, False))

    def _count_send(self, m: _Msg) -> None:
        c64 = self._r.c64
        c64[_C_SENDS] += 1
        if m.kind != E_INLINE:
            if m.bytes:
                c64[_C_BYTES_SENT] += m.bytes
            if m.kind == E_PAYLOAD:
                c64[_CI_["zref_sent"]] += 1
                if m.zsmall:
                    c64[_CI_["zref_fallback_small"]] += 1
                if m.zcap:
                    c64[_CI_["zref_fallback_capacity"]] += 1
        now = _now_ns()
        if not c64[_C_FIRST]:
            c64[_C_FIRST] = now
        c64[_C_LAST] = now

    def _free_entry(self, e: Entry) -> None:
        """An entry the channel drops (lock held): its block goes back to the arena."""
        if e.kind != E_INLINE:
            if e.kind == E_PAYLOAD:
                self._r.count("zref_canceled" if not self._r.flags & F_CANCELLED
                              else "zref_aborted_close")
            self._r._ack_locked(e.idx, e.gen, self._r.late_wake)  # honours a sender's pin

    def _recv_attempt(self, try_only: bool) -> Callable[[_Op, bool], tuple[int, Any]]:
        r = self._r

        def attempt(op: _Op, giving_up: bool) -> tuple[int, Any]:
            wake: list[int] = []
            r.enter()
            try:
                if op.armed_r:
                    r.arm(-1, 0, op.armed_r == 2)
                    op.armed_r = 0
                if giving_up:
                    return _WAIT, None
                st, val = self._recv_locked(op, try_only, wake)
            finally:
                r.leave()
            if wake:
                r.ring(wake)
            return st, val

        return attempt

    def _recv_locked(self, op: _Op, try_only: bool, wake: list[int]) -> tuple[int, Any]:
        r = self._r
        h64 = r.h64
        head = h64[5]
        if h64[6] > head:
            o = r.ring_off + (head % r.ring_n) * ENTRY
            kind, _, cell, slot, _, length, idx, gen, nbytes, _ = _E_unpack(r.map, o)
            data = r.map[o + 48:o + 48 + length] if kind == E_INLINE and length <= INLINE_MAX \
                else b""
            h64[5] = head + 1
            e = Entry(kind, slot, cell, length, idx, gen, nbytes, data)
            if cell != NOCELL and r.cell_get(slot, cell) == CELL_PENDING:
                r.cell_set(slot, cell, CELL_TAKEN)
                r._want_ring(slot, wake)
            if r.cap:
                r.settle_window(wake)
            if r.h32[33]:  # senders armed: room / a free block may help them
                wake.extend(r._armed_slots(False, True))
            bad = self._hold(e) if kind != E_INLINE else length > INLINE_MAX
            c64 = r.c64
            c64[_C_RECVS] += 1
            c64[_C_LAST] = _now_ns()
            if kind == E_PAYLOAD:
                c64[_C_ZRECV] += 1
                c64[_C_BYTES_RECV] += nbytes
            elif kind == E_BLOCK and length:
                c64[_C_BYTES_RECV] += length
            return _OK, (e, bad)
        if r.h32[14] & F_CLOSED:
            r.c64[_C_RECV_CLOSED] += 1
            return _REFUSED, None
        if try_only:
            r.c64[_C_RECV_WB] += 1
            return _WOULD_BLOCK, None
        if op.noarm:
            return _WAIT, None
        r.arm(1, 0, op.direct)
        op.armed_r = 2 if op.direct else 1
        return _WAIT, None

    def _hold(self, e: Entry) -> bool:
        """Take ownership of a received entry's block (lock held).  False if it is invalid."""
        if e.kind == E_INLINE:
            return e.length > INLINE_MAX
        r = self._r
        a = r.arena
        m = a._m
        if not (0 <= e.idx < a._nblk and m.state[e.idx] == ALLOC and m.gen[e.idx] == e.gen
                and m.holder[e.idx] == QUEUED):
            r.count("protocol_errors")
            return True
        m.holder[e.idx] = r.slot
        r.ledger_add(e.idx, e.gen, e.kind)
        return False

    def _decode(self, e: Entry, bad: bool) -> Any:
        r = self._r
        if bad:
            raise ProtocolError(f"IPC channel {self.name!r}: invalid message descriptor from "
                                f"peer slot {e.slot} (dropped)", peer=e.slot)
        if e.kind == E_INLINE:
            try:
                return _codec.decode_inline(e)
            except ProtocolError:
                self._count("protocol_errors")
                raise
        if e.kind == E_PAYLOAD:
            return _codec.decode_payload(r, e)  # counted in _recv_locked
        try:
            obj = _codec.decode_block(r, e)
        except ProtocolError:
            self._count("protocol_errors")
            raise
        return obj

    def _count(self, name: str, n: int = 1) -> None:
        with self._r.lock:
            self._r.count(name, n)

    # -- results --------------------------------------------------------------------------------
    def _closed_error(self, sending: bool) -> ChannelClosed:
        r = self._r
        what = "send on" if sending else "receive from"
        dead = r.dead_pid()
        cause: Any = PeerDied(dead) if dead else None
        state = "cancelled" if r.flags & F_CANCELLED else "closed"
        if r.flags & F_BROKEN:
            state = "broken (a process died inside a critical section)"
        exc = ChannelClosed(f"{what} {state} IPC channel {self.name!r}"
                            + (f" (peer {dead} died)" if dead else ""), cause=cause)
        if cause is not None:
            exc.__cause__ = cause
        return exc

    def _send_done(self, st: int, m: _Msg) -> bool:
        if st == _OK:
            p = m.payload
            if p is not None:
                if m.moved:
                    pinned = p._transfer()
                    if pinned is None:
                        self._r.unpin(m.idx, m.gen)
                    else:
                        import weakref

                        weakref.finalize(pinned, self._r.unpin, m.idx, m.gen)
                else:
                    p.release()
            return True
        if st == _DROPPED:
            self._discard(m)
            return False
        if st == _REFUSED:
            self._discard(m)
            raise self._closed_error(True)
        if st == _WOULD_BLOCK:
            if not m.moved:
                self._discard_keep_payload(m)
            raise WouldBlock(f"IPC channel {self.name!r} is full")
        raise AssertionError(st)

    def _discard_keep_payload(self, m: _Msg) -> None:
        if m.idx >= 0 and m.kind != E_INLINE and not m.moved:
            with self._r.lock:
                self._r.arena._give(m.idx, m.gen)

    def _recv_done(self, st: int, val: Any) -> Any:
        if st == _OK:
            e, bad = val
            if e.kind == E_INLINE and not bad:
                try:
                    return _loads(e.data)
                except Exception:
                    pass  # reported with the peer's slot below
            return self._decode(e, bad)
        if st == _REFUSED:
            raise self._closed_error(False)
        raise WouldBlock(f"IPC channel {self.name!r} is empty")

    # -- public operations ----------------------------------------------------------------------
    async def send(self, item: T, *, timeout: float | None = None, cancel: Any = None) -> None:
        """Send ``item`` (pickled; a Payload of this channel's arena moves by reference)."""
        await self._send(item, timeout, cancel, False)

    async def send_zref(self, obj: Any, *, timeout: float | None = None,
                        cancel: Any = None) -> None:
        """Send a Payload (by reference when it is in ``self.arena``) or a buffer's bytes."""
        await self._send(obj, timeout, cancel, True)

    async def _send(self, item: Any, timeout: float | None, cancel: Any, zref: bool) -> None:
        timeout = check_timeout(timeout)
        self._ensure()
        m = self._encode(item, zref)
        try:
            if timeout == 0:
                st, _ = self._send_attempt(m, True)(_Op(), False)
            else:
                st, _ = await self._run(self._send_attempt(m, False), timeout, cancel,
                                        f"send on IPC channel {self.name!r}")
        except BaseException as exc:
            if not isinstance(exc, WouldBlock):
                self._count("send_timeout" if isinstance(exc, TimeoutError) else
                            "send_cancelled")
                if m.kind == E_PAYLOAD:
                    self._count("zref_canceled")
                self._discard(m)
            raise
        if st == _REFUSED and m.kind == E_PAYLOAD:
            self._count("zref_aborted_close")
        self._send_done(st, m)

    def send_blocking(self, item: T, *, timeout: float | None = None, cancel: Any = None) -> None:
        check_blocking_allowed("ipc.Channel.send_blocking()")
        timeout = check_timeout(timeout)
        self._ensure()
        m = self._encode(item, False)
        if timeout == 0:
            st, _ = self._send_attempt(m, True)(_Op(), False)
        else:
            try:
                st, _ = self._run_blocking(self._send_attempt(m, False), timeout, cancel,
                                           f"send on IPC channel {self.name!r}")
            except BaseException as exc:
                self._count("send_timeout" if isinstance(exc, TimeoutError) else
                            "send_cancelled")
                self._discard(m)
                raise
        self._send_done(st, m)

    def try_send(self, item: T) -> bool:
        """Send without waiting: ``WouldBlock`` when full (rendezvous: no receiver parked);
        False for DROP_LATEST on a full buffer."""
        self._ensure()
        m = self._encode(item, False)
        st, _ = self._send_attempt(m, True)(_Op(), False)
        return self._send_done(st, m)

    def _held(self) -> tuple[bool, Any]:
        p = self.__dict__.get("_pump")
        return (False, None) if p is None else p.take_held()  # type: ignore[no-any-return]

    async def recv(self, *, timeout: float | None = None, cancel: Any = None) -> T:
        timeout = check_timeout(timeout)
        self._ensure()
        ok, item = self._held()
        if ok:
            return item  # type: ignore[no-any-return]
        if timeout == 0:
            return self.try_recv()
        try:
            st, val = await self._run(self._recv_attempt(False), timeout, cancel,
                                      f"receive from IPC channel {self.name!r}")
        except BaseException as exc:
            self._count("recv_timeout" if isinstance(exc, TimeoutError) else "recv_cancelled")
            raise
        return self._recv_done(st, val)  # type: ignore[no-any-return]

    async def recv_zref(self, *, timeout: float | None = None, cancel: Any = None) -> Payload:
        item: Any = await self.recv(timeout=timeout, cancel=cancel)
        return item if type(item) is Payload else Payload(item)

    def recv_blocking(self, *, timeout: float | None = None, cancel: Any = None) -> T:
        check_blocking_allowed("ipc.Channel.recv_blocking()")
        timeout = check_timeout(timeout)
        self._ensure()
        ok, item = self._held()
        if ok:
            return item  # type: ignore[no-any-return]
        if timeout == 0:
            return self.try_recv()
        try:
            st, val = self._run_blocking(self._recv_attempt(False), timeout, cancel,
                                         f"receive from IPC channel {self.name!r}")
        except BaseException as exc:
            self._count("recv_timeout" if isinstance(exc, TimeoutError) else "recv_cancelled")
            raise
        return self._recv_done(st, val)  # type: ignore[no-any-return]

    def try_recv(self) -> T:
        self._ensure()
        ok, item = self._held()
        if ok:
            return item  # type: ignore[no-any-return]
        st, val = self._recv_attempt(True)(_Op(), False)
        return self._recv_done(st, val)  # type: ignore[no-any-return]

    def iter_blocking(self, *, timeout: float | None = None) -> Iterator[T]:
        while True:
            try:
                yield self.recv_blocking(timeout=timeout)
            except ChannelClosed:
                return

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None

    # -- close / cancel ---------------------------------------------------------------------------
    def close(self) -> bool:
        """No more sends (in every process).  Buffered items still drain; parked senders get
        ChannelClosed and keep their items.  True only for the call that closed it."""
        self._ensure()
        r = self._r
        with r.lock:
            if r.flags & F_CLOSED:
                return False
            wake = r._close_locked()
        r.ring(wake)
        return True

    def cancel(self, cause: Any = None) -> None:
        """Close and discard the buffer (payload blocks are freed); every waiter fails."""
        self._ensure()
        r = self._r
        with r.lock:
            if r.flags & F_CANCELLED:
                return
            r._set32(56, r.flags | F_CANCELLED)
            wake = r._close_locked()  # pending offers fail (their senders keep them)
            n = 0
            while r.tail > r.head:
                e = r.read_entry(r.head)
                r.remove_at(r.head)
                if e.cell != NOCELL and r.cell_get(e.slot, e.cell) == CELL_PENDING:
                    r.cell_set(e.slot, e.cell, CELL_CLOSED)
                    r._want_ring(e.slot, wake)
                    continue
                self._free_entry(e)
                n += 1
            r.count("undelivered", n)
        r.ring(wake)

    @property
    def closed_for_send(self) -> bool:
        return bool(self._r.flags & F_CLOSED)

    @property
    def closed_for_recv(self) -> bool:
        r = self._r
        return bool(r.flags & F_CLOSED) and r.tail - r.head - self._pending() <= 0

    def _pending(self) -> int:
        r = self._r
        return max(0, r.tail - r.head - r.cap) if r.cap else r.tail - r.head

    def __len__(self) -> int:
        r = self._r
        return min(r.tail - r.head, r.cap) if r.cap else 0

    # -- introspection ----------------------------------------------------------------------------
    def stats(self) -> ChannelStats:
        from .._chan import _COUNTERS

        r = self._r
        with r.lock:
            vals = {k: r.counter(k) if k in _CI else 0 for k in _COUNTERS}
            buffered = len(self)
            closed = bool(r.flags & F_CLOSED)
            ws = sum(r._get32(r._pbase(s) + 20) for s in range(32))
            wr = sum(r._get32(r._pbase(s) + 16) for s in range(32))
            pending = self._pending()
            peak = r.counter("peak")
            first, last = r.counter("first_op_ns"), r.counter("last_op_ns")
        return ChannelStats(name=self.name, kind=self.kind, capacity=self.capacity,
                            buffered=buffered, peak=min(peak, int(r.cap)) if r.cap else 0,
                            waiting_senders=max(ws, pending), waiting_receivers=wr,
                            closed_for_send=closed, closed_for_recv=closed and buffered == 0,
                            first_op_ns=first, last_op_ns=last, snapshot_ns=time.monotonic_ns(),
                            **vals)

    def ipc_stats(self) -> dict[str, int]:
        """IPC-only counters: requeued (at-least-once redeliveries), dead_peers,
        protocol_errors, and the arena's stale ACKs."""
        r = self._r
        with r.lock:
            out = {k: r.counter(k) for k in ("requeued", "dead_peers", "protocol_errors")}
        out["stale_acks"] = r.arena.stats().stale
        return out

    def zstats(self) -> dict[str, int]:
        s = self.stats()
        return {"zref_sent": s.zref_sent, "zref_received": s.zref_received,
                "fallback_small": s.zref_fallback_small,
                "fallback_capacity": s.zref_fallback_capacity,
                "canceled": s.zref_canceled, "aborted_close": s.zref_aborted_close}

    def check_invariants(self) -> None:
        self._ensure()
        self._r.check_invariants()

    def peers(self) -> list[int]:
        """Pids of the other attached processes."""
        return [pid for _, pid, _ in self._r.live_peers()]

    # -- select ---------------------------------------------------------------------------------
    def on_recv(self) -> Any:
        """A select clause receiving from this IPC channel (see :mod:`._pump`)."""
        from ._pump import pump_for

        return pump_for(self).on_recv()

    def on_send(self, item: T) -> Any:
        from ._pump import pump_for

        return pump_for(self).on_send(item)

    # -- rendezvous by path -----------------------------------------------------------------------
    def listen(self, path: str) -> str:
        """Accept connections from unrelated processes of this user at ``path`` (a Unix
        socket, 0600, in an owner-only directory; ``"@name"`` for the abstract namespace)."""
        from ._rendezvous import Listener

        if self._listener is None:
            self._listener = Listener(self, path)
        return str(self._listener.path)

    def detach(self) -> None:
        """Leave the channel in this process (automatic at exit).  Blocks this process still
        holds are freed: call it only once its payloads and received arrays are gone."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        p = self.__dict__.pop("_pump", None)
        if p is not None:
            p.shutdown()
        if self._pid != _PID[0] or self._r.slot < 0:
            return
        self._r.detach()
        io = io_thread()
        io.ticks.discard(self._tick)
        io.call(functools.partial(self._io_detach, io))
        _live.discard(self)

    def _io_detach(self, io: Any) -> None:
        """On the I/O thread: stop watching our bells and peers, close them."""
        io.unregister(self._bell.fileno())
        for _, pfd in self._peers.values():
            io.unregister(pfd, close=True)
        self._peers.clear()
        self._bell.close()
        self._dbell.close()
        self._r.close_fds()

    def __repr__(self) -> str:
        r = self._r
        state = " cancelled" if r.flags & F_CANCELLED else " closed" if r.flags & F_CLOSED \
            else ""
        return (f"<ipc.Channel {self.name!r} {self.kind} {len(self)}/{self.capacity} "
                f"slot={r.slot}{state}>")


_CI_ = __import__("kcoro.ipc._region", fromlist=["CI"]).CI
_C_SENDS, _C_RECVS, _C_BYTES_SENT = _CI_["sends"], _CI_["recvs"], _CI_["bytes_sent"]
_C_FIRST, _C_LAST, _C_PEAK = _CI_["first_op_ns"], _CI_["last_op_ns"], _CI_["peak"]
_C_SEND_CLOSED, _C_RECV_CLOSED = _CI_["send_closed"], _CI_["recv_closed"]
_C_RECV_WB = _CI_["recv_would_block"]
_C_ZRECV, _C_BYTES_RECV = _CI_["zref_received"], _CI_["bytes_recv"]
_now_ns = time.monotonic_ns
_loads = __import__("pickle").loads
_E_pack = _E.pack_into
_E_unpack = _E.unpack_from
_C_INTERNAL: int | None = getattr(_tokens, "C_INTERNAL", None)  # older kernels count here
_CI = set(__import__("kcoro.ipc._region", fromlist=["CI"]).CI)


def _rebuild(fd: Any) -> Channel[Any]:
    fd = fd.detach() if hasattr(fd, "detach") else fd
    return Channel(_region=Region(fd))


class _Live:
    """The channels attached in this process (detached at exit, reset after fork)."""

    def __init__(self) -> None:
        import weakref

        self._s: weakref.WeakSet[Channel[Any]] = weakref.WeakSet()

    def add(self, ch: Channel[Any]) -> None:
        self._s.add(ch)

    def discard(self, ch: Channel[Any]) -> None:
        self._s.discard(ch)

    def detach_all(self) -> None:
        for ch in list(self._s):
            try:
                ch.detach()
            except Exception:  # pragma: no cover - exiting anyway
                pass


_live = _Live()
atexit.register(_live.detach_all)


def _exit_hooks(_: object = None) -> None:
    # multiprocessing children leave through os._exit() after running util finalizers (atexit
    # does not run there); the registry is cleared in a new child, so register again after fork
    util.Finalize(None, _live.detach_all, exitpriority=0)


_exit_hooks()
util.register_after_fork(_live, _exit_hooks)


def _after_fork() -> None:
    _PID[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)

_ = (KIND_NAME, LocalChannel, DROP_LATEST, E_BLOCK, WouldBlock, make_timeout, CELL_PENDING)
