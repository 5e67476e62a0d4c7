"""The shared region of one cross-process channel: header, process table, ring, arena.

One memfd holds everything (no name in ``/dev/shm``; the kernel frees it with the last fd or
mapping, so ``kill -9`` of every process leaves nothing)::

    [ header 4 KiB | process table | ring: ring_n entries x 256 B | arena meta | arena data ]

Locks (both released by the kernel when a process dies):

* the channel lock: a process-shared **robust** ``pthread_mutex_t`` in the header (no syscall
  when uncontended; when its owner dies the kernel hands it to the next locker with
  ``EOWNERDEAD``), or -- where glibc's robust mutexes are not available, or with
  ``KCORO_IPC_LOCK=flock`` -- ``flock(LOCK_EX)`` on a per-process open file description of the
  memfd (reopened through ``/proc/self/fd``); the kind is fixed in the header at creation.  Plus
  a process-local RLock for threads and re-entrancy (``ArenaLock``);
* liveness: each attached process holds an OFD write lock on byte ``LIVE_BASE + slot``; a peer
  whose byte is unlocked is dead (no pid-reuse problem, no heartbeat).

Ring: entries ``[head, tail)`` (monotonic positions; storage index = position % ring_n).  The
first ``cap`` entries are the channel's buffer (*accepted*); entries beyond are *pending offers*
of parked senders, in arrival order (rendezvous: every entry is an offer).  An offer carries a
result cell of its sender: PENDING → ACCEPTED (it entered the buffer) | TAKEN (a receiver took
it) | CLOSED (``close()`` removed it; the sender keeps its item).  A sender that gives up removes
its PENDING offer itself (compaction), so cancellation is atomic: taken or withdrawn, never both.

Block ownership (arena ``holder``): WRITING(sender slot) → QUEUED → HELD(receiver slot) → FREE.
A receiver's HELD blocks are listed in its *ledger* (process-table entry) until its last view is
gone (the ACK frees the block, checked by generation).  Crash reclamation (``reap``), by whoever
sees the death first, under the channel lock: WRITING blocks are freed, the dead sender's pending
offers are removed and freed, QUEUED entries stay, HELD blocks of the dead receiver are re-queued
at the head (at-least-once).  Then the death policy applies (close the channel with
``PeerDied`` as cause, or carry on).

Invariants (``Region.check_invariants``): ``0 <= tail - head <= ring_n``; only entries at
positions ``>= head + cap`` have PENDING cells; every cell in state PENDING is referenced by
exactly one ring entry; a LIVE slot's liveness byte is locked; arena invariants hold.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._payload import ALLOC, NO_HOLDER, Arena, ArenaLock, Payload, _meta_size

MAGIC = 0x4B434F524F495043  # "KCOROIPC"
VERSION = 2  # 2: the lock kind (robust mutex) in the header
PAGE = 4096
HDR = PAGE
MAXPROC = 32
SLOT_BYTES = 1024  # per process-table entry
NCELL = 64
NLEDGER = 64
ENTRY = 256
INLINE_MAX = ENTRY - 48
LIVE_BASE = 1 << 30
QUEUED = 0xFFFE

KIND_CODE = {"rendezvous": 0, "buffered": 1, "unlimited": 2, "conflated": 3}
KIND_NAME = {v: k for k, v in KIND_CODE.items()}

# header fields (offsets)
H_MAGIC, H_VERSION, H_KIND, H_CAP, H_DROP, H_RING_N = 0, 8, 12, 16, 24, 32
H_HEAD, H_TAIL, H_FLAGS, H_POLICY, H_EPOCH, H_DIRTY = 40, 48, 56, 60, 64, 72
H_DEADPID = 76
H_ARMR_TOTAL, H_ARMS_TOTAL = 128, 132
H_SEQ = 136  # u64 bumped at the end of every locked section
H_LOCK_KIND = 144  # u32: LOCK_FLOCK or LOCK_MUTEX
H_LOCK_ABI = 160  # 32 bytes: the libc/machine whose pthread_mutex_t layout is in H_MUTEX
H_MUTEX = 1024  # 64 bytes: the robust, process-shared pthread_mutex_t
LOCK_FLOCK, LOCK_MUTEX = 0, 1
DIRECT = 0x100  # in a list of bells to ring: the slot's direct bell
F_PIN, F_ACKED = 1, 2  # arena block flags; bits 2.. = pinning slot + 1
H_UUID, H_ARENA_OFF, H_ARENA_CAP, H_ARENA_MB, H_TOTAL = 80, 96, 104, 112, 120
H_NAME = 256  # 128 bytes
H_CNT = 512   # u64 counters
F_CLOSED, F_CANCELLED, F_BROKEN = 1, 2, 4
POLICY_CLOSE, POLICY_IGNORE = 0, 1

COUNTERS = ("sends", "recvs", "bytes_sent", "bytes_recv", "send_would_block", "send_timeout",
            "send_closed", "send_cancelled", "send_dropped", "recv_would_block", "recv_timeout",
            "recv_closed", "recv_cancelled", "undelivered", "zref_sent", "zref_received",
            "zref_fallback_small", "zref_fallback_capacity", "zref_canceled",
            "zref_aborted_close", "requeued", "dead_peers", "protocol_errors", "first_op_ns",
            "last_op_ns", "peak", "doorbells")
CI = {name: i for i, name in enumerate(COUNTERS)}

# process-table entry: state u32, pid u32, nonce u64, armed_recv u32, armed_send u32,
# bell u32 (a doorbell is pending), nheld u32, then cells u32[NCELL], ledger (u32 idx, u32 gen)
P_STATE, P_PID, P_NONCE, P_ARMR, P_ARMS, P_BELL, P_NHELD = 0, 4, 8, 16, 20, 24, 28
P_ARMDR, P_ARMDS, P_BELLD = 32, 36, 40  # direct waiters (a thread polling the direct bell)
P_CELLS = 64
P_LEDGER = P_CELLS + 4 * NCELL
S_FREE, S_LIVE = 0, 1
CELL_FREE, CELL_PENDING, CELL_ACCEPTED, CELL_TAKEN, CELL_CLOSED = 0, 1, 2, 3, 4

# ring entry: kind u8, pad u8, cell u16 (0xFFFF none), slot u16, pad u16, len u32, idx u32,
# gen u32, nbytes u64, op u64 (for debugging), pad -> 48 bytes header, then inline data
_E = struct.Struct("<BBHHHIIIQQ8x")
E_INLINE, E_BLOCK, E_PAYLOAD = 1, 2, 3
NOCELL = 0xFFFF

_flock = fcntl.flock
_LOCK_EX, _LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_UN
_get_ident = threading.get_ident
_FL = struct.Struct("hhqqi4x")  # struct flock (x86-64 / aarch64 Linux)
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


class _Pthread:
    """glibc's robust process-shared mutexes through ctypes (the pure-Python path uses them
    too: every process attached to a region must take the same lock)."""

    def __init__(self) -> None:
        import ctypes

        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
        if not libc.startswith("glibc"):
            raise OSError("robust process-shared mutexes need glibc")
        self.abi = f"glibc-{os.uname().machine}".encode()[:31]
        lib = ctypes.CDLL(None)
        self.ctypes = ctypes
        vp, ci = ctypes.c_void_p, ctypes.c_int

        def fn(name: str, *args: Any) -> Any:
            f = getattr(lib, name)
            f.restype = ci
            f.argtypes = list(args)
            return f

        self.mutex_lock = fn("pthread_mutex_lock", vp)
        self.mutex_unlock = fn("pthread_mutex_unlock", vp)
        self.mutex_consistent = fn("pthread_mutex_consistent", vp)
        self.mutex_init = fn("pthread_mutex_init", vp, vp)
        self.mutexattr_init = fn("pthread_mutexattr_init", vp)
        self.mutexattr_setpshared = fn("pthread_mutexattr_setpshared", vp, ci)
        self.mutexattr_setrobust = fn("pthread_mutexattr_setrobust", vp, ci)
        self.mutexattr_destroy = fn("pthread_mutexattr_destroy", vp)

    def init(self, mx: Any) -> None:
        attr = self.ctypes.create_string_buffer(64)
        if (self.mutexattr_init(attr) or self.mutexattr_setpshared(attr, 1)
                or self.mutexattr_setrobust(attr, 1) or self.mutex_init(mx, attr)):
            raise OSError("pthread_mutex_init (robust, process-shared) failed")
        self.mutexattr_destroy(attr)


_pthread: _Pthread | None
try:
    _pthread = _Pthread()
except (OSError, AttributeError, ValueError):  # pragma: no cover - not glibc
    _pthread = None


_mutex_lock: Any = _pthread.mutex_lock if _pthread is not None else None
_mutex_unlock: Any = _pthread.mutex_unlock if _pthread is not None else None


def _lock_kind_for_new_region() -> int:
    want = os.environ.get("KCORO_IPC_LOCK", "")
    if want == "flock" or _pthread is None:
        return LOCK_FLOCK
    return LOCK_MUTEX


def _flock_arg(kind: int, start: int) -> bytes:
    return _FL.pack(kind, os.SEEK_SET, start, 1, 0)


def geometry(kind: str, cap: int, arena_bytes: int) -> tuple[int, int, int, int]:
    """(ring_n, ring_off, arena_off, total) for a new region."""
    extra = 256 if kind != "conflated" else 64  # room for pending offers and re-queues
    ring_n = cap + extra
    ring_off = HDR + MAXPROC * SLOT_BYTES
    mb = 4096
    acap = max(arena_bytes // mb * mb, mb)
    arena_off = (ring_off + ring_n * ENTRY + PAGE - 1) // PAGE * PAGE
    total = arena_off + _meta_size(acap // mb) + acap
    total = (total + PAGE - 1) // PAGE * PAGE
    return ring_n, ring_off, arena_off, total


class Entry:
    """A decoded ring entry (copied out of shared memory under the lock)."""

    __slots__ = ("cell", "data", "gen", "idx", "kind", "length", "nbytes", "slot")

    def __init__(self, kind: int, slot: int, cell: int, length: int, idx: int, gen: int,
                 nbytes: int, data: bytes) -> None:
        self.kind = kind
        self.slot = slot
        self.cell = cell
        self.length = length
        self.idx = idx
        self.gen = gen
        self.nbytes = nbytes
        self.data = data


class SharedArena(Arena):
    """The arena inside a region; frees go through the region (ledger, ACK, wake-ups)."""

    region: Region

    def _finalize_block(self, i: int, gen: int, pid: int) -> None:
        if os.getpid() != pid:
            return
        self.region.ack(i, gen)

    def alloc(self, nbytes: int) -> Any:
        """A payload in shared memory (WRITING, owned by this process until sent)."""
        r = self.region
        r.ensure_attached()
        fast = r.fast
        if fast is not None and type(nbytes) is int and nbytes >= 0:
            ig = fast.alloc(nbytes)  # C: one section; None: full (spill) or busy
            if ig is not None:
                p = Payload._block(self, ig[0], nbytes, ig[1])
                p._lock = r.plock
                return p
        p = super().alloc(nbytes)
        p._lock = r.plock  # its refcount is this process's business only
        return p

    # the allocator's two hot operations run in C when the fast path is there (same algorithm,
    # same metadata: processes with and without it share the arena)
    def _take(self, n: int, holder: int = NO_HOLDER, flags: int = 0) -> int:
        if holder == NO_HOLDER:
            holder = self.region.slot
        fast = self.region.fast
        if fast is not None:
            i = fast.take(n, holder, flags)
            if i is not None:
                return i  # type: ignore[no-any-return]
        return super()._take(n, holder, flags)

    def _give(self, i: int, gen: int) -> bool:
        fast = self.region.fast
        if fast is not None:
            ok = fast.give(i, gen)
            if ok is not None:
                return ok  # type: ignore[no-any-return]
        return super()._give(i, gen)


class Region:
    """One process's view of a channel's shared region."""

    def __init__(self, fd: int, *, create: dict[str, Any] | None = None) -> None:
        self.fd = fd
        self.pid = os.getpid()
        st = os.fstat(fd)
        self.map = mmap.mmap(fd, st.st_size)
        self.mv = memoryview(self.map)
        self.q = self.mv.cast("B")
        self._ofd = -1
        self.slot = -1
        self.nonce = 0
        self.lock = ArenaLock(self._xlock, self._xunlock)
        self.on_wake: Callable[[], None] = _noop  # set by the endpoint: wake local waiters
        self.fast: Any = None  # the endpoint's C fast path (kcoro.ipc._fastring), if any
        self.plock = threading.RLock()  # refcounts of this process's payloads of the arena
        self.late_wake: list[int] = []  # bells claimed by deferred work, rung after unlock
        self._u64 = struct.Struct("<Q")
        self._u32 = struct.Struct("<I")
        if create is not None:
            self._init(create)
        if self._get64(H_MAGIC) != MAGIC or self._get32(H_VERSION) != VERSION:
            raise ValueError("not a kcoro IPC region (bad magic or version)")
        self.lock_kind = self._get32(H_LOCK_KIND)
        self._mx: Any = None  # the mutex's address (LOCK_MUTEX), set at attach
        if self.lock_kind == LOCK_MUTEX:
            abi = bytes(self.q[H_LOCK_ABI:H_LOCK_ABI + 32]).rstrip(b"\0")
            if _pthread is None or abi != _pthread.abi:
                raise ValueError(f"kcoro IPC region locked by a {abi.decode()!r} mutex, which "
                                 f"this process cannot use")
        elif self.lock_kind != LOCK_FLOCK:
            raise ValueError(f"unknown lock kind {self.lock_kind} in kcoro IPC region")
        self.kind = KIND_NAME[self._get32(H_KIND)]
        self.cap = self._get64(H_CAP)
        self.drop = self._get32(H_DROP)
        self.ring_n = self._get64(H_RING_N)
        self.ring_off = HDR + MAXPROC * SLOT_BYTES
        self.uuid = bytes(self.q[H_UUID:H_UUID + 16])
        # typed views for the hot paths (C-level indexing, no struct calls)
        self.h64 = self.q[:HDR].cast("Q")
        self.h32 = self.q[:HDR].cast("I")
        self.p32 = self.q[HDR:HDR + MAXPROC * SLOT_BYTES].cast("I")
        self.c64 = self.q[H_CNT:H_CNT + 8 * len(COUNTERS)].cast("Q")
        self.name = bytes(self.q[H_NAME:H_NAME + 128]).rstrip(b"\0").decode()
        aoff, acap = self._get64(H_ARENA_OFF), self._get64(H_ARENA_CAP)
        mb = self._get64(H_ARENA_MB)
        self.arena = SharedArena(0, shared=True, name=f"ipc:{self.name}",
                                 _attach=(self.map, aoff, aoff + _meta_size(acap // mb), acap,
                                          mb, self.lock, create is not None))
        self.arena.region = self
        self.arena._fd = -1  # the region owns the fd

    # -- raw access --------------------------------------------------------------------------
    def _get64(self, off: int) -> int:
        return self._u64.unpack_from(self.map, off)[0]  # type: ignore[no-any-return]

    def _set64(self, off: int, v: int) -> None:
        self._u64.pack_into(self.map, off, v)

    def _get32(self, off: int) -> int:
        return self._u32.unpack_from(self.map, off)[0]  # type: ignore[no-any-return]

    def _set32(self, off: int, v: int) -> None:
        self._u32.pack_into(self.map, off, v)

    def count(self, name: str, n: int = 1) -> None:
        self.c64[CI[name]] += n

    def counter(self, name: str) -> int:
        return self.c64[CI[name]]  # type: ignore[no-any-return]

    # -- the fast lock (same state as ``self.lock``, without method-call layers) -------------
    def enter(self) -> None:
        lk = self.lock
        lk._lk.acquire()
        lk._depth += 1
        if lk._depth == 1:
            lk._owner = _get_ident()
            try:
                self._xlock()
            except BaseException:
                lk._depth -= 1
                lk._lk.release()
                raise

    def leave(self) -> None:
        lk = self.lock
        try:
            while lk._depth == 1 and lk.deferred:
                lk.deferred.pop()()
        finally:
            lk._depth -= 1
            if lk._depth == 0:
                lk._owner = 0
                self._xunlock()
            lk._lk.release()

    def _init(self, c: dict[str, Any]) -> None:
        ring_n, _ring_off, aoff, total = geometry(c["kind"], c["cap"], c["arena_bytes"])
        acap = max(c["arena_bytes"] // 4096 * 4096, 4096)
        self._set64(H_MAGIC, MAGIC)
        self._set32(H_VERSION, VERSION)
        self._set32(H_KIND, KIND_CODE[c["kind"]])
        self._set64(H_CAP, c["cap"])
        self._set32(H_DROP, c["drop"])
        self._set64(H_RING_N, ring_n)
        self._set32(H_POLICY, c["policy"])
        self._set64(H_HEAD, 1 << 40)  # positions are monotonic; re-queues move the head back
        self._set64(H_TAIL, 1 << 40)
        self.q[H_UUID:H_UUID + 16] = uuid.uuid4().bytes
        self._set64(H_ARENA_OFF, aoff)
        self._set64(H_ARENA_CAP, acap)
        self._set64(H_ARENA_MB, 4096)
        self._set64(H_TOTAL, total)
        name = c["name"].encode()[:127]
        self.q[H_NAME:H_NAME + len(name)] = name
        kind = _lock_kind_for_new_region()
        if kind == LOCK_MUTEX:
            assert _pthread is not None
            _pthread.init(self._addr(H_MUTEX))
            self.q[H_LOCK_ABI:H_LOCK_ABI + len(_pthread.abi)] = _pthread.abi
        self._set32(H_LOCK_KIND, kind)

    def arena_layout(self) -> tuple[int, ...]:
        """Where the arena's metadata arrays lie in the mapping (for the C allocator)."""
        import ctypes

        def addr(mv: memoryview) -> int:
            return ctypes.addressof(ctypes.c_char.from_buffer(mv))

        base = addr(self.q)
        m, a = self.arena._m, self.arena
        return (*(addr(x) - base for x in (m.state, m.order, m.flags, m.holder, m.gen, m.nxt,
                                            m.prv, m.heads, m.cnt)),
                a._nblk, a._maxorder, a._shift)

    def _addr(self, off: int) -> Any:
        """A ctypes pointer to byte ``off`` of the mapping (pins the mapping)."""
        assert _pthread is not None
        ct = _pthread.ctypes
        return ct.c_void_p(ct.addressof(ct.c_char.from_buffer(self.map, off)))

    # -- the channel lock ----------------------------------------------------------------------
    def _xlock(self) -> None:
        fast = self.fast
        d = fast.xlock() if fast is not None else None  # the same steps in one C call
        if d is None:
            mx = self._mx
            if mx is not None:
                rc = _mutex_lock(mx)
                if rc:
                    self._mutex_trouble(rc)
            else:
                _flock(self._ofd, _LOCK_EX)
            h32 = self.h32
            d = h32[18]  # H_DIRTY
            h32[18] = self.slot + 1
        if d:
            self._repair(d - 1)

    def _xunlock(self) -> None:
        fast = self.fast
        if fast is None or fast.xunlock() is None:
            self.h64[17] += 1  # H_SEQ: every section is a change spinners can see
            self.h32[18] = 0
            mx = self._mx
            if mx is not None:
                _mutex_unlock(mx)
            else:
                _flock(self._ofd, _LOCK_UN)
        if self.late_wake:  # bells claimed by deferred frees / dropped entries
            late, self.late_wake = self.late_wake, []
            self.ring(late)

    def _mutex_trouble(self, rc: int) -> None:
        """``pthread_mutex_lock`` did not simply succeed.  EOWNERDEAD: its owner died; we own
        it now -- mark it consistent (our dirty marker says whether state needs repair)."""
        assert _pthread is not None
        if rc == errno.EOWNERDEAD:
            _pthread.mutex_consistent(self._mx)
            return
        raise OSError(rc, f"IPC channel {self.name!r}: channel lock: {os.strerror(rc)}")

    def _raw_lock(self) -> None:
        """The cross-process lock alone (slot claim, before this process has a slot)."""
        if self._mx is not None:
            rc = _mutex_lock(self._mx)
            if rc:
                self._mutex_trouble(rc)
        else:
            fcntl.flock(self._ofd, fcntl.LOCK_EX)

    def _raw_unlock(self) -> None:
        if self._mx is not None:
            _mutex_unlock(self._mx)
        else:
            fcntl.flock(self._ofd, fcntl.LOCK_UN)

    def heal(self) -> None:
        """A section of ours found the dirty marker (the C fast path lets go of the lock and
        calls this): take the lock the Python way, which repairs and clears it."""
        with self.lock:
            pass

    def _repair(self, slot: int) -> None:
        """The previous holder died inside a section.  Sections only publish by their last
        store, but the arena's free lists may be mid-update: if they are inconsistent, the
        channel is marked broken (every operation then raises ChannelClosed)."""
        try:
            self.arena.check_invariants()
        except AssertionError:
            self._set32(H_FLAGS, self._get32(H_FLAGS) | F_BROKEN | F_CLOSED)

    # -- attach / detach -------------------------------------------------------------------------
    def ensure_attached(self) -> None:
        if self.pid != os.getpid() or self.slot < 0:
            self.attach()

    def attach(self) -> None:
        """Claim a process slot (after fork too: the child gets its own)."""
        self.pid = os.getpid()
        self.plock = threading.RLock()
        self.fast = None  # (a forked child's copy is its parent's: the endpoint makes a new one)
        self._ofd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        self.slot = -1
        self.lock = ArenaLock(self._xlock, self._xunlock)
        self.arena.lock = self.lock
        if self.lock_kind == LOCK_MUTEX and self._mx is None:
            self._mx = self._addr(H_MUTEX)
        self._raw_lock()
        try:
            for s in range(MAXPROC):
                base = self._pbase(s)
                if self._get32(base + P_STATE) == S_FREE:  # dead, unreaped slots are skipped
                    try:
                        fcntl.fcntl(self._ofd, F_OFD_SETLK, _flock_arg(fcntl.F_WRLCK,
                                                                         LIVE_BASE + s))
                    except OSError:
                        continue
                    self.q[base:base + SLOT_BYTES] = bytes(SLOT_BYTES)
                    self.nonce = int.from_bytes(os.urandom(8), "little") | 1
                    self._set32(base + P_PID, self.pid)
                    self._set64(base + P_NONCE, self.nonce)
                    self._set32(base + P_STATE, S_LIVE)
                    self._set64(H_EPOCH, self._get64(H_EPOCH) + 1)
                    self.slot = s
                    break
        finally:
            self._raw_unlock()
        if self.slot < 0:
            os.close(self._ofd)
            self._ofd = -1
            raise RuntimeError(f"IPC channel {self.name!r}: all {MAXPROC} process slots in use")

    def detach(self) -> None:
        """Orderly exit: held blocks stay with their views' finalizers (no-ops after this)."""
        if self.slot < 0 or self.pid != os.getpid():
            return
        with self.lock:
            base = self._pbase(self.slot)
            self._requeue_or_free_held(self.slot, requeue=False)
            self._free_writing(self.slot)
            self._drop_offers(self.slot)
            self._disarm_slot(self.slot)
            self._set32(base + P_STATE, S_FREE)
            self._set64(H_EPOCH, self._get64(H_EPOCH) + 1)
            wake = self._armed_slots(True, True)
        fcntl.fcntl(self._ofd, F_OFD_SETLK, _flock_arg(fcntl.F_UNLCK, LIVE_BASE + self.slot))
        self.slot = -1
        os.close(self._ofd)
        self._ofd = -1
        self.ring(wake)

    def _pbase(self, s: int) -> int:
        return HDR + s * SLOT_BYTES

    def _alive(self, s: int) -> bool:
        """Is slot ``s``'s liveness byte locked (by its live owner)?"""
        if s == self.slot and self.pid == os.getpid():
            return True
        r = fcntl.fcntl(self._ofd, F_OFD_GETLK, _flock_arg(fcntl.F_WRLCK, LIVE_BASE + s))
        return bool(_FL.unpack(r)[0] != fcntl.F_UNLCK)

    def live_peers(self) -> list[tuple[int, int, int]]:
        """(slot, pid, nonce) of the other LIVE slots (read without the lock: a hint)."""
        out = []
        for s in range(MAXPROC):
            if s == self.slot:
                continue
            b = self._pbase(s)
            if self._get32(b + P_STATE) == S_LIVE:
                out.append((s, self._get32(b + P_PID), self._get64(b + P_NONCE)))
        return out

    def bell_name(self, s: int, nonce: int | None = None) -> bytes:
        if nonce is None:
            nonce = self._get64(self._pbase(s) + P_NONCE)
        return b"\0kcoro-" + self.uuid.hex().encode() + b"-%d-%x" % (s, nonce)

    # -- doorbells ------------------------------------------------------------------------------
    def _armed_slots(self, recv: bool, send: bool) -> list[int]:
        """Bells to ring (lock held) for LIVE slots with armed waiters of that side whose bell
        is not pending.  ``s`` is the slot's I/O-thread bell, ``s | DIRECT`` its direct bell
        (a thread waiting on it in ``poll``)."""
        out: list[int] = []
        p32 = self.p32
        for s in range(MAXPROC):
            b = s * 256
            if p32[b] != S_LIVE:
                continue
            if ((recv and p32[b + 4]) or (send and p32[b + 5])) and not p32[b + 6]:
                p32[b + 6] = 1
                out.append(s)
            if ((recv and p32[b + 8]) or (send and p32[b + 9])) and not p32[b + 10]:
                p32[b + 10] = 1
                out.append(s | DIRECT)
        return out

    def _want_ring(self, s: int, out: list[int]) -> None:
        """Ring slot ``s`` if it has parked (armed) waiters and no doorbell is pending.  A
        process that is only spinning is not armed: it sees the change through ``H_SEQ``."""
        p32, b = self.p32, s * 256
        if (p32[b + 4] or p32[b + 5]) and not p32[b + 6]:  # P_ARMR, P_ARMS, P_BELL
            p32[b + 6] = 1
            out.append(s)
        if (p32[b + 8] or p32[b + 9]) and not p32[b + 10]:  # P_ARMDR, P_ARMDS, P_BELLD
            p32[b + 10] = 1
            out.append(s | DIRECT)

    def ring(self, slots: list[int]) -> None:
        """Write the doorbells (outside the lock).  Our own slot: wake local waiters."""
        from ._io import ring_bell

        for s in slots:
            if s == self.slot:
                self.p32[s * 256 + 6] = 0
                self.on_wake()
                continue
            if s & DIRECT:
                ring_bell(self.bell_name(s & ~DIRECT) + b"-d")
            else:
                ring_bell(self.bell_name(s))

    def clear_bell(self) -> None:
        self._set32(self._pbase(self.slot) + P_BELL, 0)

    def arm(self, recv: int, send: int, direct: bool = False) -> None:
        """Adjust this slot's armed counts (lock held); ``direct``: the waiter polls the
        slot's direct bell itself instead of waiting for the I/O thread."""
        b = self.slot * 256 + (8 if direct else 4)
        p32, h32 = self.p32, self.h32
        if recv:
            p32[b] += recv
            h32[32] += recv  # H_ARMR_TOTAL
        if send:
            p32[b + 1] += send
            h32[33] += send  # H_ARMS_TOTAL

    def clear_direct_bell(self) -> None:
        self.p32[self.slot * 256 + 10] = 0

    def armed_recv_total(self) -> int:
        return self.h32[32]  # type: ignore[no-any-return]

    def armed_send_total(self) -> int:
        return self.h32[33]  # type: ignore[no-any-return]

    def _disarm_slot(self, s: int) -> None:
        p32, h32, b = self.p32, self.h32, s * 256
        h32[32] -= p32[b + 4] + p32[b + 8]
        h32[33] -= p32[b + 5] + p32[b + 9]
        p32[b + 4] = p32[b + 5] = p32[b + 8] = p32[b + 9] = 0

    # -- pins: a sent payload whose sender still has views ---------------------------------
    def pin_flag(self, idx: int) -> None:
        """Mark a block being moved out of this process as pinned by us (lock held)."""
        self.arena._m.flags[idx] = F_PIN | ((self.slot + 1) << 2)

    def unpin(self, idx: int, gen: int) -> None:
        """The sender's last view of a moved payload is gone (or it had none)."""
        if self.pid != os.getpid() or self.slot < 0:
            return
        lk = self.lock
        if lk.held_here():
            lk.deferred.append(lambda: self._unpin_locked(idx, gen, self.late_wake))
            return
        fast = self.fast
        if fast is not None and fast.unpin(idx, gen) is None:
            return
        wake: list[int] = []
        with lk:
            self._unpin_locked(idx, gen, wake)
        self.ring(wake)

    def _unpin_locked(self, idx: int, gen: int, wake: list[int]) -> None:
        m = self.arena._m
        if m.state[idx] == ALLOC and m.gen[idx] == gen and m.flags[idx] & F_PIN:
            acked = m.flags[idx] & F_ACKED
            m.flags[idx] = 0
            if acked and self.arena._give(idx, gen) and self.h32[33]:
                wake.extend(self._armed_slots(False, True))  # a sender may wait for room

    def unpin_flag(self, idx: int) -> None:
        """A withdrawn send: the block is plainly ours again (lock held)."""
        self.arena._m.flags[idx] = 0

    # -- ring entries (lock held) -------------------------------------------------------------
    @property
    def head(self) -> int:
        return self.h64[5]  # type: ignore[no-any-return]

    @property
    def tail(self) -> int:
        return self.h64[6]  # type: ignore[no-any-return]

    @property
    def flags(self) -> int:
        return self.h32[14]  # type: ignore[no-any-return]

    def _eoff(self, pos: int) -> int:
        return self.ring_off + (pos % self.ring_n) * ENTRY

    def write_entry(self, pos: int, kind: int, cell: int, length: int, idx: int, gen: int,
                    nbytes: int, data: bytes | memoryview = b"", slot: int = -1) -> None:
        o = self._eoff(pos)
        _E.pack_into(self.map, o, kind, 0, cell, self.slot if slot < 0 else slot, 0, length,
                     idx, gen, nbytes, 0)
        if kind == E_INLINE and length:
            self.q[o + 48:o + 48 + length] = data

    def read_entry(self, pos: int) -> Entry:
        o = self._eoff(pos)
        kind, _, cell, slot, _, length, idx, gen, nbytes, _ = _E.unpack_from(self.map, o)
        data = bytes(self.q[o + 48:o + 48 + min(length, INLINE_MAX)]) if kind == E_INLINE \
            else b""
        return Entry(kind, slot, cell, length, idx, gen, nbytes, data)

    def _entry_cell(self, pos: int) -> tuple[int, int]:
        o = self._eoff(pos)
        cell, slot = struct.unpack_from("<HH", self.map, o + 2)
        return slot, cell

    def _move(self, src: int, dst: int) -> None:
        a, b = self._eoff(src), self._eoff(dst)
        self.q[b:b + ENTRY] = self.q[a:a + ENTRY]

    def remove_at(self, pos: int) -> None:
        """Remove the entry at ``pos`` (compaction; keeps the order of the others)."""
        head, tail = self.head, self.tail
        if pos == head:
            self._set64(H_HEAD, head + 1)
            return
        for p in range(pos, tail - 1):
            self._move(p + 1, p)
        self._set64(H_TAIL, tail - 1)

    def cell_get(self, s: int, c: int) -> int:
        return self.p32[s * 256 + 16 + c]  # type: ignore[no-any-return]

    def cell_set(self, s: int, c: int, v: int) -> None:
        self.p32[s * 256 + 16 + c] = v

    def cell_alloc(self) -> int:
        b = self._pbase(self.slot) + P_CELLS
        for c in range(NCELL):
            if self._get32(b + 4 * c) == CELL_FREE:
                self._set32(b + 4 * c, CELL_PENDING)
                return c
        return -1

    def find_cell(self, s: int, c: int) -> int:
        """Position of the pending offer with cell (s, c), or -1."""
        for p in range(self.tail - 1, self.head - 1, -1):
            if self._entry_cell(p) == (s, c):
                return p
        return -1

    def settle_window(self, wake: list[int]) -> None:
        """After the head moved: the offer that entered the buffer is ACCEPTED (lock held)."""
        if self.cap <= 0:
            return
        p = self.head + self.cap - 1
        if p < self.tail:
            s, c = self._entry_cell(p)
            if c != NOCELL and self.cell_get(s, c) == CELL_PENDING:
                self.cell_set(s, c, CELL_ACCEPTED)
                self._want_ring(s, wake)

    # -- ledger of held blocks ------------------------------------------------------------------
    def ledger_add(self, idx: int, gen: int, kind: int) -> None:
        b = self._pbase(self.slot)
        n = self._get32(b + P_NHELD)
        if n < NLEDGER:
            o = b + P_LEDGER + 12 * n
            struct.pack_into("<III", self.map, o, idx, gen, kind)
            self._set32(b + P_NHELD, n + 1)

    def _ledger_remove(self, s: int, idx: int, gen: int) -> None:
        b = self._pbase(s)
        n = self._get32(b + P_NHELD)
        for k in range(n):
            o = b + P_LEDGER + 12 * k
            i, g, _ = struct.unpack_from("<III", self.map, o)
            if i == idx and g == gen:
                last = b + P_LEDGER + 12 * (n - 1)
                self.q[o:o + 12] = self.q[last:last + 12]
                self._set32(b + P_NHELD, n - 1)
                return

    def ack(self, idx: int, gen: int) -> None:
        """The last view of a block is gone: free it (generation-checked) and wake waiters."""
        lk = self.lock
        if lk.held_here():  # a finalizer ran inside one of our sections: free it at the end
            lk.deferred.append(lambda: self._ack_locked(idx, gen, self.late_wake))
            return
        if self.slot < 0 or self.pid != os.getpid():
            return  # detached: the block was left to the ledger rules
        fast = self.fast
        if fast is not None and fast.ack(idx, gen) is None:
            return
        wake: list[int] = []
        with lk:
            self._ack_locked(idx, gen, wake)
        self.ring(wake)

    def _ack_locked(self, idx: int, gen: int, wake: list[int]) -> None:
        m = self.arena._m
        if 0 <= idx < self.arena._nblk and m.state[idx] == ALLOC and m.gen[idx] == gen:
            h = m.holder[idx]
            if h < MAXPROC:
                self._ledger_remove(h, idx, gen)
            if m.flags[idx] & F_PIN:  # the sender still has views: free at its unpin
                m.flags[idx] |= F_ACKED
                m.holder[idx] = NO_HOLDER
                return
        if self.arena._give(idx, gen) and self.h32[33]:  # H_ARMS_TOTAL: senders may wait
            wake.extend(self._armed_slots(False, True))

    # -- crash reclamation ----------------------------------------------------------------------
    def _free_writing(self, s: int) -> None:
        m = self.arena._m
        for i in range(self.arena._nblk):
            if m.state[i] != ALLOC:
                continue
            f = m.flags[i]
            if f & F_PIN and f >> 2 == s + 1:  # pinned by the dead sender's views
                m.flags[i] = 0
                if f & F_ACKED:
                    self.arena._give(i, m.gen[i])
                    continue
            if m.holder[i] == s:
                self.arena._give(i, m.gen[i])

    def _drop_offers(self, s: int) -> None:
        p = self.head + max(self.cap, 0)
        while p < self.tail:
            o = self._eoff(p)
            kind, _, cell, slot, _, _, idx, gen, _, _ = _E.unpack_from(self.map, o)
            if slot == s and cell != NOCELL:
                if kind != E_INLINE:
                    self.arena._give(idx, gen)
                self.cell_set(s, cell, CELL_FREE)
                self.remove_at(p)
                continue
            p += 1
        b = self._pbase(s) + P_CELLS
        for c in range(NCELL):
            self._set32(b + 4 * c, CELL_FREE)

    def _requeue_or_free_held(self, s: int, requeue: bool) -> int:
        b = self._pbase(s)
        n = self._get32(b + P_NHELD)
        m = self.arena._m
        back = 0
        for k in range(n):
            idx, gen, kind = struct.unpack_from("<III", self.map, b + P_LEDGER + 12 * k)
            if not (m.state[idx] == ALLOC and m.gen[idx] == gen and m.holder[idx] == s):
                continue
            head, tail = self.head, self.tail
            if requeue and tail - head < self.ring_n and not self.flags & F_CANCELLED:
                self._set64(H_HEAD, head - 1)
                self.write_entry(head - 1, kind, NOCELL, 0, idx, gen,
                                 self._block_len(idx), slot=s)
                m.holder[idx] = QUEUED
                back += 1
            elif requeue:
                self.arena._give(idx, gen)
            else:
                m.holder[idx] = NO_HOLDER  # detached: our finalizers no longer run; free it
                self.arena._give(idx, gen)
        self._set32(b + P_NHELD, 0)
        return back

    def _block_len(self, idx: int) -> int:
        return self.arena.min_block << self.arena._m.order[idx]

    def reap(self, s: int, pid: int) -> tuple[bool, list[int]]:
        """Slot ``s`` (process ``pid``) may be dead: reclaim it once.  Returns (reaped, wake)."""
        if self.slot < 0 or self.pid != os.getpid():
            return False, []
        try:
            return self._reap(s, pid)
        except (ValueError, OSError):  # detached concurrently (our fd is gone)
            return False, []

    def _reap(self, s: int, pid: int) -> tuple[bool, list[int]]:
        with self.lock:
            b = self._pbase(s)
            if (self._get32(b + P_STATE) != S_LIVE or self._get32(b + P_PID) != pid
                    or self._alive(s)):
                return False, []
            back = self._requeue_or_free_held(s, requeue=True)
            self._drop_offers(s)
            self._free_writing(s)
            # a re-queued entry fills the buffer first: keep accepted entries in the window
            self.count("requeued", back)
            self.count("dead_peers")
            self._disarm_slot(s)
            self._set32(b + P_STATE, S_FREE)
            self._set64(H_EPOCH, self._get64(H_EPOCH) + 1)
            # The dead process may have claimed bells (set a slot's pending flag under the
            # lock) and died before ringing them (after the unlock): such a flag would stay
            # set and nobody would ring that waiter again.  Forget every pending flag, so that
            # everyone armed is rung now; a spare datagram only causes a spurious wake-up.
            p32 = self.p32
            for k in range(MAXPROC):
                p32[k * 256 + 6] = p32[k * 256 + 10] = 0  # P_BELL, P_BELLD
            wake: list[int] = []
            if self._get32(H_POLICY) == POLICY_CLOSE and not self.flags & F_CLOSED:
                wake = self._close_locked(pid)  # it already claimed some bells: keep them
            wake.extend(self._armed_slots(True, True))
        return True, wake

    def _close_locked(self, dead_pid: int = 0) -> list[int]:
        """Close (lock held): no more sends; pending offers fail (their senders keep items)."""
        wake: list[int] = []
        self._set32(H_FLAGS, self.flags | F_CLOSED)
        if dead_pid:
            self._set32(H_DEADPID, dead_pid)
        keep = self.head + max(self.cap, 0)
        p = self.tail - 1
        while p >= keep:
            s, c = self._entry_cell(p)
            if c != NOCELL:
                self.cell_set(s, c, CELL_CLOSED)
                self._want_ring(s, wake)
                p -= 1
                continue
            break
        # entries without a cell beyond the buffer (pre-accepted offers, re-queues) stay
        tail = self.tail
        q = keep
        while q < tail:  # compact out the CLOSED offers
            s, c = self._entry_cell(q)
            if c != NOCELL and self.cell_get(s, c) == CELL_CLOSED:
                self.remove_at(q)
                tail -= 1
                continue
            q += 1
        wake.extend(self._armed_slots(True, True))
        return wake

    def dead_pid(self) -> int:
        return self._get32(H_DEADPID)

    # -- introspection ----------------------------------------------------------------------------
    def check_invariants(self) -> None:
        with self.lock:
            head, tail = self.head, self.tail
            assert 0 <= tail - head <= self.ring_n, f"ring count {tail - head}"
            refs = set()
            for p in range(head, tail):
                s, c = self._entry_cell(p)
                if c != NOCELL:
                    st = self.cell_get(s, c)
                    if st == CELL_PENDING:
                        assert p >= head + self.cap, f"PENDING offer inside the buffer at {p}"
                    refs.add((s, c))
            for s in range(MAXPROC):
                for c in range(NCELL):
                    if self.cell_get(s, c) == CELL_PENDING:
                        assert (s, c) in refs, f"PENDING cell {(s, c)} without an offer"
                if self._get32(self._pbase(s) + P_STATE) == S_LIVE and s != self.slot:
                    pass  # a peer may be dead and not reaped yet
        self.arena.check_invariants()

    def close_fds(self) -> None:
        """After detach: the memfd goes (the mapping stays while views of it exist)."""
        if self.pid != os.getpid():
            return
        if self._ofd >= 0:
            os.close(self._ofd)
            self._ofd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _noop() -> None:
    pass


def new_region(name: str, kind: str, cap: int, drop: int, arena_bytes: int,
               policy: int) -> Region:
    _ring_n, _, _, total = geometry(kind, cap, arena_bytes)
    fd = os.memfd_create(f"kcoro-ipc-{name}"[:200], os.MFD_CLOEXEC)
    os.ftruncate(fd, total)
    return Region(fd, create={"kind": kind, "cap": cap, "drop": drop,
                              "arena_bytes": arena_bytes, "name": name, "policy": policy})


_ = (errno, threading, time)
