"""The locked ring operations of an IPC channel endpoint: encoding a message, the send and
receive attempts (one kernel section each, on the shared region), and turning their results into
returns or exceptions.  Mixed into :class:`kcoro.ipc.Channel`; see ``_chan.py`` for the model and
``_region.py`` for the layout and invariants.

Invariant: an attempt runs entirely under the channel lock and only publishes by its last store
(the ring tail, a cell state); bells it claims are rung after the lock is released.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._errors import ChannelClosed, KcoroError, WouldBlock
from .._payload import ALLOC, Payload
from . import _codec
from ._codec import MessageTooLarge, ProtocolError
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
    NOCELL,
    QUEUED,
    Entry,
    Region,
)

__all__ = ["PeerDied", "RingOps"]

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
    __slots__ = ("armed_r", "armed_s", "cell", "direct", "late", "noarm", "spin_end", "spun")

    def __init__(self) -> None:
        self.armed_r = self.armed_s = 0
        self.cell = -1
        self.noarm = False  # spinning: do not arm (nobody needs to ring us yet)
        self.spin_end = 0
        self.spun = False  # the spin ran (its outcome is scored, see Waiting._spin_paid)
        self.late = -1  # an exception while parked: the result of the give-up attempt
        self.direct = False  # this thread polls the direct bell itself (the leader)


class RingOps:
    """Mixin: the ring operations (needs ``_r``, ``_ensure``)."""

    _r: Region

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
                                  f"channel {self._r.name!r} (largest block "
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
            raise ProtocolError(f"IPC channel {self._r.name!r}: invalid message descriptor from "
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
        exc = ChannelClosed(f"{what} {state} IPC channel {self._r.name!r}"
                            + (f" (peer {dead} died)" if dead else ""), cause=cause)
        if cause is not None:
            exc.__cause__ = cause
        return exc

    def _send_done(self, st: int, m: _Msg) -> bool:
        if st == _OK:
            p = m.payload
            if p is not None:
                if m.moved:
                    self._moved(p, m.idx, m.gen)
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
            raise WouldBlock(f"IPC channel {self._r.name!r} is full")
        raise AssertionError(st)

    def _moved(self, p: Payload, idx: int, gen: int) -> None:
        """A payload's own block was sent (pinned by us): drop our reference; the pin goes when
        our last view does (now, if there is none)."""
        pinned = p._transfer()
        if pinned is None:
            self._r.unpin(idx, gen)
        else:
            _finalize(pinned, self._r.unpin, idx, gen)

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
        raise WouldBlock(f"IPC channel {self._r.name!r} is empty")



_CI_ = __import__("kcoro.ipc._region", fromlist=["CI"]).CI
_C_SENDS, _C_RECVS, _C_BYTES_SENT = _CI_["sends"], _CI_["recvs"], _CI_["bytes_sent"]
_C_FIRST, _C_LAST, _C_PEAK = _CI_["first_op_ns"], _CI_["last_op_ns"], _CI_["peak"]
_C_SEND_CLOSED, _C_RECV_CLOSED = _CI_["send_closed"], _CI_["recv_closed"]
_C_RECV_WB = _CI_["recv_would_block"]
_C_ZRECV, _C_BYTES_RECV = _CI_["zref_received"], _CI_["bytes_recv"]
_now_ns = time.monotonic_ns
_loads = __import__("pickle").loads
_finalize = __import__("weakref").finalize
_E_pack = _E.pack_into
_E_unpack = _E.unpack_from
