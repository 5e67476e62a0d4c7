"""The C accelerator is an exact twin of the pure-Python fast paths (the whole suite runs in both
modes, see the Makefile); these tests pin down how it is selected and that it is really used."""

from __future__ import annotations

import os
import subprocess
import sys

import kcoro
from kcoro import _accel, _chan


def test_accelerator_loaded_when_required() -> None:
    # `make test` sets KCORO_REQUIRE_SPEEDUPS=1: a build failure must not silently test only the
    # pure-Python paths.
    if os.environ.get("KCORO_REQUIRE_SPEEDUPS"):
        assert _accel.speedups is not None, "kcoro._speedups was not built"
    expect_c = _accel.speedups is not None
    assert (type(kcoro.Channel.send).__name__ == "method_descriptor") == expect_c
    if expect_c:
        assert kcoro.Channel.__mro__[1] is _accel.speedups.ChanOps
    else:
        assert kcoro.Channel.__mro__[1] is _chan._PyChanOps


def test_pure_mode_can_be_forced() -> None:
    code = ("import kcoro, kcoro._accel as a; "
            "print(a.speedups is None, kcoro.Channel.__mro__[1].__name__)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KCORO_PURE": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "_PyChanOps"]


def test_ops_are_coroutines_for_asyncio() -> None:
    import asyncio

    async def in_task() -> bool:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        op = ch.send(1)
        await op
        return asyncio.iscoroutine(op)

    assert kcoro.run(in_task)

    async def in_asyncio() -> bool:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        op = ch.send(1)
        ok = asyncio.iscoroutine(op)  # so asyncio.create_task() accepts it
        await op
        assert await asyncio.create_task(ch.recv()) == 1
        task = asyncio.create_task(ch.recv())  # parks (empty), completed by the send below
        await asyncio.sleep(0)
        assert ch.stats().waiting_receivers == 1
        await ch.send(2)
        ok = ok and await task == 2
        async with asyncio.TaskGroup() as tg:
            t2 = tg.create_task(ch.recv())
            tg.create_task(ch.send(3))
        return ok and t2.result() == 3

    assert asyncio.run(in_asyncio())


def test_awaiting_an_op_with_no_loop_running_is_a_clear_error() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    coro = ch.send(1)
    try:
        coro.send(None)
    except RuntimeError as exc:
        assert "no loop running" in str(exc)
    else:
        raise AssertionError("awaiting with no loop must raise")
    assert len(ch) == 0  # nothing was sent


def test_spawn_accepts_an_awaitable_operation() -> None:
    async def main() -> int:
        ch: kcoro.Channel[int] = kcoro.Channel()
        t = kcoro.spawn(ch.recv())
        await ch.send(5)
        return await t

    assert kcoro.run(main) == 5


def test_awaiting_an_operation_twice_is_an_error() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        op = ch.send(1)
        await op
        try:
            await op
        except RuntimeError:
            return
        raise AssertionError("re-awaiting an operation must fail")

    kcoro.run(main)
