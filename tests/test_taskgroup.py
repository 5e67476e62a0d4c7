"""TaskGroup: structured concurrency (waits for children, failures cancel the rest)."""

from __future__ import annotations

from typing import Any

import pytest

import kcoro
from kcoro.testing import MockClock, wait_all_tasks_blocked


def run_mock(fn: Any, *args: Any) -> Any:
    return kcoro.run(fn, *args, clock=MockClock(autojump_threshold=0))


async def sleeper(seconds: float, log: list[str], tag: str) -> str:
    try:
        await kcoro.sleep(seconds)
    except kcoro.Cancelled:
        log.append(f"{tag} cancelled at {kcoro.current_time():g}")
        raise
    log.append(f"{tag} done at {kcoro.current_time():g}")
    return tag


async def fail_after_sleep(seconds: float, exc: BaseException) -> None:
    await kcoro.sleep(seconds)
    raise exc


def test_waits_for_all_children_and_keeps_results() -> None:
    log: list[str] = []

    async def main() -> list[Any]:
        async with kcoro.TaskGroup() as tg:
            tasks = [tg.spawn(sleeper, s, log, f"t{s}") for s in (3, 1, 2)]
            log.append("body done")
        log.append("group exited")
        assert all(t.done() for t in tasks)
        return [t.result() for t in tasks]

    assert run_mock(main) == ["t3", "t1", "t2"]
    assert log == ["body done", "t1 done at 1", "t2 done at 2", "t3 done at 3", "group exited"]


def test_empty_group_and_group_with_instant_children() -> None:
    async def main() -> None:
        async with kcoro.TaskGroup():
            pass
        hits: list[int] = []

        async def quick(i: int) -> None:
            hits.append(i)

        async with kcoro.TaskGroup() as tg:
            for i in range(5):
                tg.spawn(quick, i)
        assert hits == [0, 1, 2, 3, 4]

    kcoro.run(main)


def test_first_failure_cancels_siblings_and_body_and_is_raised_as_itself() -> None:
    log: list[str] = []
    err = ValueError("child failed")

    async def main() -> None:
        with pytest.raises(ValueError) as ei:
            async with kcoro.TaskGroup() as tg:
                tg.spawn(fail_after_sleep, 1, err)
                tg.spawn(sleeper, 10, log, "sibling")
                try:
                    await kcoro.sleep(100)
                except kcoro.Cancelled:
                    log.append(f"body cancelled at {kcoro.current_time():g}")
                    raise
        assert ei.value is err
        assert kcoro.current_time() == 1

    run_mock(main)
    assert sorted(log) == ["body cancelled at 1", "sibling cancelled at 1"]


def test_several_failures_raise_an_exception_group() -> None:
    async def boom(exc: Exception) -> None:
        raise exc  # no checkpoint: both fail before the cancellation reaches the second

    async def main() -> None:
        a, b = ValueError("a"), KeyError("b")
        with pytest.raises(ExceptionGroup) as ei:
            async with kcoro.TaskGroup() as tg:
                tg.spawn(boom, a)
                tg.spawn(boom, b)
        assert list(ei.value.exceptions) == [a, b]

    kcoro.run(main)


def test_body_failure_cancels_children_and_is_raised() -> None:
    log: list[str] = []

    async def main() -> None:
        with pytest.raises(KeyError):
            async with kcoro.TaskGroup() as tg:
                tg.spawn(sleeper, 10, log, "child")
                await kcoro.sleep(2)
                raise KeyError("body")
        assert kcoro.current_time() == 2

    run_mock(main)
    assert log == ["child cancelled at 2"]


def test_body_failure_and_child_failure_make_a_group() -> None:
    async def main() -> None:
        with pytest.raises(ExceptionGroup) as ei:
            async with kcoro.TaskGroup() as tg:
                async def child() -> None:
                    try:
                        await kcoro.sleep(10)
                    finally:
                        raise RuntimeError("cleanup failed")

                tg.spawn(child)
                await wait_all_tasks_blocked()
                raise KeyError("body")
        assert sorted(type(e).__name__ for e in ei.value.exceptions) == ["KeyError",
                                                                          "RuntimeError"]

    run_mock(main)


def test_outer_cancellation_while_body_runs_cancels_children_and_propagates() -> None:
    log: list[str] = []

    async def main() -> None:
        with kcoro.move_on_after(1) as scope:
            async with kcoro.TaskGroup() as tg:
                tg.spawn(sleeper, 10, log, "a")
                tg.spawn(sleeper, 10, log, "b")
                await kcoro.sleep(10)
            log.append("unreachable")
        assert scope.cancelled_caught
        assert kcoro.current_time() == 1

    run_mock(main)
    assert sorted(log) == ["a cancelled at 1", "b cancelled at 1"]


def test_outer_cancellation_while_waiting_in_exit_propagates() -> None:
    log: list[str] = []

    async def main() -> None:
        with kcoro.move_on_after(1) as scope:
            async with kcoro.TaskGroup() as tg:
                tg.spawn(sleeper, 10, log, "a")
            log.append("after group")  # must not run: the block was cancelled
        assert scope.cancelled_caught
        assert kcoro.current_time() == 1

    run_mock(main)
    assert log == ["a cancelled at 1"]


def test_task_cancel_of_group_owner_cancels_children() -> None:
    log: list[str] = []

    async def owner() -> None:
        async with kcoro.TaskGroup() as tg:
            tg.spawn(sleeper, 10, log, "child")
            await kcoro.sleep(10)

    async def main() -> None:
        t = kcoro.spawn(owner)
        await kcoro.sleep(3)
        t.cancel()
        with pytest.raises(kcoro.Cancelled):
            await t
        assert kcoro.current_time() == 3

    run_mock(main)
    assert log == ["child cancelled at 3"]


def test_cancelling_one_child_does_not_cancel_the_group() -> None:
    log: list[str] = []

    async def main() -> None:
        async with kcoro.TaskGroup() as tg:
            victim = tg.spawn(sleeper, 10, log, "victim")
            tg.spawn(sleeper, 2, log, "other")
            await wait_all_tasks_blocked()
            victim.cancel()
        assert victim.cancelled()
        assert not tg.cancel_scope.cancel_called

    run_mock(main)
    assert log == ["victim cancelled at 0", "other done at 2"]


def test_cancel_scope_of_group_cancels_everything_quietly() -> None:
    log: list[str] = []

    async def main() -> None:
        async with kcoro.TaskGroup() as tg:
            tg.spawn(sleeper, 10, log, "a")
            tg.spawn(sleeper, 10, log, "b")
            await kcoro.sleep(1)
            tg.cancel_scope.cancel()
            await kcoro.checkpoint()
            log.append("unreachable")
        assert tg.cancel_scope.cancelled_caught

    run_mock(main)
    assert sorted(log) == ["a cancelled at 1", "b cancelled at 1"]


def test_spawn_rules() -> None:
    async def child() -> None:
        pass

    async def main() -> None:
        tg = kcoro.TaskGroup()
        with pytest.raises(RuntimeError, match="before 'async with'"):
            tg.spawn(child)
        async with tg:
            tg.spawn(child)
        with pytest.raises(RuntimeError, match="closed"):
            tg.spawn(child)
        with pytest.raises(RuntimeError, match="only once"):
            async with tg:
                pass

    kcoro.run(main)


def test_children_may_spawn_siblings_into_the_group() -> None:
    hits: list[int] = []

    async def main() -> None:
        async def spawner(tg: kcoro.TaskGroup, depth: int) -> None:
            hits.append(depth)
            await kcoro.sleep(1)
            if depth < 3:
                tg.spawn(spawner, tg, depth + 1)

        async with kcoro.TaskGroup() as tg:
            tg.spawn(spawner, tg, 0)
        assert kcoro.current_time() == 4

    run_mock(main)
    assert hits == [0, 1, 2, 3]


def test_nested_groups_failure_propagates_outwards() -> None:
    log: list[str] = []

    async def inner_group() -> None:
        async with kcoro.TaskGroup() as inner:
            inner.spawn(fail_after_sleep, 1, ValueError("deep"))
            inner.spawn(sleeper, 10, log, "inner sibling")

    async def main() -> None:
        with pytest.raises(ValueError, match="deep"):
            async with kcoro.TaskGroup() as outer:
                outer.spawn(inner_group)
                outer.spawn(sleeper, 10, log, "outer sibling")

    run_mock(main)
    assert sorted(log) == ["inner sibling cancelled at 1", "outer sibling cancelled at 1"]


def test_child_cleanup_in_shielded_scope_completes_before_exit() -> None:
    log: list[str] = []

    async def careful() -> None:
        try:
            await kcoro.sleep(10)
        except kcoro.Cancelled:
            with kcoro.CancelScope(shield=True):
                await kcoro.sleep(5)
                log.append(f"cleanup done at {kcoro.current_time():g}")
            raise

    async def main() -> None:
        with pytest.raises(ValueError):
            async with kcoro.TaskGroup() as tg:
                tg.spawn(careful)
                tg.spawn(fail_after_sleep, 1, ValueError())
        log.append(f"group exited at {kcoro.current_time():g}")

    run_mock(main)
    assert log == ["cleanup done at 6", "group exited at 6"]


def test_taskgroup_outside_a_kcoro_task_is_an_error() -> None:
    import asyncio

    async def aio() -> None:
        with pytest.raises(RuntimeError, match="inside a kcoro task"):
            async with kcoro.TaskGroup():
                pass

    asyncio.run(aio())


def test_failing_child_exception_is_marked_retrieved(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            async with kcoro.TaskGroup() as tg:
                tg.spawn(fail_after_sleep, 0, ValueError("reported once"))

    run_mock(main)
    assert not any("never retrieved" in r.getMessage() for r in caplog.records)


def test_group_children_share_a_channel_pipeline() -> None:
    async def main() -> int:
        jobs: kcoro.Channel[int] = kcoro.Channel(4)
        results: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)

        async def producer() -> None:
            for i in range(100):
                await jobs.send(i)
            jobs.close()

        async def worker() -> None:
            async for j in jobs:
                await results.send(j * j)

        async with kcoro.TaskGroup() as tg:
            tg.spawn(producer)
            for _ in range(3):
                tg.spawn(worker)
        results.close()
        return sum([r async for r in results])

    assert kcoro.run(main) == sum(i * i for i in range(100))
