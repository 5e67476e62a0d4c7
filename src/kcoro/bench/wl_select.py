"""B4 select: one consumer selecting over 4 channels (capacity 64) fed by 4 producers.

kcoro writes the select the way a user would, building the clauses on every call::

    await kcoro.select(a.on_recv(), b.on_recv(), c.on_recv(), d.on_recv())

asyncio has no select: the usual emulation keeps one ``Queue.get()`` task per queue, waits with
``asyncio.wait(..., return_when=FIRST_COMPLETED)`` and re-arms the get of each queue that fired.
trio, anyio, gevent and the thread queues offer no select at all, so they are not in B4.
"""

from __future__ import annotations

import time
from typing import Any

Result = tuple[float, dict[str, Any]]
_perf = time.perf_counter
CHANNELS = 4
CAP = 64


def _select_fn() -> Any:
    import kcoro

    fn = getattr(kcoro, "select", None)
    if fn is None:
        raise NotImplementedError("kcoro.select not available yet")
    return fn


async def _kcoro_body(n: int, fair: bool, spawn: Any) -> float:
    import kcoro

    select = _select_fn()
    per = n // CHANNELS
    chans: list[kcoro.Channel[int]] = [kcoro.Channel(CAP, name=f"sel{i}")
                                       for i in range(CHANNELS)]

    async def producer(ch: kcoro.Channel[int]) -> None:
        send = ch.send
        for i in range(per):
            await send(i)

    a, b, c, d = chans
    t0 = _perf()
    tasks = [spawn(producer(ch)) for ch in chans]
    for _ in range(per * CHANNELS):
        await select(a.on_recv(), b.on_recv(), c.on_recv(), d.on_recv(), fair=fair)
    el = _perf() - t0
    for t in tasks:
        await t
    return el


def select_kcoro(n: int, fair: bool = False) -> Result:
    import kcoro

    async def main() -> float:
        return await _kcoro_body(n, fair, kcoro.spawn)

    _select_fn()
    return (n // CHANNELS) * CHANNELS / kcoro.run(main), {}


def select_kcoro_aio(n: int, fair: bool = False) -> Result:
    import asyncio

    async def main() -> float:
        return await _kcoro_body(n, fair, asyncio.ensure_future)

    _select_fn()
    return (n // CHANNELS) * CHANNELS / asyncio.run(main()), {}


def select_asyncio(n: int) -> Result:
    import asyncio

    per = n // CHANNELS
    total = per * CHANNELS

    async def main() -> float:
        queues: list[asyncio.Queue[int]] = [asyncio.Queue(CAP) for _ in range(CHANNELS)]

        async def producer(q: asyncio.Queue[int]) -> None:
            put = q.put
            for i in range(per):
                await put(i)

        t0 = _perf()
        tasks = [asyncio.ensure_future(producer(q)) for q in queues]
        ensure, wait, first = asyncio.ensure_future, asyncio.wait, asyncio.FIRST_COMPLETED
        pending: dict[asyncio.Future[int], int] = {ensure(q.get()): i
                                                   for i, q in enumerate(queues)}
        got = 0
        while got < total:
            done, _ = await wait(pending, return_when=first)
            for f in done:
                i = pending.pop(f)
                f.result()
                got += 1
                pending[ensure(queues[i].get())] = i
        el = _perf() - t0
        for f in pending:
            f.cancel()
        await asyncio.gather(*tasks)
        return el

    return total / asyncio.run(main()), {}
