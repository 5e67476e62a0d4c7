"""TESTING.md F: conflated channels (reliability anchors 43-45) and RENDEZVOUS + DROP_OLDEST,
which behaves as conflated (a policy)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import kcoro
from chan_helpers import Recorder, assert_failures, assert_stats, run, settle

pytestmark = pytest.mark.timeout(60)


def conflated(**kw: Any) -> kcoro.Channel[Any]:
    return kcoro.Channel(kcoro.CONFLATED, **kw)


def rendezvous_drop_oldest(**kw: Any) -> kcoro.Channel[Any]:
    return kcoro.Channel(kcoro.RENDEZVOUS, overflow=kcoro.DROP_OLDEST, **kw)


MAKERS = pytest.mark.parametrize("maker", [conflated, rendezvous_drop_oldest],
                                 ids=["conflated", "rendezvous+drop_oldest"])


# -- 43. try_send always succeeds; recv gets the latest; then empty ------------------------------
@MAKERS
def test_try_send_always_succeeds_and_recv_gets_the_latest(maker: Any) -> None:
    rec = Recorder()
    ch = maker(on_undelivered=rec)
    assert ch.capacity == 1
    assert ch.kind == "conflated"
    for i in range(100):
        assert ch.try_send(i) is True
        assert len(ch) == 1
    assert ch.try_recv() == 99
    with pytest.raises(kcoro.WouldBlock):
        ch.try_recv()
    assert len(ch) == 0
    assert rec.items == list(range(99))  # every overwritten item reported once, in order
    assert_stats(ch, sends=100, recvs=1, undelivered=99, peak=1, buffered=0)
    assert_failures(ch, recv_would_block=1)
    ch.check_invariants()


@MAKERS
def test_async_send_never_parks_and_conflates(maker: Any) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = maker(on_undelivered=rec)

        async def producer() -> None:
            for i in range(10):
                await ch.send(i)

        p = kcoro.spawn(producer)
        await settle()
        assert p.done()
        assert await ch.recv() == 9
        assert rec.items == list(range(9))
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        await ch.send("x", timeout=0)  # a try that always succeeds
        assert await ch.recv() == "x"
        assert_stats(ch, sends=11, recvs=2, undelivered=9, waiting_senders=0)
        ch.check_invariants()

    run(main)


# -- 44. a parked receiver gets the first send directly --------------------------------------------
@MAKERS
def test_parked_receiver_gets_first_send_then_later_sends_conflate(maker: Any) -> None:
    """kotlinx testConflationSendReceive: 3 goes straight to the parked receiver; 4, 5, 6
    conflate to 6."""

    async def main() -> None:
        rec = Recorder()
        ch = maker(on_undelivered=rec)
        got: list[int] = []

        async def receiver() -> None:
            got.append(await ch.recv())

        r = kcoro.spawn(receiver)
        await settle()
        for v in (3, 4, 5, 6):
            await ch.send(v)
        await r
        assert got == [3]
        assert await ch.recv() == 6
        assert rec.items == [4, 5]
        assert_stats(ch, sends=4, recvs=2, undelivered=2, waiting_receivers=0)
        ch.check_invariants()

    run(main)


@MAKERS
def test_parked_receivers_each_get_one_send_directly(maker: Any) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = maker(on_undelivered=rec)
        got: dict[int, Any] = {}

        async def receiver(i: int) -> None:
            got[i] = await ch.recv()

        tasks = []
        for i in range(3):
            tasks.append(kcoro.spawn(receiver, i))
            await settle()
        for v in "abc":
            assert ch.try_send(v) is True
        for t in tasks:
            await t
        assert got == {0: "a", 1: "b", 2: "c"}
        assert rec.items == []
        assert len(ch) == 0
        ch.check_invariants()

    run(main)


# -- 45. close keeps the last value readable ------------------------------------------------------
@MAKERS
def test_close_keeps_the_last_value_readable(maker: Any) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = maker(on_undelivered=rec)
        await ch.send(1)
        await ch.send(2)
        assert ch.close() is True
        assert ch.closed_for_send and not ch.closed_for_recv
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_send(3)
        assert await ch.recv() == 2
        assert ch.closed_for_recv
        with pytest.raises(kcoro.ChannelClosed):
            await ch.recv()
        assert rec.items == [1]  # close does not report the survivor
        ch.check_invariants()

    run(main)


@MAKERS
def test_cancel_reports_the_survivor(maker: Any) -> None:
    rec = Recorder()
    ch = maker(on_undelivered=rec)
    ch.try_send(1)
    ch.try_send(2)
    ch.cancel()
    assert rec.items == [1, 2]
    assert_stats(ch, undelivered=2, buffered=0)
    with pytest.raises(kcoro.ChannelClosed):
        ch.try_recv()
    ch.check_invariants()


def test_conflated_close_under_channel_swapping_only_reports_closed() -> None:
    """kotlinx ConflatedChannelCloseStressTest, short: threads try_send into whichever channel is
    current while the receiver keeps closing and swapping it.  The only error a sender sees is
    ChannelClosed; the receiver sees items and closed, nothing else; values per sender only grow
    within one channel."""
    n_rounds = 15
    current: list[kcoro.Channel[Any]] = [conflated()]
    stop = threading.Event()
    errors: list[BaseException] = []

    def sender(s: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                current[0].try_send((s, i))
            except kcoro.ChannelClosed:
                pass
            except BaseException as e:  # anything else is a failure
                errors.append(e)
                return
            i += 1

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(n_rounds):
            ch = current[0]
            last: dict[int, int] = {}
            for _ in range(5):
                try:
                    s, i = ch.recv_blocking(timeout=5)
                except kcoro.ChannelClosed:
                    break
                assert i > last.get(s, -1)
                last[s] = i
            ch.close()
            # Drain: at most the one last value survives the close.
            left = list(ch.iter_blocking())
            assert len(left) <= 1
            ch.check_invariants()
            current[0] = conflated()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert errors == []


# -- threads and asyncio --------------------------------------------------------------------------
def test_conflated_send_blocking_never_blocks_and_thread_receiver_gets_latest() -> None:
    ch = conflated()
    for i in range(50):
        ch.send_blocking(i)
    assert ch.recv_blocking() == 49
    got: list[Any] = []
    th = threading.Thread(target=lambda: got.append(ch.recv_blocking()))
    th.start()
    from kcoro.testing import wait_until

    wait_until(lambda: ch.stats().waiting_receivers == 1)
    ch.send_blocking("direct")
    th.join(timeout=10)
    assert got == ["direct"]
    assert len(ch) == 0
    ch.check_invariants()


def test_conflated_from_asyncio() -> None:
    async def main() -> None:
        rec = Recorder()
        ch = conflated(on_undelivered=rec)
        r = asyncio.ensure_future(ch.recv())
        await asyncio.sleep(0)
        await ch.send("first")
        await ch.send("second")
        await ch.send("third")
        assert await r == "first"
        assert await ch.recv() == "third"
        assert rec.items == ["second"]
        ch.check_invariants()

    asyncio.run(main())


def test_conflated_with_overflow_policy_is_rejected() -> None:
    for overflow in (kcoro.DROP_OLDEST, kcoro.DROP_LATEST):
        with pytest.raises(ValueError):
            kcoro.Channel(kcoro.CONFLATED, overflow=overflow)
    assert kcoro.Channel(kcoro.CONFLATED, overflow=kcoro.SUSPEND).kind == "conflated"
