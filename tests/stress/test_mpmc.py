"""Stress and conservation on the native runtime (TESTING.md H; Go TestChan, TestMultiConsumer).

Short by default; ``KCORO_STRESS=20`` runs them long.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

import kcoro
from conftest import scaled

from ._kinds import DROPPING, KINDS, assert_conserved, make

PRODUCERS = 4
CONSUMERS = 4


# -- 4 producers x 4 consumers, every kind ---------------------------------------------------
async def _produce(ch: kcoro.Channel[Any], pid: int, n: int, sent: list[Any]) -> None:
    """Each producer uses a different form of send; every item is retried until accepted.

    Producers pause (real time) every few dozen items so that consumers' short timeouts fire
    now and then, racing with hand-offs; no assertion depends on the timing."""
    for i in range(n):
        if i % (40 + 7 * pid) == 0:
            await kcoro.sleep(2e-4)
        item = (pid, i)
        while True:
            try:
                if pid == 0:
                    await ch.send(item)
                elif pid == 1:
                    await ch.send(item, timeout=1e-5)
                elif pid == 2:
                    if not ch.try_send(item):  # DROP_LATEST full: not accepted, still ours
                        await kcoro.checkpoint()
                        continue
                else:
                    await ch.send(item, timeout=0 if i % 2 else None)
            except (TimeoutError, kcoro.WouldBlock):
                await kcoro.checkpoint()
                continue
            sent.append(item)
            break


async def _pause(got: list[Any], every: int) -> None:
    if len(got) % every == every - 1:
        await kcoro.sleep(2e-4)  # load variation only (see _produce)


async def _consume(ch: kcoro.Channel[Any], cid: int, got: list[Any]) -> None:
    """Consumers mix plain recv, async-for, try_recv + checkpoint and recv with timeouts."""
    every = 50 + 11 * cid
    if cid == 0:
        while True:
            try:
                got.append(await ch.recv())
            except kcoro.ChannelClosed:
                return
            await _pause(got, every)
    elif cid == 1:
        async for item in ch:
            got.append(item)
            await _pause(got, every)
    elif cid == 2:
        while True:
            try:
                got.append(ch.try_recv())
            except kcoro.WouldBlock:
                await kcoro.checkpoint()
                continue
            except kcoro.ChannelClosed:
                return
            await _pause(got, every)
    else:
        while True:
            try:
                got.append(await ch.recv(timeout=1e-5))
            except TimeoutError:
                continue
            except kcoro.ChannelClosed:
                return
            await _pause(got, every)


@pytest.mark.parametrize("kind", list(KINDS))
def test_mpmc_exact_multiset(kind: str) -> None:
    n = scaled(500)
    undelivered: list[Any] = []
    sent: list[Any] = []
    per_consumer: list[list[Any]] = [[] for _ in range(CONSUMERS)]

    async def main() -> kcoro.Channel[Any]:
        ch = make(kind, undelivered.append)
        async with kcoro.TaskGroup() as consumers:
            for c in range(CONSUMERS):
                consumers.spawn(_consume, ch, c, per_consumer[c])
            async with kcoro.TaskGroup() as producers:
                for p in range(PRODUCERS):
                    producers.spawn(_produce, ch, p, n, sent)
            assert ch.close()
        return ch

    ch = kcoro.run(main)
    received = [x for got in per_consumer for x in got]
    assert len(sent) == PRODUCERS * n
    assert_conserved(kind, sent, received, undelivered, ch)
    if kind not in DROPPING:
        # Go TestChan: every value of every producer arrives exactly once.
        counts = defaultdict(int)
        for _, i in received:
            counts[i] += 1
        assert all(counts[i] == PRODUCERS for i in range(n))
    # The channel is FIFO: what one consumer got from one producer is in sending order.
    for got in per_consumer:
        last: dict[int, int] = {}
        for pid, i in got:
            assert i > last.get(pid, -1), f"producer {pid}: {i} after {last[pid]}"
            last[pid] = i


# -- worker pool with cascading close (Go TestMultiConsumer) ---------------------------------
POOLS = [(0, 0), (1, 10), (10, kcoro.UNLIMITED), (kcoro.UNLIMITED, 0), (2, 1)]


@pytest.mark.parametrize(("qcap", "rcap"), POOLS, ids=[f"q{q}-r{r}" for q, r in POOLS])
def test_worker_pool_cascading_close(qcap: Any, rcap: Any) -> None:
    n = scaled(10000)
    workers = 9

    async def main() -> tuple[int, int, list[tuple[int, int]]]:
        q: kcoro.Channel[int] = kcoro.Channel(qcap, name="pool-q")
        r: kcoro.Channel[int] = kcoro.Channel(rcap, name="pool-r")
        stats: kcoro.Channel[tuple[int, int]] = kcoro.Channel(kcoro.UNLIMITED, name="pool-stats")
        alive = [workers]
        closes: list[bool] = []

        async def worker(w: int) -> None:
            count = total = 0
            async for v in q:
                count += 1
                total += v
                await r.send(v)
            stats.try_send((count, total))
            alive[0] -= 1
            if alive[0] == 0:  # the last worker out closes the next stage
                closes.append(r.close())
                closes.append(stats.close())

        async def feed() -> None:
            for i in range(n):
                await q.send(i * 7 + 1)
            assert q.close()

        count = total = 0
        async with kcoro.TaskGroup() as tg:
            for w in range(workers):
                tg.spawn(worker, w)
            tg.spawn(feed)
            async for v in r:
                count += 1
                total += v
        per_worker = [x async for x in stats]
        assert closes == [True, True]
        for ch in (q, r, stats):
            ch.check_invariants()
            s = ch.stats()
            assert s.closed_for_recv and s.buffered == 0
            assert s.waiting_senders == s.waiting_receivers == 0
        assert q.stats().sends == r.stats().sends == n
        return count, total, per_worker

    count, total, per_worker = kcoro.run(main)
    expect = sum(i * 7 + 1 for i in range(n))
    assert count == n and total == expect
    assert len(per_worker) == workers
    assert sum(c for c, _ in per_worker) == n and sum(t for _, t in per_worker) == expect
