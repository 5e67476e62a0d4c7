"""B8 idle: 10k tasks parked for N seconds; CPU % of one core used by the whole process meanwhile.

Runs alone in its child process, so the process's CPU time (``getrusage``: user + system, all
threads) over the wall time of the parked interval is exactly what the parked runtime costs.
A runtime that polls or ticks shows up here, and in the number of context switches per second
(``wakeups_per_s``), which counts every time the process went to sleep and was woken.
"""

from __future__ import annotations

import gc
import resource
import time
from typing import Any

Result = tuple[float, dict[str, Any]]
_perf = time.perf_counter
TASKS = 10_000
SETTLE_S = 0.2


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nvcsw + r.ru_nivcsw


def _measure_start() -> tuple[float, int, float]:
    gc.collect()
    cpu, sw = _usage()
    return cpu, sw, _perf()


def _measure_end(start: tuple[float, int, float], setup_s: float) -> Result:
    cpu1, sw1 = _usage()
    wall = _perf() - start[2]
    cpu = cpu1 - start[0]
    return cpu / wall * 100.0, {
        "wall_s": wall, "cpu_s": cpu, "wakeups_per_s": (sw1 - start[1]) / wall,
        "tasks": TASKS, "setup_s": setup_s,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def idle_kcoro(n: float, on: str = "channels") -> Result:
    """``n`` seconds parked; ``on`` is "channels" (each task in ``recv`` on its own rendezvous
    channel) or "tickets" (each task awaiting its own published ticket)."""
    import kcoro

    async def main() -> Result:
        t0 = _perf()
        if on == "channels":
            chans: list[kcoro.Channel[int]] = [kcoro.Channel(name=f"idle{i}")
                                               for i in range(TASKS)]
            for ch in chans:
                kcoro.spawn(ch.recv)
        else:
            kernel = kcoro.token_kernel()
            tickets = [kernel.publish() for _ in range(TASKS)]

            async def waiter(t: kcoro.Ticket) -> None:
                try:
                    await t
                except kcoro.OperationCancelled:
                    pass

            for t in tickets:
                kcoro.spawn(waiter, t)
        await kcoro.sleep(SETTLE_S)
        setup = _perf() - t0 - SETTLE_S
        start = _measure_start()
        await kcoro.sleep(n)
        res = _measure_end(start, setup)
        # counted after the measured interval (10k stats() calls cost ~0.2 s here)
        if on == "channels":
            res[1]["parked"] = sum(ch.stats().waiting_receivers for ch in chans)
        else:
            res[1]["parked"] = sum(t.state == "PARKED" for t in tickets)
            for t in tickets:
                kernel.cancel(t)
        return res

    return kcoro.run(main)


def idle_asyncio(n: float, on: str = "queues") -> Result:
    """``on`` is "queues" (each task in ``Queue.get``) or "futures" (each awaiting a future)."""
    import asyncio

    async def main() -> Result:
        t0 = _perf()
        loop = asyncio.get_running_loop()
        if on == "queues":
            queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(TASKS)]
            tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(q.get()) for q in queues]
        else:
            futs: list[asyncio.Future[None]] = [loop.create_future() for _ in range(TASKS)]

            async def waiter(f: asyncio.Future[None]) -> None:
                await f

            tasks = [asyncio.ensure_future(waiter(f)) for f in futs]
        await asyncio.sleep(SETTLE_S)
        setup = _perf() - t0 - SETTLE_S
        start = _measure_start()
        await asyncio.sleep(n)
        res = _measure_end(start, setup)
        res[1]["parked"] = sum(not t.done() for t in tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return res

    return asyncio.run(main())
