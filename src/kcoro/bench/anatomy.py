"""Where the time of one hop goes: the pieces of a kcoro channel operation, timed one by one.

    python -m kcoro.bench.anatomy [--n 200000]
    py-spy record -r 2000 -f raw -o b1.raw -- python -m kcoro.bench.anatomy --workload B1
    python -m kcoro.bench.anatomy --spy b1.raw

Each line is the best of 5 runs of a tight loop, in ns per iteration, on this machine, in this
process (so it is a cost model, not a benchmark against peers).  Read it next to a profile of B1 /
B2 (docs/BENCHMARKS.md, "Where the time goes per hop"):

* the floors: ``generator.send``, an ``await`` through a one-yield trap, an async call that
  never suspends (every ``await ch.send(x)`` creates and runs one coroutine object);
* what every kcoro operation pays before doing anything: the thread-local runtime lookup and the
  kernel-lock take/give pair;
* channel operations that never park (``try_send``/``try_recv``, ``await send``/``recv`` on a
  buffer with room), a scheduler switch without a channel (``checkpoint`` ping-pong), and the
  full B2 message and B1 hop for comparison.
"""

from __future__ import annotations

import argparse
import re
import time
import types
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

import kcoro

__all__ = ["main", "measure", "spy_report"]

_perf = time.perf_counter


def _best(fn: Callable[[int], float], n: int, runs: int = 5) -> float:
    fn(max(1, n // 20))  # warm the specializing interpreter
    return min(fn(n) for _ in range(runs)) / n * 1e9


def _loop_overhead(n: int) -> float:
    t0 = _perf()
    for _ in range(n):
        pass
    return _perf() - t0


def _gen_send(n: int) -> float:
    def gen() -> Generator[None, None, None]:
        while True:
            yield

    g = gen()
    next(g)
    send = g.send
    t0 = _perf()
    for _ in range(n):
        send(None)
    return _perf() - t0


@types.coroutine
def _trap() -> Generator[None, None, None]:
    yield


def _await_trap(n: int) -> float:
    async def task() -> None:
        for _ in range(n):
            await _trap()

    c = task()
    t0 = _perf()
    try:
        while True:
            c.send(None)
    except StopIteration:
        pass
    return _perf() - t0


def _async_call(n: int) -> float:
    async def nothing() -> None:
        return None

    async def task() -> float:
        f = nothing
        t0 = _perf()
        for _ in range(n):
            await f()
        return _perf() - t0

    c = task()
    try:
        c.send(None)
    except StopIteration as e:
        return float(e.value)
    raise RuntimeError("unreachable")


def _tls_lookup(n: int) -> float:
    from kcoro._context import tls

    t0 = _perf()
    for _ in range(n):
        tls.rt  # noqa: B018
    return _perf() - t0


def _klock_pair(n: int) -> float:
    from kcoro import _klock

    acquire, release = _klock.acquire, _klock.release
    t0 = _perf()
    for _ in range(n):
        acquire()
        release()
    return _perf() - t0


def _try_pair(n: int) -> float:
    ch: kcoro.Channel[int] = kcoro.Channel(64)
    ts, tr = ch.try_send, ch.try_recv
    t0 = _perf()
    for i in range(n):
        ts(i)
        tr()
    return _perf() - t0


def _kcoro(body: Callable[[int], Any]) -> Callable[[int], float]:
    def run(n: int) -> float:
        return float(kcoro.run(body, n))

    return run


async def _await_pair(n: int) -> float:
    ch: kcoro.Channel[int] = kcoro.Channel(64)
    send, recv = ch.send, ch.recv
    t0 = _perf()
    for i in range(n):
        await send(i)
        await recv()
    return _perf() - t0


async def _checkpoint_pingpong(n: int) -> float:
    cp = kcoro.checkpoint

    async def other() -> None:
        for _ in range(n):
            await cp()

    t = kcoro.spawn(other)
    t0 = _perf()
    for _ in range(n):
        await cp()
    el = _perf() - t0
    await t
    return el / 2  # two switches per iteration


async def _stream(n: int) -> float:
    ch: kcoro.Channel[int] = kcoro.Channel(64)

    async def producer() -> None:
        send = ch.send
        for i in range(n):
            await send(i)

    t0 = _perf()
    t = kcoro.spawn(producer)
    recv = ch.recv
    for _ in range(n):
        await recv()
    el = _perf() - t0
    await t
    return el


async def _hop(n: int) -> float:
    a: kcoro.Channel[int] = kcoro.Channel()
    b: kcoro.Channel[int] = kcoro.Channel()

    async def echo() -> None:
        recv, send = a.recv, b.send
        for _ in range(n):
            await send(await recv())

    t = kcoro.spawn(echo)
    send, recv = a.send, b.recv
    t0 = _perf()
    for i in range(n):
        await send(i)
        await recv()
    el = _perf() - t0
    await t
    return el / 2  # two one-way hops per round trip


STEPS: list[tuple[str, Callable[[int], float], str]] = [
    ("empty for-loop iteration", _loop_overhead, "the loop itself (inside every line below)"),
    ("generator.send", _gen_send, "floor: enter and leave a frame"),
    ("await one-yield trap (+ coro.send)", _await_trap, "floor: one suspension + resumption"),
    ("await of an async def that returns", _async_call, "what every `await ch.op()` pays"),
    ("tls.rt lookup", _tls_lookup, "every op: which runtime is this thread running?"),
    ("kernel lock take + give", _klock_pair, "every op: the kernel-lock section"),
    ("try_send + try_recv (buffered)", _try_pair, "two channel ops, no await, no switch"),
    ("await send + await recv (buffered)", _kcoro(_await_pair), "two ops, never parks"),
    ("checkpoint switch (2 tasks)", _kcoro(_checkpoint_pingpong), "scheduler: one task switch"),
    ("B2 stream, per message", _kcoro(_stream), "send + recv, a switch every ~64 items"),
    ("B1 rendezvous, per one-way hop", _kcoro(_hop), "send + recv + park + wake + switch"),
]


def measure(n: int = 200_000) -> list[tuple[str, float, str]]:
    out = []
    for name, fn, why in STEPS:
        try:
            ns = _best(fn, n)
        except Exception as exc:  # an internal renamed by the runtime's authors: say so
            out.append((name, float("nan"), f"n/a ({type(exc).__name__}: {exc})"))
            continue
        out.append((name, ns, why))
    return out


def _category(leaf: str) -> str:
    m = re.match(r"(.*) \((.*):(\d+)\)$", leaf)
    fn, path = (m.group(1), m.group(2)) if m else (leaf, "")
    if path.endswith("kcoro/_chan.py"):
        return "channel send/recv bodies (kcoro/_chan.py)"
    if path.endswith("kcoro/_runtime.py"):
        return "trap (the one yield)" if fn == "trap" else "scheduler loop (kcoro/_runtime.py)"
    if "kcoro/bench/" in path:
        return "the caller's `await ch.op()` lines (coroutine call + await chain)"
    if "kcoro/" in path:
        return f"other kcoro ({path.rsplit('kcoro/', 1)[1]})"
    return "other"


def spy_report(path: str, top: int = 12) -> str:
    """Summarise a ``py-spy record -f raw`` file: where the samples inside the runtime's loop
    landed, by category and by leaf line."""
    cats: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for row in f:
            stack, _, count = row.rstrip().rpartition(" ")
            if "run_until_complete" not in stack:
                continue  # imports, set-up
            n = int(count)
            leaf = stack.split(";")[-1]
            total += n
            cats[_category(leaf)] += n
            lines[leaf] += n
    out = [f"{total} samples inside the runtime loop", "", "| where | share |", "|---|---:|"]
    out += [f"| {k} | {100 * v / max(total, 1):.1f}% |" for k, v in cats.most_common()]
    out += ["", "| leaf line | share |", "|---|---:|"]
    out += [f"| `{k}` | {100 * v / max(total, 1):.1f}% |" for k, v in lines.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kcoro.bench.anatomy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="iterations per timed loop")
    p.add_argument("--spy", metavar="RAW",
                   help="instead: summarise a `py-spy record -f raw` profile of a kcoro run")
    p.add_argument("--workload", choices=("B1", "B2"),
                   help="instead: just run kcoro's B1 (100k round trips) or B2 (1M messages), "
                        "e.g. under a profiler")
    args = p.parse_args(argv)
    if args.workload == "B1":
        el = kcoro.run(_hop, 100_000)
        print(f"B1 rendezvous: {el / 100_000 * 1e9:,.0f} ns per one-way hop")
        return 0
    if args.workload == "B2":
        el = kcoro.run(_stream, 1_000_000)
        print(f"B2 buffered(64): {1_000_000 / el:,.0f} msgs/s")
        return 0
    if args.spy:
        print(spy_report(args.spy))
        return 0
    print("| piece | ns | what it is |\n|---|---:|---|")
    for name, ns, why in measure(args.n):
        print(f"| {name} | {ns:,.0f} | {why} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
