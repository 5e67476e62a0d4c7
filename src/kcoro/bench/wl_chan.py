"""B1 ping-pong, B2 stream, B3 fan-in: kcoro in each mode, and every channel/queue peer.

Loaded by file path inside a fresh child process (``_child.py``); every library is imported
inside the function that uses it, so a peer's run never imports kcoro and vice versa.

Every workload returns ``(value, extra)`` in its benchmark's unit: ns per one-way hop for B1,
messages per second for B2/B3.  Only the transfer is timed (event-loop start-up, imports and task
creation before the first message are not).  All implementations use the same idiom: the
operations are bound to locals once (``send = ch.send``) and awaited in a plain ``for`` loop.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

Result = tuple[float, dict[str, Any]]
Put = Callable[[Any], Awaitable[Any]]
Get = Callable[[], Awaitable[Any]]

_perf = time.perf_counter
PRODUCERS = 4


def _hop_ns(elapsed: float, round_trips: int) -> float:
    return elapsed / (2 * round_trips) * 1e9


def _lib(name: str) -> Any:
    return importlib.import_module(name)


def _kcap(cap: int | str) -> Any:
    import kcoro

    return kcoro.UNLIMITED if cap == "unlimited" else cap


# -- asyncio-style queues: one factory per library ----------------------------------------------
# ``make(cap)`` runs inside the event loop and returns (put, get, close) for one queue.

def _make_asyncio(cap: int) -> tuple[Put, Get, Callable[[], Awaitable[None]] | None]:
    import asyncio

    q: asyncio.Queue[Any] = asyncio.Queue(cap)
    return q.put, q.get, None


def _make_aiochannel(cap: int) -> tuple[Put, Get, Callable[[], Awaitable[None]] | None]:
    ch = _lib("aiochannel").Channel(cap)
    return ch.put, ch.get, None


def _make_janus(cap: int) -> tuple[Put, Get, Callable[[], Awaitable[None]] | None]:
    q = _lib("janus").Queue(cap)

    async def close() -> None:
        q.close()
        await q.wait_closed()

    return q.async_q.put, q.async_q.get, close


def _make_culsans(cap: int) -> tuple[Put, Get, Callable[[], Awaitable[None]] | None]:
    q = _lib("culsans").Queue(cap)

    async def close() -> None:
        q.close()
        await q.wait_closed()

    return q.async_q.put, q.async_q.get, close


def _make_kcoro(cap: int | str) -> tuple[Put, Get, Callable[[], Awaitable[None]] | None]:
    import kcoro

    ch: kcoro.Channel[Any] = kcoro.Channel(_kcap(cap))
    return ch.send, ch.recv, None


_MAKERS = {"asyncio": _make_asyncio, "aiochannel": _make_aiochannel, "janus": _make_janus,
           "culsans": _make_culsans, "kcoro": _make_kcoro}


def _aio_run(lib: str, body: Callable[[Callable[[Any], tuple[Put, Get]]], Awaitable[float]]
             ) -> float:
    """Run ``body(make)`` under ``asyncio.run``; close what ``make`` created afterwards."""
    import asyncio

    maker = _MAKERS[lib]

    async def main() -> float:
        closers: list[Callable[[], Awaitable[None]]] = []

        def make(cap: Any) -> tuple[Put, Get]:
            put, get, close = maker(cap)
            if close is not None:
                closers.append(close)
            return put, get

        try:
            return await body(make)
        finally:
            for close in closers:
                await close()

    return asyncio.run(main())


def _aio_pingpong(lib: str, n: int, cap: Any) -> Result:
    import asyncio

    async def body(make: Any) -> float:
        put_a, get_a = make(cap)
        put_b, get_b = make(cap)

        async def echo() -> None:
            for _ in range(n):
                await put_b(await get_a())

        task = asyncio.ensure_future(echo())
        t0 = _perf()
        for i in range(n):
            await put_a(i)
            await get_b()
        el = _perf() - t0
        await task
        return el

    return _hop_ns(_aio_run(lib, body), n), {}


def _aio_stream(lib: str, n: int, cap: Any) -> Result:
    import asyncio

    async def body(make: Any) -> float:
        put, get = make(cap)

        async def producer() -> None:
            for i in range(n):
                await put(i)

        t0 = _perf()
        task = asyncio.ensure_future(producer())
        for _ in range(n):
            await get()
        el = _perf() - t0
        await task
        return el

    return n / _aio_run(lib, body), {}


def _aio_fanin(lib: str, n: int, cap: Any) -> Result:
    import asyncio

    per = n // PRODUCERS

    async def body(make: Any) -> float:
        put, get = make(cap)

        async def producer() -> None:
            for i in range(per):
                await put(i)

        t0 = _perf()
        tasks = [asyncio.ensure_future(producer()) for _ in range(PRODUCERS)]
        for _ in range(per * PRODUCERS):
            await get()
        el = _perf() - t0
        await asyncio.gather(*tasks)
        return el

    return per * PRODUCERS / _aio_run(lib, body), {}


# -- B1 ping-pong ---------------------------------------------------------------------------------

def pingpong_kcoro(n: int, cap: int = 0) -> Result:
    import kcoro

    async def main() -> float:
        a: kcoro.Channel[int] = kcoro.Channel(cap, name="ping")
        b: kcoro.Channel[int] = kcoro.Channel(cap, name="pong")

        async def echo() -> None:
            recv, send = a.recv, b.send
            for _ in range(n):
                await send(await recv())

        task = kcoro.spawn(echo)
        send, recv = a.send, b.recv
        t0 = _perf()
        for i in range(n):
            await send(i)
            await recv()
        el = _perf() - t0
        await task
        return el

    return _hop_ns(kcoro.run(main), n), {}


def pingpong_kcoro_aio(n: int, cap: int = 0) -> Result:
    return _aio_pingpong("kcoro", n, cap)


def pingpong_kcoro_threads(n: int, cap: int = 0) -> Result:
    import kcoro

    a: kcoro.Channel[int] = kcoro.Channel(cap, name="ping")
    b: kcoro.Channel[int] = kcoro.Channel(cap, name="pong")

    def echo() -> None:
        recv, send = a.recv_blocking, b.send_blocking
        for _ in range(n):
            send(recv())

    th = threading.Thread(target=echo)
    th.start()
    send, recv = a.send_blocking, b.recv_blocking
    t0 = _perf()
    for i in range(n):
        send(i)
        recv()
    el = _perf() - t0
    th.join()
    return _hop_ns(el, n), {}


def pingpong_asyncio(n: int, cap: int = 1) -> Result:
    return _aio_pingpong("asyncio", n, cap)


def pingpong_aiochannel(n: int, cap: int = 1) -> Result:
    return _aio_pingpong("aiochannel", n, cap)


def pingpong_janus(n: int, cap: int = 1) -> Result:
    return _aio_pingpong("janus", n, cap)


def pingpong_culsans(n: int, cap: int = 1) -> Result:
    return _aio_pingpong("culsans", n, cap)


def pingpong_trio(n: int, cap: int = 0) -> Result:
    trio = _lib("trio")

    async def main() -> float:
        send_a, recv_a = trio.open_memory_channel(cap)
        send_b, recv_b = trio.open_memory_channel(cap)

        async def echo() -> None:
            recv, send = recv_a.receive, send_b.send
            for _ in range(n):
                await send(await recv())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            send, recv = send_a.send, recv_b.receive
            t0 = _perf()
            for i in range(n):
                await send(i)
                await recv()
            el = _perf() - t0
        return el

    return _hop_ns(trio.run(main), n), {}


def pingpong_anyio(n: int, cap: int = 0) -> Result:
    anyio = _lib("anyio")

    async def main() -> float:
        send_a, recv_a = anyio.create_memory_object_stream(cap)
        send_b, recv_b = anyio.create_memory_object_stream(cap)

        async def echo() -> None:
            recv, send = recv_a.receive, send_b.send
            for _ in range(n):
                await send(await recv())

        async with anyio.create_task_group() as tg:
            tg.start_soon(echo)
            send, recv = send_a.send, recv_b.receive
            t0 = _perf()
            for i in range(n):
                await send(i)
                await recv()
            el = _perf() - t0
        return el

    return _hop_ns(anyio.run(main), n), {}


def _gevent_queue(cap: int) -> Any:
    gq = _lib("gevent.queue")
    return gq.Channel() if cap == 0 else gq.Queue(cap)


def pingpong_gevent(n: int, cap: int = 0) -> Result:
    gevent = _lib("gevent")
    a, b = _gevent_queue(cap), _gevent_queue(cap)

    def echo() -> None:
        get, put = a.get, b.put
        for _ in range(n):
            put(get())

    g = gevent.spawn(echo)
    put, get = a.put, b.get
    t0 = _perf()
    for i in range(n):
        put(i)
        get()
    el = _perf() - t0
    g.join()
    return _hop_ns(el, n), {}


def pingpong_threads(n: int, cap: int = 1) -> Result:
    import queue

    a: queue.Queue[int] = queue.Queue(cap)
    b: queue.Queue[int] = queue.Queue(cap)

    def echo() -> None:
        get, put = a.get, b.put
        for _ in range(n):
            put(get())

    th = threading.Thread(target=echo)
    th.start()
    put, get = a.put, b.get
    t0 = _perf()
    for i in range(n):
        put(i)
        get()
    el = _perf() - t0
    th.join()
    return _hop_ns(el, n), {}


# -- B2 stream ------------------------------------------------------------------------------------

def stream_kcoro(n: int, cap: int | str = 64) -> Result:
    import kcoro

    async def main() -> float:
        ch: kcoro.Channel[int] = kcoro.Channel(_kcap(cap), name="stream")

        async def producer() -> None:
            send = ch.send
            for i in range(n):
                await send(i)

        t0 = _perf()
        task = kcoro.spawn(producer)
        recv = ch.recv
        for _ in range(n):
            await recv()
        el = _perf() - t0
        await task
        return el

    return n / kcoro.run(main), {}


def stream_kcoro_conflated(n: int) -> Result:
    """The producer never waits; the consumer gets the latest item whenever it runs.  The value
    is *delivered* messages per second; ``extra`` has how many of ``n`` were delivered."""
    import kcoro

    async def main() -> tuple[float, int]:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.CONFLATED, name="conflated")

        async def producer() -> None:
            send = ch.send
            for i in range(n):
                await send(i)
            ch.close()

        t0 = _perf()
        task = kcoro.spawn(producer)
        got = 0
        async for _ in ch:
            got += 1
        el = _perf() - t0
        await task
        return el, got

    el, got = kcoro.run(main)
    return got / el, {"delivered": got, "sent": n, "sent_per_s": n / el}


def stream_kcoro_zref(n: int, cap: int = 64, size: int = 1024) -> Result:
    import kcoro

    arena_cls = getattr(kcoro, "Arena", None)
    if arena_cls is None or not hasattr(kcoro.Channel, "send_zref"):
        raise NotImplementedError("kcoro.Arena / Channel.send_zref not available yet")

    async def main() -> float:
        arena = arena_cls(max(4 << 20, (cap + 16) * size * 2))
        ch: kcoro.Channel[Any] = kcoro.Channel(cap, name="zref")

        async def producer() -> None:
            alloc, send = arena.alloc, ch.send_zref  # type: ignore[attr-defined]
            for i in range(n):
                p = alloc(size)
                p.view[0] = i & 0xFF
                await send(p)

        t0 = _perf()
        task = kcoro.spawn(producer)
        recv = ch.recv_zref  # type: ignore[attr-defined]
        for _ in range(n):
            p = await recv()
            p.release()
        el = _perf() - t0
        await task
        return el

    el = kcoro.run(main)
    return n / el, {"payload_bytes": size, "GB_per_s": n * size / el / 1e9}


def stream_kcoro_aio(n: int, cap: int = 64) -> Result:
    return _aio_stream("kcoro", n, cap)


def stream_asyncio(n: int, cap: int = 64) -> Result:
    return _aio_stream("asyncio", n, cap)


def stream_aiochannel(n: int, cap: int = 64) -> Result:
    return _aio_stream("aiochannel", n, cap)


def stream_janus(n: int, cap: int = 64) -> Result:
    return _aio_stream("janus", n, cap)


def stream_culsans(n: int, cap: int = 64) -> Result:
    return _aio_stream("culsans", n, cap)


def stream_trio(n: int, cap: int = 64) -> Result:
    trio = _lib("trio")

    async def main() -> float:
        send_ch, recv_ch = trio.open_memory_channel(cap)

        async def producer() -> None:
            send = send_ch.send
            for i in range(n):
                await send(i)

        t0 = _perf()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            recv = recv_ch.receive
            for _ in range(n):
                await recv()
            el = _perf() - t0
        return el

    return n / trio.run(main), {}


def stream_anyio(n: int, cap: int = 64) -> Result:
    anyio = _lib("anyio")

    async def main() -> float:
        send_ch, recv_ch = anyio.create_memory_object_stream(cap)

        async def producer() -> None:
            send = send_ch.send
            for i in range(n):
                await send(i)

        t0 = _perf()
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            recv = recv_ch.receive
            for _ in range(n):
                await recv()
            el = _perf() - t0
        return el

    return n / anyio.run(main), {}


def stream_gevent(n: int, cap: int = 64) -> Result:
    gevent = _lib("gevent")
    q = _gevent_queue(cap)

    def producer() -> None:
        put = q.put
        for i in range(n):
            put(i)

    t0 = _perf()
    g = gevent.spawn(producer)
    get = q.get
    for _ in range(n):
        get()
    el = _perf() - t0
    g.join()
    return n / el, {}


def stream_threads(n: int, cap: int = 64) -> Result:
    import queue

    q: queue.Queue[int] = queue.Queue(cap)

    def producer() -> None:
        put = q.put
        for i in range(n):
            put(i)

    t0 = _perf()
    th = threading.Thread(target=producer)
    th.start()
    get = q.get
    for _ in range(n):
        get()
    el = _perf() - t0
    th.join()
    return n / el, {}


# -- B3 fan-in ------------------------------------------------------------------------------------

def fanin_kcoro(n: int, cap: int = 64) -> Result:
    import kcoro

    per = n // PRODUCERS

    async def main() -> float:
        ch: kcoro.Channel[int] = kcoro.Channel(cap, name="fanin")

        async def producer() -> None:
            send = ch.send
            for i in range(per):
                await send(i)

        t0 = _perf()
        tasks = [kcoro.spawn(producer) for _ in range(PRODUCERS)]
        recv = ch.recv
        for _ in range(per * PRODUCERS):
            await recv()
        el = _perf() - t0
        for t in tasks:
            await t
        return el

    return per * PRODUCERS / kcoro.run(main), {}


def fanin_asyncio(n: int, cap: int = 64) -> Result:
    return _aio_fanin("asyncio", n, cap)


def fanin_aiochannel(n: int, cap: int = 64) -> Result:
    return _aio_fanin("aiochannel", n, cap)


def fanin_janus(n: int, cap: int = 64) -> Result:
    return _aio_fanin("janus", n, cap)


def fanin_culsans(n: int, cap: int = 64) -> Result:
    return _aio_fanin("culsans", n, cap)


def fanin_trio(n: int, cap: int = 64) -> Result:
    trio = _lib("trio")
    per = n // PRODUCERS

    async def main() -> float:
        send_ch, recv_ch = trio.open_memory_channel(cap)

        async def producer() -> None:
            send = send_ch.send
            for i in range(per):
                await send(i)

        t0 = _perf()
        async with trio.open_nursery() as nursery:
            for _ in range(PRODUCERS):
                nursery.start_soon(producer)
            recv = recv_ch.receive
            for _ in range(per * PRODUCERS):
                await recv()
            el = _perf() - t0
        return el

    return per * PRODUCERS / trio.run(main), {}


def fanin_anyio(n: int, cap: int = 64) -> Result:
    anyio = _lib("anyio")
    per = n // PRODUCERS

    async def main() -> float:
        send_ch, recv_ch = anyio.create_memory_object_stream(cap)

        async def producer() -> None:
            send = send_ch.send
            for i in range(per):
                await send(i)

        t0 = _perf()
        async with anyio.create_task_group() as tg:
            for _ in range(PRODUCERS):
                tg.start_soon(producer)
            recv = recv_ch.receive
            for _ in range(per * PRODUCERS):
                await recv()
            el = _perf() - t0
        return el

    return per * PRODUCERS / anyio.run(main), {}


def fanin_gevent(n: int, cap: int = 64) -> Result:
    gevent = _lib("gevent")
    per = n // PRODUCERS
    q = _gevent_queue(cap)

    def producer() -> None:
        put = q.put
        for i in range(per):
            put(i)

    t0 = _perf()
    gs = [gevent.spawn(producer) for _ in range(PRODUCERS)]
    get = q.get
    for _ in range(per * PRODUCERS):
        get()
    el = _perf() - t0
    gevent.joinall(gs)
    return per * PRODUCERS / el, {}


def fanin_threads(n: int, cap: int = 64) -> Result:
    import queue

    per = n // PRODUCERS
    q: queue.Queue[int] = queue.Queue(cap)

    def producer() -> None:
        put = q.put
        for i in range(per):
            put(i)

    t0 = _perf()
    ths = [threading.Thread(target=producer) for _ in range(PRODUCERS)]
    for th in ths:
        th.start()
    get = q.get
    for _ in range(per * PRODUCERS):
        get()
    el = _perf() - t0
    for th in ths:
        th.join()
    return per * PRODUCERS / el, {}
