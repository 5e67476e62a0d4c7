"""B5 threads: one OS thread producing for one task (``t2t_*``) and one task producing for one
OS thread (``k2t_*``), capacity 64 wherever the library has a bound.

The clock runs from starting the producer until the consumer holds the last item.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

Result = tuple[float, dict[str, Any]]
_perf = time.perf_counter
CAP = 64


def _lib(name: str) -> Any:
    return importlib.import_module(name)


# -- thread -> task -----------------------------------------------------------------------------

def _t2t_kcoro_body(n: int) -> Any:
    import kcoro

    async def main() -> float:
        ch: kcoro.Channel[int] = kcoro.Channel(CAP, name="t2t")

        def producer() -> None:
            send = ch.send_blocking
            for i in range(n):
                send(i)

        th = threading.Thread(target=producer)
        t0 = _perf()
        th.start()
        recv = ch.recv
        for _ in range(n):
            await recv()
        el = _perf() - t0
        th.join()
        return el

    return main


def t2t_kcoro(n: int) -> Result:
    import kcoro

    return n / kcoro.run(_t2t_kcoro_body(n)), {}


def t2t_kcoro_aio(n: int) -> Result:
    import asyncio

    return n / asyncio.run(_t2t_kcoro_body(n)()), {}


def _t2t_mixed_queue(lib: str, n: int) -> Result:
    import asyncio

    async def main() -> float:
        q = _lib(lib).Queue(CAP)

        def producer() -> None:
            put = q.sync_q.put
            for i in range(n):
                put(i)

        th = threading.Thread(target=producer)
        t0 = _perf()
        th.start()
        get = q.async_q.get
        for _ in range(n):
            await get()
        el = _perf() - t0
        await asyncio.to_thread(th.join)
        q.close()
        await q.wait_closed()
        return el

    return n / asyncio.run(main()), {}


def t2t_janus(n: int) -> Result:
    return _t2t_mixed_queue("janus", n)


def t2t_culsans(n: int) -> Result:
    return _t2t_mixed_queue("culsans", n)


def t2t_asyncio(n: int) -> Result:
    import asyncio

    async def main() -> float:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[int] = asyncio.Queue()

        def producer() -> None:
            call, put = loop.call_soon_threadsafe, q.put_nowait
            for i in range(n):
                call(put, i)

        th = threading.Thread(target=producer)
        t0 = _perf()
        th.start()
        get = q.get
        for _ in range(n):
            await get()
        el = _perf() - t0
        await asyncio.to_thread(th.join)
        return el

    return n / asyncio.run(main()), {"bounded": False}


# -- task -> thread -----------------------------------------------------------------------------

def _k2t_kcoro_body(n: int, joiner: Any) -> Any:
    import kcoro

    async def main() -> float:
        ch: kcoro.Channel[int] = kcoro.Channel(CAP, name="k2t")
        end = [0.0]

        def consumer() -> None:
            recv = ch.recv_blocking
            for _ in range(n):
                recv()
            end[0] = _perf()

        th = threading.Thread(target=consumer)
        th.start()
        send = ch.send
        t0 = _perf()
        for i in range(n):
            await send(i)
        await joiner(th)
        return end[0] - t0

    return main


async def _join_blocking(th: threading.Thread) -> None:
    th.join()  # every item is accepted: the consumer no longer needs this thread's runtime


async def _join_async(th: threading.Thread) -> None:
    import asyncio

    await asyncio.to_thread(th.join)


def k2t_kcoro(n: int) -> Result:
    import kcoro

    return n / kcoro.run(_k2t_kcoro_body(n, _join_blocking)), {}


def k2t_kcoro_aio(n: int) -> Result:
    import asyncio

    return n / asyncio.run(_k2t_kcoro_body(n, _join_async)()), {}


def _k2t_mixed_queue(lib: str, n: int) -> Result:
    import asyncio

    async def main() -> float:
        q = _lib(lib).Queue(CAP)
        end = [0.0]

        def consumer() -> None:
            get = q.sync_q.get
            for _ in range(n):
                get()
            end[0] = _perf()

        th = threading.Thread(target=consumer)
        th.start()
        put = q.async_q.put
        t0 = _perf()
        for i in range(n):
            await put(i)
        await asyncio.to_thread(th.join)
        q.close()
        await q.wait_closed()
        return end[0] - t0

    return n / asyncio.run(main()), {}


def k2t_janus(n: int) -> Result:
    return _k2t_mixed_queue("janus", n)


def k2t_culsans(n: int) -> Result:
    return _k2t_mixed_queue("culsans", n)


def k2t_asyncio(n: int) -> Result:
    import asyncio

    async def main() -> float:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[int] = asyncio.Queue(CAP)
        end = [0.0]

        def consumer() -> None:
            rcts = asyncio.run_coroutine_threadsafe
            for _ in range(n):
                rcts(q.get(), loop).result()
            end[0] = _perf()

        th = threading.Thread(target=consumer)
        th.start()
        put = q.put
        t0 = _perf()
        for i in range(n):
            await put(i)
        await asyncio.to_thread(th.join)
        return end[0] - t0

    return n / asyncio.run(main()), {}
