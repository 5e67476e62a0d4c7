"""Random cancellation stress: conservation under cancellation at random points (TESTING.md E/H;
kotlinx ChannelUndeliveredElementStressTest.testAtomicCancelStress).

Producers and consumers run every operation under a randomly chosen form: plain, ``timeout=``,
``move_on_after``/``fail_after`` scopes, a ``CancelToken``, or ``try_*``.  A chaos task cancels
random producer/consumer tasks (``task.cancel()``, replacing them), random live scopes and random
live tokens, at random points, and moves a ``MockClock`` forward in random steps, so deadlines
expire while operations are parked.  Some runs close or cancel the channel half-way.

Checked for every kind: the items whose send succeeded are exactly the items received plus the
items reported to ``on_undelivered`` (no loss, no duplicate, nothing that was not sent), the
channel's counters agree, no waiter is left, and ``check_invariants()`` holds.  A run is a pure
function of its seed (one thread, mock time), so a failure message's seed reproduces it.
"""

from __future__ import annotations

import functools
import gc
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import kcoro
from conftest import scaled
from kcoro.testing import MockClock

from ._kinds import KINDS, assert_conserved, make

MODES = ("plain", "plain", "timeout", "scope", "fail_after", "token", "try", "shielded")
RECV_MODES = (*MODES, "iter")
DELAYS = (0, 0.1, 0.25, 0.5, 1.0)
YIELD = 0.5  # how often a worker yields between operations (else the budget batches them)


@dataclass
class Stress:
    rng: random.Random
    ch: kcoro.Channel[Any]
    clock: MockClock
    total: int
    end: str
    next_item: int = 0
    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)
    producers: list[kcoro.Task[None]] = field(default_factory=list)
    consumers: list[kcoro.Task[None]] = field(default_factory=list)
    tokens: list[kcoro.CancelToken] = field(default_factory=list)
    scopes: list[kcoro.CancelScope] = field(default_factory=list)
    ptg: kcoro.TaskGroup | None = None
    ctg: kcoro.TaskGroup | None = None
    stop: bool = False
    midway: bool = False
    arena: kcoro.Arena | None = None   # zero-copy runs: items travel as arena payloads
    zfailed: int = 0                   # send_zref calls that raised (kcoro released the payload)
    actions: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.actions[what] = self.actions.get(what, 0) + 1


async def attempt(s: Stress, mode: str, op: Callable[..., Awaitable[Any]],
                  try_op: Callable[[], Any]) -> tuple[bool, Any]:
    """One operation under ``mode``: (True, value) if it completed, (False, reason) if it was
    interrupted (and so, by the atomicity policy, transferred nothing); reason is
    ``"would_block"`` when nothing was even attempted (``try_*``, ``timeout=0``).  ``Cancelled``
    of the task itself propagates; ``ChannelClosed`` propagates."""
    rng = s.rng
    if mode == "plain":
        return True, await op()
    if mode == "timeout":
        try:
            return True, await op(timeout=rng.choice(DELAYS))
        except kcoro.WouldBlock:
            return False, "would_block"
        except TimeoutError:
            s.count("op timeout")
            return False, "timeout"
    if mode == "token":
        tok = kcoro.CancelToken()
        s.tokens.append(tok)
        try:
            return True, await op(cancel=tok)
        except kcoro.OperationCancelled:
            s.count("token fired")
            return False, "token"
        finally:
            s.tokens.remove(tok)
    if mode in ("scope", "shielded"):
        # "shielded": a scope that only the chaos task can cancel (a shield hides task.cancel()
        # from the op for as long as the scope lasts).
        with kcoro.move_on_after(rng.choice(DELAYS[1:]), shield=mode == "shielded") as scope:
            s.scopes.append(scope)
            try:
                return True, await op()
            finally:
                s.scopes.remove(scope)
        s.count("scope expired/cancelled")
        return False, "scope"
    if mode == "fail_after":
        try:
            with kcoro.fail_after(rng.choice(DELAYS[1:])) as scope:
                s.scopes.append(scope)
                try:
                    return True, await op()
                finally:
                    s.scopes.remove(scope)
        except TimeoutError:
            s.count("fail_after")
            return False, "fail_after"
    assert mode == "try"
    try:
        v = try_op()
    except kcoro.WouldBlock:
        return False, "would_block"
    return True, v


def make_payload(s: Stress, item: int) -> kcoro.Payload:
    assert s.arena is not None
    p = s.arena.alloc(64)
    p.view[:8] = item.to_bytes(8, "little")
    p.view[8:] = bytes((item + k) & 0xFF for k in range(56))
    return p


def payload_item(p: kcoro.Payload) -> int:
    """The item number a payload carries; its bytes must be intact."""
    item = int.from_bytes(p.view[:8], "little")
    assert bytes(p.view[8:]) == bytes((item + k) & 0xFF for k in range(56)), f"{p!r} corrupted"
    return item


async def producer(s: Stress) -> None:
    ch = s.ch
    while s.next_item < s.total:
        item = s.next_item
        s.next_item += 1
        mode = s.rng.choice(MODES)
        if s.arena is None:
            obj: Any = item
            send, try_send = ch.send, ch.try_send
        else:
            obj = make_payload(s, item)
            send, try_send = ch.send_zref, ch.try_send_zref
        try:
            ok, res = await attempt(s, mode, functools.partial(send, obj),
                                    functools.partial(try_send, obj))
        except (kcoro.ChannelClosed, kcoro.Cancelled) as exc:
            if s.arena is not None:  # a raising send_zref releases the payload itself
                assert obj.released, f"send_zref raised and leaked {obj!r}"
                s.zfailed += 1
            if isinstance(exc, kcoro.ChannelClosed):
                return
            raise
        # try_send returns False for a full DROP_LATEST channel: not accepted, not reported.
        if ok and res is not False:
            s.sent.append(item)
        elif s.arena is not None:
            if res == "would_block" or res is False:  # nothing happened: still the caller's
                assert not obj.released
                obj.release()
            else:
                assert obj.released, f"send_zref failed ({res}) and leaked {obj!r}"
                s.zfailed += 1
        if res == "would_block" or s.rng.random() < YIELD:
            await kcoro.checkpoint()  # let the chaos task in between operations
        if s.end.endswith("midway") and not s.midway and s.next_item >= s.total // 2:
            s.midway = True
            if s.end == "close_midway":
                ch.close()
            else:
                ch.cancel()


def take(s: Stress, v: Any) -> None:
    if s.arena is None:
        s.received.append(v)
    else:
        s.received.append(payload_item(v))
        v.release()


async def consumer(s: Stress) -> None:
    ch, rng = s.ch, s.rng
    recv, try_recv = (ch.recv, ch.try_recv) if s.arena is None else \
        (ch.recv_zref, ch.try_recv_zref)
    while True:
        mode = rng.choice(RECV_MODES)
        try:
            if mode == "iter":
                n = rng.randrange(1, 5)
                async for x in ch:
                    take(s, x)
                    n -= 1
                    if not n:
                        break
                else:
                    return
                continue
            ok, v = await attempt(s, mode, recv, try_recv)
        except kcoro.ChannelClosed:
            return
        if ok:
            take(s, v)
        if v == "would_block" or rng.random() < YIELD:
            await kcoro.checkpoint()


async def chaos(s: Stress) -> None:
    rng = s.rng
    while not s.stop:
        for _ in range(rng.randrange(1, 3)):
            await kcoro.checkpoint()
        r = rng.random()
        s.producers = [t for t in s.producers if not t.done()]
        s.consumers = [t for t in s.consumers if not t.done()]
        if r < 0.2 and s.producers:
            rng.choice(s.producers).cancel()
            s.count("producer cancelled")
            if s.next_item < s.total:
                assert s.ptg is not None
                s.producers.append(s.ptg.spawn(producer, s))
        elif r < 0.4 and s.consumers:
            rng.choice(s.consumers).cancel()
            s.count("consumer cancelled")
            assert s.ctg is not None
            s.consumers.append(s.ctg.spawn(consumer, s))
        elif r < 0.55 and s.tokens:
            rng.choice(s.tokens).cancel("chaos")
            s.count("token cancelled")
        elif r < 0.7 and s.scopes:
            rng.choice(s.scopes).cancel()
            s.count("scope cancelled")
        else:
            s.clock.jump(rng.choice((0.1, 0.25, 0.5, 1.0)))  # deadlines expire at random points
            s.count("clock jump")


def run_stress(kind: str, end: str, seed: str, total: int,
               arena: kcoro.Arena | None = None) -> Stress:
    rng = random.Random(seed)
    clock = MockClock()  # only the chaos task moves it (a busy chaos task never lets it jump)

    async def main() -> Stress:
        undelivered: list[int] = []

        def report(x: Any) -> None:
            # zero-copy: the handler sees the payload before kcoro releases it
            undelivered.append(x if arena is None else payload_item(x))

        s = Stress(rng, make(kind, report), clock, total, end, undelivered=undelivered,
                   arena=arena)
        async with kcoro.TaskGroup() as outer:
            outer.spawn(chaos, s)
            async with kcoro.TaskGroup() as ctg:
                s.ctg = ctg
                s.consumers = [ctg.spawn(consumer, s) for _ in range(3)]
                async with kcoro.TaskGroup() as ptg:
                    s.ptg = ptg
                    s.producers = [ptg.spawn(producer, s) for _ in range(3)]
                if end.startswith("cancel"):
                    s.ch.cancel()
                else:
                    s.ch.close()
            s.stop = True
        return s

    return kcoro.run(main, clock=clock)


ENDS = ("close", "cancel", "close_midway", "cancel_midway")


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_random_cancellation_conserves_items(kind: str, end: str) -> None:
    for rnd in range(scaled(3)):
        seed = f"{kind}/{end}/{rnd}"
        s = run_stress(kind, end, seed, total=500)
        try:
            assert_conserved(kind, s.sent, s.received, s.undelivered, s.ch,
                             cancelled=end.startswith("cancel"))
            assert s.ch.closed_for_recv
        except AssertionError as exc:
            raise AssertionError(f"seed {seed!r}: {exc}; chaos actions {s.actions}") from None


def test_chaos_actually_interrupts_operations() -> None:
    """Guard against a stress test that silently stops stressing: over standard runs of every
    kind, every kind of interruption happens, and most operations still succeed."""
    total: dict[str, int] = {}
    for kind in KINDS:
        s = run_stress(kind, "close", f"coverage/{kind}", total=500)
        for what, n in s.actions.items():
            total[what] = total.get(what, 0) + n
        assert 0 < len(s.sent) <= 500 and s.received
    for what in ("producer cancelled", "consumer cancelled", "token cancelled",
                 "token fired", "scope cancelled", "scope expired/cancelled", "op timeout",
                 "fail_after", "clock jump"):
        assert total.get(what, 0) > 0, f"{what!r} never happened: {total}"


@pytest.mark.parametrize("end", ["close", "cancel_midway"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_random_cancellation_zero_copy_releases_every_payload_once(kind: str, end: str) -> None:
    """Items travel as arena payloads (send_zref / recv_zref).  Besides conservation: every
    payload is released exactly once -- by the receiver, by kcoro when send_zref raises, or by
    kcoro after on_undelivered -- so the arena ends empty, and the zref counters add up."""
    for rnd in range(scaled(2)):
        seed = f"zref/{kind}/{end}/{rnd}"
        arena = kcoro.Arena(1 << 20)
        s = run_stress(kind, end, seed, total=400, arena=arena)
        try:
            assert_conserved(kind, s.sent, s.received, s.undelivered, s.ch,
                             cancelled=end.startswith("cancel"))
            gc.collect()
            a = arena.stats()
            assert (a.in_use, a.blocks) == (0, 0), f"payloads leaked: {a}"
            assert a.allocs == a.frees == s.next_item
            arena.check_invariants()
            z = s.ch.zstats()
            assert z["zref_sent"] == len(s.sent)
            assert z["canceled"] + z["aborted_close"] == s.zfailed + len(s.undelivered), z
        except AssertionError as exc:
            raise AssertionError(f"seed {seed!r}: {exc}; chaos actions {s.actions}") from None
        finally:
            arena.close()
