"""Arena (block allocator) and Payload (refcounted descriptor): lifecycle, reuse safety, stats."""

from __future__ import annotations

import gc
import os
import random
import threading
from collections.abc import Iterator

import pytest

import kcoro
from kcoro import _registry
from kcoro._payload import Arena, Payload, PayloadReleased


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Leak check: every arena made during the test is back to in_use == 0 afterwards."""
    before = {id(a) for a in _registry.arenas.items()}
    yield
    gc.collect()
    for a in _registry.arenas.items():
        if id(a) not in before:
            a.check_invariants()
            assert a.stats().in_use == 0, f"{a!r} leaked"


def test_public_names() -> None:
    assert kcoro.Arena is Arena and kcoro.Payload is Payload
    assert kcoro.PayloadReleased is PayloadReleased
    assert issubclass(PayloadReleased, kcoro.KcoroError)


def test_alloc_sizes_classes_and_stats() -> None:
    a = Arena(1 << 20, min_block=256)
    sizes = [0, 1, 100, 256, 257, 5000, 70000]
    ps = [a.alloc(n) for n in sizes]
    assert [p.nbytes for p in ps] == sizes
    assert [len(p.view) for p in ps] == sizes
    s = a.stats()
    # blocks are rounded up to a power of two of min_block
    assert s.in_use == 256 * 4 + 512 + 8192 + 131072
    assert (s.blocks, s.allocs, s.frees, s.spills) == (7, 7, 0, 0)
    assert s.capacity == 1 << 20 and s.peak == s.in_use
    offsets = {p.offset for p in ps}
    assert len(offsets) == len(ps)  # distinct blocks
    a.check_invariants()
    for p in ps:
        p.release()
    s = a.stats()
    assert (s.in_use, s.blocks, s.frees) == (0, 0, 7)
    assert s.peak == 256 * 4 + 512 + 8192 + 131072
    a.check_invariants()


def test_blocks_do_not_overlap_and_keep_their_bytes() -> None:
    a = Arena(1 << 18, min_block=64)
    rng = random.Random(4)
    live: list[tuple[Payload, bytes]] = []
    for step in range(600):
        if live and rng.random() < 0.45:
            p, data = live.pop(rng.randrange(len(live)))
            assert bytes(p.view) == data
            p.release()
        else:
            n = rng.choice([1, 63, 64, 65, 200, 1000, 4096, 9000])
            p = a.alloc(n)
            data = bytes([step & 0xFF]) * n
            p.view[:] = data
            live.append((p, data))
        if step % 50 == 0:
            a.check_invariants()
    for p, data in live:
        assert bytes(p.view) == data
        p.release()
    a.check_invariants()
    assert a.stats().in_use == 0


def test_freed_blocks_merge_back() -> None:
    a = Arena(4096, min_block=64)
    ps = [a.alloc(64) for _ in range(64)]
    assert a.stats().spills == 0
    for p in ps:
        p.release()
    whole = a.alloc(4096)  # only possible if every buddy merged again
    assert not whole.spilled
    whole.release()


def test_generation_increments_on_reuse() -> None:
    a = Arena(4096, min_block=4096)
    p = a.alloc(10)
    off, gen = p.offset, p.generation
    p.release()
    q = a.alloc(10)
    assert q.offset == off and q.generation == gen + 1
    assert q.descriptor() == (q.id, off, 10, gen + 1)
    q.release()


def test_stale_descriptor_release_is_rejected_and_counted() -> None:
    a = Arena(4096, min_block=1024)
    p = a.alloc(10)
    i, gen = p._idx, p.generation
    p.release()
    with a.lock:
        assert a._give(i, gen) is False  # a duplicate ACK for the old generation
    assert a.stats().stale == 1
    a.check_invariants()


def test_spill_when_too_large_or_full_is_counted() -> None:
    a = Arena(4096, min_block=1024)
    big = a.alloc(10000)
    assert big.spilled and big.nbytes == 10000
    big.view[-1] = 7
    fill = [a.alloc(1024) for _ in range(4)]
    extra = a.alloc(1)
    assert extra.spilled
    s = a.stats()
    assert s.spills == 2 and s.fallbacks == 0
    assert s.in_use == 10000 + 4096 + 1
    for p in (big, extra, *fill):
        p.release()
    assert a.stats().in_use == 0


def test_fragmentation_fallback_is_counted() -> None:
    a = Arena(4096, min_block=1024)
    ps = [a.alloc(1024) for _ in range(4)]
    ps[0].release()
    ps[2].release()  # 2 KiB free, but not contiguous
    p = a.alloc(2048)
    assert p.spilled
    assert a.stats().fallbacks == 1
    for q in (p, ps[1], ps[3]):
        q.release()


def test_released_payload_raises_clear_errors() -> None:
    a = Arena(4096)
    p = a.alloc(16)
    p.release()
    assert p.released and p.refcount == 0
    with pytest.raises(PayloadReleased, match="released"):
        _ = p.view
    with pytest.raises(PayloadReleased):
        p.release()
    with pytest.raises(PayloadReleased):
        p.retain()


def test_retain_release_and_context_manager() -> None:
    a = Arena(4096)
    p = a.alloc(8)
    assert p.retain() is p and p.refcount == 2
    p.release()
    assert a.stats().in_use > 0
    with p:
        p.view[:] = b"12345678"
    assert p.released and a.stats().in_use == 0


def test_block_not_reused_while_a_view_is_exported() -> None:
    a = Arena(1024, min_block=1024)  # exactly one block
    p = a.alloc(100)
    v = p.view[10:20]  # a derived slice outlives the payload
    v[:] = b"x" * 10
    p.release()
    q = a.alloc(100)
    assert q.spilled, "the only block was handed out again while a view was exported"
    assert bytes(v) == b"x" * 10
    q.release()
    del v
    r = a.alloc(100)
    assert not r.spilled  # back once the view is gone
    r.release()


def test_numpy_array_pins_its_block() -> None:
    np = pytest.importorskip("numpy")
    a = Arena(4096, min_block=4096)
    p = a.alloc(4096)
    arr = np.frombuffer(p.view, dtype=np.uint32)[5:50]
    arr[:] = 7
    p.release()
    assert a.stats().in_use == 4096
    other = a.alloc(16)
    assert other.spilled
    assert int(arr.sum()) == 7 * 45
    other.release()
    del arr
    gc.collect()
    assert a.stats().in_use == 0


def test_alias_payload_never_frees_the_foreign_buffer() -> None:
    buf = bytearray(b"hello world")
    p = Payload(buf)
    assert p.arena is None and p.offset == -1 and p.nbytes == 11
    p.view[0:5] = b"HELLO"
    p.release()
    assert buf == bytearray(b"HELLO world")
    with pytest.raises(PayloadReleased):
        _ = p.view


def test_shared_arena_uses_memfd_not_dev_shm() -> None:
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    a = Arena(1 << 16, shared=True)
    assert a.fileno() >= 0
    assert os.readlink(f"/proc/self/fd/{a.fileno()}").startswith("/memfd:")
    p = a.alloc(100)
    p.view[:3] = b"abc"
    p.release()
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after == before


def test_forked_child_does_not_free_parents_blocks() -> None:
    a = Arena(4096, min_block=1024)
    p = a.alloc(10)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: dropping the inherited payload must not touch the allocator
        try:
            p.release()
            gc.collect()
            os.write(w, b"1")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert a.stats().in_use == 1024  # still ours
    p.release()


def test_concurrent_threads_alloc_and_release() -> None:
    a = Arena(1 << 16, min_block=64)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                p = a.alloc(rng.choice([10, 100, 700]))
                p.view[0] = seed
                assert p.view[0] == seed
                p.release()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    a.check_invariants()
    assert a.stats().allocs == 1200 == a.stats().frees


def test_arena_is_registered_and_validates_arguments() -> None:
    a = Arena(4096)
    assert a in _registry.arenas.items()
    with pytest.raises(ValueError):
        Arena(0)
    with pytest.raises(ValueError):
        Arena(4096, min_block=100)
    with pytest.raises(ValueError):
        a.alloc(-1)
    with a.alloc(1) as p:
        assert "private" in repr(a) and "block@" in repr(p)


def _meta_bytes(a: Arena) -> bytes:
    m = a._m
    return b"".join(bytes(getattr(m, f)) for f in ("cnt", "heads", "gen", "nxt", "prv", "holder",
                                                   "order", "state", "flags"))


def test_c_buddy_allocator_matches_the_python_reference() -> None:
    # The accelerator's Buddy runs Arena._take/_give over the same metadata; the same random
    # sequence of allocations and releases must leave byte-identical metadata in both.
    from kcoro._accel import speedups

    if speedups is None:  # pure mode (KCORO_PURE=1): the Python allocator must be the one used
        assert not os.environ.get("KCORO_REQUIRE_SPEEDUPS"), "the C accelerator is not built"
        assert Arena(1 << 12)._buddy is None
        return
    c_arena, py_arena = Arena(1 << 16), Arena(1 << 16)
    assert c_arena._buddy is not None
    py_arena._buddy = None  # the Python reference path
    rng = random.Random(7)
    live: list[tuple[int, int]] = []
    for step in range(3000):
        if live and (rng.random() < 0.45 or len(live) > 60):
            i, gen = live.pop(rng.randrange(len(live)))
            with c_arena.lock:
                ok_c = c_arena._give(i, gen)
            with py_arena.lock:
                ok_py = py_arena._give(i, gen)
            assert ok_c == ok_py is True
            if step % 7 == 0:  # a duplicate release is stale in both
                with c_arena.lock:
                    assert c_arena._give(i, gen) is False
                with py_arena.lock:
                    assert py_arena._give(i, gen) is False
        else:
            n = rng.choice([1, 100, 256, 300, 1024, 5000, 1 << 14, 1 << 17])
            with c_arena.lock:
                i_c = c_arena._take(n, 3, 1)
            with py_arena.lock:
                i_py = py_arena._take(n, 3, 1)
            assert i_c == i_py
            if i_c >= 0:
                live.append((i_c, c_arena._m.gen[i_c]))
        assert _meta_bytes(c_arena) == _meta_bytes(py_arena), f"diverged at step {step}"
    c_arena.check_invariants()
    py_arena.check_invariants()
    assert c_arena.stats() == py_arena.stats()
    assert c_arena.stats().stale > 0
    for a in (c_arena, py_arena):
        with a.lock:
            for i, gen in live:
                assert a._give(i, gen)
        assert a.stats().in_use == 0 and a.stats().blocks == 0
    assert _meta_bytes(c_arena) == _meta_bytes(py_arena)  # merged back to the same tiling
    c_arena.close()  # the Buddy lets go of the metadata before the unmap
    py_arena.close()


def test_c_buddy_rejects_bad_input_like_the_reference() -> None:
    from kcoro._accel import speedups

    if speedups is None:  # pure mode: the reference validates the same way
        a = Arena(1 << 12)
        with a.lock, pytest.raises(ValueError, match="out of range"):
            a._take(1, 1 << 16, 0)
        return
    b = speedups.Buddy.__new__(speedups.Buddy)
    with pytest.raises(ValueError, match="too small"):
        b.__init__(bytearray(16), 4, 2, 6)
    with pytest.raises(ValueError, match="not initialized"):
        b.take(1, 0, 0)  # a failed __init__ leaves nothing half-set (it used to crash)
    c_arena, py_arena = Arena(1 << 12), Arena(1 << 12)
    py_arena._buddy = None
    for a in (c_arena, py_arena):
        with a.lock:
            assert a._take(1 << 64, 0, 0) == -1  # larger than any arena: no block
            assert a._give(1 << 64, 0) is False and a._give(0, 1 << 64) is False
            with pytest.raises(ValueError, match="out of range"):
                a._take(1, 1 << 16, 0)
            with pytest.raises(ValueError, match="out of range"):
                a._take(1, 0, 256)
    assert c_arena.stats() == py_arena.stats()
    assert _meta_bytes(c_arena) == _meta_bytes(py_arena)
    c_arena.check_invariants()


def test_close_with_a_live_payload_is_refused_and_changes_nothing() -> None:
    a = Arena(1 << 14)
    p = a.alloc(100)
    with pytest.raises(BufferError, match="live block"):
        a.close()
    q = a.alloc(50)  # the arena still works
    assert a.stats().blocks == 2
    p.release()
    q.release()
    gc.collect()
    a.check_invariants()
    assert a.stats().in_use == 0
    a.close()
    a.close()  # idempotent
