"""One channel, several kinds of waiters: OS threads, kcoro tasks and an asyncio loop thread
(TESTING.md H; curio test_univ_queue_*).  Nothing may be lost or duplicated, whatever the kind.

Threads cannot be ordered by a scheduler barrier, so these tests only assert outcomes (exact
multisets, conservation, counters) and bound every wait with a generous real-time limit so that
a lost wake-up fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kcoro
from conftest import scaled

from ._kinds import KINDS, assert_conserved, make

LIMIT = 60.0  # seconds: only reached if a wake-up is lost


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    """Switch threads every ~10 µs instead of 5 ms: far more interleavings per second (and
    threads waiting for the GIL no longer wait up to 5 ms at every hand-off)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class Producers:
    """Counts finished producers; the last one out closes the channel (from its own context)."""

    def __init__(self, ch: kcoro.Channel[Any], n: int) -> None:
        self.ch = ch
        self.left = n
        self.lock = threading.Lock()
        self.sent: list[Any] = []  # list.append is atomic under the GIL

    def done(self) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            assert self.ch.close()


def start(fn: Callable[..., None], *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(LIMIT)
        assert not t.is_alive(), f"{t.name} is stuck (lost wake-up?)"


# -- blocking producers and consumers (plain threads) ------------------------------------------
def thread_producer(p: Producers, tag: str, n: int, style: int) -> None:
    ch = p.ch
    try:
        for i in range(n):
            item = (tag, i)
            while True:
                try:
                    if style == 0:
                        ch.send_blocking(item)
                    elif style == 1:
                        ch.send_blocking(item, timeout=0.0005)
                    elif not ch.try_send(item):  # DROP_LATEST full: not accepted
                        time.sleep(0.0001)  # back off (a poll loop, not ordering)
                        continue
                except kcoro.WouldBlock:
                    time.sleep(0.0001)
                    continue
                except TimeoutError:
                    continue
                p.sent.append(item)
                break
    finally:
        p.done()


def thread_consumer(ch: kcoro.Channel[Any], got: list[Any], style: int) -> None:
    if style == 0:
        got.extend(ch.iter_blocking())
        return
    while True:
        try:
            if style == 1:
                got.append(ch.recv_blocking(timeout=0.0005))
            elif style == 2:
                got.append(ch.recv_blocking())
            else:
                got.append(ch.try_recv())
        except kcoro.WouldBlock:
            time.sleep(0.0001)  # back off (a poll loop, not ordering)
        except TimeoutError:
            pass
        except kcoro.ChannelClosed:
            return


# -- kcoro tasks ------------------------------------------------------------------------------
async def task_producer(p: Producers, tag: str, n: int, style: int) -> None:
    ch = p.ch
    try:
        for i in range(n):
            item = (tag, i)
            while True:
                try:
                    if style == 0:
                        await ch.send(item)
                    elif style == 1:
                        await ch.send(item, timeout=0.0005)
                    elif not ch.try_send(item):
                        await kcoro.checkpoint()
                        continue
                except (TimeoutError, kcoro.WouldBlock):
                    await kcoro.checkpoint()
                    continue
                p.sent.append(item)
                break
    finally:
        p.done()


async def task_consumer(ch: kcoro.Channel[Any], got: list[Any], style: int) -> None:
    if style == 0:
        async for x in ch:
            got.append(x)
        return
    while True:
        try:
            if style == 1:
                got.append(await ch.recv(timeout=0.0005))
            else:
                got.append(ch.try_recv())
        except (TimeoutError, kcoro.WouldBlock):
            await kcoro.checkpoint()
        except kcoro.ChannelClosed:
            return


# -- asyncio tasks ----------------------------------------------------------------------------
async def aio_producer(p: Producers, tag: str, n: int, style: int) -> None:
    ch = p.ch
    try:
        for i in range(n):
            item = (tag, i)
            while True:
                try:
                    if style == 0:
                        await ch.send(item)
                    elif style == 1:
                        await ch.send(item, timeout=0.0005)
                    elif style == 2:
                        if not ch.try_send(item):
                            await asyncio.sleep(0)
                            continue
                    else:
                        # asyncio task cancellation racing a hand-off: a send that completed
                        # is reported as sent (wait_for returns), else it did not happen
                        await asyncio.wait_for(ch.send(item), 0.0005)
                except (TimeoutError, kcoro.WouldBlock):
                    await asyncio.sleep(0)
                    continue
                p.sent.append(item)
                break
    finally:
        p.done()


async def aio_consumer(ch: kcoro.Channel[Any], got: list[Any], style: int) -> None:
    while True:
        try:
            if style == 0:
                got.append(await ch.recv())
            elif style == 1:
                got.append(await ch.recv(timeout=0.0005))
            elif style == 2:
                got.append(ch.try_recv())
            elif style == 3:
                got.append(await asyncio.wait_for(ch.recv(), 0.0005))
            else:
                async with asyncio.timeout(0.0005):
                    got.append(await ch.recv())
        except (TimeoutError, kcoro.WouldBlock):
            await asyncio.sleep(0)
        except kcoro.ChannelClosed:
            return


def aio_thread(p: Producers, n: int, nprod: int, ncons: int,
               got: list[list[Any]]) -> threading.Thread:
    async def main() -> None:
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(
                *(aio_producer(p, f"aio{k}", n, k % 4) for k in range(nprod)),
                *(aio_consumer(p.ch, got[k], k % 5) for k in range(ncons)))

    return start(asyncio.run, main())


def received_of(lists: list[list[Any]]) -> list[Any]:
    return [x for got in lists for x in got]


# -- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_threads_produce_tasks_consume(kind: str) -> None:
    n = scaled(1000)
    undelivered: list[Any] = []
    ch = make(kind, undelivered.append)
    p = Producers(ch, 3)
    got: list[list[Any]] = [[] for _ in range(3)]

    async def main() -> None:
        with kcoro.fail_after(LIMIT):
            threads = [start(thread_producer, p, f"t{k}", n, k) for k in range(3)]
            async with kcoro.TaskGroup() as tg:
                for k in range(3):
                    tg.spawn(task_consumer, ch, got[k], k)
        join_all(threads)

    kcoro.run(main)
    assert len(p.sent) == 3 * n
    assert_conserved(kind, p.sent, received_of(got), undelivered, ch)


@pytest.mark.parametrize("kind", list(KINDS))
def test_tasks_produce_threads_consume(kind: str) -> None:
    n = scaled(1000)
    undelivered: list[Any] = []
    ch = make(kind, undelivered.append)
    p = Producers(ch, 3)
    got: list[list[Any]] = [[] for _ in range(4)]
    threads = [start(thread_consumer, ch, got[k], k) for k in range(4)]

    async def main() -> None:
        with kcoro.fail_after(LIMIT):
            async with kcoro.TaskGroup() as tg:
                for k in range(3):
                    tg.spawn(task_producer, p, f"k{k}", n, k)

    kcoro.run(main)
    join_all(threads)
    assert len(p.sent) == 3 * n
    assert_conserved(kind, p.sent, received_of(got), undelivered, ch)


@pytest.mark.parametrize("kind", list(KINDS))
def test_threads_asyncio_and_kcoro_share_one_channel(kind: str) -> None:
    """Producers and consumers in three contexts at once, with timeouts and asyncio task
    cancellation (``wait_for``, ``asyncio.timeout``) racing hand-offs across threads (the
    deterministic reductions are in test_asyncio_races.py)."""
    n = scaled(500)
    undelivered: list[Any] = []
    ch = make(kind, undelivered.append)
    p = Producers(ch, 2 + 4 + 2)
    got: list[list[Any]] = [[] for _ in range(2 + 5 + 3)]
    threads = [start(thread_producer, p, f"t{k}", n, k) for k in range(2)]
    threads += [start(thread_consumer, ch, got[k], k + 1) for k in range(2)]
    threads.append(aio_thread(p, n, 4, 5, got[2:7]))

    async def main() -> None:
        with kcoro.fail_after(LIMIT):
            async with kcoro.TaskGroup() as tg:
                for k in range(2):
                    tg.spawn(task_producer, p, f"k{k}", n, k)
                for k in range(3):
                    tg.spawn(task_consumer, ch, got[7 + k], k)

    kcoro.run(main)
    join_all(threads)
    assert len(p.sent) == 8 * n
    assert_conserved(kind, p.sent, received_of(got), undelivered, ch)
    assert ch.closed_for_recv


# -- cancellation from foreign threads ------------------------------------------------------------
class Chaos:
    """Cancels random live CancelTokens and cancel scopes from its own OS thread."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.tokens: list[kcoro.CancelToken] = []
        self.scopes: list[kcoro.CancelScope] = []
        self.stop = threading.Event()
        self.fired = 0

    def token(self) -> kcoro.CancelToken:
        tok = kcoro.CancelToken()
        with self.lock:
            self.tokens.append(tok)
        return tok

    def drop(self, x: Any) -> None:
        with self.lock:
            for lst in (self.tokens, self.scopes):
                if x in lst:
                    lst.remove(x)

    def run(self) -> None:
        while not self.stop.wait(0.00005):
            with self.lock:
                pool: list[Any] = [*self.tokens, *self.scopes]
            if pool:
                self.rng.choice(pool).cancel()  # both are safe to call from any thread
                self.fired += 1


async def xt_task_producer(p: Producers, c: Chaos, tag: str, n: int) -> None:
    try:
        for i in range(n):
            item = (tag, i)
            if i % 2:
                tok = c.token()
                try:
                    await p.ch.send(item, cancel=tok)
                except kcoro.OperationCancelled:
                    continue  # not sent: the item is still ours
                finally:
                    c.drop(tok)
            else:
                with kcoro.CancelScope() as scope:
                    with c.lock:
                        c.scopes.append(scope)
                    try:
                        await p.ch.send(item)
                    finally:
                        c.drop(scope)
                if scope.cancelled_caught:
                    continue
            p.sent.append(item)
    finally:
        p.done()


async def xt_task_consumer(ch: kcoro.Channel[Any], c: Chaos, got: list[Any]) -> None:
    k = 0
    while True:
        k += 1
        try:
            if k % 2:
                tok = c.token()
                try:
                    got.append(await ch.recv(cancel=tok))
                except kcoro.OperationCancelled:
                    pass
                finally:
                    c.drop(tok)
            else:
                with kcoro.CancelScope() as scope:
                    with c.lock:
                        c.scopes.append(scope)
                    try:
                        got.append(await ch.recv())
                    finally:
                        c.drop(scope)
        except kcoro.ChannelClosed:
            return


def xt_thread_producer(p: Producers, c: Chaos, tag: str, n: int) -> None:
    try:
        for i in range(n):
            item = (tag, i)
            tok = c.token()
            try:
                p.ch.send_blocking(item, cancel=tok)
            except kcoro.OperationCancelled:
                continue
            finally:
                c.drop(tok)
            p.sent.append(item)
    finally:
        p.done()


def xt_thread_consumer(ch: kcoro.Channel[Any], c: Chaos, got: list[Any]) -> None:
    while True:
        tok = c.token()
        try:
            got.append(ch.recv_blocking(cancel=tok))
        except kcoro.OperationCancelled:
            pass
        except kcoro.ChannelClosed:
            return
        finally:
            c.drop(tok)


@pytest.mark.parametrize("kind", list(KINDS))
def test_cancellation_from_another_thread_conserves_items(kind: str) -> None:
    """Tokens and scopes of parked kcoro tasks and blocked threads are cancelled from a chaos
    thread while other threads complete the same waits: each op either transferred its item
    or nothing (sent == received + undelivered, no duplicates)."""
    n = scaled(1000)
    undelivered: list[Any] = []
    ch = make(kind, undelivered.append)
    p = Producers(ch, 4)
    c = Chaos(zlib.crc32(kind.encode()))
    got: list[list[Any]] = [[] for _ in range(4)]
    threads = [start(c.run)]
    threads += [start(xt_thread_producer, p, c, f"t{k}", n) for k in range(2)]
    threads += [start(xt_thread_consumer, ch, c, got[k]) for k in range(2)]

    async def main() -> None:
        with kcoro.fail_after(LIMIT):
            async with kcoro.TaskGroup() as tg:
                for k in range(2):
                    tg.spawn(xt_task_producer, p, c, f"k{k}", n)
                    tg.spawn(xt_task_consumer, ch, c, got[2 + k])

    try:
        kcoro.run(main)
    finally:
        c.stop.set()
    join_all(threads)
    assert c.fired > 0
    assert 0 < len(p.sent) <= 4 * n
    assert_conserved(kind, p.sent, received_of(got), undelivered, ch)
