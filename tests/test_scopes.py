"""Cancel scopes (trio-style) and CancelTokens (thread-safe, hierarchical)."""

from __future__ import annotations

import errno
import gc
import logging
import math
import threading
from typing import Any

import pytest

import kcoro
from kcoro.testing import MockClock, wait_all_tasks_blocked, wait_until


def run_mock(fn: Any, *args: Any) -> Any:
    return kcoro.run(fn, *args, clock=MockClock(autojump_threshold=0))


# -- CancelScope ----------------------------------------------------------------------------------
def test_cancel_before_enter() -> None:
    steps: list[str] = []

    async def main() -> None:
        scope = kcoro.CancelScope()
        scope.cancel()
        assert scope.cancel_called
        with scope:
            steps.append("body runs until its first checkpoint")
            await kcoro.checkpoint()
            steps.append("unreachable")
        assert scope.cancelled_caught
        steps.append("after")

    kcoro.run(main)
    assert steps == ["body runs until its first checkpoint", "after"]


def test_cancel_after_enter_takes_effect_at_next_checkpoint() -> None:
    steps: list[str] = []

    async def main() -> None:
        with kcoro.CancelScope() as scope:
            assert not scope.cancel_called and not scope.cancelled
            scope.cancel()
            steps.append("synchronous code still runs")
            assert scope.cancel_called and scope.cancelled
            await kcoro.checkpoint()
            steps.append("unreachable")
        assert scope.cancelled_caught

    kcoro.run(main)
    assert steps == ["synchronous code still runs"]


def test_scope_not_cancelled_catches_nothing() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as scope:
            await kcoro.checkpoint()
        assert not scope.cancel_called and not scope.cancelled_caught

    kcoro.run(main)


def test_scope_cancel_wakes_a_parked_op_and_unlinks_it() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        scopes: list[kcoro.CancelScope] = []

        async def child() -> str:
            with kcoro.CancelScope() as s:
                scopes.append(s)
                await ch.recv()
            return "left scope" if s.cancelled_caught else "?"

        t = kcoro.spawn(child)
        await wait_all_tasks_blocked()
        scopes[0].cancel()
        assert await t == "left scope"
        assert ch.stats().waiting_receivers == 0

    kcoro.run(main)


def test_nested_scopes_outermost_cancelled_scope_catches() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as outer:
            with kcoro.CancelScope() as inner:
                inner.cancel()
                outer.cancel()
                await kcoro.checkpoint()
            pytest.fail("the Cancelled must pass through the inner scope")
        assert outer.cancelled_caught and not inner.cancelled_caught

        with kcoro.CancelScope() as outer2:
            with kcoro.CancelScope() as inner2:
                inner2.cancel()
                await kcoro.checkpoint()
            reached = True  # only the inner scope was cancelled: code after it runs
            await kcoro.checkpoint()
        assert reached and inner2.cancelled_caught and not outer2.cancelled_caught

    kcoro.run(main)


def test_outer_cancel_reaches_inner_scope_and_is_caught_by_outer() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as outer, kcoro.CancelScope() as inner:
            outer.cancel()
            assert inner.cancelled and not inner.cancel_called
            await kcoro.sleep(10)
        assert outer.cancelled_caught and not inner.cancelled_caught

    run_mock(main)


def test_task_cancel_is_not_swallowed_by_an_inner_cancelled_scope() -> None:
    async def main() -> None:
        async def child() -> None:
            with kcoro.CancelScope() as s:
                s.cancel()
                await kcoro.checkpoint()
            await kcoro.sleep(10)

        t = kcoro.spawn(child)
        await wait_all_tasks_blocked()
        t.cancel()
        with pytest.raises(kcoro.Cancelled):
            await t

    run_mock(main)


def test_shield_hides_outer_cancellation() -> None:
    steps: list[str] = []

    async def main() -> None:
        with kcoro.CancelScope() as outer:
            outer.cancel()
            with kcoro.CancelScope(shield=True) as shielded:
                assert shielded.shield and not shielded.cancelled
                await kcoro.checkpoint()
                await kcoro.sleep(2)
                steps.append("shielded work done")
            steps.append("after shield")
            await kcoro.checkpoint()
            steps.append("unreachable")
        assert outer.cancelled_caught
        assert kcoro.current_time() == 2

    run_mock(main)
    assert steps == ["shielded work done", "after shield"]


def test_removing_shield_delivers_cancel_to_parked_task() -> None:
    async def main() -> None:
        scopes: dict[str, kcoro.CancelScope] = {}

        async def child() -> None:
            with kcoro.CancelScope() as outer:
                scopes["outer"] = outer
                with kcoro.CancelScope(shield=True) as sh:
                    scopes["shield"] = sh
                    await kcoro.sleep(100)
            assert outer.cancelled_caught

        t = kcoro.spawn(child)
        await wait_all_tasks_blocked()
        scopes["outer"].cancel()
        await wait_all_tasks_blocked()
        assert t.state == "PARKED"  # still shielded
        scopes["shield"].shield = False
        await t
        assert kcoro.current_time() == 0

    run_mock(main)


def test_shielded_scope_cancelled_itself_still_catches() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as outer:
            outer.cancel()
            with kcoro.CancelScope(shield=True) as sh:
                sh.cancel()
                await kcoro.checkpoint()
            assert sh.cancelled_caught
        assert outer.cancelled_caught is False  # no checkpoint in outer after the shield

    kcoro.run(main)


def test_deadline_scope() -> None:
    async def main() -> None:
        with kcoro.CancelScope(deadline=kcoro.current_time() + 5) as s:
            assert s.deadline == 5
            await kcoro.sleep(10)
        assert s.cancelled_caught and kcoro.current_time() == 5
        with kcoro.CancelScope(deadline=kcoro.current_time() + 5) as s2:
            await kcoro.sleep(1)
        assert not s2.cancelled_caught and kcoro.current_time() == 6
        assert kcoro.CancelScope().deadline == math.inf

    run_mock(main)


def test_deadline_in_the_past_cancels_at_once() -> None:
    async def main() -> None:
        await kcoro.sleep(10)
        with kcoro.CancelScope(deadline=3) as s:
            assert s.cancel_called
            await kcoro.checkpoint()
        assert s.cancelled_caught

    run_mock(main)


def test_deadline_can_be_moved() -> None:
    async def main() -> None:
        with kcoro.CancelScope(deadline=2) as s:
            s.deadline = 7
            await kcoro.sleep(100)
        assert kcoro.current_time() == 7 and s.cancelled_caught
        with kcoro.CancelScope(deadline=100) as s2:
            await kcoro.sleep(1)
            s2.deadline = kcoro.current_time() + 1
            await kcoro.sleep(100)
        assert kcoro.current_time() == 9
        with kcoro.CancelScope(deadline=100) as s3:
            s3.deadline = math.inf
            await kcoro.sleep(150)
        assert not s3.cancelled_caught
        with pytest.raises(ValueError):
            kcoro.CancelScope(deadline=math.nan)

    run_mock(main)


def test_move_on_after() -> None:
    async def main() -> None:
        with kcoro.move_on_after(2) as s:
            await kcoro.sleep(10)
        assert s.cancelled_caught and kcoro.current_time() == 2
        with kcoro.move_on_after(2) as s:
            await kcoro.sleep(1)
        assert not s.cancelled_caught and kcoro.current_time() == 3
        with pytest.raises(ValueError):
            kcoro.move_on_after(-1)

    run_mock(main)


def test_fail_after_raises_timeout_error_with_etime() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError) as ei, kcoro.fail_after(3):
            await kcoro.sleep(10)
        assert ei.value.errno == errno.ETIME
        assert kcoro.current_time() == 3
        with kcoro.fail_after(3):
            await kcoro.sleep(1)  # in time: nothing raised
        assert kcoro.current_time() == 4

    run_mock(main)


def test_fail_after_around_a_channel_op_leaves_channel_unchanged() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        ch.try_send(1)
        with pytest.raises(TimeoutError), kcoro.fail_after(1):
            await ch.send(2)
        assert list(await _drain(ch)) == [1]
        assert ch.stats().waiting_senders == 0

    run_mock(main)


async def _drain(ch: kcoro.Channel[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(ch.try_recv())
        except kcoro.WouldBlock:
            return out


def test_exiting_scopes_out_of_order_is_an_error() -> None:
    async def main() -> None:
        a, b = kcoro.CancelScope(), kcoro.CancelScope()
        a.__enter__()
        b.__enter__()
        with pytest.raises(RuntimeError, match="reverse order"):
            a.__exit__(None, None, None)
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)
        await kcoro.checkpoint()  # the task's scope stack is intact again

    kcoro.run(main)


def test_scope_enter_rules() -> None:
    scope = kcoro.CancelScope()
    with pytest.raises(RuntimeError, match="inside a kcoro task"), scope:
        pass

    async def main() -> None:
        s = kcoro.CancelScope()
        with s:
            pass
        with pytest.raises(RuntimeError, match="only once"), s:
            pass

    kcoro.run(main)


def test_cancel_scope_from_another_thread() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as s:
            me = kcoro.current_task()

            def canceller() -> None:
                wait_until(lambda: me.state == "PARKED")
                s.cancel()

            th = threading.Thread(target=canceller)
            th.start()
            await kcoro.Channel[int]().recv()  # parks forever, real clock
        th.join(10)
        assert s.cancelled_caught

    kcoro.run(main)


def test_cancelled_is_not_caught_by_except_exception() -> None:
    async def main() -> None:
        caught = False
        with kcoro.CancelScope() as s:
            s.cancel()
            try:
                await kcoro.checkpoint()
            except Exception:
                caught = True
        assert not caught and s.cancelled_caught

    kcoro.run(main)


def test_cancelled_exception_group_is_absorbed_by_its_scope() -> None:
    async def main() -> None:
        with kcoro.CancelScope() as s:
            s.cancel()
            raise BaseExceptionGroup("many", [kcoro.Cancelled(), kcoro.Cancelled()])
        assert s.cancelled_caught
        with pytest.raises(ExceptionGroup) as ei, kcoro.CancelScope() as s2:
            s2.cancel()
            raise BaseExceptionGroup("mixed", [kcoro.Cancelled(), ValueError("v")])
        assert [type(e) for e in ei.value.exceptions] == [ValueError]

    kcoro.run(main)


# -- ops in an already-cancelled scope ------------------------------------------------------------
def test_every_op_in_a_cancelled_scope_does_nothing() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(2)
        ch.try_send(1)
        k = kcoro.token_kernel()
        try:
            ticket = k.publish()
            ticket.complete("ready")  # an await that could finish at once
            child = kcoro.spawn(kcoro.sleep, 5)
            ops = [lambda: ch.send(2), lambda: ch.recv(), lambda: ch.recv(timeout=1),
                   lambda: ch.send(3, timeout=0), lambda: kcoro.select(ch.on_recv()),
                   lambda: kcoro.sleep(0), lambda: kcoro.sleep(1), lambda: ticket.wait(),
                   lambda: child, kcoro.checkpoint]
            with kcoro.CancelScope() as s:
                s.cancel()
                for i, op in enumerate(ops):
                    with pytest.raises(kcoro.Cancelled):
                        await op()
                        pytest.fail(f"op {i} did not raise")
            assert len(ch) == 1 and ch.try_recv() == 1 and ch.stats().sends == 1
            assert ticket.state == "READY"  # still unconsumed
            assert await ticket.wait(timeout=0) == "ready"
            await child  # the awaited task itself was not affected
            assert kcoro.current_time() == 5
        finally:
            k.shutdown()

    run_mock(main)


def test_await_finished_task_in_cancelled_scope_raises_cancelled() -> None:
    async def main() -> None:
        async def child() -> int:
            return 1

        t = kcoro.spawn(child)
        assert await t == 1
        with kcoro.CancelScope() as s:
            s.cancel()
            with pytest.raises(kcoro.Cancelled):
                await t

    kcoro.run(main)


# -- CancelToken ----------------------------------------------------------------------------------
def test_token_cancel_returns_true_once_and_sets_flag() -> None:
    tok = kcoro.CancelToken()
    assert tok.cancelled is False
    assert tok.cancel("first") is True
    assert tok.cancel("second") is False
    assert tok.cancelled is True and tok.reason == "first"
    with pytest.raises(kcoro.OperationCancelled) as ei:
        tok.raise_if_cancelled()
    assert ei.value.reason == "first"


def test_token_hierarchy() -> None:
    parent = kcoro.CancelToken()
    child = kcoro.CancelToken(parent)
    grandchild = kcoro.CancelToken(child)
    sibling = kcoro.CancelToken(parent)
    assert child.cancel("child only")
    assert child.cancelled and grandchild.cancelled
    assert not parent.cancelled and not sibling.cancelled
    assert grandchild.reason == "child only"
    assert parent.cancel("everything")
    assert sibling.cancelled and sibling.reason == "everything"
    late = kcoro.CancelToken(parent)  # made from a cancelled parent: cancelled at once
    assert late.cancelled and late.reason == "everything"
    with pytest.raises(TypeError):
        kcoro.CancelToken("not a token")  # type: ignore[arg-type]


def test_token_children_are_held_weakly() -> None:
    parent = kcoro.CancelToken()
    for _ in range(100):
        kcoro.CancelToken(parent)
    gc.collect()
    assert len(parent._children) == 0
    assert parent.cancel()


def test_on_cancel_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    tok = kcoro.CancelToken()
    calls: list[Any] = []
    tok.on_cancel(lambda t: calls.append(("a", t)))

    def bad(t: kcoro.CancelToken) -> None:
        calls.append("bad")
        raise RuntimeError("callback failed")

    tok.on_cancel(bad)
    tok.on_cancel(lambda t: calls.append("c"))
    assert calls == []
    with caplog.at_level(logging.ERROR, logger="kcoro"):
        assert tok.cancel()
    assert calls == [("a", tok), "bad", "c"]  # a failing callback does not stop the others
    assert any("callback" in r.getMessage() for r in caplog.records)
    tok.cancel()
    assert len(calls) == 3  # each callback once
    tok.on_cancel(lambda t: calls.append("late"))  # registered after: called at once
    assert calls[-1] == "late"


def test_parent_cancel_runs_child_callbacks() -> None:
    parent = kcoro.CancelToken()
    child = kcoro.CancelToken(parent)
    calls: list[str] = []
    child.on_cancel(lambda t: calls.append("child"))
    parent.on_cancel(lambda t: calls.append("parent"))
    parent.cancel()
    assert sorted(calls) == ["child", "parent"]


def test_token_cancel_from_thread_wakes_parked_kcoro_task() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        tok = kcoro.CancelToken()
        me = kcoro.current_task()

        def canceller() -> None:
            wait_until(lambda: me.state == "PARKED")
            tok.cancel("from thread")

        th = threading.Thread(target=canceller)
        th.start()
        with pytest.raises(kcoro.OperationCancelled) as ei:
            await ch.recv(cancel=tok)
        th.join(10)
        assert ei.value.reason == "from thread" and ei.value.errno == errno.ECANCELED
        assert ch.stats().waiting_receivers == 0 and ch.stats().recv_cancelled == 1
        assert not tok._tickets  # the token let go of the finished wait

    kcoro.run(main)


def test_token_cancel_wakes_parked_asyncio_task() -> None:
    import asyncio

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        ch.try_send(0)
        tok = kcoro.CancelToken()

        def canceller() -> None:
            wait_until(lambda: ch.stats().waiting_senders == 1)
            tok.cancel("aio")

        th = threading.Thread(target=canceller)
        th.start()
        with pytest.raises(kcoro.OperationCancelled) as ei:
            await ch.send(1, cancel=tok)
        th.join(10)
        assert ei.value.reason == "aio"
        assert ch.try_recv() == 0 and len(ch) == 0

    asyncio.run(main())


def test_token_cancel_wakes_blocking_thread() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel()
    tok = kcoro.CancelToken()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            ch.recv_blocking(cancel=tok)
        except kcoro.OperationCancelled as e:
            errors.append(e)

    th = threading.Thread(target=blocked)
    th.start()
    wait_until(lambda: ch.stats().waiting_receivers == 1)
    tok.cancel("stop")
    th.join(10)
    assert [e.reason for e in errors] == ["stop"]  # type: ignore[attr-defined]
    assert ch.stats().waiting_receivers == 0


def test_parent_token_cancels_ops_watching_children() -> None:
    async def main() -> None:
        chans = [kcoro.Channel[int]() for _ in range(3)]
        parent = kcoro.CancelToken()
        children = [kcoro.CancelToken(parent) for _ in chans]

        async def op(i: int) -> Any:
            try:
                return await chans[i].recv(cancel=children[i])
            except kcoro.OperationCancelled as e:
                return e.reason

        tasks = [kcoro.spawn(op, i) for i in range(3)]
        await wait_all_tasks_blocked()
        parent.cancel("all")
        assert [await t for t in tasks] == ["all"] * 3

    kcoro.run(main)


def test_one_token_on_several_ops_and_completion_before_cancel() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        tok = kcoro.CancelToken()

        async def op() -> Any:
            try:
                return await ch.recv(cancel=tok)
            except kcoro.OperationCancelled:
                return "cancelled"

        tasks = [kcoro.spawn(op) for _ in range(3)]
        await wait_all_tasks_blocked()
        ch.try_send(7)  # completes the first waiter...
        tok.cancel()  # ...before it runs: it keeps 7, the other two are cancelled
        assert [await t for t in tasks] == [7, "cancelled", "cancelled"]
        assert ch.stats().recvs == 1

    kcoro.run(main)


def test_operation_cancelled_by_token_is_not_task_cancellation() -> None:
    async def main() -> None:
        tok = kcoro.CancelToken()
        tok.cancel()
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        with pytest.raises(kcoro.OperationCancelled):
            await ch.send(1, cancel=tok)
        await kcoro.checkpoint()  # the task itself is not cancelled
        await ch.send(1)
        assert ch.try_recv() == 1

    kcoro.run(main)


def test_token_repr_and_many_threads_cancelling() -> None:
    for _ in range(20):
        tok = kcoro.CancelToken()
        results: list[bool] = []
        barrier = threading.Barrier(6)

        def racer(tok: kcoro.CancelToken = tok, barrier: threading.Barrier = barrier,
                  results: list[bool] = results) -> None:
            barrier.wait()
            results.append(tok.cancel())

        ths = [threading.Thread(target=racer) for _ in range(6)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(10)
        assert results.count(True) == 1
        assert "cancelled" in repr(tok)
