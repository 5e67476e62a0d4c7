"""TESTING.md B: blocking vs non-blocking (reliability anchors 9-13), plus the budget policy."""

from __future__ import annotations

import asyncio
import errno
import threading
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    BOUNDED_IDS,
    NONBLOCKING_SEND_IDS,
    all_kinds,
    assert_failures,
    assert_stats,
    bounded_kinds,
    buffer_room,
    drain,
    kind_param,
    make,
    run,
    settle,
)
from kcoro import _runtime
from kcoro.testing import wait_until

pytestmark = pytest.mark.timeout(60)


# -- 9. empty receive blocks; try_recv fails at once ---------------------------------------------
@all_kinds
def test_empty_recv_parks_and_try_forms_raise_would_block(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        with pytest.raises(kcoro.WouldBlock) as ei:
            ch.try_recv()
        assert ei.value.errno == errno.EAGAIN
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        r = kcoro.spawn(ch.recv)
        await settle()
        assert r.state == "PARKED"
        assert r.parked_on is ch
        assert_stats(ch, waiting_receivers=1, recvs=0)
        # A try_recv beside the parked receiver still fails at once.
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
        assert_failures(ch, recv_would_block=3)
        await ch.send("item")
        assert await r == "item"
        assert_stats(ch, waiting_receivers=0, recvs=1, sends=1)
        ch.check_invariants()

    run(main)


@all_kinds
def test_empty_recv_blocking_from_thread_waits_for_a_task(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        got: list[Any] = []
        th = threading.Thread(target=lambda: got.append(ch.recv_blocking()))
        th.start()
        wait_until(lambda: ch.stats().waiting_receivers == 1)
        assert got == []
        await ch.send(42)
        th.join(timeout=10)
        assert got == [42]
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
        ch.check_invariants()

    run(main)


@all_kinds
def test_recv_blocking_timeout_zero_is_a_try(kind: str) -> None:
    ch = make(kind)
    with pytest.raises(kcoro.WouldBlock):
        ch.recv_blocking(timeout=0)
    if kind == "rendezvous":  # a partner must be parked: a thread in send_blocking
        th = threading.Thread(target=ch.send_blocking, args=(1,))
        th.start()
        wait_until(lambda: ch.stats().waiting_senders == 1)
    else:
        th = None
        ch.try_send(1)
    assert ch.recv_blocking(timeout=0) == 1
    if th is not None:
        th.join(timeout=10)
    with pytest.raises(kcoro.WouldBlock):
        ch.recv_blocking(timeout=0)
    assert_failures(ch, recv_would_block=2)
    ch.check_invariants()


# -- 10. full send blocks; try_send fails with no side effect -------------------------------------
@bounded_kinds
def test_full_send_parks_and_try_send_has_no_side_effect(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            await ch.send(i)
        before = ch.stats()
        with pytest.raises(kcoro.WouldBlock) as ei:
            ch.try_send("refused")
        assert ei.value.errno == errno.EAGAIN
        with pytest.raises(kcoro.WouldBlock):
            await ch.send("refused", timeout=0)
        after = ch.stats()
        assert after.sends == before.sends == room
        assert after.buffered == room
        assert after.undelivered == 0
        s = kcoro.spawn(ch.send, "parked")
        await settle()
        assert s.state == "PARKED"
        assert s.parked_on is ch
        assert_stats(ch, waiting_senders=1, buffered=room)
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send("refused")
        assert_failures(ch, send_would_block=3)
        got = [await ch.recv() for _ in range(room + 1)]
        assert got == [*range(room), "parked"]
        await s
        assert "refused" not in got
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_send_blocking_from_thread_parks_until_a_task_receives(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        done = threading.Event()

        def sender() -> None:
            ch.send_blocking("t")
            done.set()

        th = threading.Thread(target=sender)
        th.start()
        wait_until(lambda: ch.stats().waiting_senders == 1)
        assert not done.is_set()
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send("x")
        got = [await ch.recv() for _ in range(room + 1)]
        th.join(timeout=10)
        assert done.is_set()
        assert got == [*range(room), "t"]
        ch.check_invariants()

    run(main)


@kind_param(NONBLOCKING_SEND_IDS)
def test_send_never_parks_on_unlimited_and_conflated(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        s = kcoro.spawn(_send_n, ch, 500)
        await settle()
        assert s.done()
        assert ch.try_send("x") is True
        await ch.send("y", timeout=0)
        assert_failures(ch)
        ch.check_invariants()

    run(main)


async def _send_n(ch: kcoro.Channel[Any], n: int) -> None:
    for i in range(n):
        await ch.send(i)


# -- 11. try ops succeed against a parked partner -------------------------------------------------
@all_kinds
def test_try_send_hands_to_a_parked_receiver(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = kcoro.spawn(ch.recv)
        await settle()
        assert ch.try_send("direct") is True
        assert await r == "direct"
        assert_stats(ch, sends=1, recvs=1, buffered=0, waiting_receivers=0)
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_try_recv_takes_from_a_parked_sender_and_wakes_it(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        s = kcoro.spawn(ch.send, "parked")
        await settle()
        assert s.state == "PARKED"
        first = ch.try_recv()
        # The parked sender's item moved into the freed slot (or was taken, for rendezvous).
        assert first == (0 if room else "parked")
        await settle()
        assert s.done()
        assert_stats(ch, waiting_senders=0, buffered=room)
        assert await drain(ch) == [*range(1, room), "parked"][: room]
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_try_recv_takes_from_a_thread_parked_in_send_blocking(kind: str) -> None:
    ch = make(kind)
    room = buffer_room(kind)
    for i in range(room):
        ch.try_send(i)
    th = threading.Thread(target=ch.send_blocking, args=("t",))
    th.start()
    wait_until(lambda: ch.stats().waiting_senders == 1)
    got = [ch.try_recv()]
    th.join(timeout=10)
    assert not th.is_alive()
    got += [ch.try_recv() for _ in range(room)]
    assert got == [*range(room), "t"]
    ch.check_invariants()


# -- 12. a parked waiter owns the next item -------------------------------------------------------
@all_kinds
def test_parked_receiver_owns_the_next_item(kind: str) -> None:
    """A value sent while a receiver is parked belongs to it: the sender's own immediate
    try_recv cannot steal it."""

    async def main() -> None:
        ch = make(kind)
        r = kcoro.spawn(ch.recv)
        await settle()
        await ch.send("mine")
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        assert len(ch) == 0
        assert await r == "mine"
        ch.check_invariants()

    run(main)


@all_kinds
def test_parked_receiver_owns_item_sent_by_a_thread(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = kcoro.spawn(ch.recv)
        await settle()
        stolen: list[Any] = []

        def thief() -> None:
            ch.send_blocking("mine")
            try:
                stolen.append(ch.try_recv())
            except kcoro.WouldBlock:
                pass

        th = threading.Thread(target=thief)
        th.start()
        th.join(timeout=10)
        assert stolen == []
        assert await r == "mine"
        ch.check_invariants()

    run(main)


@pytest.mark.parametrize("kind", BOUNDED_IDS[1:])
def test_parked_sender_owns_the_freed_slot(kind: str) -> None:
    """A slot freed while a sender is parked is taken by that sender, not by a new try_send."""

    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        s = kcoro.spawn(ch.send, "parked")
        await settle()
        assert ch.try_recv() == 0
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send("intruder")
        await settle()
        assert s.done()
        assert await drain(ch) == [*range(1, room), "parked"]
        ch.check_invariants()

    run(main)


# -- 13. async ops are checkpoints ----------------------------------------------------------------
@all_kinds
@pytest.mark.parametrize("op", ["send", "recv"])
@pytest.mark.parametrize("form", ["plain", "timeout", "token"])
def test_async_op_in_cancelled_scope_raises_and_does_nothing(kind: str, op: str,
                                                             form: str) -> None:
    """Even an op that would complete at once raises Cancelled in a cancelled scope, and has no
    effect on the channel."""

    async def main() -> None:
        ch = make(kind)
        if op == "recv":
            if kind == "rendezvous":
                partner = kcoro.spawn(ch.send, "pending")
                await settle()
            else:
                ch.try_send("pending")
        else:
            partner = kcoro.spawn(ch.recv) if kind == "rendezvous" else None
            await settle()
        before = ch.stats()
        kw: dict[str, Any] = {}
        if form == "timeout":
            kw["timeout"] = 5
        elif form == "token":
            kw["cancel"] = kcoro.CancelToken()
        with kcoro.CancelScope() as cs:
            cs.cancel()
            with pytest.raises(kcoro.Cancelled):
                if op == "send":
                    await ch.send("new", **kw)
                else:
                    await ch.recv(**kw)
        assert cs.cancel_called
        after = ch.stats()
        for f in ("sends", "recvs", "buffered", "waiting_senders", "waiting_receivers",
                  "undelivered"):
            assert getattr(after, f) == getattr(before, f), f
        # Outside the scope the op completes normally with the pending partner.
        if op == "send":
            await ch.send("new")
            if kind == "rendezvous":
                assert await partner == "new"
            else:
                assert ch.try_recv() == "new"
        else:
            assert await ch.recv() == "pending"
            if kind == "rendezvous":
                await partner
        ch.check_invariants()

    run(main)


def test_checkpoint_always_yields() -> None:
    async def main() -> None:
        log: list[str] = []

        async def other() -> None:
            log.append("other")

        kcoro.spawn(other)
        log.append("before")
        await kcoro.checkpoint()
        log.append("after")
        assert log == ["before", "other", "after"]

    run(main)


@pytest.mark.parametrize("op", ["send", "recv"])
def test_fast_ops_yield_within_budget(op: str) -> None:
    """A loop of ops that never park yields to another ready task after at most BUDGET ops."""
    budget = _runtime.BUDGET

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        if op == "recv":
            for i in range(10 * budget):
                ch.try_send(i)
        done = 0
        seen: list[int] = []

        async def other() -> None:
            seen.append(done)

        kcoro.spawn(other)
        for i in range(10 * budget):
            if op == "send":
                await ch.send(i)
            else:
                assert await ch.recv() == i
            done += 1
            if seen:
                break
        assert seen, "the looping task never yielded"
        assert 1 <= seen[0] <= budget

    run(main)


def test_looping_producer_on_unlimited_does_not_starve_and_can_be_cancelled() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        ticks = 0

        async def producer() -> None:
            i = 0
            while True:
                await ch.send(i)
                i += 1

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(5):
                ticks += 1
                await kcoro.checkpoint()

        p = kcoro.spawn(producer)
        t = kcoro.spawn(ticker)
        await t
        assert ticks == 5
        p.cancel()
        with pytest.raises(kcoro.Cancelled):
            await p
        n = len(ch)
        assert n > 0
        assert [ch.try_recv() for _ in range(n)] == list(range(n))
        ch.check_invariants()

    run(main)


def test_parking_op_always_yields() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        log: list[str] = []

        async def sender() -> None:
            log.append("sender")
            await ch.send(1)

        kcoro.spawn(sender)
        log.append("recv")
        assert await ch.recv() == 1
        assert log == ["recv", "sender"]

    run(main)


# -- asyncio --------------------------------------------------------------------------------------
@all_kinds
def test_asyncio_parked_receiver_and_try_ops(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        r = asyncio.ensure_future(ch.recv())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not r.done()
        assert ch.stats().waiting_receivers == 1
        assert ch.try_send("x") is True
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()  # it belongs to the parked receiver
        assert await r == "x"
        assert ch.stats().waiting_receivers == 0
        ch.check_invariants()

    asyncio.run(main())


@bounded_kinds
def test_asyncio_full_send_parks(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            await ch.send(i)
        s = asyncio.ensure_future(ch.send("parked"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not s.done()
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send("x")
        got = [await ch.recv() for _ in range(room + 1)]
        await s
        assert got == [*range(room), "parked"]
        ch.check_invariants()

    asyncio.run(main())


def test_asyncio_op_that_completes_at_once_does_not_yield() -> None:
    """The asyncio convention (a policy): a completed-at-once op does not yield."""

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(2)
        log: list[str] = []

        async def other() -> None:
            log.append("other")

        t = asyncio.ensure_future(other())
        await ch.send(1)
        assert ch.try_send(2) is True
        assert await ch.recv() == 1
        assert log == []
        await t
        assert log == ["other"]

    asyncio.run(main())


# -- every "try" form completes against a parked partner ----------------------------------------
@all_kinds
@pytest.mark.parametrize("form", ["try_send", "send_timeout_0", "send_blocking_timeout_0"])
def test_every_try_send_form_hands_to_a_parked_receiver(kind: str, form: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = kcoro.spawn(ch.recv)
        await settle()
        if form == "try_send":
            assert ch.try_send("x") is True
        elif form == "send_timeout_0":
            await ch.send("x", timeout=0)
        else:
            th = threading.Thread(target=ch.send_blocking, args=("x",), kwargs={"timeout": 0})
            th.start()
            th.join(timeout=10)
        assert await r == "x"
        assert_stats(ch, sends=1, recvs=1, buffered=0, waiting_receivers=0)
        assert_failures(ch)
        ch.check_invariants()

    run(main)


@bounded_kinds
@pytest.mark.parametrize("form", ["try_recv", "recv_timeout_0", "recv_blocking_timeout_0"])
def test_every_try_recv_form_takes_from_a_parked_sender(kind: str, form: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        s = kcoro.spawn(ch.send, "parked")
        await settle()
        got: list[Any] = []
        if form == "try_recv":
            got.append(ch.try_recv())
        elif form == "recv_timeout_0":
            got.append(await ch.recv(timeout=0))
        else:
            th = threading.Thread(target=lambda: got.append(ch.recv_blocking(timeout=0)))
            th.start()
            th.join(timeout=10)
        await s
        got += [ch.try_recv() for _ in range(len(ch))]
        assert got == [*range(room), "parked"]
        assert_failures(ch)
        ch.check_invariants()

    run(main)
