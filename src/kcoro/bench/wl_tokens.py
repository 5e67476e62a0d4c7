"""B9 tokens: publish a ticket, have another OS thread complete it, wake the waiting task.

One helper thread completes what it is handed through a ``queue.SimpleQueue``; the same hand-off
is used by every implementation, so the difference is the wait/complete/wake machinery:

* kcoro:   ``t = kernel.publish(); handoff(t); await t``  — the thread calls
  ``kernel.complete(t, payload)``;
* asyncio: ``f = loop.create_future(); handoff(f); await f`` — the thread calls
  ``loop.call_soon_threadsafe(f.set_result, payload)``;
* asyncio ``run_coroutine_threadsafe``: the thread submits a coroutine and blocks on its result
  (the round trip of a thread asking the loop for something);
* floor: two ``SimpleQueue``s between two threads (a cross-thread wake each way, no loop).
"""

from __future__ import annotations

import threading
import time
from queue import SimpleQueue
from typing import Any

Result = tuple[float, dict[str, Any]]
_perf = time.perf_counter


def _kcoro_body(n: int) -> Any:
    import kcoro

    async def main() -> float:
        kernel = kcoro.token_kernel()
        q: SimpleQueue[Any] = SimpleQueue()

        def completer() -> None:
            get, complete = q.get, kernel.complete
            while True:
                t = get()
                if t is None:
                    return
                complete(t, 1)

        th = threading.Thread(target=completer)
        th.start()
        publish, put = kernel.publish, q.put
        t0 = _perf()
        for _ in range(n):
            t = publish()
            put(t)
            await t
        el = _perf() - t0
        put(None)
        th.join()
        return el

    return main


def tokens_kcoro(n: int) -> Result:
    import kcoro

    return kcoro.run(_kcoro_body(n)) / n * 1e9, {}


def tokens_kcoro_aio(n: int) -> Result:
    import asyncio

    return asyncio.run(_kcoro_body(n)()) / n * 1e9, {}


def tokens_asyncio_future(n: int) -> Result:
    import asyncio

    async def main() -> float:
        loop = asyncio.get_running_loop()
        q: SimpleQueue[Any] = SimpleQueue()

        def completer() -> None:
            get, call = q.get, loop.call_soon_threadsafe
            while True:
                f = get()
                if f is None:
                    return
                call(f.set_result, 1)

        th = threading.Thread(target=completer)
        th.start()
        create, put = loop.create_future, q.put
        t0 = _perf()
        for _ in range(n):
            f = create()
            put(f)
            await f
        el = _perf() - t0
        put(None)
        await asyncio.to_thread(th.join)
        return el

    return asyncio.run(main()) / n * 1e9, {}


def tokens_asyncio_rcts(n: int) -> Result:
    import asyncio

    async def one() -> int:
        return 1

    async def main() -> float:
        loop = asyncio.get_running_loop()
        span = [0.0]

        def driver() -> None:
            rcts = asyncio.run_coroutine_threadsafe
            t0 = _perf()
            for _ in range(n):
                rcts(one(), loop).result()
            span[0] = _perf() - t0

        await asyncio.to_thread(driver)
        return span[0]

    return asyncio.run(main()) / n * 1e9, {}


def thread_roundtrip(n: int) -> Result:
    a: SimpleQueue[Any] = SimpleQueue()
    b: SimpleQueue[Any] = SimpleQueue()

    def echo() -> None:
        get, put = a.get, b.put
        while True:
            x = get()
            put(x)
            if x is None:
                return

    th = threading.Thread(target=echo)
    th.start()
    put, get = a.put, b.get
    t0 = _perf()
    for i in range(n):
        put(i)
        get()
    el = _perf() - t0
    put(None)
    get()
    th.join()
    return el / n * 1e9, {}
