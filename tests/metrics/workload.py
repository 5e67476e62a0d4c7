"""A kcoro program for the monitor tests, run as a separate process.

Started with KCORO_METRICS=1 (so it serves metrics from import) and KCORO_METRICS_DIR set by the
test.  It runs traffic through one channel of every kind, keeps one task parked forever on the
``idle`` channel, prints ``READY <pid> <socket>`` once serving, and exits when its stdin closes
(the test's handshake to stop it).
"""

from __future__ import annotations

import sys
import threading

import kcoro
import kcoro.metrics


async def main() -> None:
    stop: kcoro.Channel[None] = kcoro.Channel(name="stop")
    rv: kcoro.Channel[bytes] = kcoro.Channel(kcoro.RENDEZVOUS, name="rv")
    buf: kcoro.Channel[bytes] = kcoro.Channel(8, name="buf")
    unl: kcoro.Channel[bytes] = kcoro.Channel(kcoro.UNLIMITED, name="unl")
    conf: kcoro.Channel[bytes] = kcoro.Channel(kcoro.CONFLATED, name="conf")
    idle: kcoro.Channel[int] = kcoro.Channel(4, name="idle")

    async def produce(ch: kcoro.Channel[bytes]) -> None:
        while True:
            for _ in range(20):
                await ch.send(b"x" * 100)
            await kcoro.sleep(0.01)

    async def consume(ch: kcoro.Channel[bytes]) -> None:
        while True:
            await ch.recv()

    async def idle_waiter() -> None:
        await idle.recv()

    for _ in range(3):  # visible failures: would-block on an empty channel
        try:
            idle.try_recv()
        except kcoro.WouldBlock:
            pass

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.close()

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with kcoro.TaskGroup() as tg:
        for ch in (rv, buf, unl, conf):
            tg.spawn(produce, ch, name=f"produce-{ch.name}")
            tg.spawn(consume, ch, name=f"consume-{ch.name}")
        tg.spawn(idle_waiter, name="idle-waiter")
        srv = kcoro.metrics.current_server()
        assert srv is not None, "KCORO_METRICS=1 did not start serving"
        print(f"READY {srv.pid} {srv.path}", flush=True)
        try:
            await stop.recv()
        except kcoro.ChannelClosed:
            pass
        raise SystemExit(0)


if __name__ == "__main__":
    try:
        kcoro.run(main)
    except SystemExit:
        pass
