"""B6 ipc bulk and B7 ipc latency.

The workloads are provided by ``kcoro.ipc.bench`` (written with ``kcoro.ipc``)::

    b6_<name>(total_bytes, payload_bytes) -> GB/s         b7_<name>(round_trips) -> µs per hop

for ``kcoro`` and each peer (mp_queue, mp_pipe, faster_fifo, pyzmq, shm_ring, memcpy); a peer
function raises ImportError when its library is missing.  While that module (or one of its
functions) does not exist yet, the row says "not available yet".  The floors that need no
``kcoro.ipc`` are measured here: an in-process memcpy of 1 MiB (unless ``b6_memcpy`` exists) and an
eventfd ping-pong between two processes.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

Result = tuple[float, dict[str, Any]]
_perf = time.perf_counter
PAYLOAD = 1 << 20


def _ipc_bench(fn: str) -> Any:
    try:
        mod = importlib.import_module("kcoro.ipc.bench")
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("kcoro"):
            raise NotImplementedError("kcoro.ipc.bench not available yet") from None
        raise
    f = getattr(mod, fn, None)
    if f is None:
        raise NotImplementedError(f"kcoro.ipc.bench.{fn} not available yet")
    return f


def b6(n: int, peer: str) -> Result:
    """``n`` bytes in total, in 1 MiB payloads."""
    gbs = float(_ipc_bench(f"b6_{peer}")(n, PAYLOAD))
    return gbs, {"total_bytes": n, "payload_bytes": PAYLOAD}


def b7(n: int, peer: str) -> Result:
    return float(_ipc_bench(f"b7_{peer}")(n)), {"round_trips": n}


def b6_memcpy(n: int) -> Result:
    try:
        return b6(n, "memcpy")
    except NotImplementedError:
        pass
    src = os.urandom(PAYLOAD)
    dst = bytearray(PAYLOAD)
    reps = max(1, n // PAYLOAD)
    t0 = _perf()
    for _ in range(reps):
        dst[:] = src
    el = _perf() - t0
    return reps * PAYLOAD / el / 1e9, {"source": "kcoro.bench (bytearray slice copy)"}


def b7_eventfd(n: int) -> Result:
    """Two eventfds, two processes: the cost of a wake across a process boundary."""
    ping, pong = os.eventfd(0), os.eventfd(0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            rd, wr = os.eventfd_read, os.eventfd_write
            for _ in range(n):
                rd(ping)
                wr(pong, 1)
        finally:
            os._exit(0)
    rd, wr = os.eventfd_read, os.eventfd_write
    t0 = _perf()
    for _ in range(n):
        wr(ping, 1)
        rd(pong)
    el = _perf() - t0
    os.waitpid(pid, 0)
    os.close(ping)
    os.close(pong)
    return el / (2 * n) * 1e6, {}
