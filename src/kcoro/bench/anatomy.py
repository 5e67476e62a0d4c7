"""Where the time of one hop goes: the pieces of a kcoro channel operation, timed one by one.

    python -m kcoro.bench.anatomy [--n 200000]

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
import time
import types
from collections.abc import Callable, Generator
from typing import Any

import kcoro

__all__ = ["main", "measure"]

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

    take, give = _klock.take, _klock.give
    t0 = _perf()
    for _ in range(n):
        take()
        give(True)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kcoro.bench.anatomy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="iterations per timed loop")
    args = p.parse_args(argv)
    print("| piece | ns | what it is |\n|---|---:|---|")
    for name, ns, why in measure(args.n):
        print(f"| {name} | {ns:,.0f} | {why} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
