"""asyncio interop: every kcoro operation awaited from asyncio tasks on a running loop.

Policies: an asyncio task cancelled while parked either got its item (the op returns it and the
task is re-cancelled at its next await) or changed nothing; an op that completes at once does not
yield to the loop; one channel may be shared by a kcoro runtime, an asyncio loop and plain
threads at once.  asyncio has no mock clock, so bounded waits here use short real timeouts;
tasks are ordered by polling observable state (``until``), never by sleeping.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    CAPS,
    all_kinds,
    bounded_kinds,
    buffer_room,
    fifo_kinds,
)
from conftest import scaled
from kcoro.testing import wait_until


def make(kind: str, **kw: Any) -> kcoro.Channel[Any]:
    return kcoro.Channel(CAPS[kind], name=f"aio-{kind}", **kw)


async def until(pred: Callable[[], bool], limit: int = 10_000) -> None:
    """Let the loop run until ``pred()`` holds (a barrier, not a sleep)."""
    for _ in range(limit):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition never met: {pred}")


def parked_receivers(ch: kcoro.Channel[Any], n: int = 1) -> Callable[[], bool]:
    return lambda: ch.stats().waiting_receivers == n


def parked_senders(ch: kcoro.Channel[Any], n: int = 1) -> Callable[[], bool]:
    return lambda: ch.stats().waiting_senders == n


def fill(ch: kcoro.Channel[Any], kind: str) -> list[Any]:
    items = [f"f{i}" for i in range(buffer_room(kind))]
    for it in items:
        assert ch.try_send(it)
    return items


# -- basic operations ------------------------------------------------------------------------------
@fifo_kinds
def test_producer_consumer_between_asyncio_tasks(kind: str) -> None:
    async def main() -> list[int]:
        ch = make(kind)

        async def producer() -> None:
            for i in range(200):
                await ch.send(i)
            ch.close()

        p = asyncio.create_task(producer())
        got = [x async for x in ch]
        await p
        return got

    assert asyncio.run(main()) == list(range(200))


def test_conflated_under_asyncio_keeps_latest() -> None:
    async def main() -> None:
        ch = make("conflated")
        for i in range(5):
            await ch.send(i)
        assert await ch.recv() == 4
        r = asyncio.create_task(ch.recv())
        await until(parked_receivers(ch))
        await ch.send("direct")
        assert await r == "direct"

    asyncio.run(main())


@all_kinds
def test_parked_receiver_gets_item_from_asyncio_sender(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = asyncio.create_task(ch.recv())
        await until(parked_receivers(ch))
        assert r.done() is False
        await ch.send("hello")
        assert await r == "hello"
        assert ch.stats().waiting_receivers == 0

    asyncio.run(main())


@bounded_kinds
def test_parked_sender_released_by_asyncio_receiver(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = fill(ch, kind)
        s = asyncio.create_task(ch.send("last"))
        await until(parked_senders(ch))
        got = [await ch.recv() for _ in range(len(filled) + 1)]
        await s
        assert got == [*filled, "last"]

    asyncio.run(main())


@all_kinds
def test_recv_timeout_under_asyncio_leaves_channel_unchanged(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        with pytest.raises(TimeoutError) as ei:
            await ch.recv(timeout=0.02)
        assert ei.value.errno == errno.ETIME
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        st = ch.stats()
        assert (st.recv_timeout, st.recv_would_block, st.waiting_receivers) == (1, 1, 0)
        s = asyncio.create_task(ch.send(1))
        assert await ch.recv(timeout=5) == 1
        await s
        ch.check_invariants()

    asyncio.run(main())


@bounded_kinds
def test_send_timeout_under_asyncio_leaves_channel_unchanged(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = fill(ch, kind)
        with pytest.raises(TimeoutError):
            await ch.send("x", timeout=0.02)
        with pytest.raises(kcoro.WouldBlock):
            await ch.send("x", timeout=0)
        assert ch.stats().waiting_senders == 0
        got = []
        for _ in filled:
            got.append(ch.try_recv())
        assert got == filled
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()

    asyncio.run(main())


@all_kinds
def test_cancel_token_under_asyncio(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        tok = kcoro.CancelToken()
        r = asyncio.create_task(ch.recv(cancel=tok))
        await until(parked_receivers(ch))
        assert tok.cancel("enough")
        with pytest.raises(kcoro.OperationCancelled) as ei:
            await r
        assert ei.value.reason == "enough"
        assert ch.stats().waiting_receivers == 0 and ch.stats().recv_cancelled == 1
        with pytest.raises(kcoro.OperationCancelled):
            await ch.send(1, cancel=tok)  # already cancelled: nothing happens
        assert len(ch) == 0 and ch.stats().sends == 0

    asyncio.run(main())


def test_close_wakes_asyncio_waiters() -> None:
    async def main() -> None:
        ch = make("rendezvous")
        rs = [asyncio.create_task(ch.recv()) for _ in range(3)]
        await until(parked_receivers(ch, 3))
        assert ch.close()
        for r in rs:
            with pytest.raises(kcoro.ChannelClosed):
                await r

    asyncio.run(main())


def test_select_and_ticket_and_sleep_under_asyncio() -> None:
    async def main() -> None:
        a, b = make("rendezvous"), make("buffered1")
        b.try_send("from b")
        assert await kcoro.select(a.on_recv(), b.on_recv()) == (1, "from b")
        with pytest.raises(TimeoutError):
            await kcoro.select(a.on_recv(), b.on_recv(), timeout=0.01)
        sel = asyncio.create_task(kcoro.select(a.on_recv(), b.on_recv()))
        await until(lambda: a.stats().waiting_receivers == 1)
        await a.send("from a")
        assert await sel == (0, "from a")
        assert b.stats().waiting_receivers == 0
        await kcoro.sleep(0.001)
        await kcoro.checkpoint()

    asyncio.run(main())


def test_wait_readable_under_asyncio() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async def main() -> bytes:
            w = asyncio.create_task(kcoro.wait_readable(a))
            await asyncio.sleep(0)
            assert not w.done()
            b.send(b"ping")
            await w
            return a.recv(10)

        assert asyncio.run(main()) == b"ping"
    finally:
        a.close()
        b.close()


# -- cancellation is atomic ------------------------------------------------------------------------
@all_kinds
def test_cancelled_parked_recv_changes_nothing(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = asyncio.create_task(ch.recv())
        await until(parked_receivers(ch))
        r.cancel()
        with pytest.raises(asyncio.CancelledError):
            await r
        assert ch.stats().waiting_receivers == 0
        if kind == "rendezvous":
            with pytest.raises(kcoro.WouldBlock):
                ch.try_send(1)  # no ghost receiver
        else:
            assert ch.try_send(1) and len(ch) == 1 and ch.try_recv() == 1
        ch.check_invariants()

    asyncio.run(main())


@all_kinds
def test_asyncio_cancel_after_handoff_returns_item_then_recancels(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        got: list[Any] = []

        async def receiver() -> None:
            got.append(await ch.recv())
            await asyncio.sleep(0)  # the cancellation is re-delivered here
            got.append("unreachable")

        r = asyncio.create_task(receiver())
        await until(parked_receivers(ch))
        assert ch.try_send("item")  # the item is the receiver's now
        r.cancel()  # before it resumes
        with pytest.raises(asyncio.CancelledError):
            await r
        assert r.cancelled()
        assert got == ["item"]
        assert len(ch) == 0

    asyncio.run(main())


@bounded_kinds
def test_asyncio_cancel_after_send_completed_is_not_lost(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = fill(ch, kind)
        steps: list[str] = []

        async def sender() -> None:
            await ch.send("x")
            steps.append("returned")
            await asyncio.sleep(0)

        s = asyncio.create_task(sender())
        await until(parked_senders(ch))
        first = ch.try_recv()  # completes the parked send
        s.cancel()
        with pytest.raises(asyncio.CancelledError):
            await s
        rest = []
        while True:
            try:
                rest.append(ch.try_recv())
            except kcoro.WouldBlock:
                break
        assert steps == ["returned"]
        assert [first, *rest] == [*filled, "x"]

    asyncio.run(main())


@bounded_kinds
def test_asyncio_cancel_of_parked_send_keeps_item_out(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = fill(ch, kind)
        s = asyncio.create_task(ch.send("x"))
        await until(parked_senders(ch))
        s.cancel()
        with pytest.raises(asyncio.CancelledError):
            await s
        assert ch.stats().waiting_senders == 0
        got = []
        while True:
            try:
                got.append(ch.try_recv())
            except kcoro.WouldBlock:
                break
        assert got == filled

    asyncio.run(main())


def test_asyncio_timeout_expiring_while_parked() -> None:
    async def main() -> None:
        ch = make("buffered1")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await ch.recv()
        assert ch.stats().waiting_receivers == 0
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        ch.try_send(1)
        assert await ch.recv() == 1

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ch.recv(), 0.02)
        assert ch.stats().waiting_receivers == 0

    asyncio.run(main())


def test_asyncio_timeout_racing_a_completion_keeps_item_and_accounting() -> None:
    async def main() -> None:
        ch = make("rendezvous")
        got: list[Any] = []
        after: list[Any] = []
        cm_box: list[Any] = []

        async def receiver() -> None:
            try:
                async with asyncio.timeout(None) as cm:
                    cm_box.append(cm)
                    got.append(await ch.recv())
                    await asyncio.sleep(0)
                    got.append("unreachable")
            except TimeoutError:
                got.append("timeout")
            me = asyncio.current_task()
            assert me is not None and me.cancelling() == 0  # uncancel accounting intact
            after.append(await ch.recv())  # and the task is usable afterwards

        r = asyncio.create_task(receiver())
        await until(parked_receivers(ch))
        loop = asyncio.get_running_loop()
        cm_box[0].reschedule(loop.time())  # the timeout fires before r resumes...
        assert ch.try_send("item")  # ...after the item was handed to r
        await until(parked_receivers(ch))
        await ch.send("second")
        await r
        assert got == ["item", "timeout"]
        assert after == ["second"]

    asyncio.run(main())


# -- yielding --------------------------------------------------------------------------------------
def test_op_that_completes_at_once_does_not_yield_to_the_loop() -> None:
    async def main() -> list[str]:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        steps: list[str] = []

        async def busy() -> None:
            steps.append("busy start")
            for i in range(300):  # more than BUDGET: asyncio ops that complete never yield
                await ch.send(i)
            for _ in range(300):
                await ch.recv()
            steps.append("busy end")

        async def other() -> None:
            steps.append("other")

        t1 = asyncio.create_task(busy())
        t2 = asyncio.create_task(other())
        await t1
        await t2
        return steps

    assert asyncio.run(main()) == ["busy start", "busy end", "other"]


def test_op_that_parks_yields_to_the_loop() -> None:
    async def main() -> list[str]:
        ch: kcoro.Channel[int] = kcoro.Channel()
        steps: list[str] = []

        async def receiver() -> None:
            steps.append("recv start")
            await ch.recv()
            steps.append("recv end")

        async def sender() -> None:
            steps.append("send")
            await ch.send(1)

        t1 = asyncio.create_task(receiver())
        t2 = asyncio.create_task(sender())
        await t1
        await t2
        return steps

    assert asyncio.run(main()) == ["recv start", "send", "recv end"]


# -- bad input -------------------------------------------------------------------------------------
def test_blocking_forms_inside_asyncio_are_runtime_errors() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        ch.try_send(1)
        t = kcoro.token_kernel().publish()
        try:
            for call in (ch.recv_blocking, lambda: ch.send_blocking(2), t.wait_blocking,
                         lambda: list(ch.iter_blocking()),
                         lambda: kcoro.select_blocking(ch.on_recv())):
                with pytest.raises(RuntimeError, match="asyncio loop"):
                    call()
            assert len(ch) == 1
        finally:
            kcoro.token_kernel().shutdown()

    asyncio.run(main())


def test_cancel_scope_inside_asyncio_is_a_runtime_error() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"asyncio\.timeout"), kcoro.CancelScope():
            pass

    asyncio.run(main())


# -- cross-context ---------------------------------------------------------------------------------
def test_asyncio_awaits_a_kcoro_task_running_in_another_thread() -> None:
    started = threading.Event()
    release: kcoro.Channel[str] = kcoro.Channel()
    box: list[kcoro.Task[Any]] = []

    async def kmain() -> None:
        async def job() -> str:
            return "job result " + await release.recv()

        box.append(kcoro.spawn(job))
        started.set()
        await box[0]

    th = threading.Thread(target=kcoro.run, args=(kmain,), daemon=True)
    th.start()
    assert started.wait(10)

    async def amain() -> str:
        async def join() -> Any:
            return await box[0]

        waiter = asyncio.create_task(join())
        try:
            await until(lambda: box[0].state == "PARKED")
            await release.send("via asyncio")
            return await waiter
        finally:
            release.close()  # never leave the kcoro thread parked

    assert asyncio.run(amain()) == "job result via asyncio"
    th.join(10)
    assert not th.is_alive()


def test_two_asyncio_loops_in_two_threads_share_a_channel() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel()
    n = scaled(300)
    got: list[int] = []

    async def producer() -> None:
        for i in range(n):
            await ch.send(i)
        ch.close()

    async def consumer() -> None:
        async for x in ch:
            got.append(x)

    th = threading.Thread(target=asyncio.run, args=(producer(),), daemon=True)
    th.start()
    asyncio.run(consumer())
    th.join(10)
    assert got == list(range(n))


@pytest.mark.parametrize("kind", ["rendezvous", "buffered1", "buffered10", "unlimited"])
def test_one_channel_shared_by_kcoro_asyncio_and_threads(kind: str) -> None:
    ch: kcoro.Channel[Any] = kcoro.Channel(CAPS[kind], name=f"shared-{kind}")
    per = scaled(150)
    lock = threading.Lock()
    producers_left = [6]
    # One list per consumer: (kcoro|asyncio|thread, consumer index).
    received: dict[tuple[str, int], list[Any]] = {
        (side, c): [] for side in ("kcoro", "asyncio", "thread") for c in range(2)}

    def producer_done() -> None:
        with lock:
            producers_left[0] -= 1
            last = producers_left[0] == 0
        if last:
            ch.close()

    def items(tag: str, p: int) -> list[Any]:
        return [(tag, p, i) for i in range(per)]

    async def kcoro_side() -> None:
        async def produce(p: int) -> None:
            for it in items("k", p):
                await ch.send(it)
            producer_done()

        async def consume(c: int) -> None:
            async for it in ch:
                received["kcoro", c].append(it)

        async with kcoro.TaskGroup() as tg:
            for p in range(2):
                tg.spawn(produce, p)
                tg.spawn(consume, p)

    async def asyncio_side() -> None:
        async def produce(p: int) -> None:
            for it in items("a", p):
                await ch.send(it)
            producer_done()

        async def consume(c: int) -> None:
            async for it in ch:
                received["asyncio", c].append(it)

        await asyncio.gather(*(f(p) for p in range(2) for f in (produce, consume)))

    def thread_produce(p: int) -> None:
        for it in items("t", p):
            ch.send_blocking(it)
        producer_done()

    def thread_consume(c: int) -> None:
        for it in ch.iter_blocking():
            received["thread", c].append(it)

    errors: list[BaseException] = []

    def party(fn: Callable[..., Any], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args)
            except BaseException as e:  # report, and release everyone else
                errors.append(e)
                ch.cancel()

        return threading.Thread(target=body, daemon=True)

    threads = [party(kcoro.run, kcoro_side), party(lambda: asyncio.run(asyncio_side()))]
    threads += [party(thread_produce, p) for p in range(2)]
    threads += [party(thread_consume, c) for c in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == []
    assert not any(th.is_alive() for th in threads), "a party is stuck"
    everything = [it for got in received.values() for it in got]
    expected = [it for tag in "kat" for p in range(2) for it in items(tag, p)]
    assert Counter(everything) == Counter(expected)  # every item exactly once
    assert len(everything) == len(expected)
    # Each consumer saw each producer's items in order (FIFO channel).
    for got in received.values():
        for tag in "kat":
            for p in range(2):
                seq = [i for (t, q, i) in got if (t, q) == (tag, p)]
                assert seq == sorted(seq)
    st = ch.stats()
    assert st.sends == st.recvs == len(expected)
    assert st.waiting_receivers == st.waiting_senders == 0
    ch.check_invariants()


def test_asyncio_consumers_with_timeouts_lose_nothing_from_thread_producer() -> None:
    # CU test_univ_queue_cancel: consumers that time out and retry lose nothing.
    ch: kcoro.Channel[int] = kcoro.Channel(3)
    n = scaled(300)

    def producer() -> None:
        for i in range(n):
            ch.send_blocking(i)
        ch.close()

    async def main() -> list[int]:
        got: list[int] = []

        async def consumer() -> None:
            while True:
                try:
                    got.append(await ch.recv(timeout=0.001))
                except TimeoutError:
                    continue
                except kcoro.ChannelClosed:
                    return

        th = threading.Thread(target=producer)
        th.start()
        await asyncio.gather(*(consumer() for _ in range(3)))
        th.join(10)
        return got

    assert sorted(asyncio.run(main())) == list(range(n))


def test_asyncio_parked_op_woken_from_a_thread() -> None:
    async def main() -> Any:
        ch: kcoro.Channel[str] = kcoro.Channel()

        def sender() -> None:
            wait_until(lambda: ch.stats().waiting_receivers == 1)
            ch.send_blocking("from thread")

        th = threading.Thread(target=sender)
        th.start()
        value = await ch.recv()
        th.join(10)
        return value

    assert asyncio.run(main()) == "from thread"

