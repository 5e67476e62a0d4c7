"""Waiting for an IPC channel: the I/O-thread side (doorbells, peers, deaths) and the wait loops
of the operations (spin, then arm and sleep: on the direct doorbell for a blocked thread, on a
kcoro ticket completed by the I/O thread otherwise).  Mixed into :class:`kcoro.ipc.Channel`.

Invariant: the local wait list holds exactly the tickets of operations between their attempt and
their wake-up; ``_peers`` and every pidfd/bell registration change only on the I/O thread.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .. import _klock, _tokens
from .._errors import make_timeout
from .._runtime import Task
from .._tokens import CANCELLED, WHY_TASK, Ticket, internal_ticket
from .._wait import (
    _park_with_token,
    context,
    error_for,
    fail,
    park_blocking,
    waker_for,
)
from .._wakers import thread_waker
from ._io import io_thread
from ._region import (
    Region,
)
from ._ring import _Op

__all__ = ["SPIN_NS", "Waiting"]

# Before parking, a waiter in a thread (or a kcoro task with nothing else ready) watches the
# shared region this long: a partner that answers quickly is seen without any syscall on either
# side.  Then it arms and sleeps on its doorbell (no CPU while idle).
SPIN_NS = int(float(os.environ.get("KCORO_IPC_SPIN_US", "50")) * 1000)
_perf_ns = time.perf_counter_ns
_DONTWAIT = socket.MSG_DONTWAIT
_WAIT = 1


class Waiting:
    """Mixin: I/O-thread handlers and wait loops (needs the attributes below)."""

    _r: Region
    _waiters: set[Ticket]
    _wake_gen: int
    _peers: dict[int, tuple[int, int]]
    _epoch: int
    _bell: Any
    _dbell: Any
    _dpoll: Any
    _leader: Any
    _spin_fails: int
    _spin_skip: int

    def _ensure(self) -> None:
        raise NotImplementedError

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
                   cancel: Any, what: str,
                   fast: Callable[[], tuple[int, Any] | None] | None = None) -> tuple[int, Any]:
        """Drive ``attempt`` until it does not ask to wait, parking between tries.  ``fast``
        (the C helper's attempt, which never waits) goes first; None from it: not done."""
        ctx: Any = context()
        if type(ctx) is Task and ctx._scope._eff:
            from .._errors import Cancelled

            raise Cancelled()
        self._ensure()
        if fast is not None:
            res = fast()
            if res is not None:
                return res
        deadline = None if timeout is None else time.monotonic() + timeout
        op = _Op()
        spin = type(ctx) is Task and SPIN_NS > 0
        op.noarm = spin and not ctx._rt._ready and self._spin_allowed()
        op.spin_end = _perf_ns() + SPIN_NS
        while True:
            gen = self._wake_gen
            st, val = attempt(op, False)
            if st != _WAIT:
                if op.noarm and op.spun:
                    self._spin_paid(True)
                return st, val
            if op.noarm:
                op.spun = True
                if self._spin(op.spin_end) or ctx._rt._ready:
                    op.noarm = False
                    self._spin_paid(False)
                continue
            t = internal_ticket(waker_for(ctx))
            if not self._wait_on(t, gen):
                continue
            if type(ctx) is Task:
                ctx._on = self
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await _park_with_token(t, ctx, left, cancel, False)
            if spin and t._state != CANCELLED and not ctx._rt._ready:
                op.noarm = self._spin_allowed()
                op.spun = False
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
                      timeout: float | None, cancel: Any, what: str,
                      op: _Op | None = None) -> tuple[int, Any]:
        """Drive ``attempt`` in a blocking thread.  An exception while parked (a signal
        handler's) gives up first: the offer is withdrawn and the slot disarmed, or -- if
        the operation completed meanwhile -- ``op.late`` records its result for the caller."""
        self._ensure()
        deadline = None if timeout is None else time.monotonic() + timeout
        if op is None:
            op = _Op()
        op.noarm = SPIN_NS > 0 and self._spin_allowed()
        op.spin_end = _perf_ns() + SPIN_NS
        # the leader (one thread per endpoint) waits on the direct bell: take the role before
        # the first attempt, so that attempt arms the right bell (no I/O-thread arming first)
        op.direct = cancel is None and self._leader.acquire(False)
        try:
            return self._blocking_loop(op, attempt, deadline, cancel, what)
        except BaseException:
            if op.armed_r or op.armed_s or op.cell >= 0:
                op.late = attempt(op, True)[0]
            raise
        finally:
            if op.direct:
                self._leader.release()

    def _blocking_loop(self, op: _Op, attempt: Callable[[_Op, bool], tuple[int, Any]],
                       deadline: float | None, cancel: Any, what: str) -> tuple[int, Any]:
        while True:
            gen = self._wake_gen
            st, val = attempt(op, False)
            if st != _WAIT:
                if op.noarm and op.spun:
                    self._spin_paid(True)
                return st, val
            if op.noarm:
                op.spun = True
                if self._spin(op.spin_end):
                    op.noarm = False
                    self._spin_paid(False)
                continue
            if op.direct:  # the leader: sleep on the direct bell (one wake-up, no I/O thread)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._poll_direct(left):
                    st, val = attempt(op, True)  # timed out: disarm (an offer is withdrawn)
                    if st == _WAIT:
                        raise make_timeout(what)
                    return st, val
                if SPIN_NS > 0:
                    op.noarm = self._spin_allowed()
                    op.spun = False
                    op.spin_end = _perf_ns() + SPIN_NS
                continue
            if cancel is None and self._leader.acquire(False):
                op.direct = True  # the leader left: take over (re-attempt, arming the
                continue          # direct bell; the attempt disarms the I/O-thread bell)
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
                op.noarm = self._spin_allowed()
                op.spun = False
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
                self._dbell.recv(64, _DONTWAIT)  # (a blocking socket: see _fastring.c)
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

    # Spinning pays only when the partner runs at the same time on another CPU.  When both
    # share one CPU (an oversubscribed machine, or a partner that answers slowly), a spinner
    # burns the very time slice its partner needs: the partner, woken by our doorbell, has
    # preempted us and we only run again once it sleeps -- after its own fruitless spin.  So
    # each endpoint keeps score: after a spin that saw nothing, the next 2^k - 1 waits go
    # straight to sleep (k grows to 8 with consecutive failures); one success resets it.
    def _spin_allowed(self) -> bool:
        if self._spin_skip:
            self._spin_skip -= 1
            return False
        return True

    def _spin_paid(self, ok: bool) -> None:
        if ok:
            self._spin_fails = 0
        else:
            k = self._spin_fails = min(self._spin_fails + 1, 8)
            self._spin_skip = (1 << k) - 1

    def _unwait(self, t: Ticket) -> None:
        _klock.acquire()
        try:
            self._waiters.discard(t)
        finally:
            _klock.release()



_C_INTERNAL: int | None = getattr(_tokens, "C_INTERNAL", None)  # older kernels count here
