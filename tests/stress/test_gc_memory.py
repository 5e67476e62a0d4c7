"""Heap churn while parked, and memory that stays flat (TESTING.md A.8, G.52 and H;
Go TestShrinkStackDuringBlockedSend, kotlinx ChannelMemoryLeakStressTest).

* gc churn: ``gc.collect()``, heavy allocation of cyclic garbage and finalizers that re-enter
  kcoro, while many tasks (and threads) are parked as senders and receivers; every payload comes
  out as the very same object, intact, in FIFO order, and nothing keeps it alive afterwards.
* memory: waves of waiters that give up (timeout, scope, token, task cancel) on a channel nobody
  serves leave no trace: the wait queues are swept (``check_invariants``), the waiting counts go
  back to the live waiters, and traced memory stays flat from wave to wave.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro
from conftest import scaled
from kcoro.testing import MockClock, wait_all_tasks_blocked

from ._kinds import make

LIMIT = 60.0


class Payload:
    """A cyclic object (only the cycle collector could free it) with checkable contents."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.me = self
        self.data = bytearray((n * 7 + k) & 0xFF for k in range(64))
        self.view = memoryview(self.data)[8:40]

    def intact(self) -> bool:
        return (self.me is self and self.view.obj is self.data
                and all(self.data[k] == (self.n * 7 + k) & 0xFF for k in range(64)))


# Finalizers of garbage re-enter kcoro; they must never run inside a kernel-lock section.
_side: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED, name="gc-side")


class Reentrant:
    def __init__(self) -> None:
        self.me = self
        self.junk = [{"k": i} for i in range(4)]

    def __del__(self) -> None:
        _side.try_send(1)
        try:
            _side.try_recv()
        except kcoro.WouldBlock:
            pass


def churn(rounds: int) -> None:
    for _ in range(rounds):
        garbage = [Reentrant() for _ in range(200)]
        garbage.append([list(range(50)) for _ in range(50)])
        del garbage
        gc.collect()


@pytest.fixture
def eager_gc() -> Iterator[None]:
    """Collect every few allocations, so collections hit every code path, sections included."""
    old = gc.get_threshold()
    gc.set_threshold(7, 3, 3)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run_in_thread(fn: Any) -> Any:
    """Run ``fn()`` in a thread: a deadlock (a finalizer re-entering a kernel section) fails the
    test instead of hanging it."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(LIMIT)
    assert not t.is_alive(), "stuck: deadlock under gc churn (finalizer inside a section?)"
    if errors:
        raise errors[0]
    return out[0]


GC_KINDS = ["rendezvous", "buffered1", "buffered10", "unlimited"]


@pytest.mark.parametrize("kind", GC_KINDS)
def test_gc_churn_while_senders_and_receivers_are_parked(kind: str, eager_gc: None) -> None:
    nwait = scaled(100)

    async def main() -> None:
        ch = make(kind)
        refs: list[weakref.ref[Payload]] = []

        # Parked receivers (kcoro tasks and threads blocked in recv_blocking).
        got: dict[int, Payload] = {}

        async def receiver(k: int) -> None:
            got[k] = await ch.recv()

        thread_got: list[Payload] = []
        threads = [threading.Thread(target=lambda: thread_got.append(ch.recv_blocking()),
                                    daemon=True) for _ in range(4)]
        tasks = [kcoro.spawn(receiver, k) for k in range(nwait)]
        await wait_all_tasks_blocked()
        for t in threads:
            t.start()
        # Threads park outside the scheduler's view: wait for them through the stats.
        while ch.stats().waiting_receivers < nwait + 4:
            await kcoro.checkpoint()
        churn(3)
        for k in range(nwait + 4):
            p = Payload(k)
            refs.append(weakref.ref(p))
            await ch.send(p)
            del p
            if k % 25 == 0:
                churn(1)
        for t in tasks:
            await t
        for t in threads:
            t.join(LIMIT)
            assert not t.is_alive()
        # Parked receivers are served in arrival order: the tasks, then the threads.
        assert [got[k].n for k in range(nwait)] == list(range(nwait))
        assert sorted(p.n for p in thread_got) == list(range(nwait, nwait + 4))
        for k in range(nwait):
            assert got[k] is refs[k]() and got[k].intact()
        assert all(p.intact() and p is refs[p.n]() for p in thread_got)

        # Parked senders (the buffer full, then more senders waiting) holding the only
        # references to their payloads (the senders' frames and the channel).
        got.clear()
        thread_got.clear()
        refs.clear()

        async def sender(k: int) -> None:
            p = Payload(k)
            refs.append(weakref.ref(p))
            await ch.send(p)

        senders = [kcoro.spawn(sender, k) for k in range(nwait)]
        await wait_all_tasks_blocked()
        s = ch.stats()
        cap = 0 if kind == "rendezvous" else int(min(ch.capacity, nwait))
        assert (s.buffered, s.waiting_senders) == (cap, nwait - cap)
        churn(3)
        assert all(r() is not None for r in refs), "a parked or buffered payload was freed"
        out = []
        for k in range(nwait):
            out.append(await ch.recv())
            if k % 25 == 0:
                churn(1)
        for t in senders:
            await t
        assert [p.n for p in out] == list(range(nwait))  # FIFO through parked senders
        assert all(p is refs[p.n]() and p.intact() for p in out)
        ch.check_invariants()
        # Nothing in the channel (or its queues) keeps delivered payloads alive.
        out.clear()
        senders.clear()
        gc.collect()
        assert all(r() is None for r in refs), "the channel retained delivered payloads"

    run_in_thread(lambda: kcoro.run(main))
    _side.check_invariants()


# -- a delivered item belongs to the receiver alone ------------------------------------------
RETAIN = [
    ("recv", "plain"),
    ("recv", "timeout"),
    ("send", "plain"),
    ("send", "timeout"),
]


@pytest.mark.parametrize(("side", "form"), RETAIN)
def test_delivered_item_is_not_retained_by_the_waiter(side: str, form: str) -> None:
    """A.8: once delivered and dropped by its receiver, an item is garbage, even while the task
    that parked for it waits on something else."""

    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(name="retain")
        other: kcoro.Channel[Any] = kcoro.Channel(name="other")
        kw: dict[str, Any] = {"timeout": 10} if form == "timeout" else {}
        refs: list[weakref.ref[Payload]] = []

        async def waiter() -> None:
            if side == "recv":
                x = await ch.recv(**kw)
                assert x.intact()
                del x
            else:
                p = Payload(1)
                refs.append(weakref.ref(p))
                await ch.send(p, **kw)
                del p
            await other.recv()  # parked elsewhere, holding nothing

        task = kcoro.spawn(waiter)
        await wait_all_tasks_blocked()
        if side == "recv":
            p = Payload(1)
            refs.append(weakref.ref(p))
            await ch.send(p)
            del p
        else:
            assert ch.try_recv().intact()
        await wait_all_tasks_blocked()
        assert task.state == "PARKED"
        gc.collect()
        assert refs[0]() is None, f"retained by {gc.get_referrers(refs[0]())}"
        task.cancel()

    kcoro.run(main)


# -- memory stays flat when waiters give up on a channel nobody serves -------------------------
def waiting(ch: kcoro.Channel[Any], side: str) -> int:
    s = ch.stats()
    return s.waiting_receivers if side == "recv" else s.waiting_senders


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


HOW_KCORO = ("timeout", "scope", "token", "task_cancel")


# (an unlimited channel never parks a sender)
WAITERS = [("rendezvous", "recv"), ("rendezvous", "send"), ("buffered2", "recv"),
           ("buffered2", "send"), ("unlimited", "recv")]


@pytest.mark.parametrize(("kind", "side"), WAITERS)
def test_waiters_giving_up_leave_no_trace(kind: str, side: str) -> None:
    wave = 200
    waves = scaled(12)
    clock = MockClock()

    async def main() -> list[int]:
        ch = make(kind)
        if side == "send":
            while True:  # fill the buffer: every later send parks
                try:
                    ch.try_send(-1)
                except kcoro.WouldBlock:
                    break

        def op(**kw: Any) -> Any:
            return ch.recv(**kw) if side == "recv" else ch.send(object(), **kw)

        async def forever() -> None:
            await op()

        async def gives_up(how: str, tok: kcoro.CancelToken) -> None:
            try:
                if how == "timeout":
                    await op(timeout=1)
                elif how == "scope":
                    with kcoro.move_on_after(1):
                        await op()
                elif how == "token":
                    await op(cancel=tok)
                else:
                    await op()  # until task.cancel()
            except (TimeoutError, kcoro.OperationCancelled):
                pass

        # A live waiter at the head, another in the middle of every wave: dead entries pile
        # up between and behind live ones.
        keep = [kcoro.spawn(forever)]
        samples = []
        for w in range(waves):
            tok = kcoro.CancelToken()
            tasks = []
            for k in range(wave):
                tasks.append(kcoro.spawn(gives_up, HOW_KCORO[k % 4], tok))
                if k == wave // 2 and w < 3:
                    keep.append(kcoro.spawn(forever))
            await wait_all_tasks_blocked()
            live = len(keep)
            assert waiting(ch, side) == live + wave
            tok.cancel()
            for k, t in enumerate(tasks):
                if HOW_KCORO[k % 4] == "task_cancel":
                    t.cancel()
            await wait_all_tasks_blocked()
            clock.jump(2)  # timeouts and scope deadlines expire
            await wait_all_tasks_blocked()
            assert all(t.done() for t in tasks)
            assert waiting(ch, side) == live
            ch.check_invariants()  # includes: len(queue) <= 2 * live + 16
            del tasks, tok
            samples.append(_traced())
        for t in keep:
            t.cancel()
        await wait_all_tasks_blocked()
        ch.check_invariants()
        assert ch.stats().waiting_receivers == ch.stats().waiting_senders == 0
        return samples

    tracemalloc.start()
    try:
        samples = kcoro.run(main, clock=clock)
    finally:
        tracemalloc.stop()
    # After a warm-up, memory does not grow with the number of waiters that came and went
    # (an unswept queue would keep ~wave entries per wave).
    growth = max(samples[3:]) - samples[3]
    assert growth < 64 * 1024, f"traced memory grew by {growth} bytes: {samples}"


def test_thread_and_asyncio_waiters_timing_out_leave_no_trace() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(name="unserved")
    rounds = scaled(150)

    def thread_waiter() -> None:
        for _ in range(rounds):
            try:
                ch.recv_blocking(timeout=0.0002)
            except TimeoutError:
                pass

    async def aio_waiters() -> None:
        async def one() -> None:
            for _ in range(rounds):
                try:
                    await ch.recv(timeout=0.0002)
                except TimeoutError:
                    pass
                try:
                    await asyncio.wait_for(ch.recv(), 0.0002)
                except TimeoutError:
                    pass

        await asyncio.gather(*(one() for _ in range(4)))

    threads = [threading.Thread(target=thread_waiter, daemon=True) for _ in range(4)]
    threads.append(threading.Thread(target=asyncio.run, args=(aio_waiters(),), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIMIT)
        assert not t.is_alive()
    ch.check_invariants()
    s = ch.stats()
    assert s.waiting_receivers == 0 and s.recv_timeout >= 8 * rounds
    assert len(ch._recvq) <= 16, "wait queue not swept"  # internal: the sweep bound
