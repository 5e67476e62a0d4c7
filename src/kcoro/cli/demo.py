"""``kcoro demo``: small programs that show the runtime working, checked by the test suite."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import kcoro

DEMOS = ("park", "tokens", "pipeline", "ipc")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the demos (all of them by default)")
    p.add_argument("name", nargs="?", choices=(*DEMOS, "all"), default="all")
    p.add_argument("--items", type=int, default=20000, help="items through the pipeline demo")
    p.add_argument("--workers", type=int, default=4, help="workers in the pipeline demo")
    p.add_argument("--watch", action="store_true",
                   help="keep the pipeline running slowly with metrics served, to watch it with "
                        "`kcoro top PID` (Ctrl-C stops)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "watch", False):
        demo_pipeline_watch(args.workers)
        return 0
    names = DEMOS if args.name == "all" else (args.name,)
    for i, name in enumerate(names):
        if len(names) > 1:
            print(("\n" if i else "") + f"=== kcoro demo {name} ===")
        if name == "park":
            demo_park()
        elif name == "tokens":
            demo_tokens()
        elif name == "pipeline":
            demo_pipeline(args.items, args.workers)
        elif name == "ipc":
            from .demo_ipc import demo_ipc

            demo_ipc()
    if args.name == "all":
        print("\nWatch it live: run `kcoro demo pipeline --watch`, then `kcoro top PID` "
              "in another terminal.")
    return 0


async def _until_parked(task: kcoro.Task[Any]) -> None:
    while task.state != "PARKED":
        await kcoro.checkpoint()


def demo_park() -> None:
    """The journal's lab_simple_park_demo: a coroutine parks and is resumed."""

    async def main() -> None:
        ticket = kcoro.token_kernel().publish()

        async def co() -> None:
            print("[co] before park")
            await ticket
            print("[co] after park")

        print("[main] resuming")
        task = kcoro.spawn(co, name="co")
        await _until_parked(task)
        print("[main] first resume return")
        ticket.complete()
        await task
        print("[main] second resume return")

    kcoro.run(main)


def demo_tokens() -> None:
    """The journal's lab_token_kernel_demo, with a real scheduler: the ticket is completed by
    another OS thread, and the cancel path is shown too."""
    print("[main] initializing token kernel...")
    kcoro.token_kernel().shutdown()  # a fresh kernel: ticket ids start at 1
    kernel = kcoro.token_kernel()

    async def main() -> None:
        for mode in ("complete", "cancel"):
            ticket = kernel.publish(key=f"demo-{mode}")

            async def co(t: kcoro.Ticket = ticket) -> None:
                print(f"[coroutine] published ticket id={t.id}, parking...")
                try:
                    payload = await t
                    print(f"[coroutine] resumed payload={payload!r} len={len(payload)} "
                          f"status={t.state}")
                except kcoro.OperationCancelled as exc:
                    print(f"[coroutine] resumed: OperationCancelled reason={exc.reason!r} "
                          f"status={t.state}")

            task = kcoro.spawn(co)
            await _until_parked(task)
            print(f"[main] coroutine parked with ticket id={ticket.id}")
            if mode == "complete":
                print(f"[main] completing ticket id={ticket.id} from another thread")
                th = threading.Thread(target=kernel.complete, args=(ticket.key, b"ok"))
            else:
                print(f"[main] cancelling ticket id={ticket.id} from another thread")
                th = threading.Thread(target=kernel.cancel, args=(ticket.key, "demo cancel"))
            th.start()
            await task
            th.join()
        late = kernel.complete("demo-complete", b"late")
        s = kernel.stats()
        print(f"[main] late completion accepted={late}; kernel: published={s.published} "
              f"completed={s.completed} cancelled={s.cancelled} zombies={s.zombies} "
              f"outstanding={s.outstanding}")

    kcoro.run(main)


def demo_pipeline(items: int = 20000, workers: int = 4) -> None:
    """producer -> workers -> sink through two buffered channels, then throughput and stats."""

    async def main() -> None:
        jobs: kcoro.Channel[int] = kcoro.Channel(64, name="jobs")
        results: kcoro.Channel[int] = kcoro.Channel(64, name="results")

        async def producer() -> None:
            for i in range(items):
                await jobs.send(i)
            jobs.close()

        async def worker() -> None:
            async for n in jobs:
                await results.send(n * n)

        async def workers_then_close() -> None:
            async with kcoro.TaskGroup() as tg:
                for _ in range(workers):
                    tg.spawn(worker)
            results.close()

        start = time.perf_counter()
        total = count = 0
        async with kcoro.TaskGroup() as tg:
            tg.spawn(producer)
            tg.spawn(workers_then_close)
            async for sq in results:
                total += sq
                count += 1
        elapsed = time.perf_counter() - start
        expect = sum(i * i for i in range(items))
        print(f"pipeline: {count} items through {workers} workers in {elapsed:.3f}s "
              f"({count / elapsed:,.0f} items/s); checksum {'ok' if total == expect else 'BAD'}")
        for ch in (jobs, results):
            s = ch.stats()
            print(f"  {s.name:8s} {s.kind:9s} cap={s.capacity:<3} sends={s.sends} recvs={s.recvs} "
                  f"peak={s.peak} buffered={s.buffered} closed={s.closed_for_recv} "
                  f"waiting={s.waiting_senders}/{s.waiting_receivers}")
        k = kcoro.token_kernel().stats()
        print(f"  tokens: {k.parked} parked waits, {k.completed} completed, "
              f"{k.outstanding} outstanding")

    kcoro.run(main)


def demo_pipeline_watch(workers: int = 4) -> None:
    """The pipeline kept alive for ``kcoro top``: a producer whose rate swings between bursts
    and lulls, workers that take a little time per item, metrics served until Ctrl-C."""
    import math
    import os

    import kcoro.metrics

    srv = kcoro.metrics.serve()
    pid = os.getpid()
    print(f"pipeline running with metrics served (pid {pid}, socket {srv.path})")
    print(f"watch it:  kcoro top {pid}      (or: kcoro top {pid} --ndjson)   Ctrl-C stops",
          flush=True)

    async def main() -> None:
        jobs: kcoro.Channel[bytes] = kcoro.Channel(64, name="jobs")
        results: kcoro.Channel[int] = kcoro.Channel(64, name="results")

        async def producer() -> None:
            t0 = time.monotonic()
            while True:
                # 20 ms ticks; the burst size follows a 20 s wave so the sparklines move
                burst = int(40 + 35 * math.sin((time.monotonic() - t0) / 20 * 2 * math.pi))
                for _ in range(burst):
                    await jobs.send(b"x" * 256)
                await kcoro.sleep(0.02)

        async def worker() -> None:
            async for item in jobs:
                await kcoro.sleep(0.002)  # "work": bursts outrun the workers, lulls drain
                await results.send(len(item))

        async def sink() -> None:
            async for _ in results:
                pass

        async with kcoro.TaskGroup() as tg:
            tg.spawn(producer, name="producer")
            for i in range(workers):
                tg.spawn(worker, name=f"worker-{i}")
            tg.spawn(sink, name="sink")

    try:
        kcoro.run(main)
    finally:
        kcoro.metrics.stop()
