"""TESTING.md J: introspection -- stats counters, peak, waiting counts, repr, stats_rate
(reliability anchors 64-65)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import pytest

import kcoro
from chan_helpers import (
    FAILURE_COUNTERS,
    Recorder,
    all_kinds,
    assert_failures,
    assert_stats,
    bounded_kinds,
    buffer_room,
    expected_capacity,
    expected_kind,
    fifo_kinds,
    make,
    run,
    settle,
)
from kcoro.testing import wait_until

pytestmark = pytest.mark.timeout(60)

COUNTER_NAMES = (
    "sends", "recvs", "bytes_sent", "bytes_recv", *FAILURE_COUNTERS, "undelivered",
    "zref_sent", "zref_received", "zref_fallback_small", "zref_fallback_capacity",
    "zref_canceled", "zref_aborted_close",
)


# -- a fresh channel ----------------------------------------------------------------------------
@all_kinds
def test_fresh_stats(kind: str) -> None:
    ch = make(kind)
    s = ch.stats()
    assert s.name == f"test-{kind}"
    assert s.kind == expected_kind(kind)
    assert s.capacity == expected_capacity(kind)
    assert (s.buffered, s.peak, s.waiting_senders, s.waiting_receivers) == (0, 0, 0, 0)
    assert (s.closed_for_send, s.closed_for_recv) == (False, False)
    assert all(getattr(s, c) == 0 for c in COUNTER_NAMES)
    assert (s.first_op_ns, s.last_op_ns) == (0, 0)
    assert s.snapshot_ns > 0


def test_stats_is_a_frozen_record() -> None:
    s = kcoro.Channel(1).stats()
    assert dataclasses.is_dataclass(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sends = 5  # type: ignore[misc]
    d = s.as_dict()
    assert d["sends"] == 0
    assert set(d) == {f.name for f in dataclasses.fields(s)}


# -- sends / recvs / buffered / len match what happened -----------------------------------------
@fifo_kinds
def test_sends_and_recvs_count_every_transfer(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)

        async def producer() -> None:
            for i in range(37):
                await ch.send(i)

        p = kcoro.spawn(producer)
        for _ in range(20):
            await ch.recv()
        await settle()
        s = ch.stats()
        assert s.recvs == 20
        # Each accepted item was either received or is still buffered.
        assert s.sends == s.recvs + s.buffered
        assert s.buffered == len(ch) == min(17, buffer_room(kind))
        for _ in range(17):
            await ch.recv()
        await p
        assert_stats(ch, sends=37, recvs=37, buffered=0, waiting_senders=0,
                     waiting_receivers=0, undelivered=0)
        assert_failures(ch)
        ch.check_invariants()

    run(main)


@all_kinds
def test_counters_from_threads_and_asyncio_add_up(kind: str) -> None:
    ch = make(kind)

    async def aio_side() -> None:
        for i in range(10):
            await ch.send(("aio", i))

    def thread_side() -> None:
        for i in range(10):
            ch.send_blocking(("thread", i))

    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.extend(ch.iter_blocking()))
    consumer.start()
    producer = threading.Thread(target=thread_side)
    producer.start()
    asyncio.run(aio_side())
    producer.join(timeout=20)
    ch.close()
    consumer.join(timeout=20)
    assert not consumer.is_alive()
    if kind == "conflated":
        # Overwritten items are undelivered; nothing is lost or counted twice.
        s = ch.stats()
        assert s.sends == 20
        assert s.buffered == 0
        assert s.recvs == len(got)
        assert s.recvs + s.undelivered == 20
    else:
        assert sorted(got) == sorted([("aio", i) for i in range(10)]
                                     + [("thread", i) for i in range(10)])
        assert_stats(ch, sends=20, recvs=20, buffered=0, undelivered=0)
    ch.check_invariants()


# -- bytes ------------------------------------------------------------------------------------
@all_kinds
def test_bytes_counted_for_bytes_bytearray_and_memoryview(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        items: list[Any] = [
            b"abcde",                                   # 5
            bytearray(7),                               # 7
            memoryview(bytearray(12)).cast("I"),        # nbytes 12 (len 3)
            memoryview(b"0123456789")[2:6],             # 4
            "a str is not bytes-like",                  # 0
            12345,                                      # 0
        ]
        expected = [5, 7, 12, 4, 0, 0]
        total_sent = total_recv = 0
        for item, n in zip(items, expected):
            if kind == "rendezvous":
                r = kcoro.spawn(ch.recv)
                await settle()
                await ch.send(item)
                assert await r is item
                total_recv += n
            else:
                await ch.send(item)
            total_sent += n
            assert_stats(ch, bytes_sent=total_sent)
            if kind != "rendezvous":
                assert await ch.recv() is item
                total_recv += n
            assert_stats(ch, bytes_recv=total_recv)
        assert total_sent == 28
        ch.check_invariants()

    run(main)


@bounded_kinds
def test_bytes_counted_when_a_parked_sender_is_admitted(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for _ in range(room):
            await ch.send(b"12")
        s = kcoro.spawn(ch.send, b"123")
        await settle()
        assert_stats(ch, bytes_sent=2 * room, sends=room)
        await ch.recv()
        await s
        # The parked item is accepted now (into the buffer or straight to the receiver).
        assert_stats(ch, bytes_sent=2 * room + 3, sends=room + 1,
                     bytes_recv=2 if room else 3, recvs=1)
        ch.check_invariants()

    run(main)


def test_bytes_received_lag_sent_by_what_is_buffered() -> None:
    ch: kcoro.Channel[bytes] = kcoro.Channel(kcoro.UNLIMITED)
    for n in range(1, 11):
        ch.try_send(bytes(n))
    ch.try_recv()
    ch.try_recv()
    assert_stats(ch, bytes_sent=55, bytes_recv=3, sends=10, recvs=2, buffered=8)


@pytest.mark.parametrize("overflow", ["suspend", "drop_oldest", "drop_latest"])
def test_bytes_sent_matches_sends_under_every_overflow_policy(overflow: str) -> None:
    """Every item counted in ``sends`` has its bytes counted in ``bytes_sent``."""

    async def main() -> None:
        pol = {"suspend": kcoro.SUSPEND, "drop_oldest": kcoro.DROP_OLDEST,
               "drop_latest": kcoro.DROP_LATEST}[overflow]
        ch: kcoro.Channel[bytes] = kcoro.Channel(2, overflow=pol)
        for _ in range(2 if overflow == "suspend" else 5):
            await ch.send(b"x" * 10)
        s = ch.stats()
        assert s.bytes_sent == 10 * s.sends

    run(main)


# -- failure counters per side ------------------------------------------------------------------
@all_kinds
def test_every_receive_failure_is_counted_by_cause(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
        with pytest.raises(kcoro.WouldBlock):
            await ch.recv(timeout=0)
        with pytest.raises(TimeoutError):
            await ch.recv(timeout=1)
        tok = kcoro.CancelToken()
        r = kcoro.spawn(_recv_with, ch, tok)
        await settle()
        tok.cancel("stop")
        with pytest.raises(kcoro.OperationCancelled):
            await r
        with pytest.raises(kcoro.OperationCancelled):
            await ch.recv(cancel=tok)  # already-cancelled token
        r = kcoro.spawn(ch.recv)
        await settle()
        r.cancel()  # task cancellation while parked
        with pytest.raises(kcoro.Cancelled):
            await r
        assert_failures(ch, recv_would_block=2, recv_timeout=1, recv_cancelled=3)
        ch.close()
        with pytest.raises(kcoro.ChannelClosed):
            await ch.recv()
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_recv()
        assert_failures(ch, recv_would_block=2, recv_timeout=1, recv_cancelled=3,
                        recv_closed=2)
        assert_stats(ch, sends=0, recvs=0, waiting_receivers=0)
        ch.check_invariants()

    run(main)


async def _recv_with(ch: kcoro.Channel[Any], tok: kcoro.CancelToken) -> Any:
    return await ch.recv(cancel=tok)


async def _send_with(ch: kcoro.Channel[Any], item: Any, tok: kcoro.CancelToken) -> None:
    await ch.send(item, cancel=tok)


@bounded_kinds
def test_every_send_failure_is_counted_by_cause(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send("x")
        with pytest.raises(kcoro.WouldBlock):
            await ch.send("x", timeout=0)
        with pytest.raises(TimeoutError):
            await ch.send("x", timeout=1)
        tok = kcoro.CancelToken()
        s = kcoro.spawn(_send_with, ch, "x", tok)
        await settle()
        tok.cancel()
        with pytest.raises(kcoro.OperationCancelled):
            await s
        with pytest.raises(kcoro.OperationCancelled):
            await ch.send("x", cancel=tok)
        s = kcoro.spawn(ch.send, "x")
        await settle()
        s.cancel()
        with pytest.raises(kcoro.Cancelled):
            await s
        assert_failures(ch, send_would_block=2, send_timeout=1, send_cancelled=3)
        parked = kcoro.spawn(ch.send, "x")
        await settle()
        ch.close()
        with pytest.raises(kcoro.ChannelClosed):
            await parked
        with pytest.raises(kcoro.ChannelClosed):
            await ch.send("x")
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_send("x")
        assert_failures(ch, send_would_block=2, send_timeout=1, send_cancelled=3,
                        send_closed=3)
        assert_stats(ch, sends=room, waiting_senders=0, buffered=room)
        # Nothing refused was ever received.
        assert [x async for x in ch] == list(range(room))
        ch.check_invariants()

    run(main)


def test_failures_from_threads_are_counted() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    with pytest.raises(TimeoutError):
        ch.recv_blocking(timeout=0.01)
    with pytest.raises(kcoro.WouldBlock):
        ch.recv_blocking(timeout=0)
    ch.send_blocking(1)
    with pytest.raises(TimeoutError):
        ch.send_blocking(2, timeout=0.01)
    with pytest.raises(kcoro.WouldBlock):
        ch.send_blocking(2, timeout=0)
    tok = kcoro.CancelToken()
    th = threading.Thread(target=tok.cancel)
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            ch.send_blocking(3, cancel=tok)
        except kcoro.OperationCancelled as e:
            errors.append(e)

    s = threading.Thread(target=sender)
    s.start()
    wait_until(lambda: ch.stats().waiting_senders == 1)
    th.start()
    s.join(timeout=10)
    th.join()
    assert len(errors) == 1
    assert_failures(ch, recv_timeout=1, recv_would_block=1, send_timeout=1,
                    send_would_block=1, send_cancelled=1)
    assert_stats(ch, sends=1, recvs=0, buffered=1, waiting_senders=0)


def test_drop_counters() -> None:
    """try_send on a full DROP_LATEST channel: refused, counted in send_dropped, not reported;
    send: accepted and reported (undelivered).  DROP_OLDEST evictions are undelivered."""

    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(1, overflow=kcoro.DROP_LATEST, on_undelivered=rec)
        assert ch.try_send(1) is True
        assert ch.try_send(2) is False
        assert_stats(ch, sends=1, send_dropped=1, undelivered=0)
        await ch.send(3)
        assert rec.items == [3]
        assert_stats(ch, sends=2, send_dropped=1, undelivered=1, buffered=1, peak=1)
        assert await ch.recv() == 1
        rec2 = Recorder()
        ch2: kcoro.Channel[int] = kcoro.Channel(2, overflow=kcoro.DROP_OLDEST,
                                                 on_undelivered=rec2)
        for i in range(5):
            assert ch2.try_send(i) is True
        await ch2.send(5)
        assert rec2.items == [0, 1, 2, 3]
        assert_stats(ch2, sends=6, undelivered=4, send_dropped=0, buffered=2, peak=2)
        assert_failures(ch2)

    run(main)


# -- peak and waiting counts --------------------------------------------------------------------
@all_kinds
def test_peak_is_not_reset_by_draining(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = min(buffer_room(kind), 7)
        for i in range(room):
            ch.try_send(i)
        assert ch.stats().peak == room
        while len(ch):
            ch.try_recv()
        assert_stats(ch, peak=room, buffered=0)
        if room:
            ch.try_send("again")
        assert ch.stats().peak == room
        ch.close()
        assert ch.stats().peak == room

    run(main)


def test_peak_of_unlimited_and_rendezvous() -> None:
    async def main() -> None:
        u: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        for i in range(300):
            await u.send(i)
        for _ in range(300):
            await u.recv()
        for i in range(10):
            await u.send(i)
        assert_stats(u, peak=300, buffered=10)
        r: kcoro.Channel[int] = kcoro.Channel()
        for i in range(5):
            t = kcoro.spawn(r.send, i)
            await settle()
            assert r.stats().peak == 0  # a parked sender's item is not buffered
            await r.recv()
            await t
        assert r.stats().peak == 0

    run(main)


@all_kinds
def test_waiting_receivers_back_to_zero_after_every_kind_of_exit(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        tok = kcoro.CancelToken()
        plain = [kcoro.spawn(ch.recv) for _ in range(3)]
        timed = kcoro.spawn(_recv_timeout, ch, 50)
        tokened = kcoro.spawn(_recv_with, ch, tok)
        await settle()
        assert_stats(ch, waiting_receivers=5, waiting_senders=0)
        assert "receivers=5" in repr(ch)
        plain[0].cancel()
        await settle()
        assert ch.stats().waiting_receivers == 4
        tok.cancel()
        await settle()
        assert ch.stats().waiting_receivers == 3
        await kcoro.sleep(100)  # the mock clock fires the 50 s timeout
        assert timed.done()
        assert ch.stats().waiting_receivers == 2
        await ch.send("one")
        await settle()
        assert ch.stats().waiting_receivers == 1
        ch.close()
        await settle()
        assert_stats(ch, waiting_receivers=0)
        assert_failures(ch, recv_cancelled=2, recv_timeout=1, recv_closed=1)
        assert "receivers=0" in repr(ch)
        for t in (*plain, timed, tokened):
            assert t.done()
            t.exception()
        ch.check_invariants()

    run(main)


async def _recv_timeout(ch: kcoro.Channel[Any], timeout: float) -> Any:
    return await ch.recv(timeout=timeout)


async def _send_timeout(ch: kcoro.Channel[Any], item: Any, timeout: float) -> None:
    await ch.send(item, timeout=timeout)


@bounded_kinds
def test_waiting_senders_back_to_zero_after_every_kind_of_exit(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        room = buffer_room(kind)
        for i in range(room):
            ch.try_send(i)
        tok = kcoro.CancelToken()
        plain = [kcoro.spawn(ch.send, f"p{i}") for i in range(3)]
        timed = kcoro.spawn(_send_timeout, ch, "t", 50)
        tokened = kcoro.spawn(_send_with, ch, "k", tok)
        await settle()
        assert_stats(ch, waiting_senders=5, waiting_receivers=0)
        assert "senders=5" in repr(ch)
        plain[0].cancel()
        tok.cancel()
        await settle()
        assert ch.stats().waiting_senders == 3
        await kcoro.sleep(100)
        assert ch.stats().waiting_senders == 2
        await ch.recv()
        await settle()
        assert ch.stats().waiting_senders == 1
        ch.close()
        await settle()
        assert_stats(ch, waiting_senders=0)
        assert_failures(ch, send_cancelled=2, send_timeout=1, send_closed=1)
        for t in (*plain, timed, tokened):
            assert t.done()
            t.exception()
        got = [x async for x in ch]
        # recv took item 0 (rendezvous: p1 itself); p1 was admitted; p2 failed at close.
        assert got == ([*range(1, room), "p1"] if room else [])
        ch.check_invariants()

    run(main)


# -- repr ----------------------------------------------------------------------------------------
@all_kinds
def test_repr_is_informative(kind: str) -> None:
    async def main() -> None:
        ch = make(kind, name=f"jobs-{kind}")
        r = repr(ch)
        assert "jobs-" + kind in r
        assert expected_kind(kind) in r
        assert "closed" not in r
        room = min(buffer_room(kind), 2)
        for i in range(room):
            ch.try_send(i)
        cap = "inf" if kind == "unlimited" else str(int(expected_capacity(kind)))
        assert f"{room}/{cap}" in repr(ch)
        if kind in ("rendezvous", "buffered1", "buffered2"):
            s = kcoro.spawn(ch.send, "x")
            await settle()
            assert "senders=1" in repr(ch)
            await ch.recv()
            await s
        ch.close()
        assert "closed" in repr(ch)
        ch.cancel()
        assert "cancelled" in repr(ch)

    run(main)


# -- first / last operation time ----------------------------------------------------------------
def test_op_times_with_try_ops() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(4)
    t0 = time.monotonic_ns()
    ch.try_send(1)
    t1 = time.monotonic_ns()
    s = ch.stats()
    assert t0 <= s.first_op_ns <= s.last_op_ns <= t1
    ch.try_recv()
    t2 = time.monotonic_ns()
    s2 = ch.stats()
    assert s2.first_op_ns == s.first_op_ns
    assert t1 <= s2.last_op_ns <= t2 <= s2.snapshot_ns


@all_kinds
def test_op_times_with_async_ops(kind: str) -> None:
    # Bounds taken outside the runtime: a runtime may stamp operations with a per-step clock.
    t0 = time.monotonic_ns()

    async def main() -> None:
        ch = make(kind)
        assert ch.stats().first_op_ns == 0
        if kind == "rendezvous":
            r = kcoro.spawn(ch.recv)
            await settle()
            await ch.send(1)
            await r
        else:
            await ch.send(1)
            await ch.recv()
        s = ch.stats()
        assert t0 <= s.first_op_ns <= s.last_op_ns <= time.monotonic_ns()
        rate = kcoro.stats_rate(None, s)
        assert rate.interval_s == pytest.approx(max((s.snapshot_ns - s.first_op_ns) / 1e9, 1e-6))

    run(main)


# -- stats_rate ---------------------------------------------------------------------------------
def test_stats_rate_deltas_and_rates() -> None:
    ch: kcoro.Channel[bytes] = kcoro.Channel(kcoro.UNLIMITED, name="rated")
    for _ in range(3):
        ch.try_send(b"abcd")
    prev = ch.stats()
    for _ in range(10):
        ch.try_send(b"0123456789")
    for _ in range(4):
        ch.try_recv()
    with pytest.raises(kcoro.WouldBlock):
        kcoro.Channel(1, name="other").try_recv()  # another channel: not counted here
    curr = ch.stats()
    rate = kcoro.stats_rate(prev, curr)
    assert isinstance(rate, kcoro.ChannelRate)
    interval = (curr.snapshot_ns - prev.snapshot_ns) / 1e9
    assert rate.interval_s == pytest.approx(max(interval, 1e-6))
    assert rate.deltas["sends"] == rate.d_sends == 10
    assert rate.d_recvs == 4
    assert rate.d_bytes_sent == 100
    assert rate.d_bytes_recv == 3 * 4 + 10 * 1  # the 3 short items, then one long
    assert rate.d_undelivered == 0
    assert rate.d_recv_would_block == 0
    assert rate.sends_per_s == pytest.approx(10 / rate.interval_s)
    assert rate.recvs_per_s == pytest.approx(4 / rate.interval_s)
    assert rate.bytes_sent_per_s == pytest.approx(100 / rate.interval_s)
    assert rate.bytes_recv_per_s == pytest.approx(22 / rate.interval_s)
    # Every counter has a delta; gauges (buffered, peak, waiting) are not counters.
    assert set(COUNTER_NAMES) <= set(rate.deltas)
    assert not {"buffered", "peak", "waiting_senders", "waiting_receivers"} & set(rate.deltas)
    d = rate.as_dict()
    assert d["d_sends"] == 10 and d["interval_s"] == rate.interval_s
    assert d["sends_per_s"] == rate.sends_per_s
    with pytest.raises(AttributeError):
        rate.d_no_such_counter  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        rate.interval_s = 1.0  # type: ignore[misc]


def test_stats_rate_counts_failures_between_snapshots() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1, name="fails")
    prev = ch.stats()
    for _ in range(3):
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
    ch.try_send(1)
    with pytest.raises(kcoro.WouldBlock):
        ch.try_send(2)
    ch.close()
    with pytest.raises(kcoro.ChannelClosed):
        ch.try_send(3)
    rate = kcoro.stats_rate(prev, ch.stats())
    assert (rate.d_recv_would_block, rate.d_send_would_block, rate.d_send_closed,
            rate.d_sends) == (3, 1, 1, 1)
    # Zero deltas over an idle interval.
    s1 = ch.stats()
    idle = kcoro.stats_rate(s1, ch.stats())
    assert all(v == 0 for v in idle.deltas.values())
    assert idle.sends_per_s == 0.0
    assert idle.interval_s > 0


def test_stats_rate_first_sample_uses_totals() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(4, name="first")
    for i in range(3):
        ch.try_send(i)
    s = ch.stats()
    rate = kcoro.stats_rate(None, s)
    assert rate.d_sends == 3
    assert all(rate.deltas[k] == getattr(s, k) for k in COUNTER_NAMES)
    assert rate.interval_s == pytest.approx(max((s.snapshot_ns - s.first_op_ns) / 1e9, 1e-6))
    # A channel with no operation yet: interval clamped, no division by zero.
    idle = kcoro.stats_rate(None, kcoro.Channel(1, name="idle").stats())
    assert idle.interval_s > 0
    assert idle.sends_per_s == 0.0


def test_stats_rate_refuses_snapshots_of_different_channels() -> None:
    a = kcoro.Channel(1, name="a").stats()
    b = kcoro.Channel(1, name="b").stats()
    with pytest.raises(ValueError):
        kcoro.stats_rate(a, b)


def test_len_and_capacity_match_stats() -> None:
    """Go's len/cap match: len(ch) and ch.capacity agree with stats at every step."""

    async def main() -> None:
        for kind in ("buffered10", "unlimited", "conflated"):
            ch = make(kind)
            for i in range(min(12, buffer_room(kind))):
                ch.try_send(i)
                s = ch.stats()
                assert (len(ch), ch.capacity) == (s.buffered, s.capacity)
                assert ch.closed_for_send == s.closed_for_send
            ch.close()
            while True:
                s = ch.stats()
                assert (len(ch), ch.closed_for_recv) == (s.buffered, s.closed_for_recv)
                try:
                    ch.try_recv()
                except kcoro.ChannelClosed:
                    break

    run(main)


@all_kinds
def test_asyncio_cancelled_waiter_is_counted_and_unlinked(kind: str) -> None:
    async def main() -> None:
        ch = make(kind)
        r = asyncio.ensure_future(ch.recv())
        for _ in range(3):
            await asyncio.sleep(0)
        assert ch.stats().waiting_receivers == 1
        r.cancel()
        with pytest.raises(asyncio.CancelledError):
            await r
        assert_stats(ch, waiting_receivers=0, recvs=0)
        assert_failures(ch, recv_cancelled=1)
        # No ghost receiver: the next item stays in the channel (or, rendezvous, finds nobody).
        if kind == "rendezvous":
            with pytest.raises(kcoro.WouldBlock):
                ch.try_send(1)
        else:
            assert ch.try_send(1) is True
            assert len(ch) == 1
        ch.check_invariants()

    asyncio.run(main())
