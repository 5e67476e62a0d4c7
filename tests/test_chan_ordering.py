"""TESTING.md A: ordering and capacity (reliability anchors 1-8)."""

from __future__ import annotations

import gc
import math
import threading
import tracemalloc
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    BOUNDED_IDS,
    all_kinds,
    bounded_kinds,
    buffer_room,
    expected_capacity,
    expected_kind,
    fifo_kinds,
    make,
    run,
    settle,
)

pytestmark = pytest.mark.timeout(60)

N_ITEMS = 100


# -- 1. FIFO for every capacity ---------------------------------------------------------------
def test_fifo_every_capacity_0_to_200() -> None:
    """One producer sends 0..99, one consumer gets them back in order, for capacities 0..200;
    the consumer alternates the plain ``recv`` and the ``async for`` forms."""

    async def main() -> None:
        for cap in range(201):
            ch: kcoro.Channel[int] = kcoro.Channel(cap)

            async def producer(ch: kcoro.Channel[int] = ch) -> None:
                for i in range(N_ITEMS):
                    await ch.send(i)
                ch.close()

            kcoro.spawn(producer)
            got: list[int] = []
            if cap % 2:
                async for v in ch:
                    got.append(v)
            else:
                while True:
                    try:
                        got.append(await ch.recv())
                    except kcoro.ChannelClosed:
                        break
            assert got == list(range(N_ITEMS)), f"capacity {cap}"
            assert ch.stats().peak <= min(cap, N_ITEMS)
            ch.check_invariants()

    run(main)


@fifo_kinds
def test_fifo_with_many_producers_keeps_per_producer_order(kind: str) -> None:
    """Three producers interleave; each producer's items arrive in the order it sent them."""

    async def main() -> None:
        ch = make(kind)

        async def producer(p: int) -> None:
            for i in range(50):
                await ch.send((p, i))

        async with kcoro.TaskGroup() as tg:
            for p in range(3):
                tg.spawn(producer, p)
            got = [await ch.recv() for _ in range(150)]
        for p in range(3):
            assert [i for q, i in got if q == p] == list(range(50))
        ch.check_invariants()

    run(main)


@fifo_kinds
def test_fifo_thread_producer_task_consumer(kind: str) -> None:
    """An OS thread with ``send_blocking`` feeds a kcoro task: nothing lost, order kept."""

    async def main() -> None:
        ch = make(kind)

        def producer() -> None:
            for i in range(200):
                ch.send_blocking(i)
            ch.close()

        th = threading.Thread(target=producer)
        th.start()
        got = [v async for v in ch]
        th.join()
        assert got == list(range(200))
        ch.check_invariants()

    run(main)


@fifo_kinds
def test_fifo_task_producer_thread_consumer_iter_blocking(kind: str) -> None:
    async def main() -> list[int]:
        ch = make(kind)
        got: list[int] = []
        th = threading.Thread(target=lambda: got.extend(ch.iter_blocking()))
        th.start()
        for i in range(200):
            await ch.send(i)
        ch.close()
        th.join()
        ch.check_invariants()
        return got

    assert run(main) == list(range(200))


# -- 2. parked waiters are served in arrival order ------------------------------------------------
@all_kinds
def test_parked_receivers_served_in_arrival_order(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        got: dict[int, Any] = {}

        async def receiver(i: int) -> None:
            got[i] = await ch.recv()

        tasks = []
        for i in range(8):
            tasks.append(kcoro.spawn(receiver, i))
            await settle()  # receiver i is parked before receiver i+1 arrives
        assert ch.stats().waiting_receivers == 8
        for v in range(8):
            await ch.send(f"v{v}")
        for t in tasks:
            await t
        assert got == {i: f"v{i}" for i in range(8)}
        assert ch.stats().waiting_receivers == 0
        ch.check_invariants()

    run(main)


def test_receive_daisy_chain_gets_items_in_order() -> None:
    """Go's SynchFifo: a chain of tasks, each receiving once from an unbuffered channel after the
    previous link has, sees 0..N-1 in order."""

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        n = 50
        got: list[int] = []

        async def link(inp: kcoro.Channel[None], out: kcoro.Channel[None]) -> None:
            await inp.recv()
            got.append(await ch.recv())
            await out.send(None)

        first: kcoro.Channel[None] = kcoro.Channel()
        inp = first
        async with kcoro.TaskGroup() as tg:
            for _ in range(n):
                out: kcoro.Channel[None] = kcoro.Channel()
                tg.spawn(link, inp, out)
                inp = out
            await first.send(None)
            for i in range(n):
                await ch.send(i)
            await inp.recv()
        assert got == list(range(n))

    run(main)


@bounded_kinds
def test_parked_senders_admitted_in_arrival_order(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(f"buf{i}")
        tasks = []
        for name in "abcde":
            tasks.append(kcoro.spawn(ch.send, name))
            await settle()
        assert ch.stats().waiting_senders == 5
        assert all(t.state == "PARKED" for t in tasks)
        got = [await ch.recv() for _ in range(room + 5)]
        assert got == [f"buf{i}" for i in range(room)] + list("abcde")
        for t in tasks:
            await t
        assert ch.stats().waiting_senders == 0
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_each_receive_admits_exactly_one_parked_sender(kind: str) -> None:
    """A receive that frees a slot wakes the first parked sender only, and its item joins the
    tail of the buffer."""

    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        a = kcoro.spawn(ch.send, "a")
        await settle()
        b = kcoro.spawn(ch.send, "b")
        await settle()
        first = await ch.recv()
        await settle()
        assert first == (0 if room else "a")
        assert a.done() and not b.done()
        assert b.state == "PARKED"
        assert len(ch) == room
        assert ch.stats().waiting_senders == 1
        ch.check_invariants()
        rest = [await ch.recv() for _ in range(room + 1)]
        assert [first, *rest] == [*range(room), "a", "b"]
        await b

    run(main)


# -- 3. the exact capacity boundary, also after the ring wraps -----------------------------------
@pytest.mark.parametrize("cap", [1, 2, 3, 10, 16])
def test_exact_capacity_boundary_from_every_offset(cap: int) -> None:
    """With capacity k, k sends complete without parking and send k+1 parks until one receive;
    the same with the buffer's head at every offset 0..k (the ring has wrapped)."""

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(cap)
        seq = 0
        expect_next = 0
        for offset in range(cap + 1):
            # Move the head: push and pop ``offset`` items.
            for _ in range(offset):
                ch.try_send(seq)
                seq += 1
            for _ in range(offset):
                assert ch.try_recv() == expect_next
                expect_next += 1
            assert len(ch) == 0
            # k async sends complete at once (the task never parks: a child finishes in one go).
            filler = kcoro.spawn(_send_range, ch, seq, seq + cap)
            await settle()
            assert filler.done(), f"offset {offset}: a send parked before the buffer was full"
            seq += cap
            assert len(ch) == cap
            with pytest.raises(kcoro.WouldBlock):
                ch.try_send(-1)
            extra = kcoro.spawn(ch.send, seq)
            await settle()
            assert extra.state == "PARKED"
            assert ch.stats().waiting_senders == 1
            assert await ch.recv() == expect_next
            expect_next += 1
            await settle()
            assert extra.done()
            seq += 1
            assert len(ch) == cap
            assert [ch.try_recv() for _ in range(cap)] == list(range(expect_next, seq))
            expect_next = seq
            ch.check_invariants()

    run(main)


async def _send_range(ch: kcoro.Channel[int], lo: int, hi: int) -> None:
    for i in range(lo, hi):
        await ch.send(i)


def test_rendezvous_send_parks_until_a_receiver_arrives() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.RENDEZVOUS)
        s = kcoro.spawn(ch.send, 1)
        await settle()
        assert s.state == "PARKED"
        assert len(ch) == 0
        assert ch.stats().buffered == 0
        assert await ch.recv() == 1
        await s
        ch.check_invariants()

    run(main)


@pytest.mark.parametrize("first", ["sender", "receiver"])
def test_rendezvous_pairing_whichever_side_arrives_first_parks(first: str) -> None:
    """The first side parks; the second completes without parking; both resume."""

    async def main() -> None:
        ch: kcoro.Channel[str] = kcoro.Channel()
        got: list[str] = []

        async def receiver() -> None:
            got.append(await ch.recv())

        if first == "sender":
            a = kcoro.spawn(ch.send, "x")
            await settle()
            assert a.state == "PARKED"
            b = kcoro.spawn(receiver)
        else:
            a = kcoro.spawn(receiver)
            await settle()
            assert a.state == "PARKED"
            b = kcoro.spawn(ch.send, "x")
        await settle()
        # The second one completed in its first step, the first one was woken.
        assert b.done() and a.done()
        assert got == ["x"]
        assert ch.stats().peak == 0  # the item never entered a buffer
        ch.check_invariants()

    run(main)


# -- 5. len and capacity ------------------------------------------------------------------------
@all_kinds
def test_len_capacity_and_kind(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        assert len(ch) == 0
        assert ch.capacity == expected_capacity(kind)
        assert ch.kind == expected_kind(kind)
        room = min(buffer_room(kind), 50)
        for i in range(room):
            await ch.send(i)
            assert len(ch) == i + 1
        assert len(ch) == room == ch.stats().buffered
        if room:
            await ch.recv()
            assert len(ch) == room - 1
        else:  # rendezvous: a parked sender's item is not "in" the channel
            s = kcoro.spawn(ch.send, 0)
            await settle()
            assert len(ch) == 0
            assert await ch.recv() == 0
            await s
        ch.check_invariants()

    run(main)


def test_unlimited_capacity_is_infinity() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
    assert ch.capacity == math.inf
    assert math.inf == kcoro.UNLIMITED  # "infinity means unlimited"
    assert kcoro.Channel(math.inf).kind == "unlimited"
    assert kcoro.Channel(float("inf")).capacity == math.inf


# -- 6. huge capacities are not preallocated -----------------------------------------------------
def _bytes_per_channel(capacity: int, n: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        chans = [kcoro.Channel(capacity) for _ in range(n)]
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del chans
    return used / n


def test_huge_capacity_is_not_preallocated() -> None:
    n = 5000
    small = _bytes_per_channel(2, n)
    huge = _bytes_per_channel(2**30, n)
    # A preallocated ring of 2**30 slots would be 8 GiB; 128 slots would already show.
    assert huge < small + 1024, f"{huge:.0f} bytes per channel of capacity 2**30 vs {small:.0f}"
    chans = [kcoro.Channel(2**30) for _ in range(3)]
    ch = chans[0]
    assert ch.capacity == 2**30
    for i in range(10_000):
        assert ch.try_send(i)
    assert len(ch) == 10_000
    assert [ch.try_recv() for _ in range(10_000)] == list(range(10_000))
    ch.check_invariants()


# -- 7. unlimited never blocks a sender ----------------------------------------------------------
def test_unlimited_never_blocks_a_sender() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        producer = kcoro.spawn(_send_range, ch, 0, 5000)
        await settle()
        assert producer.done()  # it never parked: no receiver ever ran
        for i in range(5000, 6000):
            assert ch.try_send(i) is True
        ch.close()
        assert [v async for v in ch] == list(range(6000))
        assert ch.stats().peak == 6000
        ch.check_invariants()

    run(main)


def test_unlimited_send_blocking_from_thread_never_blocks() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
    th = threading.Thread(target=lambda: [ch.send_blocking(i) for i in range(3000)])
    th.start()
    th.join(timeout=30)
    assert not th.is_alive()
    assert len(ch) == 3000
    ch.close()
    assert list(ch.iter_blocking()) == list(range(3000))
    ch.check_invariants()


# -- 8. consumed slots are not retained --------------------------------------------------------
def test_memory_flat_through_capacity_1_with_large_payloads() -> None:
    """Many 4 KiB payloads pass through a capacity-1 channel; traced memory does not grow."""
    n = 20_000

    async def main() -> tuple[int, int]:
        ch: kcoro.Channel[bytes] = kcoro.Channel(1)

        async def producer() -> None:
            for i in range(n):
                await ch.send(bytes(4096) + i.to_bytes(4, "little"))
            ch.close()

        kcoro.spawn(producer)
        count = 0
        mid = 0
        async for item in ch:
            assert len(item) == 4100
            count += 1
            if count == 2000:
                gc.collect()
                mid = tracemalloc.get_traced_memory()[0]
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
        assert count == n
        ch.check_invariants()
        return mid, end

    tracemalloc.start()
    try:
        mid, end = run(main)
    finally:
        tracemalloc.stop()
    # 18,000 more payloads (74 MB) went through; retaining even 1% of them would show.
    assert end - mid < 256 * 1024, f"memory grew by {end - mid} bytes"


@pytest.mark.parametrize("kind", [*BOUNDED_IDS[1:], "unlimited"])
def test_received_items_are_not_referenced_by_the_channel(kind: str) -> None:
    import weakref

    class Item:
        pass

    ch = make(kind)
    items = [Item() for _ in range(min(buffer_room(kind), 10))]
    refs = [weakref.ref(x) for x in items]
    for x in items:
        ch.try_send(x)
    del items, x
    while len(ch):
        ch.try_recv()
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)



# -- 4. rendezvous pairing in every mix of plain op and select ------------------------------------
FORMS = ["plain", "select1", "select2"]


async def _send_form(form: str, ch: kcoro.Channel[Any], item: Any) -> None:
    if form == "plain":
        await ch.send(item)
    elif form == "select1":
        assert await kcoro.select(ch.on_send(item)) == (0, None)
    else:  # the other clause never fires: nobody receives from ``idle``
        idle: kcoro.Channel[Any] = kcoro.Channel()
        assert await kcoro.select(idle.on_send("never"), ch.on_send(item)) == (1, None)
        assert idle.stats().waiting_senders == 0


async def _recv_form(form: str, ch: kcoro.Channel[Any]) -> Any:
    if form == "plain":
        return await ch.recv()
    if form == "select1":
        i, v = await kcoro.select(ch.on_recv())
        assert i == 0
        return v
    idle: kcoro.Channel[Any] = kcoro.Channel()
    i, v = await kcoro.select(idle.on_recv(), ch.on_recv())
    assert i == 1
    assert idle.stats().waiting_receivers == 0
    return v


@pytest.mark.parametrize("send_form", FORMS)
@pytest.mark.parametrize("recv_form", FORMS)
@pytest.mark.parametrize("first", ["sender", "receiver"])
def test_rendezvous_pairing_plain_and_select_mixes(send_form: str, recv_form: str,
                                                   first: str) -> None:
    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel()
        got: list[Any] = []

        async def receiver() -> None:
            got.append(await _recv_form(recv_form, ch))

        async def sender_fn() -> None:
            await _send_form(send_form, ch, "x")

        if first == "sender":
            a = kcoro.spawn(sender_fn)
            await settle()
            assert a.state == "PARKED"
            assert ch.stats().waiting_senders == 1
            b = kcoro.spawn(receiver)
        else:
            a = kcoro.spawn(receiver)
            await settle()
            assert a.state == "PARKED"
            assert ch.stats().waiting_receivers == 1
            b = kcoro.spawn(sender_fn)
        await settle()
        await a
        await b
        assert got == ["x"]
        assert_both_idle(ch)
        assert ch.stats().sends == ch.stats().recvs == 1

    run(main)


def assert_both_idle(ch: kcoro.Channel[Any]) -> None:
    s = ch.stats()
    assert (s.waiting_senders, s.waiting_receivers, s.buffered) == (0, 0, 0)
    ch.check_invariants()
