"""Zero-copy sends on local channels: references move, undelivered payloads are released exactly
once, and every zstats column moves when its event happens."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro
from kcoro import _registry
from kcoro.testing import MockClock, wait_all_tasks_blocked

KINDS = [kcoro.RENDEZVOUS, 1, 4, kcoro.UNLIMITED, kcoro.CONFLATED]


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    before = {id(a) for a in _registry.arenas.items()}
    yield
    gc.collect()
    for a in _registry.arenas.items():
        if id(a) not in before:
            a.check_invariants()
            assert a.stats().in_use == 0, f"{a!r} leaked"


def run(fn: Any, *args: Any) -> Any:
    return kcoro.run(fn, *args, clock=MockClock(autojump_threshold=0))


@pytest.mark.parametrize("cap", KINDS)
def test_reference_moves_not_bytes(cap: Any) -> None:
    arena = kcoro.Arena(1 << 16)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(cap)
        p = arena.alloc(1000)
        p.view[:5] = b"hello"
        addr = p.offset

        async def rx() -> kcoro.Payload:
            return await ch.recv_zref()  # type: ignore[no-any-return]

        t = kcoro.spawn(rx)
        await ch.send_zref(p)
        q = await t
        assert q is p and q.offset == addr and bytes(q.view[:5]) == b"hello"
        assert arena.stats().in_use > 0
        q.release()
        z = ch.zstats()
        assert z["zref_sent"] == 1 and z["zref_received"] == 1
        s = ch.stats()
        assert s.bytes_sent == 1000 and s.bytes_recv == 1000
        ch.check_invariants()

    run(main)
    assert arena.stats().in_use == 0


def test_foreign_buffer_is_aliased_and_never_freed() -> None:
    buf = bytearray(b"x" * 200)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(2)
        await ch.send_zref(buf)
        p = await ch.recv_zref()
        buf[0:3] = b"abc"  # the receiver sees the same memory: nothing was copied
        assert bytes(p.view[:3]) == b"abc" and p.arena is None
        p.release()
        assert ch.zstats()["fallback_small"] == 0

    run(main)
    assert buf[:3] == b"abc" and len(buf) == 200


def test_small_foreign_buffer_is_copied_fallback_small() -> None:
    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(2)
        small = bytearray(b"tiny")
        await ch.send_zref(small)
        small[0:1] = b"X"
        p = await ch.recv_zref()
        assert p.tobytes() == b"tiny"
        p.release()
        assert ch.zstats()["fallback_small"] == 1

    run(main)


def test_spilled_payload_counts_fallback_capacity() -> None:
    arena = kcoro.Arena(4096, min_block=4096)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(4)
        big = arena.alloc(10000)  # larger than the arena: spill
        assert big.spilled
        await ch.send_zref(big)
        (await ch.recv_zref()).release()
        assert ch.zstats()["fallback_capacity"] == 1

    run(main)


def test_cancelled_send_releases_and_counts_canceled() -> None:
    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel()
        p = arena.alloc(100)
        with pytest.raises(TimeoutError):
            await ch.send_zref(p, timeout=1.0)
        assert p.released
        token = kcoro.CancelToken()
        q = arena.alloc(100)

        async def canceller() -> None:
            await wait_all_tasks_blocked()
            token.cancel("stop")

        kcoro.spawn(canceller)
        with pytest.raises(kcoro.OperationCancelled):
            await ch.send_zref(q, cancel=token)
        assert q.released
        assert ch.zstats()["canceled"] == 2
        ch.check_invariants()

    run(main)


def test_task_cancelled_while_parked_in_send_zref_releases() -> None:
    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel()
        p = arena.alloc(64)

        async def sender() -> None:
            await ch.send_zref(p)

        t = kcoro.spawn(sender)
        await wait_all_tasks_blocked()
        t.cancel()
        with pytest.raises(kcoro.Cancelled):
            await t
        assert p.released and ch.zstats()["canceled"] == 1

    run(main)


@pytest.mark.parametrize("overflow", [kcoro.DROP_OLDEST, kcoro.DROP_LATEST])
def test_overflow_drop_releases_exactly_once(overflow: kcoro.Overflow) -> None:
    arena = kcoro.Arena(1 << 14)
    seen: list[int] = []

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(2, overflow=overflow,
                                               on_undelivered=lambda p: seen.append(p.nbytes))
        ps = [arena.alloc(100 + i) for i in range(3)]
        for p in ps:
            await ch.send_zref(p)
        dropped = ps[0] if overflow is kcoro.DROP_OLDEST else ps[2]
        assert dropped.released and seen == [dropped.nbytes]  # handler saw it alive
        got = [await ch.recv_zref(), await ch.recv_zref()]
        assert dropped not in got
        for g in got:
            g.release()
        assert ch.zstats()["canceled"] == 1
        assert ch.stats().undelivered == 1

    run(main)


@pytest.mark.parametrize("how", ["try", "await", "await-asyncio"])
def test_conflated_overwrite_releases(how: str) -> None:
    # "await": a kcoro task's send, which the C accelerator completes itself (payload sizes
    # are read in C): the evicted payloads must still be released and counted, with no
    # on_undelivered handler installed.
    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(kcoro.CONFLATED)
        ps = [arena.alloc(64) for _ in range(5)]
        for p in ps:
            if how == "try":
                assert ch.try_send_zref(p)
            else:
                await ch.send_zref(p)
        last = await ch.recv_zref()
        assert last is ps[-1]
        last.release()
        assert all(p.released for p in ps)
        assert ch.zstats()["canceled"] == 4
        st = ch.stats()
        assert st.undelivered == 4 and st.bytes_recv == 64
        assert arena.stats().in_use == 0

    if how == "await-asyncio":
        asyncio.run(main())
    else:
        run(main)


@pytest.mark.parametrize("cap", [1, 4, kcoro.UNLIMITED, kcoro.CONFLATED])
def test_channel_cancel_releases_buffer_aborted_close(cap: Any) -> None:
    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(cap)
        p = arena.alloc(64)
        await ch.send_zref(p)
        ch.cancel()
        assert p.released
        assert ch.zstats()["aborted_close"] == 1
        with pytest.raises(kcoro.ChannelClosed):
            await ch.recv_zref()

    run(main)


def test_close_with_parked_sender_and_send_after_close_release() -> None:
    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel()
        p = arena.alloc(64)

        async def sender() -> None:
            with pytest.raises(kcoro.ChannelClosed):
                await ch.send_zref(p)

        t = kcoro.spawn(sender)
        await wait_all_tasks_blocked()
        ch.close()
        await t
        assert p.released
        q = arena.alloc(64)
        with pytest.raises(kcoro.ChannelClosed):
            await ch.send_zref(q)
        assert q.released
        with pytest.raises(kcoro.ChannelClosed):
            ch.try_send_zref(arena.alloc(1))
        assert ch.zstats()["aborted_close"] == 3

    run(main)


def test_would_block_keeps_ownership_for_retry() -> None:
    arena = kcoro.Arena(1 << 14)
    ch: kcoro.Channel[Any] = kcoro.Channel(1)
    a, b = arena.alloc(10), arena.alloc(10)
    assert ch.try_send_zref(a)
    with pytest.raises(kcoro.WouldBlock):
        ch.try_send_zref(b)
    assert not b.released
    got = ch.try_recv_zref()
    assert got is a
    assert ch.try_send_zref(b)
    for p in (got, ch.try_recv_zref()):
        p.release()
    with pytest.raises(kcoro.WouldBlock):
        ch.try_recv_zref()


def test_blocking_twins_across_threads() -> None:
    arena = kcoro.Arena(1 << 16)
    ch: kcoro.Channel[Any] = kcoro.Channel()
    got: list[bytes] = []

    def consumer() -> None:
        for _ in range(20):
            with ch.recv_zref_blocking(timeout=10) as p:
                got.append(p.tobytes())

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(20):
        p = arena.alloc(8)
        p.view[:] = i.to_bytes(8, "little")
        ch.send_zref_blocking(p, timeout=10)
    t.join()
    assert [int.from_bytes(b, "little") for b in got] == list(range(20))
    assert ch.zstats()["zref_sent"] == ch.zstats()["zref_received"] == 20


def test_plain_recv_of_non_buffer_in_recv_zref_is_a_type_error() -> None:
    ch: kcoro.Channel[Any] = kcoro.Channel(1)
    ch.try_send(object())
    with pytest.raises(TypeError, match="recv_zref"):
        ch.try_recv_zref()
    with pytest.raises(TypeError, match="send_zref"):
        ch.try_send_zref(12345)


def test_every_zstats_column_moves() -> None:
    arena = kcoro.Arena(4096, min_block=1024)

    async def main() -> dict[str, int]:
        ch: kcoro.Channel[Any] = kcoro.Channel(1, overflow=kcoro.DROP_OLDEST)
        await ch.send_zref(arena.alloc(10))           # sent
        (await ch.recv_zref()).release()              # received
        await ch.send_zref(b"ab")                     # fallback_small
        await ch.send_zref(arena.alloc(99999))        # fallback_capacity; drops the previous
        (await ch.recv_zref()).release()
        r: kcoro.Channel[Any] = kcoro.Channel()
        with pytest.raises(TimeoutError):
            await r.send_zref(arena.alloc(1), timeout=0.5)   # canceled (on r)
        await ch.send_zref(arena.alloc(10))
        ch.cancel()                                   # aborted_close
        z = ch.zstats()
        z["canceled"] += r.zstats()["canceled"]
        return z

    z = run(main)
    assert all(v > 0 for v in z.values()), z


def test_asyncio_send_recv_zref() -> None:
    import asyncio

    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel()
        p = arena.alloc(300)

        async def rx() -> kcoro.Payload:
            return await ch.recv_zref()  # type: ignore[no-any-return]

        t = asyncio.ensure_future(rx())
        await ch.send_zref(p)
        q = await t
        assert q is p
        q.release()

    asyncio.run(main())


def test_send_zref_closed_at_its_schedule_point_never_releases_an_accepted_payload() -> None:
    # A coroutine closed (as run() does to abandoned coroutines) right where a zref send takes
    # its budget schedule point: either nothing was sent and the sender still owns the payload,
    # or it was sent and is intact -- never accepted and then released under its receiver.
    arena = kcoro.Arena(1 << 14)

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(4)
        p = arena.alloc(128)
        task = kcoro.current_task()
        task._budget = 1  # type: ignore[attr-defined]  # the next op is a schedule point
        c = ch.send_zref(p)
        assert c.send(None) is None  # suspended at the schedule point
        c.close()
        assert not p.released
        if len(ch):
            got = ch.try_recv_zref()
            assert got is p and ch.zstats()["zref_sent"] == 1
        else:
            assert ch.zstats()["zref_sent"] == 0 and ch.zstats()["canceled"] == 0
        p.release()
        assert arena.stats().in_use == 0

    run(main)
