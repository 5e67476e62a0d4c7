"""The token kernel: tickets, first-wins complete/cancel, zombies, keys, lifecycle, stats.

TOKENS.md pins the state machine ``NEW -> PARKED -> READY -> COMPLETED`` / ``CANCELLED``; these
tests drive it from kcoro tasks, plain threads and (for the cross-context cases) asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro
from kcoro import _tokens
from kcoro.testing import MockClock, wait_until


@pytest.fixture
def kernel() -> Iterator[kcoro.TokenKernel]:
    """A fresh kernel (ids from 1); shut down afterwards so no state leaks between tests."""
    old = _tokens._kernel
    if old is not None:
        old.shutdown()
    k = kcoro.token_kernel()
    yield k
    k.check_invariants()
    k.shutdown()


async def until_parked(*tickets: kcoro.Ticket) -> None:
    """Yield until every ticket has a parked waiter (exact, and keeps ``kernel.stats()`` free of
    the barrier's own waits)."""
    for _ in range(1000):
        if all(t.state == "PARKED" for t in tickets):
            return
        await kcoro.checkpoint()
    raise AssertionError(f"tickets never parked: {tickets}")


def run_mock(fn: Any, *args: Any) -> Any:
    return kcoro.run(fn, *args, clock=MockClock(autojump_threshold=0))


def start_thread(fn: Any, *args: Any) -> threading.Thread:
    th = threading.Thread(target=fn, args=args, daemon=True)
    th.start()
    return th


# -- publish ------------------------------------------------------------------------------------
def test_publish_gives_new_tickets_with_ids_from_one(kernel: kcoro.TokenKernel) -> None:
    a = kernel.publish()
    b = kernel.publish(key="req-7")
    assert (a.id, b.id) == (1, 2)
    assert a.state == b.state == "NEW"
    assert a.key is None and b.key == "req-7"
    assert not a.done()
    assert kernel.lookup(2) is b and kernel.lookup("req-7") is b
    assert [t.id for t in kernel.outstanding()] == [1, 2]


def test_live_key_published_twice_is_rejected_until_finished(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish(key=("order", 1))
    with pytest.raises(ValueError, match="already published"):
        kernel.publish(key=("order", 1))
    assert kernel.stats().published == 1  # the refused publish changed nothing
    assert kernel.complete(t, "done")
    again = kernel.publish(key=("order", 1))  # no longer live: the key is free
    assert again.id == 2 and again.state == "NEW"


def test_unhashable_key_is_a_type_error(kernel: kcoro.TokenKernel) -> None:
    with pytest.raises(TypeError, match="hashable"):
        kernel.publish(key=["not", "hashable"])
    assert kernel.stats().published == 0
    assert kernel.outstanding() == []


# -- complete / cancel by ticket, id, key --------------------------------------------------------
@pytest.mark.parametrize("ref", ["ticket", "id", "key"])
def test_complete_from_another_thread_wakes_awaiting_task(kernel: kcoro.TokenKernel,
                                                          ref: str) -> None:
    results: list[bool] = []

    async def main() -> Any:
        t = kernel.publish(key="k1")
        target: Any = {"ticket": t, "id": t.id, "key": "k1"}[ref]

        def completer() -> None:
            wait_until(lambda: t.state == "PARKED")
            results.append(kernel.complete(target, b"payload"))

        th = start_thread(completer)
        value = await t
        th.join()
        assert t.state == "COMPLETED"
        return value

    assert kcoro.run(main) == b"payload"
    assert results == [True]
    assert kernel.lookup(1) is None and kernel.lookup("k1") is None


@pytest.mark.parametrize("ref", ["ticket", "id", "key"])
def test_cancel_by_ref_raises_operation_cancelled_with_reason(kernel: kcoro.TokenKernel,
                                                              ref: str) -> None:
    async def main() -> None:
        t = kernel.publish(key="k2")
        target: Any = {"ticket": t, "id": t.id, "key": "k2"}[ref]

        async def waiter() -> None:
            with pytest.raises(kcoro.OperationCancelled) as ei:
                await t
            assert ei.value.reason == "shutdown requested"
            assert ei.value.errno == errno.ECANCELED

        w = kcoro.spawn(waiter)
        await until_parked(t)
        assert kernel.cancel(target, "shutdown requested")
        assert t.state == "CANCELLED"
        await w

    kcoro.run(main)


def test_wait_blocking_in_thread_completed_by_task(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    got: list[Any] = []
    th = start_thread(lambda: got.append(t.wait_blocking()))
    wait_until(lambda: t.state == "PARKED")
    assert t.complete({"answer": 42})
    th.join(5)
    assert got == [{"answer": 42}]
    assert t.state == "COMPLETED"


def test_wait_blocking_cancelled_raises_operation_cancelled(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    errs: list[BaseException] = []

    def waiter() -> None:
        try:
            t.wait_blocking()
        except kcoro.OperationCancelled as e:
            errs.append(e)

    th = start_thread(waiter)
    wait_until(lambda: t.state == "PARKED")
    assert t.cancel("nope")
    th.join(5)
    assert len(errs) == 1 and errs[0].reason == "nope"  # type: ignore[attr-defined]


# -- states ---------------------------------------------------------------------------------------
def test_states_new_parked_ready_completed(kernel: kcoro.TokenKernel) -> None:
    seen: list[str] = []

    async def main() -> None:
        t = kernel.publish()
        seen.append(t.state)

        async def waiter() -> Any:
            return await t

        w = kcoro.spawn(waiter)
        await until_parked(t)
        seen.append(t.state)
        assert kernel.complete(t, 7)
        seen.append(t.state)  # completed, waiter not yet resumed
        assert await w == 7
        seen.append(t.state)

    kcoro.run(main)
    assert seen == ["NEW", "PARKED", "READY", "COMPLETED"]


def test_cancel_of_new_ticket_goes_straight_to_cancelled(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    assert kernel.cancel(t)
    assert t.state == "CANCELLED" and t.done() and t.cancelled()

    async def main() -> None:
        with pytest.raises(kcoro.OperationCancelled):
            await t

    kcoro.run(main)
    assert t.state == "CANCELLED"


def test_completion_before_park_leaves_ready_and_await_returns_at_once(
        kernel: kcoro.TokenKernel) -> None:
    steps: list[str] = []

    async def other() -> None:
        steps.append("other")

    async def main() -> None:
        t = kernel.publish()
        assert kernel.complete(t, "early")
        assert t.state == "READY"
        kcoro.spawn(other)  # ready to run; would run first if the await yielded
        value = await t
        steps.append(f"main:{value}")
        assert t.state == "COMPLETED"

    kcoro.run(main)
    assert steps == ["main:early", "other"]
    assert kernel.stats().parked == 0  # never parked


def test_completion_before_blocking_wait_returns_at_once(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    assert t.complete(5)
    assert t.wait_blocking(timeout=0) == 5  # timeout=0 would raise if it had to wait
    assert t.state == "COMPLETED"


def test_timeout_zero_on_pending_ticket_is_would_block(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    with pytest.raises(kcoro.WouldBlock):
        t.wait_blocking(timeout=0)
    assert t.state == "NEW"  # a failed try changes nothing
    assert t.complete(1)


# -- first wins -----------------------------------------------------------------------------------
def test_complete_then_cancel_first_wins_and_late_calls_are_zombies(
        kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    assert kernel.complete(t, "first")
    assert not kernel.cancel(t, "late")
    assert not kernel.complete(t, "again")
    assert t.state == "READY" and t.payload == "first"
    assert t.wait_blocking() == "first"
    assert not kernel.complete(t.id, "after forgotten")
    s = kernel.stats()
    assert (s.completed, s.cancelled, s.zombies) == (1, 0, 3)


def test_cancel_then_complete_first_wins(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish(key="x")
    assert kernel.cancel("x", "r1")
    assert not kernel.cancel("x", "r2")
    assert not kernel.complete(t, "late")
    assert t.state == "CANCELLED" and t.reason == "r1"
    s = kernel.stats()
    assert (s.completed, s.cancelled, s.zombies) == (0, 1, 2)


def test_unknown_refs_are_zombies(kernel: kcoro.TokenKernel) -> None:
    assert not kernel.complete(999)
    assert not kernel.cancel("no-such-key")
    assert not kernel.complete(["unhashable"])  # not a TypeError: just unknown
    assert kernel.stats().zombies == 3


def test_many_threads_racing_complete_and_cancel_exactly_one_wins(
        kernel: kcoro.TokenKernel) -> None:
    n_threads, rounds = 8, 60
    tickets = [kernel.publish() for _ in range(rounds)]
    wins = [[0] * rounds for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)

    def racer(i: int) -> None:
        for r, t in enumerate(tickets):
            barrier.wait()
            ok = kernel.complete(t, i) if i % 2 else kernel.cancel(t, i)
            wins[i][r] = int(ok)

    threads = [start_thread(racer, i) for i in range(n_threads)]
    for th in threads:
        th.join(30)
    for r, t in enumerate(tickets):
        winners = [i for i in range(n_threads) if wins[i][r]]
        assert len(winners) == 1, (r, winners)
        (w,) = winners
        if w % 2:
            assert t.state == "READY" and t.payload == w
        else:
            assert t.state == "CANCELLED" and t.reason == w
    s = kernel.stats()
    assert s.completed + s.cancelled == rounds
    assert s.zombies == rounds * (n_threads - 1)
    assert kernel.outstanding() == []


def test_racing_completers_wake_a_blocked_waiter_exactly_once(kernel: kcoro.TokenKernel) -> None:
    for _ in range(30):
        t = kernel.publish()
        barrier = threading.Barrier(4)
        results: list[tuple[int, bool]] = []

        def racer(v: int, t: kcoro.Ticket = t, barrier: threading.Barrier = barrier,
                  results: list[tuple[int, bool]] = results) -> None:
            barrier.wait()
            results.append((v, kernel.complete(t, v)))

        ths = [start_thread(racer, v) for v in range(4)]
        got = t.wait_blocking(timeout=10)
        for th in ths:
            th.join(5)
        winners = [v for v, ok in results if ok]
        assert winners == [got]
        assert t.state == "COMPLETED"


# -- timeouts -------------------------------------------------------------------------------------
def test_await_timeout_cancels_the_ticket_and_late_complete_is_zombie(
        kernel: kcoro.TokenKernel) -> None:
    async def main() -> None:
        t = kernel.publish(key="slow")
        with pytest.raises(TimeoutError) as ei:
            await t.wait(timeout=2.5)
        assert ei.value.errno == errno.ETIME
        assert kcoro.current_time() == 2.5
        assert t.state == "CANCELLED"
        assert not kernel.complete("slow", "too late")
        assert kernel.lookup("slow") is None

    run_mock(main)
    assert kernel.stats().zombies == 1


def test_wait_blocking_timeout_cancels_the_ticket(kernel: kcoro.TokenKernel) -> None:
    t = kernel.publish()
    with pytest.raises(TimeoutError) as ei:
        t.wait_blocking(timeout=0.02)
    assert ei.value.errno == errno.ETIME
    assert t.state == "CANCELLED"
    assert not t.complete("late")
    assert kernel.stats().zombies == 1


def test_completion_within_timeout_is_returned(kernel: kcoro.TokenKernel) -> None:
    async def main() -> Any:
        t = kernel.publish()

        async def completer() -> None:
            await kcoro.sleep(1)
            t.complete("in time")

        kcoro.spawn(completer)
        return await t.wait(timeout=5)

    assert run_mock(main) == "in time"


def test_task_cancellation_cancels_the_public_ticket(kernel: kcoro.TokenKernel) -> None:
    async def main() -> None:
        t = kernel.publish()

        async def waiter() -> None:
            await t

        w = kcoro.spawn(waiter)
        await until_parked(t)
        w.cancel()
        with pytest.raises(kcoro.Cancelled):
            await w
        assert t.state == "CANCELLED"
        assert not kernel.complete(t, "late")

    kcoro.run(main)
    assert kernel.stats().zombies == 1


def test_cancel_token_interrupts_ticket_wait(kernel: kcoro.TokenKernel) -> None:
    tok = kcoro.CancelToken()
    t = kernel.publish()
    errs: list[BaseException] = []

    def waiter() -> None:
        try:
            t.wait_blocking(cancel=tok)
        except kcoro.OperationCancelled as e:
            errs.append(e)

    th = start_thread(waiter)
    wait_until(lambda: t.state == "PARKED")
    assert tok.cancel("user abort")
    th.join(5)
    assert [e.reason for e in errs] == ["user abort"]  # type: ignore[attr-defined]
    assert t.state == "CANCELLED"


def test_two_waiters_on_one_ticket_is_an_error(kernel: kcoro.TokenKernel) -> None:
    async def main() -> None:
        t = kernel.publish()
        first = kcoro.spawn(t.wait)
        await until_parked(t)
        with pytest.raises(RuntimeError, match="already parked"):
            await t
        t.complete("one")
        assert await first == "one"

    kcoro.run(main)


def test_ticket_awaited_from_asyncio_and_completed_from_thread(
        kernel: kcoro.TokenKernel) -> None:
    async def main() -> Any:
        t = kernel.publish(key="aio")

        def completer() -> None:
            wait_until(lambda: t.state == "PARKED")
            kernel.complete("aio", "from thread")

        th = start_thread(completer)
        value = await t
        th.join(5)
        return value

    assert asyncio.run(main()) == "from thread"


# -- lifecycle ------------------------------------------------------------------------------------
def test_lazy_init_is_thread_safe() -> None:
    old = _tokens._kernel
    if old is not None:
        old.shutdown()
    for _ in range(5):
        n = 12
        barrier = threading.Barrier(n)
        got: list[kcoro.TokenKernel] = []

        def racer(barrier: threading.Barrier = barrier,
                  got: list[kcoro.TokenKernel] = got) -> None:
            barrier.wait()
            got.append(kcoro.token_kernel())

        ths = [start_thread(racer) for _ in range(n)]
        for th in ths:
            th.join(10)
        assert len(got) == n
        assert all(k is got[0] for k in got)
        assert kcoro.token_kernel() is got[0]
        got[0].shutdown()


def test_shutdown_cancels_outstanding_and_next_kernel_is_fresh(
        kernel: kcoro.TokenKernel) -> None:
    a = kernel.publish(key="a")
    b = kernel.publish()
    done = kernel.publish()
    done.complete(1)
    errs: list[BaseException] = []

    def waiter() -> None:
        try:
            a.wait_blocking()
        except kcoro.OperationCancelled as e:
            errs.append(e)

    th = start_thread(waiter)
    wait_until(lambda: a.state == "PARKED")
    kernel.shutdown()
    th.join(5)
    assert len(errs) == 1
    assert a.state == b.state == "CANCELLED"
    assert done.state == "READY"  # finished tickets are untouched
    assert kernel.outstanding() == []
    fresh = kcoro.token_kernel()
    assert fresh is not kernel
    t = fresh.publish(key="a")  # ids restart at 1; the old live key is gone
    assert t.id == 1
    s = fresh.stats()
    assert (s.published, s.completed, s.cancelled, s.zombies) == (1, 0, 0, 0)
    fresh.shutdown()


def test_stats_fields_are_consistent(kernel: kcoro.TokenKernel) -> None:
    ts = [kernel.publish(key=i) for i in range(5)]
    s = kernel.stats()
    assert (s.published, s.outstanding, s.keyed, s.completed, s.cancelled) == (5, 5, 5, 0, 0)
    ts[0].complete()
    ts[1].cancel()
    kernel.complete(3)  # by id -> ts[2]
    kernel.complete(99)  # unknown id, not a key either: zombie
    s = kernel.stats()
    assert s.completed == 2 and s.cancelled == 1 and s.zombies == 1
    assert s.outstanding == 2 and s.keyed == 2
    assert s.completed + s.cancelled + s.outstanding == s.published
    assert s.as_dict()["published"] == 5
    with pytest.raises(AttributeError):
        s.published = 0  # type: ignore[misc]  # frozen
    kernel.check_invariants()


def test_parked_counts_public_waits(kernel: kcoro.TokenKernel) -> None:
    async def main() -> None:
        a, b = kernel.publish(), kernel.publish()
        ws = [kcoro.spawn(a.wait), kcoro.spawn(b.wait)]
        await until_parked(a, b)
        assert kernel.stats().parked == 2
        a.complete(1)
        b.complete(2)
        assert [await w for w in ws] == [1, 2]

    kcoro.run(main)
    s = kernel.stats()
    assert s.parked >= 2 and s.published >= s.parked


def test_internal_waits_are_counted_in_stats(kernel: kcoro.TokenKernel) -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        r = kcoro.spawn(ch.recv)
        await kcoro.checkpoint()  # r parks on an internal ticket
        await ch.send(1)
        assert await r == 1
        await kcoro.sleep(0.5)  # another internal wait

    before = kernel.stats()
    run_mock(main)
    after = kernel.stats()
    assert after.published - before.published >= 2
    assert after.parked - before.parked >= 2
    assert after.completed - before.completed >= 2
    assert kernel.outstanding() == []  # internal waits never enter the keyed table
    assert after.completed + after.cancelled <= after.published


def test_stats_stay_consistent_with_taskgroup_and_barrier() -> None:
    from kcoro.testing import wait_all_tasks_blocked as barrier

    old = _tokens._kernel
    if old is not None:
        old.shutdown()
    kernel = kcoro.token_kernel()

    async def main() -> None:
        async with kcoro.TaskGroup() as tg:
            tg.spawn(kcoro.sleep, 1)
        await barrier()

    try:
        run_mock(main)
        s = kernel.stats()
        assert s.completed + s.cancelled <= s.published, s
        assert s.parked <= s.published, s
    finally:
        kernel.shutdown()  # keep the shared teardown check about this test's own assertions


def test_check_invariants_detects_nothing_on_a_busy_kernel(kernel: kcoro.TokenKernel) -> None:
    tickets = [kernel.publish(key=f"k{i}") for i in range(20)]
    for i, t in enumerate(tickets):
        if i % 3 == 0:
            t.complete(i)
        elif i % 3 == 1:
            t.cancel(i)
        kernel.check_invariants()
    assert len(kernel.outstanding()) == 6
    _tokens.check_invariants()
