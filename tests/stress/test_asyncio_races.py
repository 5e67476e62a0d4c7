"""Deterministic reductions of races the mixed thread/asyncio/kcoro stress runs can hit: a
cancellation (task cancel, ``asyncio.wait_for``, ``asyncio.timeout``) arriving after a hand-off
already completed the operation, but before the waiting task resumed.

Policy (TESTING.md D, TOKENS.md abort contract): the completion wins; the operation returns
normally and the cancellation is delivered later.  Nothing may be lost or duplicated, and the
awaiting code must be able to tell that the operation happened.

The races are built with ``loop.call_soon`` ordering only (no sleeps, no threads).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import kcoro
from kcoro.testing import wait_all_tasks_blocked


async def settle() -> None:
    """Let every ready asyncio callback run (a parked kcoro op is then registered)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- native kcoro: the contract holds ------------------------------------------------------------
@pytest.mark.parametrize("side", ["recv", "send"])
def test_native_task_cancelled_after_handoff_keeps_the_result(side: str) -> None:
    async def main() -> None:
        ch: kcoro.Channel[str] = kcoro.Channel()
        op = ch.recv if side == "recv" else (lambda: ch.send("x"))

        async def waiter() -> Any:
            return await op()

        task = kcoro.spawn(waiter)
        await wait_all_tasks_blocked()
        if side == "recv":
            assert ch.try_send("x")
        else:
            assert ch.try_recv() == "x"
        task.cancel()  # the hand-off already completed the op: the completion wins
        assert await task == ("x" if side == "recv" else None)
        s = ch.stats()
        assert (s.sends, s.recvs, s.recv_cancelled, s.send_cancelled) == (1, 1, 0, 0)
        ch.check_invariants()

    kcoro.run(main)


# -- asyncio ---------------------------------------------------------------------------------------
def test_asyncio_task_cancelled_after_handoff_does_not_lose_the_item() -> None:
    """What ``asyncio.wait_for(ch.recv(), t)`` does when its timeout fires as an item arrives."""

    async def main() -> None:
        ch: kcoro.Channel[str] = kcoro.Channel()
        inner = asyncio.ensure_future(ch.recv())
        await settle()
        assert ch.stats().waiting_receivers == 1
        assert ch.try_send("x")  # hand-off: the receive is complete
        inner.cancel()           # ... before the receiving task ran again
        try:
            result: Any = await inner
        except asyncio.CancelledError:
            result = "<cancelled>"
        # Either the awaiter gets the item, or the item is still in the channel.
        if result != "x":
            try:
                left = ch.try_recv()
            except kcoro.WouldBlock:
                left = None
            assert left == "x", (f"item lost: the receive raised CancelledError, stats "
                                 f"{ch.stats().sends} sent / {ch.stats().recvs} received")

    asyncio.run(main())


def test_asyncio_task_cancelled_after_send_was_taken_reports_success() -> None:
    """What ``asyncio.wait_for(ch.send(x), t)`` does when its timeout fires as x is taken."""

    async def main() -> None:
        ch: kcoro.Channel[str] = kcoro.Channel()
        inner = asyncio.ensure_future(ch.send("x"))
        await settle()
        assert ch.stats().waiting_senders == 1
        assert ch.try_recv() == "x"  # the item is delivered: the send is complete
        inner.cancel()
        try:
            await inner
            outcome = "sent"
        except asyncio.CancelledError:
            outcome = "send raised CancelledError"
        # "On any failure the sender still owns its item" (API.md): a raising send would let
        # the caller send "x" again, and it would be received twice.
        assert outcome == "sent"

    asyncio.run(main())


def test_asyncio_timeout_expiring_during_handoff_does_not_leak_a_cancellation() -> None:
    async def main() -> None:
        ch: kcoro.Channel[str] = kcoro.Channel()
        loop = asyncio.get_running_loop()
        got: list[str] = []
        seen: dict[str, Any] = {}

        async def consumer() -> None:
            try:
                async with asyncio.timeout(None) as to:
                    seen["timeout"] = to
                    got.append(await ch.recv())
            except TimeoutError:
                seen["block"] = "TimeoutError"
            else:
                seen["block"] = "exited normally"
            try:
                await asyncio.sleep(0)  # outside the block: nothing may cancel us now
                seen["after"] = "ok"
            except asyncio.CancelledError:
                seen["after"] = "stray CancelledError"

        task = asyncio.ensure_future(consumer())
        await settle()
        assert ch.stats().waiting_receivers == 1
        seen["timeout"].reschedule(loop.time() - 1)  # the timeout fires at the next iteration,
        loop.call_soon(ch.try_send, "y")              # then "y" is handed to the receiver
        await task
        # Atomic: either the block got "y" and exited normally, or it timed out and "y" is
        # still in the channel.  Either way no cancellation escapes the block.
        assert seen["after"] == "ok", seen
        assert got == ["y"] or (seen["block"] == "TimeoutError" and ch.try_recv() == "y"), seen

    asyncio.run(main())
