"""Measure what serving metrics costs a busy program: ``python -m kcoro.metrics.overhead``.

The workload is B2 (docs/BENCHMARKS: one producer -> one consumer over a capacity-64 channel,
small ints).  Three modes, alternated round by round in rotating order so that the machine's
noise spreads evenly, each reported as the median of ``--rounds`` runs:

* ``off``       no server;
* ``serve``     ``kcoro.metrics.serve()`` running, no monitor attached (the ``KCORO_METRICS=1``
                steady state: the server thread sleeps in ``select``);
* ``monitor``   serving, with ``kcoro top PID --ndjson`` attached in another process at its
                default ``--interval 0.5`` (it subscribes: 2 snapshots per second);
* ``monitor20`` the same at ``--interval 0.05``: the busy program sends a snapshot every tick,
                20 per second (the most the server ever sends one monitor).

Prints a table and, with ``--json``, one JSON object with the raw runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import kcoro

from . import current_server, serve, stop

MODES = ("off", "serve", "monitor", "monitor20")


def b2(n: int) -> tuple[float, float]:
    """Run B2 with ``n`` items; return (msgs per wall-clock second, msgs per CPU second of this
    process — all its threads, so the metrics thread's work is included)."""

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(64, name="b2")

        async def producer() -> None:
            for i in range(n):
                await ch.send(i)
            ch.close()

        async with kcoro.TaskGroup() as tg:
            tg.spawn(producer)
            async for _ in ch:
                pass

    t0, c0 = time.perf_counter(), time.process_time()
    kcoro.run(main)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _attach_monitor(interval: float) -> subprocess.Popen[bytes]:
    srv = current_server()
    assert srv is not None
    before = srv.stats()["connections"]
    mon = subprocess.Popen([sys.executable, "-m", "kcoro", "top", str(os.getpid()), "--ndjson",
                            "--interval", str(interval)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while srv.stats()["connections"] == before or srv.stats()["clients"] == 0:
        if time.monotonic() > deadline or mon.poll() is not None:
            mon.kill()
            raise RuntimeError("the monitor did not attach")
        time.sleep(0.01)  # a handshake with another process, not ordering our own tasks
    return mon


def run_mode(mode: str, n: int) -> tuple[float, float]:
    if mode == "off":
        return b2(n)
    serve()
    mon = None
    if mode.startswith("monitor"):
        mon = _attach_monitor(0.05 if mode == "monitor20" else 0.5)
    try:
        return b2(n)
    finally:
        if mon is not None:
            mon.terminate()
            mon.wait()
        stop()


def measure(n: int, rounds: int) -> dict[str, Any]:
    b2(max(1000, n // 20))  # warm up
    runs: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds):
        k = r % len(MODES)
        order = MODES[k:] + MODES[:k]
        for mode in order:
            wall, per_cpu = run_mode(mode, n)
            runs[mode].append(wall)
            cpu[mode].append(per_cpu)
    med = {m: statistics.median(v) for m, v in runs.items()}
    cmed = {m: statistics.median(v) for m, v in cpu.items()}
    paired = {m: 100 * (1 - statistics.median(b / a for a, b in zip(runs["off"], runs[m])))
              for m in MODES if m != "off"}
    return {"items": n, "rounds": rounds, "runs": runs, "cpu_runs": cpu,
            "median_msgs_per_s": med, "median_msgs_per_cpu_s": cmed,
            "overhead_pct": {m: 100 * (1 - med[m] / med["off"]) for m in MODES if m != "off"},
            "overhead_pct_paired": paired,
            "overhead_pct_cpu": {m: 100 * (1 - cmed[m] / cmed["off"])
                                 for m in MODES if m != "off"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kcoro.metrics.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = measure(a.items, a.rounds)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"B2 stream, {a.items:,} items, median of {a.rounds} alternating rounds")
    print(f"  {'mode':9s} {'msgs/s':>10s} {'overhead':>8s} {'paired':>7s}  {'msgs/cpu-s':>10s} "
          f"{'overhead':>8s}   wall-clock runs")
    for m in MODES:
        med, cmed = res["median_msgs_per_s"][m], res["median_msgs_per_cpu_s"][m]
        spread = f"{min(res['runs'][m]):,.0f}..{max(res['runs'][m]):,.0f}"
        o = pr = c = ""
        if m != "off":
            o = f"{res['overhead_pct'][m]:+.1f}%"
            pr = f"{res['overhead_pct_paired'][m]:+.1f}%"
            c = f"{res['overhead_pct_cpu'][m]:+.1f}%"
        print(f"  {m:9s} {med:>10,.0f} {o:>8s} {pr:>7s}  {cmed:>10,.0f} {c:>8s}   {spread}")
    print("  overhead: 1 - mode/off on the medians; paired: median of per-round ratios; "
          "cpu: per CPU-second of this process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
