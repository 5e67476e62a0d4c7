"""Zero-copy payloads: an :class:`Arena` (block allocator over one mapping) and :class:`Payload`
(a refcounted descriptor of one block).

The arena is a buddy allocator over one mapping (anonymous, or a memfd when ``shared=True`` so
that other processes can map it).  Size classes are powers of two from ``min_block`` up; each
class has a free list.  All allocator metadata lives in one flat buffer (``meta``) so that the
same code runs over process-private memory and over shared memory (``kcoro.ipc`` places the meta
of a channel's arena in the channel's memfd).

Block states, per block head (index ``i`` = offset // min_block)::

    FREE ──alloc──▶ ALLOC ──last release *and* last exported view gone──▶ FREE (gen += 1)

Invariants (``Arena.check_invariants``)::

    every min-block belongs to exactly one block head (FREE or ALLOC), blocks tile the mapping
    a FREE block is in the free list of its order, and only there; ALLOC blocks are in none
    no two FREE buddies of the same order coexist (they would have been merged)
    in_use == sum of ALLOC block sizes + live spill bytes ; blocks == ALLOC blocks + live spills
    frees <= allocs ; peak >= in_use

A block is never reused while a memoryview of it is exported: a payload hands out views of a
per-block *exporter* (a ctypes array over the block); the block returns to the free list from a
``weakref.finalize`` on that exporter, which fires only once the payload is released *and* every
view (numpy arrays, slices, ...) derived from it is gone (research: zerocopy-distributed §2.3;
compare numpy#23305, vllm#24655).  A generation counter per block rejects stale descriptors and
duplicate releases (an IPC ACK for an older generation is counted and ignored).

Lock discipline: allocator metadata is guarded by the arena's lock (a process-local RLock, plus
a cross-process lock when the arena is shared through ``kcoro.ipc``).  A block free triggered by
garbage collection while this thread already holds the lock is deferred to the outermost unlock,
so a finalizer never runs inside an allocator section.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _registry
from ._accel import speedups as _speedups
from ._errors import KcoroError

__all__ = ["Arena", "ArenaLock", "ArenaStats", "Payload", "PayloadReleased"]

FREE, ALLOC = 1, 2
NO_HOLDER = 0xFFFF
MAX_ORDERS = 48
# counters in the meta header (u64 each)
C_IN_USE, C_PEAK, C_BLOCKS, C_ALLOCS, C_FREES, C_SPILLS, C_FALLBACKS, C_STALE, C_CAP, \
    C_MIN, C_NBLK = range(11)
_NCOUNT = 16
_ALIGN = 64


class PayloadReleased(KcoroError):
    """A released payload (or a stale descriptor of a reused block) was used."""


@dataclass(frozen=True, slots=True)
class ArenaStats:
    """A snapshot of an arena.  Bytes for ``capacity``/``in_use``/``peak``; counts otherwise.

    ``spills``: requests served outside the mapping (too large, or no block free);
    ``fallbacks``: the part of those where enough bytes were free but no contiguous block was
    (fragmentation); ``stale``: releases/ACKs rejected by generation.
    """

    capacity: int
    in_use: int
    peak: int
    blocks: int
    allocs: int
    frees: int
    spills: int
    fallbacks: int
    stale: int


class ArenaLock:
    """A re-entrant lock for an arena, with deferred work run at the outermost release.

    ``xlock``/``xunlock`` (optional) take a cross-process lock around the outermost section.
    """

    __slots__ = ("_depth", "_lk", "_owner", "deferred", "xlock", "xunlock")

    def __init__(self, xlock: Callable[[], None] | None = None,
                 xunlock: Callable[[], None] | None = None) -> None:
        self._lk = threading.RLock()
        self._depth = 0
        self._owner = 0
        self.deferred: list[Callable[[], None]] = []
        self.xlock = xlock
        self.xunlock = xunlock

    def held_here(self) -> bool:
        return self._depth > 0 and self._owner == threading.get_ident()

    def __enter__(self) -> ArenaLock:
        self._lk.acquire()
        self._depth += 1
        if self._depth == 1:
            self._owner = threading.get_ident()
            if self.xlock is not None:
                try:
                    self.xlock()
                except BaseException:
                    self._depth -= 1
                    self._lk.release()
                    raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self._depth == 1 and self.deferred:
                fn = self.deferred.pop()
                fn()
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._owner = 0
                if self.xunlock is not None:
                    self.xunlock()
            self._lk.release()


@functools.lru_cache(maxsize=512)
def _ctype(n: int) -> Any:
    return ctypes.c_char * n


def _meta_size(nblk: int) -> int:
    # counters u64[16] + heads u32[MAX_ORDERS] + order u8 + state u8 + flags u8 + pad u8
    # + holder u16 + gen u32 + nxt u32 + prv u32 per min-block
    n = _NCOUNT * 8 + MAX_ORDERS * 4 + nblk * (4 + 2 + 4 + 4 + 4)
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Meta:
    """Typed views of the flat metadata buffer."""

    __slots__ = ("cnt", "flags", "gen", "heads", "holder", "nxt", "order", "prv", "state")

    def __init__(self, buf: memoryview, nblk: int) -> None:
        o = 0
        self.cnt = buf[o:o + _NCOUNT * 8].cast("Q")
        o += _NCOUNT * 8
        self.heads = buf[o:o + MAX_ORDERS * 4].cast("I")
        o += MAX_ORDERS * 4
        self.gen = buf[o:o + nblk * 4].cast("I")
        o += nblk * 4
        self.nxt = buf[o:o + nblk * 4].cast("I")
        o += nblk * 4
        self.prv = buf[o:o + nblk * 4].cast("I")
        o += nblk * 4
        self.holder = buf[o:o + nblk * 2].cast("H")
        o += nblk * 2
        self.order = buf[o:o + nblk]
        o += nblk
        self.state = buf[o:o + nblk]
        o += nblk
        self.flags = buf[o:o + nblk]

    def release(self) -> None:
        for name in self.__slots__:
            getattr(self, name).release()


class Arena:
    """A block allocator over one mapping; see the module docstring.

    ``Arena(nbytes, shared=False)``: ``nbytes`` of capacity (rounded down to ``min_block``);
    ``shared=True`` backs it with a memfd (no name in ``/dev/shm``: the kernel frees it with the
    last mapping).  ``alloc(n)`` returns a writable :class:`Payload` of exactly ``n`` bytes.
    """

    def __init__(self, nbytes: int, *, shared: bool = False, min_block: int | None = None,
                 name: str = "arena", _attach: tuple[Any, ...] | None = None) -> None:
        self.name = name
        self.shared = shared
        self._pid = os.getpid()
        self.lock = ArenaLock()
        self._fd = -1
        if _attach is not None:
            # (buffer, meta_off, data_off, capacity, min_block, lock, init): inside a region
            buf, meta_off, data_off, cap, mb, lock, init = _attach
            self._map = buf
            self.lock = lock
            self._setup(memoryview(buf), meta_off, data_off, cap, mb, init)
        else:
            if not isinstance(nbytes, int) or nbytes <= 0:
                raise ValueError(f"Arena size must be a positive int, got {nbytes!r}")
            mb = min_block or (4096 if nbytes >= (64 << 20) else 256)
            if mb < 64 or mb & (mb - 1):
                raise ValueError(f"min_block must be a power of two >= 64, got {mb}")
            cap = nbytes // mb * mb
            if cap == 0:
                raise ValueError(f"Arena of {nbytes} bytes is smaller than one block ({mb})")
            msize = _meta_size(cap // mb)
            total = msize + cap
            if shared:
                self._fd = os.memfd_create(f"kcoro-{name}", os.MFD_CLOEXEC)
                os.ftruncate(self._fd, total)
                self._map = mmap.mmap(self._fd, total)
            else:
                self._map = mmap.mmap(-1, total)
            self._setup(memoryview(self._map), 0, msize, cap, mb, True)
        _registry.arenas.add(self)

    def _setup(self, mv: memoryview, meta_off: int, data_off: int, cap: int, mb: int,
               init: bool) -> None:
        self.capacity = cap
        self.min_block = mb
        self._shift = mb.bit_length() - 1
        self._nblk = cap // mb
        self._data_off = data_off
        meta = mv[meta_off:meta_off + _meta_size(self._nblk)]
        self._m = _Meta(meta, self._nblk)
        self._maxorder = min(self._nblk.bit_length() - 1, MAX_ORDERS - 1)
        # The C twin of _take/_give (same metadata, same algorithm), when the accelerator is
        # built: a Python buddy split/merge costs ~1.5 µs per level, ~25 µs per alloc+release of
        # a small block in a large arena.
        self._buddy: Any = None
        if _speedups is not None and hasattr(_speedups, "Buddy"):
            self._buddy = _speedups.Buddy(meta, self._nblk, self._maxorder, self._shift)
        if init:
            m = self._m
            m.cnt[C_CAP] = cap
            m.cnt[C_MIN] = mb
            m.cnt[C_NBLK] = self._nblk
            i = 0
            while i < self._nblk:  # tile with the largest aligned power-of-two blocks
                o = self._maxorder
                while (i & ((1 << o) - 1)) or i + (1 << o) > self._nblk:
                    o -= 1
                m.order[i] = o
                m.holder[i] = NO_HOLDER
                self._push(i, o)
                i += 1 << o
        elif self._m.cnt[C_CAP] != cap or self._m.cnt[C_MIN] != mb:
            raise ValueError("attached arena metadata does not match its geometry")

    # -- free lists (lock held) ------------------------------------------------------------
    def _push(self, i: int, o: int) -> None:
        m = self._m
        h = m.heads[o]
        m.state[i] = FREE
        m.order[i] = o
        m.prv[i] = 0
        m.nxt[i] = h
        if h:
            m.prv[h - 1] = i + 1
        m.heads[o] = i + 1

    def _unlink(self, i: int, o: int) -> None:
        m = self._m
        p, n = m.prv[i], m.nxt[i]
        if p:
            m.nxt[p - 1] = n
        else:
            m.heads[o] = n
        if n:
            m.prv[n - 1] = p

    def _order_for(self, n: int) -> int:
        blocks = (n + self.min_block - 1) >> self._shift
        return 0 if blocks <= 1 else (blocks - 1).bit_length()

    def _take(self, n: int, holder: int = NO_HOLDER, flags: int = 0) -> int:
        """Allocate a block for ``n`` bytes; return its head index or -1 (lock held)."""
        b = self._buddy
        if b is not None:
            return b.take(n, holder, flags)  # type: ignore[no-any-return]
        if not (0 <= holder <= 0xFFFF and 0 <= flags <= 0xFF):
            raise ValueError(f"Arena._take: holder {holder} or flags {flags} out of range")
        o = self._order_for(n)
        if o > self._maxorder:
            return -1
        m = self._m
        k = o
        while k <= self._maxorder and not m.heads[k]:
            k += 1
        if k > self._maxorder:
            return -1
        i = m.heads[k] - 1
        self._unlink(i, k)
        while k > o:  # split, keeping the lower half
            k -= 1
            self._push(i + (1 << k), k)
        m.order[i] = o
        m.state[i] = ALLOC
        m.holder[i] = holder
        m.flags[i] = flags
        c = m.cnt
        c[C_IN_USE] += self.min_block << o
        if c[C_IN_USE] > c[C_PEAK]:
            c[C_PEAK] = c[C_IN_USE]
        c[C_BLOCKS] += 1
        c[C_ALLOCS] += 1
        return i

    def _give(self, i: int, gen: int) -> bool:
        """Return block ``i`` of generation ``gen`` to the free lists (lock held).  False (and
        counted as stale) if it is not an allocated block of that generation."""
        b = self._buddy
        if b is not None:
            return b.give(i, gen)  # type: ignore[no-any-return]
        m = self._m
        if not (0 <= i < self._nblk) or m.state[i] != ALLOC or m.gen[i] != gen:
            m.cnt[C_STALE] += 1
            return False
        o = m.order[i]
        m.gen[i] = (gen + 1) & 0xFFFFFFFF
        m.holder[i] = NO_HOLDER
        m.flags[i] = 0
        c = m.cnt
        c[C_IN_USE] -= self.min_block << o
        c[C_BLOCKS] -= 1
        c[C_FREES] += 1
        while o < self._maxorder:  # merge with a free buddy of the same order
            b = i ^ (1 << o)
            if b + (1 << o) > self._nblk or m.state[b] != FREE or m.order[b] != o:
                break
            self._unlink(b, o)
            m.state[max(i, b)] = 0
            i = min(i, b)
            o += 1
        self._push(i, o)
        return True

    # -- public ------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> Payload:
        """A writable payload of exactly ``nbytes`` bytes (a spill allocation, counted, when the
        arena has no block for it)."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"alloc size must be an int >= 0, got {nbytes!r}")
        with self.lock:
            i = self._take(max(nbytes, 1))
            if i < 0:
                c = self._m.cnt
                c[C_SPILLS] += 1
                if nbytes <= self.capacity - c[C_IN_USE] and self._order_for(nbytes) \
                        <= self._maxorder:
                    c[C_FALLBACKS] += 1
                c[C_IN_USE] += nbytes
                if c[C_IN_USE] > c[C_PEAK]:
                    c[C_PEAK] = c[C_IN_USE]
                c[C_BLOCKS] += 1
                c[C_ALLOCS] += 1
                return Payload._spill(self, nbytes)
            gen = self._m.gen[i]
        return Payload._block(self, i, nbytes, gen)

    def _exporter(self, i: int, nbytes: int) -> Any:
        off = self._data_off + (i << self._shift)
        return _ctype(max(nbytes, 1)).from_buffer(self._map, off)

    def _finalize_block(self, i: int, gen: int, pid: int) -> None:
        """Finalizer of a block's exporter: the last view is gone."""
        if os.getpid() != pid:
            return  # a forked child's inherited copy: the parent owns the block
        lk = self.lock
        if lk.held_here():  # garbage collection inside one of our sections: defer
            lk.deferred.append(functools.partial(self._give_quiet, i, gen))
            return
        with lk:
            self._give(i, gen)
        self._on_free()

    def _give_quiet(self, i: int, gen: int) -> None:
        self._give(i, gen)

    def _finalize_spill(self, nbytes: int, pid: int) -> None:
        if os.getpid() != pid:
            return
        lk = self.lock
        if lk.held_here():
            lk.deferred.append(lambda: self._unspill(nbytes))
            return
        with lk:
            self._unspill(nbytes)

    def _unspill(self, nbytes: int) -> None:
        c = self._m.cnt
        c[C_IN_USE] -= nbytes
        c[C_BLOCKS] -= 1
        c[C_FREES] += 1

    def _on_free(self) -> None:
        """Hook: a block went back to the free lists (kcoro.ipc wakes waiting allocators)."""

    def offset_of(self, i: int) -> int:
        return i << self._shift

    def stats(self) -> ArenaStats:
        with self.lock:
            c = [*self._m.cnt[:8], self._m.cnt[C_STALE]]
        return ArenaStats(capacity=self.capacity, in_use=c[C_IN_USE], peak=c[C_PEAK],
                          blocks=c[C_BLOCKS], allocs=c[C_ALLOCS], frees=c[C_FREES],
                          spills=c[C_SPILLS], fallbacks=c[C_FALLBACKS], stale=c[C_STALE])

    def check_invariants(self) -> None:
        if getattr(self, "closed", False):
            return  # unmapped: nothing left to check
        with self.lock:
            m, nblk = self._m, self._nblk
            listed: dict[int, int] = {}
            for o in range(self._maxorder + 1):
                h, prev = m.heads[o], 0
                while h:
                    i = h - 1
                    assert i not in listed, f"block {i} listed twice"
                    assert m.state[i] == FREE and m.order[i] == o, f"bad free-list entry {i}"
                    assert m.prv[i] == prev, f"broken back link at {i}"
                    listed[i] = o
                    prev, h = h, m.nxt[i]
            i = alloc_bytes = alloc_blocks = 0
            while i < nblk:
                st, o = m.state[i], m.order[i]
                assert st in (FREE, ALLOC), f"min-block {i} is not a block head"
                assert i & ((1 << o) - 1) == 0 and i + (1 << o) <= nblk, f"misaligned {i}"
                if st == FREE:
                    assert listed.get(i) == o, f"free block {i} not in its list"
                    b = i ^ (1 << o)
                    if b < i and o < self._maxorder:
                        assert not (m.state[b] == FREE and m.order[b] == o), \
                            f"free buddies {b},{i} not merged"
                else:
                    assert i not in listed
                    alloc_bytes += self.min_block << o
                    alloc_blocks += 1
                i += 1 << o
            assert i == nblk
            c = m.cnt
            assert c[C_IN_USE] >= alloc_bytes and c[C_BLOCKS] >= alloc_blocks, "counters low"
            assert c[C_FREES] <= c[C_ALLOCS] and c[C_PEAK] >= c[C_IN_USE]

    def close(self) -> None:
        """Unmap (refused with BufferError while views are exported, leaving the arena as it
        was).  Optional: the mapping goes away with the arena object."""
        if getattr(self, "closed", False):
            return
        if isinstance(self._map, mmap.mmap):
            with self.lock:  # no block or spill alive: nothing can still export the mapping
                live = self._m.cnt[C_BLOCKS]
            if live:
                raise BufferError(f"arena {self.name!r} still has {live} live block(s) (payloads "
                                  "or views of them): release them before close()")
        if self._buddy is not None:
            self._buddy.release()
            self._buddy = None
        self._m.release()
        self.closed = True
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        """The memfd of a shared arena (-1 for a private one)."""
        return self._fd

    def __repr__(self) -> str:
        s = self.stats()
        kind = "shared" if self.shared else "private"
        return (f"<Arena {self.name!r} {kind} {s.in_use}/{s.capacity} bytes in use, "
                f"{s.blocks} blocks>")


_ids = iter(range(1, 1 << 62)).__next__


class Payload:
    """A refcounted reference to ``nbytes`` bytes: an arena block, a spill, or an aliased
    foreign buffer (never freed by kcoro).

    ``view`` is a memoryview of the bytes; ``retain()`` adds a reference, ``release()`` drops
    one; the last release returns the block once every exported view is gone.  ``with payload:``
    releases on exit.  Using a released payload raises :class:`PayloadReleased`.
    """

    __slots__ = ("__weakref__", "_exp", "_fin", "_gen", "_idx", "_lock", "_mv", "_refs",
                 "arena", "id", "nbytes", "spilled")

    def __init__(self, buffer: Any) -> None:
        """Alias a foreign buffer (bytes-like); kcoro never frees it."""
        mv = memoryview(buffer)
        if not mv.c_contiguous:
            raise ValueError("Payload needs a C-contiguous buffer")
        self._mv: memoryview | None = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        self._exp: Any = buffer
        self._fin: Any = None
        self.arena: Arena | None = None
        self._idx = -1
        self._gen = 0
        self.nbytes = self._mv.nbytes
        self.spilled = False
        self._refs = 1
        self._lock: Any = _alias_lock
        self.id = _ids()

    @classmethod
    def _block(cls, arena: Arena, i: int, nbytes: int, gen: int) -> Payload:
        p = cls.__new__(cls)
        exp = arena._exporter(i, nbytes)
        p._fin = weakref.finalize(exp, arena._finalize_block, i, gen, os.getpid())
        p._exp = exp
        mv = memoryview(exp).cast("B")
        p._mv = mv[:nbytes] if nbytes == 0 else mv
        p.arena = arena
        p._idx = i
        p._gen = gen
        p.nbytes = nbytes
        p.spilled = False
        p._refs = 1
        p._lock = arena.lock
        p.id = _ids()
        return p

    @classmethod
    def _spill(cls, arena: Arena, nbytes: int) -> Payload:
        p = cls.__new__(cls)
        exp = _ctype(max(nbytes, 1))()
        p._fin = weakref.finalize(exp, arena._finalize_spill, nbytes, os.getpid())
        p._exp = exp
        mv = memoryview(exp).cast("B")
        p._mv = mv[:nbytes]
        p.arena = arena
        p._idx = -1
        p._gen = 0
        p.nbytes = nbytes
        p.spilled = True
        p._refs = 1
        p._lock = arena.lock
        p.id = _ids()
        return p

    @property
    def view(self) -> memoryview:
        mv = self._mv
        if mv is None:
            raise PayloadReleased(f"{self!r} was released")
        return mv

    @property
    def refcount(self) -> int:
        return self._refs

    @property
    def released(self) -> bool:
        return self._refs == 0

    @property
    def offset(self) -> int:
        """Offset of the block in its arena's data area (-1 for spills and aliases)."""
        return self.arena.offset_of(self._idx) if self.arena is not None and self._idx >= 0 \
            else -1

    @property
    def generation(self) -> int:
        return self._gen

    def descriptor(self) -> tuple[int, int, int, int]:
        """``(id, offset, nbytes, generation)``."""
        return (self.id, self.offset, self.nbytes, self._gen)

    def retain(self) -> Payload:
        with self._lock:
            if self._refs <= 0:
                raise PayloadReleased(f"retain() of released {self!r}")
            self._refs += 1
        return self

    def release(self) -> None:
        """Drop one reference; the last one returns the block (once no view is exported)."""
        with self._lock:
            r = self._refs
            if r <= 0:
                raise PayloadReleased(f"release() of already released {self!r}")
            self._refs = r - 1
            if r > 1:
                return
            mv, exp = self._mv, self._exp
            self._mv = self._exp = None
        # Outside the lock: dropping the last references may run the block's finalizer.
        del mv, exp

    def _transfer(self) -> Any:
        """The block's ownership moved elsewhere (another process): drop this reference
        without returning the block.  Returns the exporter if views of it are still alive
        (the caller pins the block until it dies), else None."""
        with self._lock:
            if self._fin is not None:
                self._fin.detach()
            self._refs = 0
            exp = self._exp
            self._mv = self._exp = None
        ref = weakref.ref(exp)
        del exp
        return ref()

    def tobytes(self) -> bytes:
        return bytes(self.view)

    def __enter__(self) -> Payload:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._refs > 0:
            self.release()

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        where = ("alias" if self.arena is None else
                 "spill" if self.spilled else f"block@{self.offset} gen={self._gen}")
        return f"<Payload id={self.id} {self.nbytes} bytes {where} refs={self._refs}>"


_alias_lock = threading.RLock()
