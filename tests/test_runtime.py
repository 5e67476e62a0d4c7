"""The native runtime: run, spawn, Task, checkpoint, sleep, timers, fds, wakeup fd, bad input."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

import kcoro
from kcoro.testing import MockClock, wait_all_tasks_blocked, wait_until


def run_mock(fn: Any, *args: Any) -> Any:
    return kcoro.run(fn, *args, clock=MockClock(autojump_threshold=0))


# -- run ------------------------------------------------------------------------------------------
def test_run_returns_the_result() -> None:
    async def main(a: int, b: int) -> int:
        await kcoro.checkpoint()
        return a + b

    assert kcoro.run(main, 2, 3) == 5


def test_run_raises_the_exception_itself() -> None:
    err = LookupError("boom")

    async def main() -> None:
        await kcoro.checkpoint()
        raise err

    with pytest.raises(LookupError) as ei:
        kcoro.run(main)
    assert ei.value is err


def test_run_accepts_a_coroutine_object() -> None:
    async def main(x: str) -> str:
        await kcoro.sleep(0)
        return x * 2

    assert kcoro.run(main("ab")) == "abab"


def test_run_rejects_bad_callables() -> None:
    def sync() -> int:
        return 1

    with pytest.raises(TypeError, match="not an async function"):
        kcoro.run(sync)
    with pytest.raises(TypeError, match="expected an async function"):
        kcoro.run(42)  # type: ignore[arg-type]

    async def main() -> None:
        pass

    coro = main()
    with pytest.raises(TypeError, match="arguments given with a coroutine"):
        kcoro.run(coro, 1)
    coro.close()


def test_nested_run_is_a_runtime_error() -> None:
    async def inner() -> None:
        pass

    async def main() -> str:
        with pytest.raises(RuntimeError, match="cannot be nested"):
            kcoro.run(inner)
        return "outer still fine"

    assert kcoro.run(main) == "outer still fine"


def test_run_inside_running_asyncio_loop_is_a_runtime_error() -> None:
    async def inner() -> None:
        pass

    async def aio_main() -> None:
        with pytest.raises(RuntimeError, match="asyncio loop"):
            kcoro.run(inner)

    asyncio.run(aio_main())


def test_runs_in_two_threads_are_independent() -> None:
    results: dict[str, Any] = {}

    async def work(tag: str) -> str:
        ch: kcoro.Channel[str] = kcoro.Channel()
        kcoro.spawn(ch.send, tag)
        return await ch.recv()

    def in_thread() -> None:
        results["thread"] = kcoro.run(work, "t")

    th = threading.Thread(target=in_thread)
    th.start()
    results["main"] = kcoro.run(work, "m")
    th.join(10)
    assert results == {"thread": "t", "main": "m"}


def test_sequential_runs_in_one_thread() -> None:
    async def main(i: int) -> int:
        await kcoro.sleep(0)
        return i

    assert [kcoro.run(main, i) for i in range(3)] == [0, 1, 2]


# -- spawn ----------------------------------------------------------------------------------------
def test_spawn_outside_a_runtime_is_a_runtime_error() -> None:
    async def child() -> None:
        pass

    with pytest.raises(RuntimeError, match=r"kcoro\.run"):
        kcoro.spawn(child)


def test_spawn_from_a_foreign_thread_is_a_runtime_error() -> None:
    errors: list[BaseException] = []

    async def child() -> None:
        pass

    async def main() -> None:
        def other() -> None:
            try:
                kcoro.spawn(child)
            except RuntimeError as e:
                errors.append(e)

        th = threading.Thread(target=other)
        th.start()
        th.join(10)

    kcoro.run(main)
    assert len(errors) == 1


def test_tasks_run_in_spawn_order_after_the_spawner_yields() -> None:
    steps: list[str] = []

    async def child(tag: str) -> None:
        steps.append(tag)

    async def main() -> None:
        for tag in "abc":
            kcoro.spawn(child, tag)
        steps.append("main")
        await kcoro.checkpoint()
        steps.append("main again")

    kcoro.run(main)
    assert steps == ["main", "a", "b", "c", "main again"]


def test_remaining_tasks_are_cancelled_and_awaited_when_main_returns() -> None:
    log: list[str] = []
    tasks: list[kcoro.Task[Any]] = []

    async def forever(tag: str) -> None:
        try:
            await kcoro.sleep(math.inf)
        finally:
            log.append(f"{tag} cancelled")
            with kcoro.CancelScope(shield=True):
                await kcoro.sleep(1)  # cleanup that itself waits is still awaited
            log.append(f"{tag} cleaned up")

    async def main() -> str:
        tasks.extend(kcoro.spawn(forever, t) for t in "ab")
        await wait_all_tasks_blocked()
        return "main done"

    assert run_mock(main) == "main done"
    assert sorted(log) == ["a cancelled", "a cleaned up", "b cancelled", "b cleaned up"]
    assert all(t.state == "FINISHED" and t.cancelled() for t in tasks)


def test_failed_unawaited_task_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def bad() -> None:
        raise ValueError("nobody awaits me")

    async def main() -> str:
        kcoro.spawn(bad)
        await kcoro.checkpoint()
        return "ok"

    with caplog.at_level(logging.ERROR, logger="kcoro"):
        assert kcoro.run(main) == "ok"
    assert any("never retrieved" in r.getMessage() for r in caplog.records)


def test_retrieved_failure_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def bad() -> None:
        raise ValueError("awaited")

    async def main() -> None:
        t = kcoro.spawn(bad)
        with pytest.raises(ValueError):
            await t

    with caplog.at_level(logging.ERROR, logger="kcoro"):
        kcoro.run(main)
    assert not any("never retrieved" in r.getMessage() for r in caplog.records)


def test_keyboard_interrupt_in_a_task_stops_run() -> None:
    async def victim() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        kcoro.spawn(victim)
        await kcoro.sleep(math.inf)

    with pytest.raises(KeyboardInterrupt):
        kcoro.run(main)


# -- Task -----------------------------------------------------------------------------------------
def test_task_state_transitions() -> None:
    states: list[str] = []

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()

        async def child() -> int:
            states.append(kcoro.current_task().state)  # RUNNING
            return await ch.recv()

        t = kcoro.spawn(child)
        states.append(t.state)  # READY (spawned, not yet run)
        await wait_all_tasks_blocked()
        states.append(t.state)  # PARKED
        assert t.parked_on is ch
        ch.try_send(1)
        states.append(t.state)  # READY (woken, not yet resumed)
        assert t.parked_on is None
        assert await t == 1
        states.append(t.state)
        assert t.done()

    kcoro.run(main)
    assert states == ["READY", "RUNNING", "PARKED", "READY", "FINISHED"]
    assert set(states) <= {"CREATED", "READY", "RUNNING", "PARKED", "FINISHED"}


def test_await_task_result_exception_and_cancelled() -> None:
    err = KeyError("k")

    async def ok() -> str:
        await kcoro.checkpoint()
        return "value"

    async def fails() -> None:
        await kcoro.checkpoint()
        raise err

    async def sleeper() -> None:
        await kcoro.sleep(100)

    async def main() -> None:
        a, b, c = kcoro.spawn(ok), kcoro.spawn(fails), kcoro.spawn(sleeper)
        assert await a == "value"
        with pytest.raises(KeyError) as ei:
            await b
        assert ei.value is err
        c.cancel()
        with pytest.raises(kcoro.Cancelled):
            await c
        assert c.cancelled() and not a.cancelled() and not b.cancelled()
        # Finished tasks: result() / exception() / await again.
        assert a.result() == "value" and a.exception() is None
        assert b.exception() is err
        with pytest.raises(KeyError):
            b.result()
        with pytest.raises(kcoro.Cancelled):
            c.result()
        assert await a == "value"
        assert kcoro.current_time() == 0  # c never slept its 100 s

    run_mock(main)


def test_result_before_finish_is_a_runtime_error() -> None:
    async def main() -> None:
        t = kcoro.spawn(kcoro.sleep, 1)
        with pytest.raises(RuntimeError, match="has not finished"):
            t.result()
        with pytest.raises(RuntimeError, match="has not finished"):
            t.exception()
        await t
        assert t.result() is None

    run_mock(main)


def test_task_names() -> None:
    async def worker() -> None:
        pass

    async def main() -> None:
        named = kcoro.spawn(worker, name="fetcher-1")
        default = kcoro.spawn(worker)
        assert named.name == "fetcher-1"
        assert "worker" in default.name
        assert "fetcher-1" in repr(named)
        await named
        await default

    kcoro.run(main)


def test_current_task() -> None:
    seen: list[kcoro.Task[Any]] = []

    async def child() -> None:
        seen.append(kcoro.current_task())

    async def main() -> None:
        me = kcoro.current_task()
        t = kcoro.spawn(child)
        await t
        assert seen == [t]
        assert kcoro.current_task() is me
        assert me.state == "RUNNING"

    kcoro.run(main)
    with pytest.raises(RuntimeError):
        kcoro.current_task()


def test_cancel_before_first_step_runs_until_first_checkpoint() -> None:
    steps: list[str] = []

    async def child() -> None:
        steps.append("started")
        await kcoro.checkpoint()
        steps.append("unreachable")

    async def main() -> None:
        t = kcoro.spawn(child)
        t.cancel()
        with pytest.raises(kcoro.Cancelled):
            await t

    kcoro.run(main)
    assert steps == ["started"]


def test_task_cancel_from_another_thread_wakes_parked_task() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        t = kcoro.spawn(ch.recv)

        def canceller() -> None:
            wait_until(lambda: t.state == "PARKED")
            t.cancel()

        th = threading.Thread(target=canceller)
        th.start()
        with pytest.raises(kcoro.Cancelled):
            await t
        th.join(10)
        assert ch.stats().waiting_receivers == 0

    kcoro.run(main)


# -- checkpoint and the budget --------------------------------------------------------------------
def test_checkpoint_interleaves_tasks_exactly() -> None:
    steps: list[str] = []

    async def worker(tag: str) -> None:
        for i in range(3):
            steps.append(f"{tag}{i}")
            await kcoro.checkpoint()

    async def main() -> None:
        a = kcoro.spawn(worker, "a")
        b = kcoro.spawn(worker, "b")
        await a
        await b

    kcoro.run(main)
    assert steps == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_checkpoint_and_sleep_zero_raise_in_cancelled_scope() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as s:
            s.cancel()
            with pytest.raises(kcoro.Cancelled):
                await kcoro.checkpoint()
            with pytest.raises(kcoro.Cancelled):
                await kcoro.sleep(0)
            with pytest.raises(kcoro.Cancelled):
                await kcoro.sleep(5)

    kcoro.run(main)


def test_fast_ops_yield_at_least_every_budget_ops() -> None:
    from kcoro._runtime import BUDGET

    observed: list[int] = []

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        done = False

        async def observer() -> None:
            while not done:
                observed.append(len(ch))
                await kcoro.checkpoint()

        kcoro.spawn(observer)
        for i in range(3 * BUDGET + 10):
            await ch.send(i)  # never waits: only the budget makes it yield
        done = True

    kcoro.run(main)
    # The observer first runs when the producer's budget runs out, then once per budget.
    assert observed == [BUDGET, 2 * BUDGET, 3 * BUDGET]


def test_async_for_over_a_busy_channel_lets_others_run() -> None:
    async def main() -> int:
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
        for i in range(500):
            ch.try_send(i)
        ch.close()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await kcoro.checkpoint()

        t = kcoro.spawn(ticker)
        total = sum([x async for x in ch])
        t.cancel()
        assert total == sum(range(500))
        return ticks

    assert kcoro.run(main) >= 500 // 64


# -- sleep and the clock --------------------------------------------------------------------------
def test_sleepers_wake_in_deadline_order_at_the_right_time() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(tag: str, s: float) -> None:
        await kcoro.sleep(s)
        woke.append((tag, kcoro.current_time()))

    async def main() -> None:
        async with kcoro.TaskGroup() as tg:
            for tag, s in [("c", 3), ("a", 1), ("b1", 2), ("b2", 2), ("d", 10.5)]:
                tg.spawn(sleeper, tag, s)

    run_mock(main)
    assert woke == [("a", 1), ("b1", 2), ("b2", 2), ("c", 3), ("d", 10.5)]


def test_mock_clock_without_autojump_moves_only_when_told() -> None:
    clock = MockClock(start=100)
    woke: list[float] = []

    async def main() -> None:
        async def sleeper() -> None:
            await kcoro.sleep(5)
            woke.append(kcoro.current_time())

        t = kcoro.spawn(sleeper)
        await wait_all_tasks_blocked()
        assert woke == [] and kcoro.current_time() == 100
        clock.jump(5)
        await t

    kcoro.run(main, clock=clock)
    assert woke == [105]
    with pytest.raises(ValueError):
        clock.jump(-1)


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (math.nan, ValueError),
                                            ("soon", TypeError), (None, TypeError)])
def test_sleep_validation(value: Any, exc: type[Exception]) -> None:
    async def main() -> None:
        with pytest.raises(exc):
            await kcoro.sleep(value)

    kcoro.run(main)




def test_sleep_forever_with_real_clock_can_be_cancelled() -> None:
    async def main() -> str:
        me = kcoro.current_task()

        def canceller() -> None:
            wait_until(lambda: me.state == "PARKED")
            me.cancel()

        th = threading.Thread(target=canceller)
        th.start()
        try:
            with kcoro.CancelScope() as s:
                await kcoro.sleep(math.inf)
        finally:
            th.join(10)
        return "cancelled" if s.cancelled_caught else "?"

    async def outer() -> str:
        t = kcoro.spawn(main)
        try:
            return await t
        except kcoro.Cancelled:
            return "cancelled"

    assert kcoro.run(outer) == "cancelled"


def test_infinite_op_timeout_with_real_clock_waits_for_the_item() -> None:
    async def main() -> Any:
        ch: kcoro.Channel[int] = kcoro.Channel()
        me = kcoro.current_task()

        def sender() -> None:
            wait_until(lambda: me.state == "PARKED")
            ch.send_blocking(1)

        th = threading.Thread(target=sender)
        th.start()
        try:
            return await ch.recv(timeout=math.inf)
        finally:
            th.join(10)

    assert kcoro.run(main) == 1


def test_sleep_with_real_clock_takes_real_time() -> None:
    async def main() -> float:
        t0 = kcoro.current_time()
        await kcoro.sleep(0.05)
        return kcoro.current_time() - t0

    assert kcoro.run(main) >= 0.05


# -- idle, the wakeup fd, fds ---------------------------------------------------------------------
def test_idle_runtime_does_not_spin_and_foreign_completion_wakes_it() -> None:
    async def main() -> tuple[Any, float]:
        ch: kcoro.Channel[str] = kcoro.Channel()
        parked = [kcoro.spawn(ch.recv) for _ in range(20)]  # plenty of parked tasks
        kcoro.spawn(kcoro.sleep, 3600)  # and a far timer: the selector gets a long timeout
        me = kcoro.current_task()

        def sender() -> None:
            wait_until(lambda: me.state == "PARKED")
            time.sleep(0.3)  # the idle period being measured, not ordering
            for _ in range(21):
                ch.send_blocking("wake")

        th = threading.Thread(target=sender, daemon=True)
        cpu0 = time.process_time()
        th.start()
        got = await ch.recv()
        cpu = time.process_time() - cpu0
        th.join(10)
        for p in parked:
            assert await p == "wake"
        return got, cpu

    got, cpu = kcoro.run(main)
    assert got == "wake"
    assert cpu < 0.15, f"an idle runtime burned {cpu:.3f}s of CPU in 0.3s"


def test_foreign_thread_completion_of_public_ticket_wakes_runtime() -> None:
    async def main() -> Any:
        t = kcoro.token_kernel().publish()
        me = kcoro.current_task()

        def completer() -> None:
            wait_until(lambda: me.state == "PARKED")
            t.complete("hello")

        th = threading.Thread(target=completer)
        th.start()
        value = await t
        th.join(10)
        return value

    try:
        assert kcoro.run(main) == "hello"
    finally:
        kcoro.token_kernel().shutdown()


def test_wait_readable_on_socketpair() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async def main() -> list[bytes]:
            got: list[bytes] = []

            async def reader() -> None:
                for _ in range(2):
                    await kcoro.wait_readable(a)
                    got.append(a.recv(100))

            r = kcoro.spawn(reader)
            await wait_all_tasks_blocked()
            assert r.state == "PARKED" and got == []

            async def write_from_task() -> None:
                b.send(b"from task")

            await kcoro.spawn(write_from_task)

            def writer() -> None:
                wait_until(lambda: len(got) == 1 and r.state == "PARKED")
                b.send(b"from thread")

            th = threading.Thread(target=writer)
            th.start()
            await r  # both reads happened: the runtime woke for the fd each time
            th.join(10)
            await kcoro.wait_writable(b.fileno())  # a socket with room is writable at once
            return got

        assert kcoro.run(main) == [b"from task", b"from thread"]
    finally:
        a.close()
        b.close()


def test_wait_all_tasks_blocked_counts_fd_ready_tasks_as_runnable() -> None:
    a, b = socket.socketpair()
    try:
        async def main() -> list[bytes]:
            got: list[bytes] = []

            async def reader() -> None:
                await kcoro.wait_readable(a)
                got.append(a.recv(100))

            r = kcoro.spawn(reader)
            await wait_all_tasks_blocked()
            b.send(b"ready")
            await wait_all_tasks_blocked()  # the reader is runnable: it must have run
            seen = list(got)
            await r
            return seen

        assert kcoro.run(main) == [b"ready"]
    finally:
        a.close()
        b.close()


def test_wait_readable_cancelled_unregisters_the_fd() -> None:
    a, b = socket.socketpair()
    try:
        async def main() -> None:
            with kcoro.move_on_after(1) as s:
                await kcoro.wait_readable(a)
            assert s.cancelled_caught
            b.send(b"x")
            await kcoro.wait_readable(a)  # can wait again: the first waiter was removed
            assert a.recv(1) == b"x"

        run_mock(main)
    finally:
        a.close()
        b.close()


def test_two_waiters_on_one_fd_is_an_error() -> None:
    a, b = socket.socketpair()
    try:
        async def main() -> None:
            first = kcoro.spawn(kcoro.wait_readable, a)
            await wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="already waiting"):
                await kcoro.wait_readable(a)
            b.send(b"x")
            await first

        kcoro.run(main)
    finally:
        a.close()
        b.close()


# -- bad input ------------------------------------------------------------------------------------
def test_asyncio_future_awaited_inside_kcoro_run_is_a_clear_error() -> None:
    loop = asyncio.new_event_loop()
    try:
        async def main() -> None:
            fut = loop.create_future()
            await fut

        with pytest.raises(RuntimeError, match="asyncio"):
            kcoro.run(main)
    finally:
        loop.close()


def test_asyncio_sleep_inside_kcoro_run_fails_instead_of_hanging() -> None:
    async def main() -> None:
        await asyncio.sleep(0.001)  # asyncio itself refuses: no running asyncio loop

    with pytest.raises(RuntimeError):
        kcoro.run(main)


class _Garbage:
    def __await__(self) -> Generator[Any, None, None]:
        yield 42


def test_yielding_something_else_is_a_clear_error() -> None:
    async def main() -> None:
        await _Garbage()

    with pytest.raises(RuntimeError, match="only kcoro awaitables"):
        kcoro.run(main)


def test_kcoro_ops_with_no_loop_running_are_runtime_errors() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    ch.try_send(1)
    coros = [ch.recv(), ch.send(2), ch.recv(timeout=1), kcoro.sleep(1),
             kcoro.checkpoint(), kcoro.select(ch.on_recv())]
    for coro in coros:
        with pytest.raises(RuntimeError, match=r"(?i)loop|kcoro or asyncio task"):
            coro.send(None)
        coro.close()
    assert len(ch) == 1 and ch.try_recv() == 1  # nothing was consumed


def test_blocking_ops_inside_a_kcoro_task_are_runtime_errors() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        ch.try_send(1)
        for call in (lambda: ch.recv_blocking(), lambda: ch.send_blocking(2),
                     lambda: next(ch.iter_blocking()),
                     lambda: kcoro.select_blocking(ch.on_recv())):
            with pytest.raises(RuntimeError, match="kcoro runtime"):
                call()
        assert len(ch) == 1  # nothing happened

    kcoro.run(main)


def test_timeout_validation_on_ops() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        with pytest.raises(ValueError):
            await ch.recv(timeout=-1)
        with pytest.raises(ValueError):
            await ch.send(1, timeout=math.nan)
        with pytest.raises(TypeError):
            await ch.recv(timeout="soon")  # type: ignore[arg-type]
        assert len(ch) == 0

    kcoro.run(main)


def test_errors_carry_errno() -> None:
    assert kcoro.ChannelClosed().errno == errno.EPIPE
    assert kcoro.WouldBlock().errno == errno.EAGAIN
    assert kcoro.OperationCancelled().errno == errno.ECANCELED
    assert issubclass(kcoro.Cancelled, BaseException)
    assert not issubclass(kcoro.Cancelled, Exception)


@pytest.mark.parametrize("watch_fd", [False, True], ids=["bell", "selector"])
def test_thread_wakes_a_sleeping_runtime_in_either_sleep_mode(watch_fd: bool) -> None:
    # With no fd to watch the idle loop blocks on its bell (a lock); with one it blocks in the
    # selector.  A completion from another thread must wake it either way, every time.
    a, b = socket.socketpair()
    try:
        async def main() -> tuple[list[int], int]:
            ch: kcoro.Channel[int] = kcoro.Channel(0)
            got: list[int] = []
            rt = kcoro.current_task()._rt  # type: ignore[attr-defined]

            async def fd_waiter() -> None:
                await kcoro.wait_readable(a)

            w = kcoro.spawn(fd_waiter) if watch_fd else None

            def sender() -> None:
                for i in range(50):
                    # the runtime is (or is about to be) asleep: every send must wake it
                    ch.send_blocking(i)
                ch.close()

            polls0 = rt.polls
            th = threading.Thread(target=sender)
            th.start()
            async for x in ch:
                got.append(x)
            th.join(10)
            if w is not None:
                assert w.state == "PARKED"  # still watching its fd
                b.send(b"x")
                await w
            return got, rt.polls - polls0

        got, polls = kcoro.run(main)
        assert got == list(range(50))
        assert polls > 0  # it did sleep (not spin) while waiting for the thread
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("threshold", [-1.0, -0.5, 0.0])
def test_mock_clock_autojump_threshold_at_or_below_zero_jumps_at_once(threshold: float) -> None:
    # The idle loop's bell must not read a non-positive wait as "block forever".
    from kcoro.testing import MockClock

    async def main() -> str:
        await kcoro.sleep(10)
        return "slept"

    out: list[object] = []
    th = threading.Thread(
        target=lambda: out.append(kcoro.run(main, clock=MockClock(autojump_threshold=threshold))),
        daemon=True)
    th.start()
    th.join(10)
    assert out == ["slept"]
