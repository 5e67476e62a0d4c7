"""TESTING.md C: close and cancel of a channel (reliability anchors 14-25)."""

from __future__ import annotations

import asyncio
import errno
import gc
import threading
import weakref
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    BOUNDED_IDS,
    Recorder,
    all_kinds,
    assert_failures,
    assert_stats,
    bounded_kinds,
    buffer_room,
    make,
    run,
    settle,
)
from kcoro.testing import wait_until

pytestmark = pytest.mark.timeout(60)


def fill(ch: kcoro.Channel[Any], kind: str, n: int = 3) -> list[Any]:
    """try_send up to ``n`` items (as many as fit); return what a receiver will get."""
    room = min(buffer_room(kind), n)
    items = [f"item{i}" for i in range(room)]
    for x in items:
        assert ch.try_send(x) is True
    return items


async def assert_closed_for_recv(ch: kcoro.Channel[Any]) -> None:
    """Every receive form reports closed, at once, repeatedly."""
    for _ in range(3):
        with pytest.raises(kcoro.ChannelClosed) as ei:
            await ch.recv()
        assert ei.value.errno == errno.EPIPE
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_recv()
        with pytest.raises(kcoro.ChannelClosed):
            await ch.recv(timeout=0)
        with pytest.raises(kcoro.ChannelClosed):
            await ch.recv(timeout=100)  # never waits: the mock clock would not matter anyway
    assert [x async for x in ch] == []


async def assert_closed_for_send(ch: kcoro.Channel[Any]) -> None:
    for _ in range(3):
        with pytest.raises(kcoro.ChannelClosed) as ei:
            await ch.send("late")
        assert ei.value.errno == errno.EPIPE
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_send("late")
        with pytest.raises(kcoro.ChannelClosed):
            await ch.send("late", timeout=0)
        with pytest.raises(kcoro.ChannelClosed):
            await ch.send("late", timeout=100)


# -- 14/15. close then drain; the two flags -----------------------------------------------------
@all_kinds
def test_close_then_drain_then_persistent_closed(kind: str) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = make(kind, on_undelivered=rec)
        items = fill(ch, kind)
        assert (ch.closed_for_send, ch.closed_for_recv) == (False, False)
        assert ch.close() is True
        assert ch.closed_for_send is True
        assert ch.closed_for_recv is (not items)
        assert_stats(ch, closed_for_send=True, closed_for_recv=not items, buffered=len(items))
        got = []
        for i in range(len(items)):
            got.append(await ch.recv())
            assert ch.closed_for_recv is (i == len(items) - 1)
        assert got == items
        assert (ch.closed_for_send, ch.closed_for_recv) == (True, True)
        assert_stats(ch, closed_for_send=True, closed_for_recv=True, buffered=0)
        await assert_closed_for_recv(ch)
        await assert_closed_for_send(ch)
        assert rec.items == []  # closing reports nothing; refused sends are not "accepted"
        assert_failures(ch, recv_closed=13, send_closed=12)  # 12 + the empty async for
        ch.check_invariants()

    run(main)


@all_kinds
def test_closed_with_data_drains_by_async_for_and_try_recv(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        items = fill(ch, kind)
        ch.close()
        if items:
            assert ch.try_recv() == items[0]  # "closed with data" is ready, not WouldBlock
        assert [x async for x in ch] == items[1:]
        await assert_closed_for_recv(ch)
        ch.check_invariants()

    run(main)


def test_closed_with_data_try_recv_races_close_from_thread() -> None:
    """Go's TestNonblockRecvRace: a buffered value and a concurrent close never make try_recv
    report 'not ready'."""
    for _ in range(200):
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        ch.try_send(1)
        th = threading.Thread(target=ch.close)
        th.start()
        assert ch.try_recv() == 1
        th.join()
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_recv()
        ch.check_invariants()


def test_close_from_thread_lets_blocking_iteration_finish() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(4)
    for i in range(4):
        ch.send_blocking(i)
    th = threading.Thread(target=ch.close)
    th.start()
    th.join()
    assert list(ch.iter_blocking()) == [0, 1, 2, 3]
    with pytest.raises(kcoro.ChannelClosed):
        ch.recv_blocking()
    with pytest.raises(kcoro.ChannelClosed):
        ch.recv_blocking(timeout=5)
    with pytest.raises(kcoro.ChannelClosed):
        ch.send_blocking(9)
    assert list(ch.iter_blocking()) == []


# -- 16. close wakes every parked receiver --------------------------------------------------------
@all_kinds
def test_close_wakes_every_parked_receiver(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        outcomes: list[Any] = []

        async def receiver() -> None:
            try:
                outcomes.append(await ch.recv())
            except kcoro.ChannelClosed as e:
                outcomes.append(e)

        async def iterator() -> None:
            outcomes.append([x async for x in ch])

        async def timed() -> None:
            try:
                outcomes.append(await ch.recv(timeout=1000))
            except kcoro.ChannelClosed as e:
                outcomes.append(e)

        tasks = [kcoro.spawn(receiver) for _ in range(4)]
        tasks += [kcoro.spawn(iterator), kcoro.spawn(timed)]
        await settle()
        assert ch.stats().waiting_receivers == 6
        assert ch.close() is True
        for t in tasks:
            await t
        assert len(outcomes) == 6
        assert sum(isinstance(o, kcoro.ChannelClosed) for o in outcomes) == 5
        assert [] in outcomes
        assert_stats(ch, waiting_receivers=0, recvs=0)
        assert_failures(ch, recv_closed=6)
        ch.check_invariants()

    run(main)


@all_kinds
def test_close_wakes_receivers_in_threads_and_asyncio(kind: str) -> None:
    ch = make(kind)
    errors: list[BaseException] = []

    def thread_receiver() -> None:
        try:
            ch.recv_blocking()
        except kcoro.ChannelClosed as e:
            errors.append(e)

    async def aio_receiver() -> None:
        try:
            await ch.recv()
        except kcoro.ChannelClosed as e:
            errors.append(e)

    th = threading.Thread(target=thread_receiver)
    th.start()
    aio = threading.Thread(target=lambda: asyncio.run(aio_receiver()))
    aio.start()
    wait_until(lambda: ch.stats().waiting_receivers == 2)
    assert ch.close() is True
    th.join(timeout=10)
    aio.join(timeout=10)
    assert len(errors) == 2
    assert all(isinstance(e, kcoro.ChannelClosed) for e in errors)
    ch.check_invariants()


def test_close_from_thread_wakes_a_parked_task() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        r = kcoro.spawn(ch.recv)
        await settle()
        th = threading.Thread(target=ch.close)
        th.start()
        with pytest.raises(kcoro.ChannelClosed):
            await r
        th.join()
        ch.check_invariants()

    run(main)


# -- 18. parked senders at close: they fail and keep their item ------------------------------------
@bounded_kinds
def test_close_fails_parked_senders_who_keep_their_items(kind: str) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = make(kind, on_undelivered=rec)
        items = fill(ch, kind, n=100)
        kept: list[Any] = []

        async def sender(x: str) -> None:
            try:
                await ch.send(x)
            except kcoro.ChannelClosed:
                kept.append(x)  # still ours

        tasks = [kcoro.spawn(sender, f"p{i}") for i in range(3)]
        await settle()
        assert ch.stats().waiting_senders == 3
        assert ch.close() is True
        await settle()
        assert all(t.done() for t in tasks)
        assert kept == ["p0", "p1", "p2"]
        assert_stats(ch, waiting_senders=0, buffered=len(items), sends=len(items))
        assert_failures(ch, send_closed=3)
        # Buffered items still drain; the parked senders' items never appear.
        assert [x async for x in ch] == items
        assert rec.items == []
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_close_fails_a_thread_parked_in_send_blocking(kind: str) -> None:
    ch = make(kind)
    items = fill(ch, kind, n=100)
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            ch.send_blocking("t")
        except kcoro.ChannelClosed as e:
            errors.append(e)

    th = threading.Thread(target=sender)
    th.start()
    wait_until(lambda: ch.stats().waiting_senders == 1)
    ch.close()
    th.join(timeout=10)
    assert len(errors) == 1
    assert list(ch.iter_blocking()) == items
    ch.check_invariants()


# -- 17. send after close keeps failing ------------------------------------------------------------
@all_kinds
def test_send_after_close_keeps_failing_in_every_form(kind: str) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = make(kind, on_undelivered=rec)
        ch.close()
        await assert_closed_for_send(ch)
        assert rec.items == []
        assert_stats(ch, sends=0, buffered=0)
        assert_failures(ch, send_closed=12)
        ch.check_invariants()

    run(main)


def test_send_blocking_after_close_keeps_failing() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(2)
    ch.close()
    for timeout in (None, 0, 5):
        with pytest.raises(kcoro.ChannelClosed):
            ch.send_blocking(1, timeout=timeout)
    assert_failures(ch, send_closed=3)


def test_asyncio_send_after_close_fails() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(2)
        await ch.send(1)
        ch.close()
        await assert_closed_for_send(ch)
        assert await ch.recv() == 1
        await assert_closed_for_recv(ch)

    asyncio.run(main())


# -- 24. close racing with send never hangs ------------------------------------------------------
@pytest.mark.parametrize("kind", ["rendezvous", "buffered1", "buffered10", "unlimited"])
def test_close_racing_send_from_thread_never_hangs(kind: str) -> None:
    """Each send either succeeded (and its item is received) or raised ChannelClosed."""

    async def main() -> None:
        for _ in range(20):
            ch = make(kind)
            sent: list[int] = []

            def producer(ch: kcoro.Channel[Any] = ch, sent: list[int] = sent) -> None:
                i = 0
                while True:
                    try:
                        ch.send_blocking(i)
                    except kcoro.ChannelClosed:
                        return
                    sent.append(i)
                    i += 1

            th = threading.Thread(target=producer)
            th.start()
            got = [await ch.recv() for _ in range(5)]
            ch.close()
            got += [x async for x in ch]
            th.join(timeout=10)
            assert not th.is_alive()
            assert got == sent
            ch.check_invariants()

    run(main)


def test_close_racing_send_between_tasks() -> None:
    async def main() -> None:
        for k in range(30):
            ch: kcoro.Channel[int] = kcoro.Channel(k % 3)
            sent: list[int] = []

            async def producer(ch: kcoro.Channel[int] = ch, sent: list[int] = sent) -> None:
                for i in range(1000):
                    try:
                        await ch.send(i)
                    except kcoro.ChannelClosed:
                        return
                    sent.append(i)

            async def closer(ch: kcoro.Channel[int] = ch, n: int = k) -> None:
                for _ in range(n):
                    await kcoro.checkpoint()
                ch.close()

            got: list[int] = []

            async def consumer(ch: kcoro.Channel[int] = ch, got: list[int] = got) -> None:
                got.extend([x async for x in ch])

            async with kcoro.TaskGroup() as tg:
                tg.spawn(producer)
                tg.spawn(closer)
                tg.spawn(consumer)
            assert got == sent
            ch.check_invariants()

    run(main)


# -- close() / cancel() return values -------------------------------------------------------------
@all_kinds
def test_close_and_cancel_return_values(kind: str) -> None:
    ch = make(kind)
    assert ch.close() is True
    assert ch.close() is False
    assert ch.cancel() is None
    assert ch.close() is False
    ch2 = make(kind)
    assert ch2.cancel("why") is None
    assert ch2.close() is False  # a later close() returns False
    assert ch2.cancel("again") is None
    with pytest.raises(kcoro.ChannelClosed) as ei:
        ch2.try_recv()
    assert ei.value.cause == "why"  # the first cancel's cause sticks
    ch.check_invariants()
    ch2.check_invariants()


def test_close_from_many_threads_returns_true_exactly_once() -> None:
    for _ in range(50):
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        results: list[bool] = []
        barrier = threading.Barrier(4)

        def closer(ch: kcoro.Channel[int] = ch, results: list[bool] = results,
                   barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            results.append(ch.close())

        threads = [threading.Thread(target=closer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True]


# -- 21. cancel(): discard through on_undelivered, fail every waiter -----------------------------
@all_kinds
def test_cancel_discards_buffer_through_on_undelivered(kind: str) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = make(kind, on_undelivered=rec)
        items = fill(ch, kind, n=5)
        cause = RuntimeError("shutdown")
        ch.cancel(cause)
        assert rec.items == items  # each exactly once, in order
        assert len(ch) == 0
        assert (ch.closed_for_send, ch.closed_for_recv) == (True, True)
        assert_stats(ch, buffered=0, undelivered=len(items), recvs=0, sends=len(items))
        with pytest.raises(kcoro.ChannelClosed) as ei:
            await ch.recv()
        assert ei.value.cause is cause
        assert ei.value.__cause__ is cause
        await assert_closed_for_recv(ch)
        await assert_closed_for_send(ch)
        ch.cancel()  # idempotent: nothing is reported twice
        assert rec.items == items
        assert "cancelled" in repr(ch)
        ch.check_invariants()

    run(main)


@all_kinds
def test_cancel_fails_every_parked_receiver_with_the_cause(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        errors: list[kcoro.ChannelClosed] = []

        async def receiver() -> None:
            try:
                await ch.recv()
            except kcoro.ChannelClosed as e:
                errors.append(e)

        tasks = [kcoro.spawn(receiver) for _ in range(3)]
        await settle()
        ch.cancel("stop")
        for t in tasks:
            await t
        assert [e.cause for e in errors] == ["stop"] * 3
        assert_stats(ch, waiting_receivers=0, undelivered=0)
        assert_failures(ch, recv_closed=3)
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_cancel_fails_parked_senders_without_reporting_their_items(kind: str) -> None:
    async def main() -> None:
        rec = Recorder()
        ch = make(kind, on_undelivered=rec)
        items = fill(ch, kind, n=100)
        errors: list[tuple[str, kcoro.ChannelClosed]] = []

        async def sender(x: str) -> None:
            try:
                await ch.send(x)
            except kcoro.ChannelClosed as e:
                errors.append((x, e))

        tasks = [kcoro.spawn(sender, f"p{i}") for i in range(3)]
        await settle()
        cause = ValueError("abort")
        ch.cancel(cause)
        for t in tasks:
            await t
        assert [x for x, _ in errors] == ["p0", "p1", "p2"]
        assert all(e.cause is cause for _, e in errors)
        assert rec.items == items  # buffered items reported; the senders kept theirs
        assert_stats(ch, waiting_senders=0, buffered=0, undelivered=len(items))
        assert_failures(ch, send_closed=3)
        ch.check_invariants()

    run(main)


def test_cancel_fails_thread_waiters() -> None:
    full: kcoro.Channel[int] = kcoro.Channel(1)
    full.try_send(0)
    empty: kcoro.Channel[int] = kcoro.Channel(1)
    errors: list[BaseException] = []

    def wait(fn: Any) -> None:
        try:
            fn()
        except kcoro.ChannelClosed as e:
            errors.append(e)

    threads = [threading.Thread(target=wait, args=(lambda: full.send_blocking(1),)),
               threading.Thread(target=wait, args=(empty.recv_blocking,))]
    for t in threads:
        t.start()
    wait_until(lambda: full.stats().waiting_senders == 1
               and empty.stats().waiting_receivers == 1)
    full.cancel("a")
    empty.cancel("b")
    for t in threads:
        t.join(timeout=10)
    assert sorted(e.cause for e in errors) == ["a", "b"]  # type: ignore[attr-defined]
    full.check_invariants()
    empty.check_invariants()


@pytest.mark.parametrize("kind", [*BOUNDED_IDS[1:], "unlimited", "conflated"])
def test_cancel_drops_references_to_buffered_items(kind: str) -> None:
    class Item:
        pass

    ch = make(kind)
    items = [Item() for _ in range(min(buffer_room(kind), 5))]
    refs = [weakref.ref(x) for x in items]
    for x in items:
        ch.try_send(x)
    del items, x
    ch.cancel()
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


def test_parked_senders_items_are_freed_once_their_tasks_end() -> None:
    class Item:
        pass

    refs: list[weakref.ref[Item]] = []

    async def main() -> None:
        ch: kcoro.Channel[Item] = kcoro.Channel()

        async def sender() -> None:
            x = Item()
            refs.append(weakref.ref(x))
            with pytest.raises(kcoro.ChannelClosed):
                await ch.send(x)

        tasks = [kcoro.spawn(sender) for _ in range(3)]
        await settle()
        ch.cancel()
        for t in tasks:
            await t

    run(main)
    gc.collect()
    assert [r() for r in refs] == [None] * 3


@pytest.mark.parametrize("how", ["close", "cancel", "timeout"])
def test_failed_parked_sender_does_not_leave_its_item_pinned(how: str) -> None:
    """Once a parked send has failed, nothing in kcoro references its item: a sender that drops
    it and carries on (here: sleeps) frees it, whatever ended the send."""

    class Item:
        pass

    async def main() -> None:
        ch: kcoro.Channel[Item] = kcoro.Channel()
        ref: list[weakref.ref[Item]] = []
        failed = []

        async def sender() -> None:
            x = Item()
            ref.append(weakref.ref(x))
            try:
                await ch.send(x, timeout=5 if how == "timeout" else None)
            except (kcoro.ChannelClosed, TimeoutError) as e:
                failed.append(type(e))
            del x
            await kcoro.sleep(1000)

        t = kcoro.spawn(sender)
        await settle()
        if how == "close":
            ch.close()
        elif how == "cancel":
            ch.cancel()
        await kcoro.sleep(10)  # mock clock: the timeout (5 s) has fired; the sender sleeps on
        assert len(failed) == 1
        assert t.state == "PARKED"
        gc.collect()
        alive = ref[0]() is not None
        t.cancel()
        ch.check_invariants()
        assert not alive, f"the item of a sender failed by {how} is still referenced"

    run(main)


def test_cancel_cause_none_and_non_exception_cause() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    ch.cancel()
    with pytest.raises(kcoro.ChannelClosed) as ei:
        ch.try_recv()
    assert ei.value.cause is None
    ch2: kcoro.Channel[int] = kcoro.Channel(1)
    ch2.cancel(42)
    with pytest.raises(kcoro.ChannelClosed) as ei:
        ch2.try_send(1)
    assert ei.value.cause == 42
    assert ei.value.__cause__ is None


def test_cancel_after_close_discards_what_close_left_buffered() -> None:
    rec = Recorder()
    ch: kcoro.Channel[int] = kcoro.Channel(3, on_undelivered=rec)
    for i in range(3):
        ch.try_send(i)
    ch.close()
    assert ch.try_recv() == 0
    ch.cancel()
    assert rec.items == [1, 2]
    assert ch.closed_for_recv
    assert_stats(ch, undelivered=2, recvs=1, sends=3)


def test_close_does_not_report_and_successful_delivery_is_never_reported() -> None:
    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(2, on_undelivered=rec)
        await ch.send(1)
        await ch.send(2)
        assert await ch.recv() == 1
        ch.close()
        assert await ch.recv() == 2
        ch.cancel()
        assert rec.items == []
        assert_stats(ch, undelivered=0)

    run(main)


@all_kinds
def test_asyncio_receiver_fails_on_cancel(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = asyncio.ensure_future(ch.recv())
        for _ in range(3):
            await asyncio.sleep(0)
        ch.cancel("gone")
        with pytest.raises(kcoro.ChannelClosed) as ei:
            await r
        assert ei.value.cause == "gone"
        ch.check_invariants()

    asyncio.run(main())





# -- 65. results: "closed" is not confused with an item that is None or an exception ------------
@all_kinds
def test_none_and_exception_items_are_items_not_closed(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        exc_item = kcoro.ChannelClosed("I am an item")
        items: list[Any] = [None, exc_item, StopAsyncIteration(), False]
        got: list[Any] = []

        async def consumer() -> None:
            async for x in ch:
                got.append(x)

        c = kcoro.spawn(consumer)
        await settle()
        for x in items:
            await ch.send(x)
            await settle()  # the parked consumer takes each item (also when conflated)
        ch.close()
        await c
        assert got == items
        assert got[1] is exc_item
        ch.check_invariants()

    run(main)


def test_exhausted_iterators_stay_exhausted() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(2)
        await ch.send(1)
        ch.close()
        it = ch.__aiter__()
        assert await it.__anext__() == 1
        for _ in range(3):
            with pytest.raises(StopAsyncIteration):
                await it.__anext__()

    run(main)
    ch: kcoro.Channel[int] = kcoro.Channel(2)
    ch.try_send(1)
    ch.close()
    it = ch.iter_blocking()
    assert next(it) == 1
    with pytest.raises(StopIteration):
        next(it)
    assert list(ch.iter_blocking()) == []
