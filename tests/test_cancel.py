"""TESTING.md D: cancellation and timeouts on channels (reliability anchors 26-35).

kcoro's policy is *atomic* cancellation: a cancelled or timed-out operation either completed (and
returns normally, the task's cancellation being delivered at its next checkpoint) or changed
nothing.  Every test here checks both halves: what the cancelled party saw, and that the channel
still holds exactly the items it should (nothing lost, nothing duplicated, no ghost waiter).
"""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    BOUNDED_IDS,
    all_kinds,
    bounded_kinds,
    buffer_room,
    drain,
    fifo_kinds,
    make,
    run,
    settle,
)

MECHANISMS = ["task", "scope", "timeout", "token"]


async def fill(ch: kcoro.Channel[Any], kind: str, prefix: str = "f") -> list[Any]:
    """Fill a bounded channel's buffer without parking; return what was put in."""
    items = [f"{prefix}{i}" for i in range(buffer_room(kind))]
    for it in items:
        assert ch.try_send(it)
    return items


class Interrupter:
    """Park an operation in a task that can be interrupted by one of four mechanisms."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.token = kcoro.CancelToken()
        self.scope: kcoro.CancelScope | None = None
        self.outcome: list[Any] = []

    def kwargs(self) -> dict[str, Any]:
        if self.how == "timeout":
            return {"timeout": 5}
        if self.how == "token":
            return {"cancel": self.token}
        return {}

    def spawn(self, op: Any, *args: Any) -> kcoro.Task[Any]:
        async def body() -> None:
            with kcoro.CancelScope() as scope:
                self.scope = scope
                try:
                    self.outcome.append(("ok", await op(*args, **self.kwargs())))
                except (TimeoutError, kcoro.OperationCancelled) as e:
                    self.outcome.append(("err", type(e).__name__))
                    return
                except kcoro.Cancelled:
                    self.outcome.append(("err", "Cancelled"))
                    raise

        return kcoro.spawn(body)

    async def interrupt(self, task: kcoro.Task[Any]) -> None:
        if self.how == "task":
            task.cancel()
        elif self.how == "scope":
            assert self.scope is not None
            self.scope.cancel()
        elif self.how == "token":
            assert self.token.cancel("stop")
        else:
            await kcoro.sleep(5)  # the op's own timeout fires (mock clock: no real time)

    def expected_error(self) -> str:
        return {"task": "Cancelled", "scope": "Cancelled", "timeout": "TimeoutError",
                "token": "OperationCancelled"}[self.how]


async def finish(task: kcoro.Task[Any]) -> None:
    """Await a task that may have been cancelled."""
    try:
        await task
    except kcoro.Cancelled:
        pass


# -- 26: a cancelled receive never loses an element ----------------------------------------------
@all_kinds
def test_receiver_cancelled_after_handoff_keeps_the_item(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        got: list[Any] = []

        async def receiver() -> None:
            got.append(await ch.recv())
            await kcoro.checkpoint()  # the pending cancellation is delivered here
            got.append("unreachable")

        r = kcoro.spawn(receiver)
        await settle()
        assert ch.try_send(1)  # completes r's ticket: item 1 belongs to r now
        r.cancel()  # before r runs again: the completion has already won
        with pytest.raises(kcoro.Cancelled):
            await r
        assert got == [1]
        assert len(ch) == 0
        assert ch.stats().recvs == 1
        ch.check_invariants()

    run(main)


@fifo_kinds
def test_receiver_cancelled_before_items_arrive_leaves_them_in_order(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)

        async def receiver() -> None:
            await ch.recv()

        r = kcoro.spawn(receiver)
        await settle()
        r.cancel()  # cancel wins: nothing was transferred
        with pytest.raises(kcoro.Cancelled):
            await r

        async def sender() -> None:
            await ch.send(1)
            await ch.send(2)

        s = kcoro.spawn(sender)
        assert await ch.recv() == 1  # the retry gets item 1, never item 2
        assert await ch.recv() == 2
        await s
        assert ch.stats().recv_cancelled == 1
        ch.check_invariants()

    run(main)


# -- 27: other receivers pick up what a cancelled one did not take -------------------------------
@all_kinds
def test_survivors_get_all_items_when_one_of_three_readers_is_cancelled(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        readers = [kcoro.spawn(ch.recv, name=f"r{i}") for i in range(3)]
        await settle()
        readers[0].cancel()
        assert ch.try_send(1)
        assert ch.try_send(2)
        with pytest.raises(kcoro.Cancelled):
            await readers[0]
        assert sorted([await readers[1], await readers[2]]) == [1, 2]
        assert len(ch) == 0 and ch.stats().waiting_receivers == 0

    run(main)


@all_kinds
def test_cancel_after_handoff_does_not_move_the_item_to_another_reader(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        first = kcoro.spawn(ch.recv)
        await settle()
        second = kcoro.spawn(ch.recv)
        await settle()
        assert ch.try_send("a")  # to `first` (FIFO)
        first.cancel()  # too late: `first` keeps "a"
        assert await first == "a"
        assert ch.try_send("b")
        assert await second == "b"
        assert first.done() and not first.cancelled()
        ch.check_invariants()

    run(main)


@all_kinds
def test_first_getter_cancelled_second_gets_the_item(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        g1 = kcoro.spawn(ch.recv)
        g2 = kcoro.spawn(ch.recv)
        await settle()
        g1.cancel()
        assert ch.try_send("x")
        assert await g2 == "x"
        with pytest.raises(kcoro.Cancelled):
            await g1

    run(main)


# -- 28: never hand an item to a receiver that is already cancelled ------------------------------
@pytest.mark.parametrize("how", ["task", "scope", "token"])
@all_kinds
def test_item_not_handed_to_already_cancelled_receiver(kind: str, how: str) -> None:
    async def main() -> None:
        ch = make(kind)
        intr = Interrupter(how)
        r = intr.spawn(ch.recv)
        await settle()
        await intr.interrupt(r)  # r's dead entry is still queued until r runs again
        if kind == "rendezvous":
            with pytest.raises(kcoro.WouldBlock):
                ch.try_send("item")  # nobody is left to take it
            late = kcoro.spawn(ch.send, "item")
            await settle()
        else:
            assert ch.try_send("item")
            assert len(ch) == 1  # buffered, not lost in a cancelled receiver
        await finish(r)
        assert intr.outcome == [("err", intr.expected_error())]
        assert await ch.recv() == "item"
        if kind == "rendezvous":
            await late
        ch.check_invariants()

    run(main)


def test_select_receiver_already_cancelled_is_skipped() -> None:
    async def main() -> None:
        a: kcoro.Channel[str] = kcoro.Channel(name="a")
        b: kcoro.Channel[str] = kcoro.Channel(name="b")
        sel = kcoro.spawn(kcoro.select, a.on_recv(), b.on_recv())
        plain = kcoro.spawn(a.recv)
        await settle()
        sel.cancel()
        assert a.try_send("x")  # goes to the plain receiver queued behind the select
        assert await plain == "x"
        with pytest.raises(kcoro.Cancelled):
            await sel
        assert a.stats().waiting_receivers == 0 and b.stats().waiting_receivers == 0

    run(main)


# -- 29: a cancelled send neither duplicates nor loses -------------------------------------------
@bounded_kinds
def test_sender_cancelled_after_its_item_was_taken_returns_normally(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = await fill(ch, kind)
        events: list[str] = []

        async def sender() -> None:
            await ch.send("x")
            events.append("sent")
            await kcoro.checkpoint()
            events.append("unreachable")

        s = kcoro.spawn(sender)
        await settle()
        assert ch.stats().waiting_senders == 1
        first = ch.try_recv()  # frees a slot / takes x: completes the sender's ticket
        s.cancel()
        with pytest.raises(kcoro.Cancelled):
            await s
        assert events == ["sent"]
        received = [first, *await drain(ch)]
        assert received == [*filled, "x"]  # exactly once, in order
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_sender_cancelled_while_parked_keeps_its_item(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = await fill(ch, kind)
        kept: list[Any] = []

        async def sender(item: Any) -> None:
            try:
                await ch.send(item)
            except kcoro.Cancelled:
                kept.append(item)  # a failed send leaves the item with the sender
                raise

        s = kcoro.spawn(sender, "x")
        await settle()
        s.cancel()
        with pytest.raises(kcoro.Cancelled):
            await s
        assert kept == ["x"]
        assert ch.stats().waiting_senders == 0
        assert await drain(ch) == filled
        ch.check_invariants()

    run(main)


@pytest.mark.parametrize("victim", [0, 1])
@bounded_kinds
def test_cancelling_one_queued_sender_does_not_disturb_the_other(kind: str, victim: int) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = await fill(ch, kind)
        senders = [kcoro.spawn(ch.send, item) for item in ("a", "b")]
        await settle()
        senders[victim].cancel()
        survivor = "b" if victim == 0 else "a"
        got = []
        for _ in range(len(filled) + 1):
            got.append(await ch.recv())
        assert got == [*filled, survivor]
        with pytest.raises(kcoro.Cancelled):
            await senders[victim]
        await senders[1 - victim]
        assert len(ch) == 0 and ch.stats().waiting_senders == 0
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_sender_woken_by_free_slot_then_cancelled_puts_item_once(kind: str) -> None:
    # PY test_put_cancel_drop: the value ends up in the queue exactly once, counting a retry.
    async def main() -> None:
        ch = make(kind)
        await fill(ch, kind)
        attempts: list[str] = []

        async def putter() -> None:
            try:
                await ch.send("v")
                attempts.append("ok")
            except kcoro.Cancelled:
                attempts.append("cancelled")
                raise

        p = kcoro.spawn(putter)
        await settle()
        first = ch.try_recv()  # frees a slot (buffered) or takes "v" (rendezvous)
        p.cancel()
        await finish(p)
        everything = [first, *await drain(ch)]
        assert attempts == ["ok"]  # the completion won: the send returned normally
        assert everything.count("v") == 1

    run(main)


# -- 30: cancelled waiters are fully unlinked ----------------------------------------------------
@pytest.mark.parametrize("how", MECHANISMS)
@all_kinds
def test_cancelled_receivers_leave_no_ghost(kind: str, how: str) -> None:
    async def main() -> None:
        ch = make(kind)
        intrs = [Interrupter(how) for _ in range(4)]
        tasks = [i.spawn(ch.recv) for i in intrs]
        await settle()
        assert ch.stats().waiting_receivers == 4
        if how == "timeout":
            await intrs[0].interrupt(tasks[0])  # all four time out together
        else:
            for i, t in zip(intrs, tasks):
                await i.interrupt(t)
        for t in tasks:
            await finish(t)
        assert [i.outcome for i in intrs] == [[("err", intrs[0].expected_error())]] * 4
        st = ch.stats()
        assert st.waiting_receivers == 0
        ch.check_invariants()
        if kind == "rendezvous":
            with pytest.raises(kcoro.WouldBlock):
                ch.try_send(1)  # no ghost receiver to pair with
        else:
            assert ch.try_send(1)
            assert len(ch) == 1 and ch.try_recv() == 1

    run(main)


@pytest.mark.parametrize("how", MECHANISMS)
@bounded_kinds
def test_cancelled_senders_leave_no_ghost(kind: str, how: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = await fill(ch, kind)
        intrs = [Interrupter(how) for _ in range(3)]
        tasks = [i.spawn(ch.send, f"s{n}") for n, i in enumerate(intrs)]
        await settle()
        assert ch.stats().waiting_senders == 3
        if how == "timeout":
            await intrs[0].interrupt(tasks[0])
        else:
            for i, t in zip(intrs, tasks):
                await i.interrupt(t)
        for t in tasks:
            await finish(t)
        assert ch.stats().waiting_senders == 0
        ch.check_invariants()
        assert await drain(ch) == filled  # none of the cancelled items got in
        if kind == "rendezvous":
            with pytest.raises(kcoro.WouldBlock):
                ch.try_recv()
        else:
            assert ch.try_send("new") and ch.try_recv() == "new"

    run(main)


def test_repeated_cancellation_keeps_wait_queue_bounded() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(name="churn")
        for _ in range(300):
            with kcoro.move_on_after(1):
                await ch.recv()
        assert ch.stats().waiting_receivers == 0
        assert len(ch._recvq) <= 16  # swept: memory proportional to live waiters
        ch.check_invariants()

    run(main)


# -- 31: cancelling twice is harmless ------------------------------------------------------------
def test_cancel_is_idempotent_for_task_scope_and_token() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        tok = kcoro.CancelToken()
        async def token_recv() -> int:
            return await ch.recv(cancel=tok)

        r = kcoro.spawn(token_recv)
        await settle()
        assert tok.cancel() is True
        assert tok.cancel() is False
        with pytest.raises(kcoro.OperationCancelled):
            await r
        r.cancel()  # a finished task: no-op
        r.cancel()

        async def victim() -> None:
            await ch.recv()

        v = kcoro.spawn(victim)
        await settle()
        v.cancel()
        v.cancel()
        with pytest.raises(kcoro.Cancelled):
            await v
        with kcoro.CancelScope() as s:
            s.cancel()
            s.cancel()
            await kcoro.checkpoint()
        assert s.cancelled_caught
        assert ch.stats().waiting_receivers == 0

    run(main)


# -- 32: operations started in an already-cancelled scope do nothing -----------------------------
SEND_FORMS = ["plain", "timeout", "try_timeout", "token", "select"]


async def send_form(ch: kcoro.Channel[Any], item: Any, form: str) -> None:
    if form == "plain":
        await ch.send(item)
    elif form == "timeout":
        await ch.send(item, timeout=10)
    elif form == "try_timeout":
        await ch.send(item, timeout=0)
    elif form == "token":
        await ch.send(item, cancel=kcoro.CancelToken())
    else:
        await kcoro.select(ch.on_send(item))


async def recv_form(ch: kcoro.Channel[Any], form: str) -> Any:
    if form == "plain":
        return await ch.recv()
    if form == "timeout":
        return await ch.recv(timeout=10)
    if form == "try_timeout":
        return await ch.recv(timeout=0)
    if form == "token":
        return await ch.recv(cancel=kcoro.CancelToken())
    return (await kcoro.select(ch.on_recv()))[1]


@pytest.mark.parametrize("form", SEND_FORMS)
@all_kinds
def test_send_in_cancelled_scope_delivers_nothing(kind: str, form: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = kcoro.spawn(ch.recv)  # a parked partner the send could complete with
        await settle()
        before = ch.stats()
        with kcoro.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(kcoro.Cancelled):
                await send_form(ch, "x", form)
        after = ch.stats()
        assert after.sends == before.sends == 0
        assert after.waiting_receivers == 1 and len(ch) == 0
        assert r.state == "PARKED"
        assert ch.try_send("y")
        assert await r == "y"

    run(main)


@pytest.mark.parametrize("form", SEND_FORMS)
@all_kinds
def test_recv_in_cancelled_scope_consumes_nothing(kind: str, form: str) -> None:
    async def main() -> None:
        ch = make(kind)
        s = kcoro.spawn(ch.send, "x")  # buffered at once, or a parked rendezvous sender
        await settle()
        with kcoro.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(kcoro.Cancelled):
                await recv_form(ch, form)
        assert ch.stats().recvs == 0
        assert ch.try_recv() == "x"
        await s

    run(main)


@all_kinds
def test_ops_with_already_cancelled_token_do_nothing(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        tok = kcoro.CancelToken()
        tok.cancel("gone")
        r = kcoro.spawn(ch.recv)
        await settle()
        with pytest.raises(kcoro.OperationCancelled) as ei:
            await ch.send("x", cancel=tok)
        assert ei.value.reason == "gone" and ei.value.errno == errno.ECANCELED
        assert r.state == "PARKED" and ch.stats().sends == 0
        ch.try_send("y")
        assert await r == "y"
        if kind != "rendezvous":
            ch.try_send("z")
            with pytest.raises(kcoro.OperationCancelled):
                await ch.recv(cancel=tok)
            assert ch.try_recv() == "z"

    run(main)


# -- 34: timeouts and cancellation leave the channel usable --------------------------------------
@all_kinds
def test_recv_timeout_leaves_channel_usable(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        with pytest.raises(TimeoutError) as ei:
            await ch.recv(timeout=3)
        assert ei.value.errno == errno.ETIME
        assert kcoro.current_time() == 3
        st = ch.stats()
        assert (st.recv_timeout, st.waiting_receivers, st.recvs) == (1, 0, 0)
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        assert kcoro.current_time() == 3  # timeout=0 never waits
        s = kcoro.spawn(ch.send, 5)
        assert await ch.recv(timeout=3) == 5
        await s
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_send_timeout_leaves_channel_usable(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        filled = await fill(ch, kind)
        with pytest.raises(TimeoutError):
            await ch.send("late", timeout=2)
        with pytest.raises(kcoro.WouldBlock):
            await ch.send("late", timeout=0)
        st = ch.stats()
        assert (st.send_timeout, st.send_would_block, st.waiting_senders) == (1, 1, 0)
        assert await drain(ch) == filled  # the timed-out item never got in
        r = kcoro.spawn(ch.recv)
        await ch.send("fresh", timeout=2)
        assert await r == "fresh"
        ch.check_invariants()

    run(main)


@fifo_kinds
def test_timeout_racing_a_send_at_the_same_instant_conserves_the_item(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        outcome: list[Any] = []

        async def receiver() -> None:
            try:
                outcome.append(await ch.recv(timeout=1))
            except TimeoutError:
                outcome.append("timeout")

        async def sender() -> None:
            await kcoro.sleep(1)
            await ch.send("item", timeout=1)

        r = kcoro.spawn(receiver)
        s = kcoro.spawn(sender)
        await r
        try:
            await s
            sent = True
        except TimeoutError:
            sent = False
        left = await drain(ch)
        got = [x for x in outcome if x != "timeout"]
        assert got + left == (["item"] if sent else [])
        ch.check_invariants()

    run(main)


@all_kinds
def test_scope_deadline_while_parked_leaves_channel_usable(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        with kcoro.move_on_after(4) as scope:
            await ch.recv()
        assert scope.cancelled_caught and kcoro.current_time() == 4
        assert ch.stats().waiting_receivers == 0
        assert ch.stats().recv_cancelled == 1
        r = kcoro.spawn(ch.recv)
        await settle()
        assert ch.try_send(9)
        assert await r == 9

    run(main)


# -- 35: no lost wake-ups in chains --------------------------------------------------------------
@fifo_kinds
def test_producer_consumer_chain_finishes(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        n = 300

        async def producer() -> None:
            for i in range(n):
                await ch.send(i)
            ch.close()

        kcoro.spawn(producer)
        assert [x async for x in ch] == list(range(n))

    run(main)


def test_four_putters_drained_by_try_recv_only() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(2)
        putters = [kcoro.spawn(ch.send, i) for i in range(4)]
        got: list[int] = []
        while len(got) < 4:
            try:
                got.append(ch.try_recv())
            except kcoro.WouldBlock:
                await kcoro.checkpoint()
        for p in putters:
            await p
        assert sorted(got) == [0, 1, 2, 3]

    run(main)


def test_daisy_chain_of_rendezvous_tasks() -> None:
    async def main() -> None:
        n = 200
        chans: list[kcoro.Channel[int]] = [kcoro.Channel() for _ in range(n + 1)]

        async def link(i: int) -> None:
            await chans[i + 1].send(await chans[i].recv() + 1)

        for i in range(n):
            kcoro.spawn(link, i)
        await settle()
        await chans[0].send(0)
        assert await chans[n].recv() == n

    run(main)


@pytest.mark.parametrize("kind", BOUNDED_IDS)
def test_random_timeouts_conserve_items(kind: str) -> None:
    rng = random.Random(f"timeouts-{kind}")

    async def main() -> None:
        ch = make(kind)
        sent: list[tuple[int, int]] = []
        received: list[tuple[int, int]] = []

        async def producer(p: int) -> None:
            for i in range(150):
                try:
                    await ch.send((p, i), timeout=rng.choice([0.5, 1, 2]))
                    sent.append((p, i))
                except TimeoutError:
                    pass

        async def consumer() -> None:
            while True:
                try:
                    received.append(await ch.recv(timeout=rng.choice([0.5, 1, 3])))
                except TimeoutError:
                    pass
                except kcoro.ChannelClosed:
                    return
                await kcoro.sleep(rng.choice([0, 0.25, 1]))

        async with kcoro.TaskGroup() as tg:
            for _ in range(2):
                tg.spawn(consumer)
            async with kcoro.TaskGroup() as producers:
                for p in range(2):
                    producers.spawn(producer, p)
            ch.close()
        assert sorted(received) == sorted(sent)  # exactly once each
        assert 0 < len(sent) < 300  # some sends did time out
        ch.check_invariants()

    run(main)

