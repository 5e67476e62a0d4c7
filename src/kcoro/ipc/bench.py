"""B6 (ipc bulk) and B7 (ipc latency) workloads for ``kcoro bench`` (BENCHMARKS.md).

    b6_<peer>(total_bytes, payload_bytes) -> GB/s       one producer process -> one consumer
    b7_<peer>(round_trips) -> µs per one-way hop         ping-pong of a small message

Every B6 producer writes each payload once (a memcpy of a prepared buffer) and the consumer
touches each payload it receives (first and last byte) without copying it when the transport
allows that.  The producer is a forked child; the clock runs in the consumer (the parent) from
the "go" signal to the last payload received.  A peer whose package is missing raises
ImportError with a clear message.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

import kcoro.ipc as ipc

__all__ = [
    "b6_faster_fifo", "b6_kcoro", "b6_memcpy", "b6_mp_pipe", "b6_mp_queue", "b6_pyzmq",
    "b6_shm_ring", "b7_faster_fifo", "b7_kcoro", "b7_mp_pipe", "b7_pyzmq",
]

_perf = time.perf_counter
_FORK = mp.get_context("fork")


def _count(total_bytes: int, payload_bytes: int) -> int:
    return max(1, total_bytes // payload_bytes)


def _child(fn: Callable[..., None], *args: Any) -> Any:
    p = _FORK.Process(target=fn, args=args, daemon=True)
    p.start()
    return p


def _reap(p: Any) -> None:
    p.join(30)
    if p.is_alive():  # pragma: no cover - a stuck peer
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)


def _go_pipe() -> tuple[int, int]:
    return os.pipe()


def _wait_go(r: int) -> None:
    os.read(r, 1)


# -- B6 -----------------------------------------------------------------------------------------
def b6_kcoro(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    """Payloads written once into the channel's shared arena and moved as descriptors."""
    n = _count(total_bytes, payload_bytes)
    ch: ipc.Channel[Any] = ipc.Channel(8, arena_bytes=max(32 << 20, 16 * payload_bytes))
    r, w = _go_pipe()

    def producer() -> None:
        src = os.urandom(payload_bytes)
        _wait_go(r)
        alloc, send = ch.arena.alloc, ch.send_blocking
        for _ in range(n):
            p = alloc(payload_bytes)
            p.view[:] = src
            send(p)

    c = _child(producer)
    ch.check_invariants()  # attach before the clock starts
    recv = ch.recv_blocking
    t0 = _perf()
    os.write(w, b"g")
    for _ in range(n):
        p = recv()
        v = p.view
        _ = v[0] + v[-1]
        del v
        p.release()
    el = _perf() - t0
    _reap(c)
    ch.detach()
    os.close(r)
    os.close(w)
    return n * payload_bytes / el / 1e9


def b6_mp_queue(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    n = _count(total_bytes, payload_bytes)
    q: Any = _FORK.Queue(8)
    r, w = _go_pipe()

    def producer() -> None:
        src = os.urandom(payload_bytes)
        _wait_go(r)
        for _ in range(n):
            q.put(src)

    c = _child(producer)
    t0 = _perf()
    os.write(w, b"g")
    for _ in range(n):
        b = q.get()
        _ = b[0] + b[-1]
    el = _perf() - t0
    _reap(c)
    return n * payload_bytes / el / 1e9


def b6_mp_pipe(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    n = _count(total_bytes, payload_bytes)
    a, b = _FORK.Pipe()
    r, w = _go_pipe()

    def producer() -> None:
        src = os.urandom(payload_bytes)
        _wait_go(r)
        for _ in range(n):
            b.send_bytes(src)

    c = _child(producer)
    t0 = _perf()
    os.write(w, b"g")
    for _ in range(n):
        m = a.recv_bytes()
        _ = m[0] + m[-1]
    el = _perf() - t0
    _reap(c)
    return n * payload_bytes / el / 1e9


def _faster_fifo() -> Any:
    try:
        import faster_fifo  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError("faster-fifo is not installed (pip install 'kcoro[bench]')") from None
    return faster_fifo


def b6_faster_fifo(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    ff = _faster_fifo()
    n = _count(total_bytes, payload_bytes)
    q = ff.Queue(max_size_bytes=8 * (payload_bytes + 4096))
    r, w = _go_pipe()

    def producer() -> None:
        src = os.urandom(payload_bytes)
        _wait_go(r)
        for _ in range(n):
            q.put(src, timeout=60)

    c = _child(producer)
    t0 = _perf()
    os.write(w, b"g")
    for _ in range(n):
        m = q.get(timeout=60)
        _ = m[0] + m[-1]
    el = _perf() - t0
    _reap(c)
    return n * payload_bytes / el / 1e9


def _zmq() -> Any:
    try:
        import zmq
    except ImportError:
        raise ImportError("pyzmq is not installed (pip install 'kcoro[bench]')") from None
    return zmq


def b6_pyzmq(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    """PUSH/PULL over ``ipc://`` with ``copy=False`` on both sides."""
    zmq = _zmq()
    n = _count(total_bytes, payload_bytes)
    d = tempfile.mkdtemp(prefix="kcoro-zmq-")
    addr = f"ipc://{d}/b6"
    r, w = _go_pipe()

    def producer() -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 8)
        s.connect(addr)
        src = os.urandom(payload_bytes)
        _wait_go(r)
        for _ in range(n):
            s.send(src, copy=False)
        s.close(linger=-1)
        ctx.term()

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 8)
    pull.bind(addr)
    c = _child(producer)
    try:
        t0 = _perf()
        os.write(w, b"g")
        for _ in range(n):
            f = pull.recv(copy=False)
            m = f.buffer
            _ = m[0] + m[-1]
        el = _perf() - t0
    finally:
        _reap(c)
        pull.close(linger=0)
        ctx.term()
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    return n * payload_bytes / el / 1e9


def b6_shm_ring(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    """The ceiling: a raw ``multiprocessing.shared_memory`` ring of 8 slots plus two pipes of
    slot numbers (full → consumer, free → producer); no framing, no allocator, no safety."""
    from multiprocessing import resource_tracker, shared_memory

    n = _count(total_bytes, payload_bytes)
    slots = 8
    shm = shared_memory.SharedMemory(create=True, size=slots * payload_bytes)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker variations
        pass
    full_r, full_w = os.pipe()
    free_r, free_w = os.pipe()
    for i in range(slots):
        os.write(free_w, struct.pack("<I", i))
    r, w = _go_pipe()
    buf: Any = shm.buf

    def producer() -> None:
        src = os.urandom(payload_bytes)
        _wait_go(r)
        for _ in range(n):
            (i,) = struct.unpack("<I", os.read(free_r, 4))
            o = i * payload_bytes
            buf[o:o + payload_bytes] = src
            os.write(full_w, struct.pack("<I", i))

    c = _child(producer)
    try:
        t0 = _perf()
        os.write(w, b"g")
        for _ in range(n):
            (i,) = struct.unpack("<I", os.read(full_r, 4))
            o = i * payload_bytes
            _ = buf[o] + buf[o + payload_bytes - 1]
            os.write(free_w, struct.pack("<I", i))
        el = _perf() - t0
    finally:
        _reap(c)
        buf.release()
        shm.close()
        from _posixshmem import shm_unlink  # type: ignore[import-not-found]  # untracked

        shm_unlink(shm._name)  # type: ignore[attr-defined]
        for fd in (full_r, full_w, free_r, free_w, r, w):
            os.close(fd)
    return n * payload_bytes / el / 1e9


def b6_memcpy(total_bytes: int = 1 << 30, payload_bytes: int = 1 << 20) -> float:
    """The physical reference: one in-process copy of each payload."""
    n = _count(total_bytes, payload_bytes)
    src = os.urandom(payload_bytes)
    dst = bytearray(payload_bytes)
    t0 = _perf()
    for _ in range(n):
        dst[:] = src
    return n * payload_bytes / (_perf() - t0) / 1e9


# -- B7 -----------------------------------------------------------------------------------------
def b7_kcoro(round_trips: int = 20_000) -> float:
    a: ipc.Channel[Any] = ipc.Channel(1)
    b: ipc.Channel[Any] = ipc.Channel(1)
    warm = min(1000, round_trips)

    def echo() -> None:
        rx, tx = a.recv_blocking, b.send_blocking
        for _ in range(round_trips + warm):
            tx(rx())

    c = _child(echo)
    tx, rx = a.send_blocking, b.recv_blocking
    for i in range(warm):
        tx(i)
        rx()
    t0 = _perf()
    for i in range(round_trips):
        tx(i)
        rx()
    el = _perf() - t0
    _reap(c)
    a.detach()
    b.detach()
    return el / round_trips / 2 * 1e6


def b7_mp_pipe(round_trips: int = 20_000) -> float:
    x, y = _FORK.Pipe()
    warm = min(1000, round_trips)

    def echo() -> None:
        for _ in range(round_trips + warm):
            y.send_bytes(y.recv_bytes())

    c = _child(echo)
    for _ in range(warm):
        x.send_bytes(b"p")
        x.recv_bytes()
    t0 = _perf()
    for _ in range(round_trips):
        x.send_bytes(b"p")
        x.recv_bytes()
    el = _perf() - t0
    _reap(c)
    return el / round_trips / 2 * 1e6


def b7_pyzmq(round_trips: int = 20_000) -> float:
    zmq = _zmq()
    d = tempfile.mkdtemp(prefix="kcoro-zmq-")
    addr = f"ipc://{d}/b7"
    warm = min(1000, round_trips)

    def echo() -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.PAIR)
        s.connect(addr)
        for _ in range(round_trips + warm):
            s.send(s.recv())
        s.close(linger=-1)
        ctx.term()

    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.bind(addr)
    c = _child(echo)
    try:
        for _ in range(warm):
            s.send(b"p")
            s.recv()
        t0 = _perf()
        for _ in range(round_trips):
            s.send(b"p")
            s.recv()
        el = _perf() - t0
    finally:
        _reap(c)
        s.close(linger=0)
        ctx.term()
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    return el / round_trips / 2 * 1e6


def b7_faster_fifo(round_trips: int = 20_000) -> float:
    ff = _faster_fifo()
    qa, qb = ff.Queue(), ff.Queue()
    warm = min(1000, round_trips)

    def echo() -> None:
        for _ in range(round_trips + warm):
            qb.put(qa.get(timeout=60))

    c = _child(echo)
    for i in range(warm):
        qa.put(i)
        qb.get(timeout=60)
    t0 = _perf()
    for i in range(round_trips):
        qa.put(i)
        qb.get(timeout=60)
    el = _perf() - t0
    _reap(c)
    return el / round_trips / 2 * 1e6


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    import sys

    total = int(float(sys.argv[1]) * (1 << 20)) if len(sys.argv) > 1 else 256 << 20
    trips = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    for name in ("memcpy", "shm_ring", "kcoro", "faster_fifo", "pyzmq", "mp_pipe", "mp_queue"):
        fn = globals()[f"b6_{name}"]
        try:
            print(f"B6 {name:12s} {fn(total, 1 << 20):7.2f} GB/s", flush=True)
        except ImportError as exc:
            print(f"B6 {name:12s} not installed ({exc})")
    for name in ("kcoro", "mp_pipe", "pyzmq", "faster_fifo"):
        fn = globals()[f"b7_{name}"]
        try:
            print(f"B7 {name:12s} {fn(trips):7.2f} us/hop", flush=True)
        except ImportError as exc:
            print(f"B7 {name:12s} not installed ({exc})")
