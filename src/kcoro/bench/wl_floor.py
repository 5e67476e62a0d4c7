"""Interpreter floors: what one hop costs with no channel at all (see docs/BENCHMARKS.md).

* ``gen_send``        — ``generator.send``: the cheapest way to enter and leave a frame;
* ``await_trap``      — a coroutine awaiting a one-``yield`` trap, resumed by a minimal
                        scheduler loop (what every coroutine runtime does per switch, at least);
* ``greenlet_switch`` — one ``greenlet.switch`` (a stackful switch);
* ``deque_stream``    — ``deque.append`` + ``popleft``: a stream with no switch at all.
"""

from __future__ import annotations

import importlib
import time
import types
from collections import deque
from collections.abc import Generator
from typing import Any

Result = tuple[float, dict[str, Any]]
_perf = time.perf_counter


def gen_send(n: int) -> Result:
    def gen() -> Generator[int, int, None]:
        x = 0
        while True:
            x = yield x

    g = gen()
    next(g)
    send = g.send
    t0 = _perf()
    for i in range(n):
        send(i)
    el = _perf() - t0
    return el / n * 1e9, {"per": "generator.send (in and out of the frame)"}


@types.coroutine
def _trap(x: Any) -> Generator[Any, Any, Any]:
    return (yield x)


def await_trap(n: int) -> Result:
    async def task() -> None:
        for i in range(n):
            await _trap(i)

    coro = task()
    send = coro.send
    t0 = _perf()
    try:
        while True:
            send(None)
    except StopIteration:
        pass
    el = _perf() - t0
    return el / n * 1e9, {"per": "await of a @types.coroutine trap, resumed by coro.send"}


def greenlet_switch(n: int) -> Result:
    greenlet = importlib.import_module("greenlet")
    main = greenlet.getcurrent()

    def other() -> None:
        back = main.switch
        while True:
            back()

    g = greenlet.greenlet(other)
    switch = g.switch
    t0 = _perf()
    for _ in range(n):
        switch()
    el = _perf() - t0
    return el / (2 * n) * 1e9, {"per": "one greenlet.switch"}


def deque_stream(n: int) -> Result:
    d: deque[int] = deque()
    append, popleft = d.append, d.popleft
    t0 = _perf()
    for i in range(n):
        append(i)
        popleft()
    el = _perf() - t0
    return n / el, {"per": "deque.append + deque.popleft"}
