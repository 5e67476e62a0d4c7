"""TESTING.md E: ``on_undelivered`` (reliability anchors 36-42).

kcoro's policies (API.md and the module docstring of ``_chan``):

* the handler gets exactly the items the channel *accepted* and cannot deliver: DROP_OLDEST
  evictions, DROP_LATEST drops by ``send`` (``try_send`` returns False instead and does not
  report), conflated overwrites, and the buffer discarded by ``cancel()``;
* a failed send (closed, timed out, cancelled) leaves the item with the sender: no report;
* a handler exception becomes ``UndeliveredElementError`` (original as ``__cause__``), raised by
  the operation that triggered the drop after the channel work is done.
"""

from __future__ import annotations

import gc
import random
import threading
import weakref
from collections import Counter
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    BOUNDED_IDS,
    CAPS,
    KIND_IDS,
    Recorder,
    all_kinds,
    bounded_kinds,
    buffer_room,
    drain,
    run,
    settle,
)
from conftest import scaled


def make_rec(kind: str, **kw: Any) -> tuple[kcoro.Channel[Any], Recorder]:
    rec = Recorder()
    return kcoro.Channel(CAPS[kind], on_undelivered=rec, name=f"und-{kind}", **kw), rec


class Boom(Exception):
    pass


def raising_handler(log: list[Any], bad: Any = None) -> Any:
    """Record every item; raise Boom for ``bad`` (or for every item if ``bad`` is None)."""

    def handler(item: Any) -> None:
        log.append(item)
        if bad is None or item == bad:
            raise Boom(item)

    return handler


# -- 36: successful delivery never calls the handler ---------------------------------------------
@all_kinds
def test_delivered_items_are_never_reported(kind: str) -> None:
    async def main() -> None:
        ch, rec = make_rec(kind)
        got = []
        for i in range(30):  # one at a time, so conflated keeps every item too
            s = kcoro.spawn(ch.send, i)
            got.append(await ch.recv())
            await s
        r = kcoro.spawn(ch.recv)  # direct hand-off to a parked receiver
        await settle()
        await ch.send("direct")
        got.append(await r)
        s = kcoro.spawn(kcoro.select, ch.on_send("via-select"))
        _, value = await kcoro.select(ch.on_recv())
        got.append(value)
        await s
        ch.close()
        assert got == [*range(30), "direct", "via-select"]
        assert rec.items == []
        assert ch.stats().undelivered == 0

    run(main)


@pytest.mark.parametrize("kind", ["buffered1", "buffered2", "buffered10", "unlimited",
                                  "conflated"])
def test_close_does_not_report_buffered_items_they_still_drain(kind: str) -> None:
    async def main() -> None:
        ch, rec = make_rec(kind)
        n = min(buffer_room(kind), 5)
        for i in range(n):
            assert ch.try_send(i)
        assert ch.close()
        assert rec.items == []
        assert [x async for x in ch] == list(range(n))
        assert rec.items == [] and ch.stats().undelivered == 0

    run(main)


# -- 37: a failed send is not reported: the sender keeps its item ---------------------------------
@pytest.mark.parametrize("how", ["task", "timeout", "token", "close", "cancel"])
@bounded_kinds
def test_failed_parked_send_is_not_reported(kind: str, how: str) -> None:
    async def main() -> None:
        ch, rec = make_rec(kind)
        prefill = [f"b{i}" for i in range(buffer_room(kind))]
        for it in prefill:
            ch.try_send(it)
        tok = kcoro.CancelToken()
        kept: list[Any] = []

        async def sender() -> None:
            item = object()
            try:
                if how == "timeout":
                    await ch.send(item, timeout=1)
                elif how == "token":
                    await ch.send(item, cancel=tok)
                else:
                    await ch.send(item)
            except (kcoro.Cancelled, TimeoutError, kcoro.OperationCancelled,
                    kcoro.ChannelClosed):
                kept.append(item)
                return

        s = kcoro.spawn(sender)
        await settle()
        if how == "task":
            s.cancel()
        elif how == "token":
            tok.cancel()
        elif how == "close":
            ch.close()
        elif how == "cancel":
            ch.cancel()
        await s  # (timeout: the mock clock jumps)
        assert len(kept) == 1
        # The failed sender's item is never reported; only cancel() reports the buffer.
        assert rec.items == (prefill if how == "cancel" else [])
        assert all(x is not kept[0] for x in rec.items)

    run(main)


def test_send_to_closed_channel_is_not_reported_for_any_form() -> None:
    async def main() -> None:
        for kind in KIND_IDS:
            ch, rec = make_rec(kind)
            ch.close()
            with pytest.raises(kcoro.ChannelClosed):
                await ch.send("a")
            with pytest.raises(kcoro.ChannelClosed):
                ch.try_send("b")
            with pytest.raises(kcoro.ChannelClosed):
                await ch.send("c", timeout=1)
            with pytest.raises(kcoro.ChannelClosed):
                await kcoro.select(ch.on_send("d"))
            assert rec.items == [], kind
            assert ch.stats().undelivered == 0

    run(main)


def test_send_cancelled_after_acceptance_returns_normally_and_is_not_reported() -> None:
    async def main() -> None:
        ch, rec = make_rec("rendezvous")
        steps: list[str] = []

        async def sender() -> None:
            await ch.send("x")
            steps.append("returned")
            await kcoro.checkpoint()

        s = kcoro.spawn(sender)
        await settle()
        assert ch.try_recv() == "x"  # accepted and delivered
        s.cancel()
        with pytest.raises(kcoro.Cancelled):
            await s
        assert steps == ["returned"]
        assert rec.items == []

    run(main)


# -- 38: buffered elements untouched until the channel is cancelled -------------------------------
@pytest.mark.parametrize("kind", ["buffered1", "buffered2", "buffered10", "unlimited"])
def test_cancel_reports_every_buffered_item_exactly_once(kind: str) -> None:
    async def main() -> None:
        ch, rec = make_rec(kind)
        n = 7 if kind == "unlimited" else buffer_room(kind)
        items = [f"i{k}" for k in range(n)]
        for it in items:
            await ch.send(it)
        if kind != "unlimited":
            with pytest.raises(TimeoutError):
                await ch.send("extra", timeout=1)  # cancelled second send: not reported
        assert rec.items == []
        ch.cancel("shutdown")
        assert rec.items == items  # in buffer order
        ch.cancel()  # idempotent: nothing reported twice
        assert not ch.close()
        assert rec.items == items
        assert ch.stats().undelivered == n
        assert ch.closed_for_send and ch.closed_for_recv and len(ch) == 0
        with pytest.raises(kcoro.ChannelClosed) as ei:
            await ch.recv()
        assert ei.value.cause == "shutdown"
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_cancel_fails_parked_senders_without_reporting_their_items(kind: str) -> None:
    async def main() -> None:
        ch, rec = make_rec(kind)
        prefill = [f"b{i}" for i in range(buffer_room(kind))]
        for it in prefill:
            ch.try_send(it)
        outcomes: list[str] = []

        async def sender(item: str) -> None:
            try:
                await ch.send(item)
                outcomes.append("sent")
            except kcoro.ChannelClosed:
                outcomes.append("closed")

        for i in range(3):
            kcoro.spawn(sender, f"p{i}")
        await settle()
        cause = RuntimeError("abort")
        ch.cancel(cause)
        await settle()
        assert outcomes == ["closed"] * 3
        assert rec.items == prefill
        assert ch.stats().waiting_senders == 0

    run(main)


class Item:
    """A weakly referenceable item, to check that kcoro keeps no reference to it."""


@pytest.mark.parametrize("how", [
    "task",
    "close",
    "cancel",
])
def test_failed_parked_sender_item_is_not_retained(how: str) -> None:
    # KX-J CancelledChannelLeakTest: nothing may keep a failed sender's element alive once the
    # sender has let go of it.
    async def main() -> None:
        ch: kcoro.Channel[Item] = kcoro.Channel(1)
        ch.try_send(Item())
        refs: list[weakref.ref[Item]] = []

        async def sender() -> None:
            it = Item()
            refs.append(weakref.ref(it))
            try:
                await ch.send(it)
            except (kcoro.ChannelClosed, kcoro.Cancelled):
                pass

        s = kcoro.spawn(sender)
        await settle()
        {"task": s.cancel, "close": ch.close, "cancel": ch.cancel}[how]()
        await s
        gc.collect()
        assert refs[0]() is None, "a failed sender's item is still referenced"
        assert ch.stats().waiting_senders == 0

    run(main)


@pytest.mark.parametrize("kw", [{}, {"timeout": 5}], ids=["plain", "timeout"])
def test_received_item_is_not_retained_by_the_receiving_task(kw: dict[str, Any]) -> None:
    async def main() -> None:
        ch: kcoro.Channel[Item] = kcoro.Channel(1)
        refs: list[weakref.ref[Item]] = []

        async def receiver() -> None:
            x = await ch.recv(**kw)
            refs.append(weakref.ref(x))

        r = kcoro.spawn(receiver)
        await settle()
        ch.try_send(Item())
        await r
        gc.collect()
        assert refs[0]() is None, "the receiver dropped the item but kcoro still holds it"

    run(main)


@all_kinds
def test_cancel_with_exception_cause_chains_it(kind: str) -> None:
    async def main() -> None:
        ch, rec = make_rec(kind)
        r = kcoro.spawn(ch.recv)
        await settle()
        cause = ValueError("upstream died")
        ch.cancel(cause)
        with pytest.raises(kcoro.ChannelClosed) as ei:
            await r
        assert ei.value.cause is cause and ei.value.__cause__ is cause
        assert rec.items == []

    run(main)


# -- 39: conflation ------------------------------------------------------------------------------
def test_conflated_reports_overwritten_then_close_keeps_survivor_cancel_reports_it() -> None:
    async def main() -> None:
        ch, rec = make_rec("conflated")
        for i in range(1, 5):
            await ch.send(i)
        assert rec.items == [1, 2, 3]
        assert ch.try_send(5)
        assert rec.items == [1, 2, 3, 4]
        ch.close()
        assert rec.items == [1, 2, 3, 4]  # close keeps the survivor readable
        assert ch.try_recv() == 5
        ch2, rec2 = make_rec("conflated")
        ch2.try_send("a")
        ch2.try_send("b")
        ch2.cancel()
        assert rec2.items == ["a", "b"]
        assert ch.stats().undelivered == 4 and ch2.stats().undelivered == 2

    run(main)


def test_conflated_parked_receiver_gets_first_send_directly_unreported() -> None:
    async def main() -> None:
        ch, rec = make_rec("conflated")
        r = kcoro.spawn(ch.recv)
        await settle()
        for i in (3, 4, 5, 6):
            await ch.send(i)
        assert await r == 3
        assert await ch.recv() == 6
        assert rec.items == [4, 5]

    run(main)


# -- 40: overflow policies ------------------------------------------------------------------------
def test_drop_oldest_reports_evicted_items() -> None:
    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(2, overflow=kcoro.DROP_OLDEST, on_undelivered=rec)
        for i in range(1, 5):
            await ch.send(i)
        assert rec.items == [1, 2]
        assert ch.try_send(5)  # an eviction caused by try_send is still reported
        assert rec.items == [1, 2, 3]
        assert await drain(ch) == [4, 5]
        assert ch.stats().undelivered == 3

    run(main)


def test_drop_latest_send_reports_its_item_try_send_does_not() -> None:
    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(2, overflow=kcoro.DROP_LATEST, on_undelivered=rec)
        for i in range(1, 5):
            await ch.send(i)  # returns normally: accepted, then dropped
        assert rec.items == [3, 4]
        assert ch.try_send(5) is False  # not accepted: the caller still owns 5
        assert rec.items == [3, 4]
        assert await drain(ch) == [1, 2]
        st = ch.stats()
        assert st.undelivered == 2 and st.send_dropped == 1

    run(main)


def test_drop_latest_send_blocking_reports_like_send() -> None:
    rec = Recorder()
    ch: kcoro.Channel[int] = kcoro.Channel(1, overflow=kcoro.DROP_LATEST, on_undelivered=rec)
    ch.send_blocking(1)
    ch.send_blocking(2)
    ch.send_blocking(3, timeout=0)
    assert rec.items == [2, 3]
    assert ch.try_recv() == 1


@pytest.mark.parametrize("overflow", [kcoro.DROP_OLDEST, kcoro.DROP_LATEST])
def test_try_send_to_closed_dropping_channel_is_not_reported(overflow: kcoro.Overflow) -> None:
    rec = Recorder()
    ch: kcoro.Channel[int] = kcoro.Channel(1, overflow=overflow, on_undelivered=rec)
    ch.try_send(1)
    ch.close()
    with pytest.raises(kcoro.ChannelClosed):
        ch.try_send(2)
    assert rec.items == []
    assert ch.try_recv() == 1


@pytest.mark.parametrize("overflow", [kcoro.DROP_OLDEST, kcoro.DROP_LATEST])
def test_rendezvous_with_drop_policy_is_a_size_one_dropping_buffer(
        overflow: kcoro.Overflow) -> None:
    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.RENDEZVOUS, overflow=overflow,
                                               on_undelivered=rec)
        assert ch.capacity == 1
        for i in (1, 2, 3):
            await ch.send(i)  # never parks
        if overflow is kcoro.DROP_OLDEST:
            assert rec.items == [1, 2] and ch.try_recv() == 3
        else:
            assert rec.items == [2, 3] and ch.try_recv() == 1

    run(main)


@pytest.mark.parametrize("overflow", [kcoro.DROP_OLDEST, kcoro.DROP_LATEST])
def test_dropping_channel_hands_off_to_parked_receiver_without_report(
        overflow: kcoro.Overflow) -> None:
    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(1, overflow=overflow, on_undelivered=rec)
        rs = [kcoro.spawn(ch.recv) for _ in range(2)]
        await settle()
        await ch.send(1)
        await ch.send(2)
        await ch.send(3)  # buffered
        assert [await r for r in rs] == [1, 2]
        assert rec.items == [] and ch.try_recv() == 3

    run(main)


# -- 41: handler exceptions -----------------------------------------------------------------------
def test_handler_exception_on_drop_oldest_send_after_channel_work() -> None:
    async def main() -> None:
        log: list[Any] = []
        ch: kcoro.Channel[int] = kcoro.Channel(2, overflow=kcoro.DROP_OLDEST,
                                               on_undelivered=raising_handler(log))
        await ch.send(1)
        await ch.send(2)
        with pytest.raises(kcoro.UndeliveredElementError) as ei:
            await ch.send(3)
        assert isinstance(ei.value.__cause__, Boom) and ei.value.__cause__.args == (1,)
        assert isinstance(ei.value, kcoro.KcoroError)
        # The send's work was done before raising: 3 is in, 1 is gone.
        assert log == [1] and list(ch._buf) == [2, 3]
        with pytest.raises(kcoro.UndeliveredElementError):
            ch.try_send(4)  # eviction by try_send: reported, and the error surfaces
        assert log == [1, 2]
        ch.check_invariants()
        assert await drain(ch) == [3, 4]
        assert ch.stats().undelivered == 2

    run(main)


def test_handler_exception_on_drop_latest_send() -> None:
    log: list[Any] = []
    ch: kcoro.Channel[int] = kcoro.Channel(1, overflow=kcoro.DROP_LATEST,
                                           on_undelivered=raising_handler(log))

    async def main() -> None:
        await ch.send(1)
        with pytest.raises(kcoro.UndeliveredElementError) as ei:
            await ch.send(2)
        assert isinstance(ei.value.__cause__, Boom)
        assert log == [2] and ch.try_recv() == 1

    run(main)
    with pytest.raises(kcoro.UndeliveredElementError):
        ch.send_blocking(5)
        ch.send_blocking(6)  # dropped by the blocking form: reported, raises
    assert log == [2, 6]


def test_handler_exception_on_conflated_overwrite_and_select_send() -> None:
    async def main() -> None:
        log: list[Any] = []
        ch: kcoro.Channel[str] = kcoro.Channel(kcoro.CONFLATED,
                                               on_undelivered=raising_handler(log))
        await ch.send("a")
        with pytest.raises(kcoro.UndeliveredElementError):
            await ch.send("b")
        with pytest.raises(kcoro.UndeliveredElementError):
            await kcoro.select(ch.on_send("c"))
        assert log == ["a", "b"]
        assert await ch.recv() == "c"
        ch.check_invariants()

    run(main)


def test_handler_exception_on_cancel_still_reports_every_item_once() -> None:
    log: list[Any] = []
    ch: kcoro.Channel[int] = kcoro.Channel(5, on_undelivered=raising_handler(log, bad=2))
    for i in range(1, 5):
        ch.try_send(i)
    with pytest.raises(kcoro.UndeliveredElementError) as ei:
        ch.cancel()
    assert isinstance(ei.value.__cause__, Boom) and ei.value.__cause__.args == (2,)
    assert log == [1, 2, 3, 4]  # the failure of one item does not skip the others
    assert ch.closed_for_recv and len(ch) == 0
    ch.cancel()  # nothing left to report, no error
    assert log == [1, 2, 3, 4]
    ch.check_invariants()


def test_handler_runs_outside_the_kernel_lock() -> None:
    seen: list[Any] = []
    other: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
    ch: kcoro.Channel[int]

    def handler(item: int) -> None:
        # Re-entering kcoro from the handler must not deadlock.
        seen.append((item, len(ch), ch.stats().undelivered))
        other.try_send(item)

    ch = kcoro.Channel(1, overflow=kcoro.DROP_OLDEST, on_undelivered=handler)
    done = threading.Event()

    def work() -> None:
        ch.try_send(1)
        ch.try_send(2)
        ch.cancel()
        done.set()

    th = threading.Thread(target=work, daemon=True)
    th.start()
    assert done.wait(10), "on_undelivered was called under the kernel lock (deadlock)"
    assert seen == [(1, 1, 1), (2, 0, 2)]
    assert other.try_recv() == 1 and other.try_recv() == 2


# -- 42: conservation under random cancellation ---------------------------------------------------
CONSERVATION = [*[(k, kcoro.SUSPEND) for k in KIND_IDS],
                ("buffered2", kcoro.DROP_OLDEST), ("buffered2", kcoro.DROP_LATEST),
                ("rendezvous", kcoro.DROP_LATEST)]


@pytest.mark.parametrize(("kind", "overflow"), CONSERVATION,
                         ids=[f"{k}-{o.name.lower()}" for k, o in CONSERVATION])
def test_conservation_under_random_cancellation(kind: str, overflow: kcoro.Overflow) -> None:
    rng = random.Random(f"conserve-{kind}-{overflow.name}")
    per_sender = scaled(120)

    async def main() -> None:
        undelivered: list[Any] = []
        ch: kcoro.Channel[Any] = kcoro.Channel(CAPS[kind], overflow=overflow,
                                               on_undelivered=undelivered.append)
        idle: kcoro.Channel[Any] = kcoro.Channel()  # a select clause that never fires
        sent: list[Any] = []
        received: list[Any] = []

        async def sender(sid: int) -> None:
            for i in range(per_sender):
                item = (sid, i)
                tok = kcoro.CancelToken()
                mode = rng.randrange(5)
                if mode == 4:
                    tok.cancel()
                with kcoro.move_on_after(rng.choice([0.1, 0.5, 2])):
                    try:
                        if mode == 0:
                            await ch.send(item)
                        elif mode == 1:
                            idx, _ = await kcoro.select(idle.on_recv(), ch.on_send(item))
                            assert idx == 1
                        elif mode == 2:
                            await ch.send(item, timeout=rng.choice([0, 0.3]))
                        elif mode == 3:
                            if not ch.try_send(item):
                                continue  # DROP_LATEST try_send: refused, still ours
                        else:
                            await ch.send(item, cancel=tok)
                        sent.append(item)  # no checkpoint between return and record
                    except (kcoro.WouldBlock, TimeoutError, kcoro.OperationCancelled):
                        pass
                await kcoro.sleep(rng.choice([0, 0, 0.2]))

        async def receiver() -> None:
            while True:
                with kcoro.move_on_after(rng.choice([0.1, 0.4, 3])):
                    try:
                        if rng.random() < 0.5:
                            received.append(await ch.recv())
                        else:
                            idx, v = await kcoro.select(ch.on_recv(), idle.on_recv())
                            assert idx == 0
                            received.append(v)
                    except kcoro.ChannelClosed:
                        return
                await kcoro.sleep(rng.choice([0, 0.3]))

        async def chaos(tasks: list[kcoro.Task[Any]]) -> None:
            while any(not t.done() for t in tasks):
                await kcoro.sleep(6)
                rng.choice(tasks).cancel()  # kill a random worker outright

        async with kcoro.TaskGroup() as tg:
            receivers = [tg.spawn(receiver) for _ in range(3)]
            senders = [kcoro.spawn(sender, s) for s in range(3)]
            killer = kcoro.spawn(chaos, senders + receivers[:1])
            for s in senders:
                try:
                    await s
                except kcoro.Cancelled:
                    pass
            killer.cancel()
            ch.cancel()  # discard what is left: reported, parked receivers released

        assert len(set(sent)) == len(sent)
        delivered = Counter(received) + Counter(undelivered)
        assert delivered == Counter(sent), "an item was lost or duplicated"
        st = ch.stats()
        assert st.recvs == len(received)
        assert st.undelivered == len(undelivered)
        assert st.sends == len(sent)
        ch.check_invariants()
        assert len(received) > 0

    run(main)


@pytest.mark.parametrize("kind", ["buffered1", "buffered2", "buffered10", "unlimited",
                                  "conflated"])
def test_send_send_receive_cancel_repeated(kind: str) -> None:
    # KX-CC ChannelCancelUndeliveredElementStressTest, single-threaded and deterministic.
    total_sent = total_recv = total_und = 0
    for n in range(scaled(400)):
        ch, rec = make_rec(kind)
        sent = []
        for item in (2 * n, 2 * n + 1):
            try:
                if ch.try_send(item):
                    sent.append(item)
            except kcoro.WouldBlock:
                pass
        got = [ch.try_recv()]
        ch.cancel()
        assert sorted(got + rec.items) == sent
        total_sent += len(sent)
        total_recv += len(got)
        total_und += len(rec.items)
    assert total_sent == total_recv + total_und


@pytest.mark.parametrize("kind", BOUNDED_IDS)
def test_threads_and_tasks_conserve_items_under_channel_cancel(kind: str) -> None:
    rec = Recorder()
    ch: kcoro.Channel[Any] = kcoro.Channel(CAPS[kind], on_undelivered=rec)
    sent: list[Any] = []
    lock = threading.Lock()

    def producer(p: int) -> None:
        for i in range(scaled(200)):
            try:
                ch.send_blocking((p, i))
            except kcoro.ChannelClosed:
                return
            with lock:
                sent.append((p, i))

    ths = [threading.Thread(target=producer, args=(p,), daemon=True) for p in range(2)]
    for th in ths:
        th.start()

    async def main() -> list[Any]:
        got = []
        for _ in range(100):
            got.append(await ch.recv())
        ch.cancel()
        return got

    received = kcoro.run(main)
    for th in ths:
        th.join(10)
    with lock:
        assert Counter(received) + Counter(rec.items) == Counter(sent)
