"""Select (TESTING.md G): exactly once, bias/fairness, registration cleanup, close, cancellation,
crossed selects, self-select, threads and asyncio."""

from __future__ import annotations

import asyncio
import collections
import gc
import math
import threading
import tracemalloc
from typing import Any

import pytest

import kcoro
from conftest import scaled
from kcoro.testing import MockClock, wait_all_tasks_blocked, wait_until

KINDS: list[Any] = [kcoro.RENDEZVOUS, 1, 2, 10, kcoro.UNLIMITED, kcoro.CONFLATED]
KIND_IDS = ["rendezvous", "buf1", "buf2", "buf10", "unlimited", "conflated"]


def run(fn: Any, *args: Any, autojump: bool = True) -> Any:
    clock = MockClock(autojump_threshold=0) if autojump else None
    return kcoro.run(fn, *args, clock=clock)


def waiting(ch: kcoro.Channel[Any]) -> tuple[int, int]:
    s = ch.stats()
    return s.waiting_senders, s.waiting_receivers


# -- basics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_ready_recv_clause_beats_timeout_zero(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(cap)
        b: kcoro.Channel[str] = kcoro.Channel(1)
        b.try_send("x")
        assert await kcoro.select(a.on_recv(), b.on_recv(), timeout=0) == (1, "x")
        with pytest.raises(kcoro.WouldBlock):
            await kcoro.select(a.on_recv(), b.on_recv(), timeout=0)
        assert waiting(a) == (0, 0) and waiting(b) == (0, 0)
        a.check_invariants()
        b.check_invariants()

    run(main)


@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_parked_select_completed_by_a_later_send(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(cap)
        b: kcoro.Channel[int] = kcoro.Channel(cap)
        result: list[tuple[int, Any]] = []

        async def selector() -> None:
            result.append(await kcoro.select(a.on_recv(), b.on_recv()))

        kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        assert waiting(a) == (0, 1) and waiting(b) == (0, 1)
        await b.send(7)
        await wait_all_tasks_blocked()
        assert result == [(1, 7)]
        assert waiting(a) == (0, 0) and waiting(b) == (0, 0)
        assert len(a) == 0 and len(b) == 0
        assert b.stats().sends == 1 and b.stats().recvs == 1
        a.check_invariants()
        b.check_invariants()

    run(main)


def test_biased_by_default_takes_first_ready_clause() -> None:
    async def main() -> None:
        chans = [kcoro.Channel[int](1) for _ in range(4)]
        for _ in range(200):
            for i, ch in enumerate(chans):
                ch.try_send(i)
            index, value = await kcoro.select(*(c.on_recv() for c in chans))
            assert (index, value) == (0, 0)
            for ch in chans[1:]:
                ch.try_recv()

    run(main)


def test_fair_select_is_uniform_among_ready_clauses() -> None:
    trials = scaled(4000)

    async def main() -> collections.Counter[int]:
        chans = [kcoro.Channel[int](1) for _ in range(3)]
        counts: collections.Counter[int] = collections.Counter()
        for _ in range(trials):
            for i, ch in enumerate(chans):
                if len(ch) == 0:
                    ch.try_send(i)
            index, value = await kcoro.select(*(c.on_recv() for c in chans), fair=True)
            assert value == index
            counts[index] += 1
        return counts

    counts = run(main)
    expect = trials / 3
    sigma = math.sqrt(trials * (1 / 3) * (2 / 3))
    for i in range(3):
        assert abs(counts[i] - expect) < 6 * sigma, counts


def test_fair_send_clauses_each_get_a_share() -> None:
    async def main() -> collections.Counter[int]:
        a: kcoro.Channel[int] = kcoro.Channel(1)
        b: kcoro.Channel[int] = kcoro.Channel(1)
        counts: collections.Counter[int] = collections.Counter()
        for _ in range(scaled(1000)):
            index, _ = await kcoro.select(a.on_send(0), b.on_send(1), fair=True)
            counts[index] += 1
            (a if index == 0 else b).try_recv()
        return counts

    counts = run(main)
    total = sum(counts.values())
    assert counts[0] > total * 0.1 and counts[1] > total * 0.1


# -- exactly once ---------------------------------------------------------------------------------
def test_select_over_four_sends_does_exactly_one() -> None:
    async def main() -> None:
        chans = [kcoro.Channel[int](1) for _ in range(4)]
        for n in range(scaled(3000)):
            index, value = await kcoro.select(*(c.on_send(n) for c in chans), fair=True)
            assert value is None
            assert [len(c) for c in chans] == [1 if i == index else 0 for i in range(4)]
            assert chans[index].try_recv() == n

    run(main)


@pytest.mark.parametrize("cap", [kcoro.RENDEZVOUS, 1, 10, kcoro.UNLIMITED], ids=str)
def test_three_select_senders_three_select_receivers_exactly_once(cap: Any) -> None:
    per_sender = scaled(300)

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(cap)
        other: kcoro.Channel[int] = kcoro.Channel()  # never used: a losing clause everywhere
        seen = bytearray(3 * per_sender)
        done = kcoro.Channel[None](kcoro.UNLIMITED)

        async def sender(base: int) -> None:
            for i in range(per_sender):
                index, _ = await kcoro.select(other.on_recv(), ch.on_send(base + i))
                assert index == 1

        async def receiver() -> None:
            while True:
                index, value = await kcoro.select(ch.on_recv(), other.on_recv())
                if value is None:
                    return
                assert index == 0
                assert seen[value] == 0, f"{value} delivered twice"
                seen[value] = 1
                if sum(seen) == len(seen):
                    await done.send(None)

        async with kcoro.TaskGroup() as tg:
            for s in range(3):
                tg.spawn(sender, s * per_sender)
            receivers = [tg.spawn(receiver) for _ in range(3)]
            await done.recv()
            for r in receivers:
                r.cancel()
        assert all(seen)
        assert waiting(ch) == (0, 0) and waiting(other) == (0, 0)
        ch.check_invariants()
        other.check_invariants()

    run(main)


def test_mixed_kinds_select_stress_every_item_once() -> None:
    n = scaled(400)

    async def main() -> None:
        chans: list[kcoro.Channel[int]] = [kcoro.Channel(c) for c in
                                           (kcoro.RENDEZVOUS, 1, 4, kcoro.UNLIMITED)]
        received: list[int] = []

        async def producer(p: int) -> None:
            for i in range(n):
                await kcoro.select(*(c.on_send(p * n + i) for c in chans), fair=True)

        async def consumer() -> None:
            while True:
                try:
                    _, v = await kcoro.select(*(c.on_recv() for c in chans), fair=True)
                except kcoro.ChannelClosed:
                    return
                received.append(v)

        async with kcoro.TaskGroup() as tg:
            consumers = [tg.spawn(consumer) for _ in range(3)]
            async with kcoro.TaskGroup() as producers:
                for p in range(3):
                    producers.spawn(producer, p)
            for c in chans:
                c.close()
            for t in consumers:
                await t
        # close() raises in a select as soon as any clause's channel is closed and drained, so
        # drain what the consumers left behind.
        for c in chans:
            while True:
                try:
                    received.append(c.try_recv())
                except (kcoro.WouldBlock, kcoro.ChannelClosed):
                    break
        assert sorted(received) == list(range(3 * n))
        for c in chans:
            c.check_invariants()
            assert waiting(c) == (0, 0)

    run(main)


# -- registrations are cleaned up -----------------------------------------------------------------
@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_losing_registrations_are_removed(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(cap)
        b: kcoro.Channel[int] = kcoro.Channel(cap)

        async def selector() -> Any:
            return await kcoro.select(a.on_recv(), b.on_recv(), a.on_recv())

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        assert waiting(a) == (0, 2) and waiting(b) == (0, 1)
        await b.send(1)
        assert await t == (1, 1)
        assert waiting(a) == (0, 0) and waiting(b) == (0, 0)
        # No ghost receiver: another waiter on ``a`` is woken by the next send (Go select6).
        got: list[int] = []

        async def plain() -> None:
            got.append(await a.recv())

        kcoro.spawn(plain)
        await wait_all_tasks_blocked()
        await a.send(2)
        await wait_all_tasks_blocked()
        assert got == [2]
        a.check_invariants()
        b.check_invariants()

    run(main)


def test_memory_flat_after_many_timed_out_selects() -> None:
    rounds = scaled(20000)

    async def main() -> None:
        a: kcoro.Channel[bytes] = kcoro.Channel()
        b: kcoro.Channel[bytes] = kcoro.Channel(1)
        big = b"x" * 4096

        async def loop(n: int) -> None:
            for _ in range(n):
                b.try_send(big)
                await kcoro.select(a.on_send(big), b.on_recv())

        await loop(1000)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await loop(rounds)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert after - before < 200_000, (before, after)
        # the losing send entries on ``a`` were swept: the queue stays small
        assert len(a._sendq) <= 16 and a.stats().waiting_senders == 0

    run(main)


def test_timeouts_leave_queues_swept() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel()
        for _ in range(scaled(2000)):
            with pytest.raises(TimeoutError):
                await kcoro.select(a.on_recv(), a.on_send(1), timeout=0.001)
        assert waiting(a) == (0, 0)
        assert len(a._recvq) <= 16 and len(a._sendq) <= 16
        a.check_invariants()

    run(main)


# -- closing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_closed_recv_clause_raises_with_index(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(cap)
        c: kcoro.Channel[int] = kcoro.Channel(cap)
        c.close()
        with pytest.raises(kcoro.ChannelClosed) as info:
            await kcoro.select(a.on_recv(), c.on_recv())
        assert info.value.index == 1
        assert c.stats().recv_closed == 1

    run(main)


@pytest.mark.parametrize("cap", [1, 2, 10, kcoro.UNLIMITED, kcoro.CONFLATED], ids=str)
def test_closed_channel_with_data_still_delivers_in_select(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel()
        c: kcoro.Channel[int] = kcoro.Channel(cap)
        c.try_send(5)
        c.close()
        assert await kcoro.select(a.on_recv(), c.on_recv(), timeout=0) == (1, 5)
        with pytest.raises(kcoro.ChannelClosed):
            await kcoro.select(a.on_recv(), c.on_recv(), timeout=0)

    run(main)


@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_send_clause_on_closed_channel_raises(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel()
        c: kcoro.Channel[int] = kcoro.Channel(cap)
        c.close()
        with pytest.raises(kcoro.ChannelClosed) as info:
            await kcoro.select(a.on_recv(), c.on_send(1))
        assert info.value.index == 1
        assert c.stats().send_closed == 1

    run(main)


@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_close_while_parked_fails_select_with_that_index(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(cap)
        b: kcoro.Channel[int] = kcoro.Channel(cap)

        async def selector() -> Any:
            return await kcoro.select(a.on_recv(), b.on_recv())

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        b.close()
        with pytest.raises(kcoro.ChannelClosed) as info:
            await t
        assert info.value.index == 1
        assert waiting(a) == (0, 0) and waiting(b) == (0, 0)
        a.check_invariants()
        b.check_invariants()

    run(main)


def test_winning_clause_is_final() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(1)
        b: kcoro.Channel[int] = kcoro.Channel(1)
        a.try_send(1)
        assert await kcoro.select(a.on_recv(), b.on_recv()) == (0, 1)
        b.close()  # closing a losing clause's channel afterwards changes nothing
        assert waiting(b) == (0, 0)

    run(main)


# -- cancellation and timeouts --------------------------------------------------------------------
@pytest.mark.parametrize("cap", KINDS, ids=KIND_IDS)
def test_task_cancel_while_parked_consumes_nothing(cap: Any) -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(cap)
        b: kcoro.Channel[int] = kcoro.Channel(cap)

        async def selector() -> Any:
            return await kcoro.select(a.on_recv(), b.on_recv())

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        t.cancel()
        with pytest.raises(kcoro.Cancelled):
            await t
        assert waiting(a) == (0, 0) and waiting(b) == (0, 0)
        if cap != kcoro.RENDEZVOUS:
            b.try_send(3)
            assert b.try_recv() == 3  # nothing was lost to the cancelled select

    run(main)


def test_completion_racing_cancellation_keeps_the_item() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel()
        outcome: list[Any] = []

        async def selector() -> None:
            with kcoro.CancelScope() as scope:
                outcome.append(await kcoro.select(a.on_recv(), timeout=None))
                outcome.append("after")
                await kcoro.checkpoint()
                outcome.append("not reached")
            outcome.append(scope.cancelled_caught)

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        a.try_send(9)  # completes the select's ticket first ...
        t._scope.cancel()  # ... then its scope is cancelled before it runs
        await t
        assert outcome == [(0, 9), "after", True]

    run(main)


def test_cancel_token_fails_parked_select_atomically() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel()
        token = kcoro.CancelToken()

        async def selector() -> Any:
            return await kcoro.select(a.on_recv(), a.on_send(1), cancel=token)

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        assert waiting(a) == (1, 1)
        token.cancel("stop")
        with pytest.raises(kcoro.OperationCancelled) as info:
            await t
        assert info.value.reason == "stop"
        assert waiting(a) == (0, 0)
        with pytest.raises(kcoro.OperationCancelled):
            await kcoro.select(a.on_recv(), cancel=token)
        a.check_invariants()

    run(main)


def test_select_timeout_with_mock_clock_leaves_channels_usable() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(1)
        start = kcoro.current_time()
        with pytest.raises(TimeoutError):
            await kcoro.select(a.on_recv(), timeout=2.5)
        assert kcoro.current_time() - start == pytest.approx(2.5)
        a.try_send(1)
        assert await kcoro.select(a.on_recv(), timeout=2.5) == (0, 1)
        with kcoro.move_on_after(1.0):  # the shorter deadline wins
            await kcoro.select(a.on_recv(), timeout=5)
        assert kcoro.current_time() - start == pytest.approx(3.5)

    run(main)


def test_select_in_cancelled_scope_does_nothing() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(1)
        a.try_send(1)
        with kcoro.CancelScope() as scope:
            scope.cancel()
            await kcoro.select(a.on_recv())
        assert scope.cancelled_caught
        assert len(a) == 1

    run(main)


# -- undelivered ----------------------------------------------------------------------------------
def test_losing_send_clause_is_never_reported_undelivered() -> None:
    async def main() -> None:
        dropped: list[int] = []
        a: kcoro.Channel[int] = kcoro.Channel(on_undelivered=dropped.append)
        b: kcoro.Channel[int] = kcoro.Channel(1, on_undelivered=dropped.append)
        b.try_send(0)

        async def selector() -> Any:
            return await kcoro.select(a.on_send(1), b.on_send(2))

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        assert b.try_recv() == 0  # frees b: the selector's b-clause moves 2 into the buffer
        assert await t == (1, None)
        a.cancel()
        b.cancel()
        assert dropped == [2]  # 2 was accepted by b then discarded by cancel; 1 never accepted

    run(main)


def test_drop_oldest_send_clause_reports_eviction() -> None:
    async def main() -> None:
        dropped: list[int] = []
        a: kcoro.Channel[int] = kcoro.Channel(1, overflow=kcoro.DROP_OLDEST,
                                              on_undelivered=dropped.append)
        for i in range(3):
            assert await kcoro.select(a.on_send(i)) == (0, None)
        assert dropped == [0, 1] and a.try_recv() == 2

    run(main)


# -- crossed and self selects ---------------------------------------------------------------------
@pytest.mark.parametrize("cap", [kcoro.RENDEZVOUS, 1, 10], ids=str)
def test_crossed_selects_do_not_deadlock(cap: Any) -> None:
    n = scaled(500)

    async def main() -> None:
        x: kcoro.Channel[int] = kcoro.Channel(cap)
        y: kcoro.Channel[int] = kcoro.Channel(cap)
        got: dict[str, list[int]] = {"A": [], "B": []}

        async def side(name: str, out: kcoro.Channel[int], inp: kcoro.Channel[int]) -> None:
            sent = 0
            while sent < n or len(got[name]) < n:
                clauses: list[Any] = [inp.on_recv()]
                if sent < n:
                    clauses.insert(0, out.on_send(sent))
                index, value = await kcoro.select(*clauses)
                if sent < n and index == 0:
                    sent += 1
                else:
                    got[name].append(value)

        async with kcoro.TaskGroup() as tg:
            tg.spawn(side, "A", x, y)
            tg.spawn(side, "B", y, x)
        assert got["A"] == list(range(n)) and got["B"] == list(range(n))  # per-channel order
        x.check_invariants()
        y.check_invariants()

    run(main)


@pytest.mark.parametrize("cap", [kcoro.RENDEZVOUS, 10], ids=str)
def test_send_and_recv_on_same_channel_never_pair_with_itself(cap: Any) -> None:
    async def main() -> None:
        c: kcoro.Channel[int] = kcoro.Channel(cap)
        counts = collections.Counter[str]()

        async def selfish(tag: int) -> None:
            for i in range(scaled(300)):
                offered = tag * 100000 + i
                index, value = await kcoro.select(c.on_send(offered), c.on_recv(), fair=True)
                if index == 1:
                    assert value != offered, "a select paired with itself"
                    if cap == kcoro.RENDEZVOUS:  # no buffer: it can only come from the other
                        assert value // 100000 != tag
                    counts["recv"] += 1
                else:
                    counts["send"] += 1

        async with kcoro.TaskGroup() as tg:
            tg.spawn(selfish, 1)
            tg.spawn(selfish, 2)
        # every item sent was received by a select or is still buffered
        assert counts["send"] == counts["recv"] + len(c)
        c.check_invariants()

    run(main)


def test_lone_self_select_times_out() -> None:
    async def main() -> None:
        c: kcoro.Channel[int] = kcoro.Channel()
        with pytest.raises(TimeoutError):
            await kcoro.select(c.on_send(1), c.on_recv(), timeout=1)
        assert waiting(c) == (0, 0)

    run(main)


def test_duplicate_channel_clauses() -> None:
    async def main() -> None:
        c: kcoro.Channel[int] = kcoro.Channel()
        d: kcoro.Channel[int] = kcoro.Channel()

        async def selector() -> Any:
            return await kcoro.select(c.on_recv(), c.on_recv(), d.on_recv())

        t = kcoro.spawn(selector)
        await wait_all_tasks_blocked()
        assert waiting(c) == (0, 2)
        await d.send(4)
        assert await t == (2, 4)
        assert waiting(c) == (0, 0)

    run(main)


# -- stats ----------------------------------------------------------------------------------------
def test_select_completions_are_counted_like_plain_ops() -> None:
    async def main() -> None:
        a: kcoro.Channel[bytes] = kcoro.Channel(2)
        await kcoro.select(a.on_send(b"abc"))
        assert await kcoro.select(a.on_recv()) == (0, b"abc")
        s = a.stats()
        assert (s.sends, s.recvs, s.bytes_sent, s.bytes_recv) == (1, 1, 3, 3)

    run(main)


# -- contexts: threads and asyncio ----------------------------------------------------------------
def test_select_blocking_from_thread_completed_by_task() -> None:
    a: kcoro.Channel[int] = kcoro.Channel()
    b: kcoro.Channel[int] = kcoro.Channel()
    result: list[Any] = []
    th = threading.Thread(target=lambda: result.append(kcoro.select_blocking(a.on_recv(),
                                                                            b.on_recv())))
    th.start()
    wait_until(lambda: b.stats().waiting_receivers == 1)

    async def main() -> None:
        await b.send(11)

    kcoro.run(main)
    th.join(10)
    assert result == [(1, 11)]
    assert waiting(a) == (0, 0)


def test_select_blocking_timeout_and_try() -> None:
    a: kcoro.Channel[int] = kcoro.Channel()
    with pytest.raises(kcoro.WouldBlock):
        kcoro.select_blocking(a.on_recv(), timeout=0)
    with pytest.raises(TimeoutError):
        kcoro.select_blocking(a.on_recv(), a.on_send(1), timeout=0.01)
    assert waiting(a) == (0, 0)


def test_select_awaited_from_asyncio_completed_by_thread() -> None:
    a: kcoro.Channel[int] = kcoro.Channel()
    b: kcoro.Channel[int] = kcoro.Channel()

    async def main() -> Any:
        def feeder() -> None:
            wait_until(lambda: a.stats().waiting_receivers == 1)
            a.send_blocking(21)

        th = threading.Thread(target=feeder)
        th.start()
        res = await kcoro.select(a.on_recv(), b.on_recv(), timeout=10)
        th.join()
        return res

    assert asyncio.run(main()) == (0, 21)


def test_asyncio_task_cancelled_in_select_takes_nothing() -> None:
    a: kcoro.Channel[int] = kcoro.Channel(1)

    async def main() -> None:
        task = asyncio.create_task(kcoro.select(a.on_recv()))
        await asyncio.sleep(0)
        assert a.stats().waiting_receivers == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiting(a) == (0, 0)
        a.try_send(1)
        assert a.try_recv() == 1

    asyncio.run(main())


# -- bad input ------------------------------------------------------------------------------------
def test_bad_select_arguments() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel()
        with pytest.raises(ValueError, match="at least one clause"):
            await kcoro.select()
        with pytest.raises(TypeError, match="not a clause"):
            await kcoro.select(a.on_recv(), a)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            await kcoro.select(a.on_recv(), timeout=-1)
        with pytest.raises(RuntimeError, match="kcoro runtime"):
            kcoro.select_blocking(a.on_recv())

    run(main)
