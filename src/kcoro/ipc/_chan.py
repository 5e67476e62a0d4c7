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

Layout: this module holds the endpoint (attachment, public operations, close/cancel, stats);
``_ring.py`` the locked ring operations (encode, send/receive attempts, results);
``_waiting.py`` the I/O-thread handlers and the wait loops; ``_region.py`` the shared layout.

Invariant of this module: the local wait list holds exactly the tickets of operations between
their attempt and their wake-up; every ticket is completed or cancelled exactly once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import pickle
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing import reduction, util
from typing import Any, Generic, TypeVar

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
from .._context import tls as _tls
from .._errors import ChannelClosed, WouldBlock, make_timeout
from .._payload import Payload
from .._tokens import Ticket
from .._wait import (
    check_blocking_allowed,
    check_timeout,
)
from ._codec import ProtocolError
from ._io import io_thread
from ._region import (
    CELL_CLOSED,
    CELL_PENDING,
    CI,
    DIRECT,
    E_BLOCK,
    E_INLINE,
    E_PAYLOAD,
    ENTRY,
    F_CANCELLED,
    F_CLOSED,
    H_CNT,
    H_MUTEX,
    HDR,
    INLINE_MAX,
    KIND_NAME,
    LOCK_MUTEX,
    MAXPROC,
    NCELL,
    NOCELL,
    POLICY_CLOSE,
    POLICY_IGNORE,
    SLOT_BYTES,
    Entry,
    Region,
    new_region,
)
from ._ring import _OK, _REFUSED, PeerDied, RingOps, _Op
from ._waiting import SPIN_NS, Waiting

T = TypeVar("T")

__all__ = ["UNLIMITED_SLOTS", "Channel", "PeerDied"]

UNLIMITED_SLOTS = 65536
_DROP = {SUSPEND: 0, DROP_OLDEST: 1, DROP_LATEST: 2}
_PID = [os.getpid()]

# The optional C fast path for small messages (``_fastring.c``): not with KCORO_PURE=1, and
# only if it was built for this very layout.
_fastring: Any = None
if not os.environ.get("KCORO_PURE"):
    try:
        from . import _fastring  # type: ignore[attr-defined, no-redef]
    except ImportError:
        _fastring = None
    if _fastring is not None and _fastring.LAYOUT != (HDR, MAXPROC, SLOT_BYTES, NCELL, ENTRY,
                                                      INLINE_MAX, H_CNT, DIRECT):
        _fastring = None
_SLOW = getattr(_fastring, "SLOW", None)
_TIMEOUT = getattr(_fastring, "TIMEOUT", None)
_BAD = getattr(_fastring, "BAD", None)
_HELD = getattr(_fastring, "Held", None)
_FR_COUNTERS = (CI["sends"], CI["recvs"], CI["first_op_ns"], CI["last_op_ns"], CI["peak"],
                CI["zref_received"], CI["bytes_recv"], CI["zref_sent"], CI["bytes_sent"])
_loads = pickle.loads
_get_running_loop = asyncio._get_running_loop


class Channel(RingOps, Waiting, Generic[T]):
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
        self._spin_fails = self._spin_skip = 0
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
        # blocking: the C path's whole wait is one recv(); every other read is MSG_DONTWAIT
        self._dbell.setblocking(True)
        self._dpoll = select.poll()
        self._dpoll.register(self._dbell.fileno(), select.POLLIN)
        # the C fast path (None: the Python path does everything); its object also holds the
        # leader role, so that both paths agree on who waits on the direct bell
        self._fr: Any = None
        if _fastring is not None:
            try:
                self._fr = _fastring.FastRing(
                    r.map, r._ofd, H_MUTEX if r.lock_kind == LOCK_MUTEX else 0,
                    self._dbell.fileno(), r.slot, r.ring_off, r.ring_n, r.cap, r.drop,
                    _FR_COUNTERS, r.lock, self._wake_local, r.heal, r.uuid.hex().encode(),
                    SPIN_NS, r.arena_layout())
            except (OSError, ValueError):  # pragma: no cover - the Python path does it all
                self._fr = None
        r.fast = self._fr
        self._frr = self._fr  # receives: None while a select pump owns them (see _pump)
        self._leader: Any = self._fr if self._fr is not None else threading.Lock()
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
        fast = self._fast_send(m)
        try:
            if timeout == 0:
                res = fast() if fast is not None else None
                st = res[0] if res is not None else self._send_attempt(m, True)(_Op(), False)[0]
            else:
                st, _ = await self._run(self._send_attempt(m, False), timeout, cancel,
                                        f"send on IPC channel {self.name!r}", fast)
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

    def _fast_send(self, m: Any) -> Callable[[], tuple[int, Any] | None] | None:
        """The C helper's attempt for an encoded message (inline, or a moved payload), if any."""
        fr = self._fr
        if fr is None:
            return None
        if m.kind == E_INLINE:
            return lambda: (_OK, None) if fr.send_pickle(m.data) is None else None
        if m.moved:
            return lambda: (_OK, None) if fr.send_payload(m.idx, m.gen, m.nbytes) is None \
                else None
        return None

    def send_blocking(self, item: T, *, timeout: float | None = None, cancel: Any = None) -> None:
        fr = self._fr
        if (fr is not None and timeout is None and _tls.rt is None and _get_running_loop() is None
                and fr.send(item) is None):
            return  # C: a plain item pickled inline into a buffer with room
        check_blocking_allowed("ipc.Channel.send_blocking()")
        timeout = check_timeout(timeout)
        self._ensure()
        fr = self._fr
        if fr is not None and self._send_moved_fast(fr, item):
            return
        m = self._encode(item, False)
        if fr is not None and m.kind == E_INLINE and fr.send_pickle(m.data) is None:
            return
        if timeout == 0:
            st, _ = self._send_attempt(m, True)(_Op(), False)
        else:
            op = _Op()
            try:
                st, _ = self._run_blocking(self._send_attempt(m, False), timeout, cancel,
                                           f"send on IPC channel {self.name!r}", op)
            except BaseException as exc:
                if op.late == _OK:  # delivered before the exception could withdraw it
                    self._send_done(_OK, m)
                    raise
                self._count("send_timeout" if isinstance(exc, TimeoutError) else
                            "send_cancelled")
                self._discard(m)
                raise
        self._send_done(st, m)

    def _send_moved_fast(self, fr: Any, p: Any) -> bool:
        """C: move a payload of our arena into a buffer with room (False: not done)."""
        if (type(p) is not Payload or p.arena is not self._r.arena or p.spilled or p._idx < 0
                or p._refs <= 0 or fr.send_payload(p._idx, p._gen, p.nbytes) is not None):
            return False
        self._moved(p, p._idx, p._gen)
        return True

    def try_send(self, item: T) -> bool:
        """Send without waiting: ``WouldBlock`` when full (rendezvous: no receiver parked);
        False for DROP_LATEST on a full buffer."""
        self._ensure()
        fr = self._fr
        if fr is not None and (fr.send(item) is None or self._send_moved_fast(fr, item)):
            return True
        m = self._encode(item, False)
        if fr is not None and m.kind == E_INLINE and fr.send_pickle(m.data) is None:
            return True
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
        fr = self._frr
        try:
            st, val = await self._run(self._recv_attempt(False), timeout, cancel,
                                      f"receive from IPC channel {self.name!r}",
                                      None if fr is None else functools.partial(_fast_recv, fr))
        except BaseException as exc:
            self._count("recv_timeout" if isinstance(exc, TimeoutError) else "recv_cancelled")
            raise
        if st == _FAST:
            return self._fast_value(fr, val)  # type: ignore[no-any-return]
        return self._recv_done(st, val)  # type: ignore[no-any-return]

    async def recv_zref(self, *, timeout: float | None = None, cancel: Any = None) -> Payload:
        item: Any = await self.recv(timeout=timeout, cancel=cancel)
        return item if type(item) is Payload else Payload(item)

    def recv_blocking(self, *, timeout: float | None = None, cancel: Any = None) -> T:
        fr = self._frr
        if fr is not None and cancel is None and _tls.rt is None and _get_running_loop() is None:
            # C: take (or wait for) a small item; SLOW hands anything else to the Python path
            if timeout is not None:
                timeout = check_timeout(timeout)
            if timeout != 0:
                try:
                    v = fr.recv(timeout)
                except BaseException:
                    self._count("recv_cancelled")
                    raise
                if v is not _SLOW:
                    if v is _TIMEOUT:
                        self._count("recv_timeout")
                        raise make_timeout(f"receive from IPC channel {self.name!r}")
                    return self._fast_value(fr, v)  # type: ignore[no-any-return]
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
        fr = self._frr
        if fr is not None:
            v = fr.recv(0)
            if v is not _SLOW:
                return self._fast_value(fr, v)  # type: ignore[no-any-return]
        st, val = self._recv_attempt(True)(_Op(), False)
        return self._recv_done(st, val)  # type: ignore[no-any-return]

    def _fast_value(self, fr: Any, v: Any) -> Any:
        """What the C helper's receive returned: an item, a ``Held`` block / payload entry
        (rebuild the message over its block, as the Python path does), or BAD."""
        if type(v) is _HELD:
            return self._decode(Entry(v.kind, v.slot, NOCELL, v.length, v.idx, v.gen, v.nbytes,
                                      b""), False)
        if v is _BAD:
            raise self._bad_inline(fr)
        return v

    def _bad_inline(self, fr: Any) -> ProtocolError:
        """The C path took an inline entry whose pickle does not load: the error to raise."""
        data, slot = fr.bad_data, fr.last_slot
        self._count("protocol_errors")
        try:
            _loads(data)
        except Exception as exc:
            err = ProtocolError(f"malformed inline message from peer slot {slot}: {exc}",
                                peer=slot)
            err.__cause__ = exc
            return err
        return ProtocolError(f"malformed inline message from peer slot {slot}", peer=slot)

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
        self._fr = self._frr = None
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


_CI = set(__import__("kcoro.ipc._region", fromlist=["CI"]).CI)


_FAST = -1  # a status beside _ring's: the C helper's receive did it (value: what it returned)


def _fast_recv(fr: Any) -> tuple[int, Any] | None:
    v = fr.recv(0)
    return None if v is _SLOW else (_FAST, v)


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
