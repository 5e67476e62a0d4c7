"""``kcoro demo ipc``: a multi-process pipeline passing frames zero-copy through shared memory.

camera (this process) --frames--> N worker processes --results--> collector (this process)

Each frame is written once, in place, into the ``frames`` channel's shared arena
(``frames.arena.alloc``) and sent as a descriptor; a worker maps the same bytes as a numpy array
(or a memoryview when numpy is missing), computes on it without copying, releases it (the ACK
that frees the block) and sends a small result back.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing as mp
import os
import time
from typing import Any

import kcoro
import kcoro.ipc as ipc

np: Any
try:
    np = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - numpy lives in the dev extra
    np = None

__all__ = ["demo_ipc"]

H, W = 480, 640
FRAME = H * W * 3


def _base(ch: ipc.Channel[Any]) -> tuple[int, int]:
    m = ch._r.map
    return ctypes.addressof(ctypes.c_char.from_buffer(m)), len(m)


def _worker(frames: ipc.Channel[Any], results: ipc.Channel[Any]) -> None:
    base, size = _base(frames)
    for p in frames.iter_blocking():
        with p:
            n = int.from_bytes(p.view[:8], "little")
            if np is not None:
                img = np.frombuffer(p.view, dtype=np.uint8, offset=8).reshape(H, W, 3)
                addr = img.__array_interface__["data"][0]
                value = int(img[::8, ::8].sum(dtype=np.int64))
                del img
            else:
                mv = p.view
                addr = ctypes.addressof(ctypes.c_char.from_buffer(mv))
                value = sum(mv[8::4096])
                del mv
        results.send_blocking((n, value, base <= addr < base + size, os.getpid()))


def _expected(n: int) -> int:
    if np is not None:
        img = np.full((H, W, 3), n % 251, dtype=np.uint8)
        return int(img[::8, ::8].sum(dtype=np.int64))
    return (n % 251) * len(range(8, FRAME + 8, 4096))


def demo_ipc(frames_n: int = 120, workers: int = 2) -> None:
    ctx = mp.get_context("fork")
    frames: ipc.Channel[Any] = ipc.Channel(4, name="frames", arena_bytes=64 << 20)
    results: ipc.Channel[Any] = ipc.Channel(64, name="results")
    procs = [ctx.Process(target=_worker, args=(frames, results), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    got: list[tuple[int, int, bool, int]] = []
    t0 = time.perf_counter()
    for n in range(frames_n):
        p = frames.arena.alloc(8 + FRAME)  # the frame is written once, in shared memory
        p.view[:8] = n.to_bytes(8, "little")
        if np is not None:
            np.frombuffer(p.view, dtype=np.uint8, offset=8)[:] = n % 251
        else:
            p.view[8:] = bytes([n % 251]) * FRAME
        frames.send_blocking(p)  # moves the descriptor; p is released here
        while True:
            try:
                got.append(results.try_recv())
            except kcoro.WouldBlock:
                break
    frames.close()
    while len(got) < frames_n:
        got.append(results.recv_blocking(timeout=30))
    el = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    ok = all(v == _expected(n) for n, v, _, _ in got) and len(got) == frames_n
    zero = all(z for _, _, z, _ in got)
    per = {pid: sum(1 for *_, q in got if q == pid) for pid in {q for *_, q in got}}
    mb = frames_n * FRAME / el / 1e6
    kind = "numpy" if np is not None else "bytearray"
    print(f"ipc pipeline: {frames_n} {kind} frames of {FRAME:,} bytes, camera -> {workers} worker "
          f"processes -> collector in {el:.3f}s ({frames_n / el:,.0f} frames/s, {mb:,.0f} MB/s); "
          f"checksum {'ok' if ok else 'BAD'}; zero-copy {'yes' if zero else 'NO'} "
          f"(every worker view pointed into the shared arena)")
    print(f"  frames per worker: {sorted(per.values())}")
    for ch in (frames, results):
        s = ch.stats()
        print(f"  {s.name:8s} {s.kind:9s} cap={s.capacity:<3} sends={s.sends} recvs={s.recvs} "
              f"bytes={s.bytes_sent:,} zref_sent={s.zref_sent} zref_received={s.zref_received} "
              f"peak={s.peak} closed={s.closed_for_send}")
    a = frames.arena.stats()
    print(f"  arena    capacity={a.capacity:,} in_use={a.in_use} peak={a.peak:,} "
          f"allocs={a.allocs} frees={a.frees} spills={a.spills}")
    i = frames.ipc_stats()
    print(f"  ipc      dead_peers={i['dead_peers']} requeued={i['requeued']} "
          f"protocol_errors={i['protocol_errors']} stale_acks={i['stale_acks']}; "
          f"shared memory: memfd (nothing in /dev/shm)")
    frames.detach()
    results.detach()
