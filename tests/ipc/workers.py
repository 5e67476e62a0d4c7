"""Child-process bodies for the IPC tests (importable by spawn children)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import kcoro
import kcoro.ipc as ipc


def produce(ch: ipc.Channel[Any], n: int, close: bool = True) -> None:
    for i in range(n):
        ch.send_blocking(i)
    if close:
        ch.close()


def produce_forever(ch: ipc.Channel[Any], size: int) -> None:
    i = 0
    while True:
        ch.send_blocking((i, bytearray(size)))
        i += 1


def consume_to(ch: ipc.Channel[Any], out: ipc.Channel[Any]) -> None:
    """Forward every item of ``ch`` to ``out`` (from kcoro tasks), then close ``out``."""

    async def main() -> None:
        async for x in ch:
            await out.send(x)
        out.close()

    kcoro.run(main)


def echo_asyncio(inp: ipc.Channel[Any], out: ipc.Channel[Any]) -> None:
    async def main() -> None:
        while True:
            try:
                x = await inp.recv()
            except kcoro.ChannelClosed:
                out.close()
                return
            await out.send(x)

    asyncio.run(main())


def park_in_recv(ch: ipc.Channel[Any]) -> None:
    ch.recv_blocking()
    os._exit(3)  # not reached in the tests that kill us


def park_in_send(ch: ipc.Channel[Any], item: Any) -> None:
    try:
        ch.send_blocking(item)
    except kcoro.ChannelClosed:
        os._exit(7)
    os._exit(0)


def hold_payloads(ch: ipc.Channel[Any], n: int, ready: ipc.Channel[Any]) -> None:
    """Receive ``n`` messages and keep every one of them (arrays, payloads) alive."""
    held = [ch.recv_blocking() for _ in range(n)]
    ready.send_blocking(len(held))
    time.sleep(3600)


def collect(ch: ipc.Channel[Any], out: ipc.Channel[Any]) -> None:
    """Receive (id, data) messages until closed; report the ids, then exit."""
    ids = []
    for msg in ch.iter_blocking():
        ids.append(msg[0])
    out.send_blocking(ids)


def send_payloads(ch: ipc.Channel[Any], n: int, size: int) -> None:
    for i in range(n):
        p = ch.arena.alloc(size)
        p.view[:8] = i.to_bytes(8, "little")
        p.view[-1] = i & 0xFF
        ch.send_blocking(p)
    ch.close()


def send_numpy(ch: ipc.Channel[Any], n: int) -> None:
    import numpy as np

    for i in range(n):
        ch.send_blocking(np.full((64, 1024), i, dtype=np.int32))
    ch.close()


def connect_and_send(path: str, item: Any) -> None:
    ch = ipc.connect(path)
    ch.send_blocking(item)


def echo_blocking(inp: ipc.Channel[Any], out: ipc.Channel[Any], n: int) -> None:
    for _ in range(n):
        out.send_blocking(inp.recv_blocking())


def attach_and_sleep(ch: ipc.Channel[Any]) -> None:
    ch.check_invariants()  # attaches this process
    time.sleep(3600)


def die_inside_a_section(ch: ipc.Channel[Any]) -> None:
    """Take the channel lock and get SIGKILLed while holding it (a crash mid-update)."""
    import signal

    ch.try_send("before")
    ch._r.enter()
    os.kill(os.getpid(), signal.SIGKILL)


def die_mid_allocator_update(ch: ipc.Channel[Any]) -> None:
    """Die holding the lock with the allocator half-updated (a free block unlinked)."""
    import signal

    ch.check_invariants()
    r = ch._r
    r.enter()
    a = r.arena
    head = a._m.heads[a._maxorder] - 1
    a._unlink(head, a._maxorder)  # removed from its free list, not yet marked allocated
    os.kill(os.getpid(), signal.SIGKILL)


def claim_a_bell_and_die(ch: ipc.Channel[Any], slot: int) -> None:
    """Claim the doorbell of ``slot``'s direct waiter (its pending flag, under the lock) and
    get SIGKILLed before ringing it -- a sender killed between its section and its ring."""
    import signal

    ch.check_invariants()  # attach (our own slot, watched by the parent)
    r = ch._r
    with r.lock:
        r.p32[slot * 256 + 10] = 1  # P_BELLD
    os.kill(os.getpid(), signal.SIGKILL)
