"""Model check of one Channel against a simple sequential model (TESTING.md I).

Each Hypothesis example is a list of operations executed inside one ``kcoro.run`` with a
``MockClock`` that never moves by itself.  After every operation the runtime is run until every
task is blocked (``wait_all_tasks_blocked``), and the real channel is compared with the model:
what each finished task got or raised, which tasks are still parked, ``len``, the waiting counts,
counters and closed flags of ``stats()``, the undelivered items (in order), and
``check_invariants()``.  At the end both are drained with ``try_recv`` and the orders compared.

The model (:class:`ChannelModel`) is deliberately naive: a list buffer, FIFO lists of parked
senders and receivers, closed/cancelled flags and an undelivered list.  Since every step ends with
all tasks blocked, a parked operation is *unmatched* when an ordinary step interrupts it, so the
model needs no notion of a completion racing a cancellation -- except in ``then_cancel``, which
completes a waiter (try op, close, cancel) and cancels it before it can run: the abort contract
says the completion wins, and the model only interrupts waiters that are still parked.

Spawned operations can be interrupted every way the API offers (``HOWS``): ``task.cancel()``,
``timeout=`` (expired by ``MockClock.jump``), ``move_on_after`` / ``fail_after`` scopes, a
``CancelToken``, and an already-cancelled token or scope (which must do nothing at all).

Extension point: :data:`OPS` maps an operation name to ``(strategy of its arguments, step)``;
``step(env, *args)`` applies the operation to both the model (``env.m``) and the real channel
(``env.ch``) and asserts any immediate result.  Selects are modelled as waiters registered on
every side at once (``SELECTS``): a select sending on ch or receiving from ch with a losing clause
on an idle channel, and a select that sends and receives on ch (it must never pair with itself).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kcoro
from conftest import scaled
from kcoro._runtime import current_runtime
from kcoro.testing import MockClock, wait_all_tasks_blocked

# name -> (capacity, overflow, model capacity, model drop policy)
KINDS: dict[str, tuple[Any, kcoro.Overflow, float, str]] = {
    "rendezvous": (kcoro.RENDEZVOUS, kcoro.SUSPEND, 0, "suspend"),
    "buffered1": (1, kcoro.SUSPEND, 1, "suspend"),
    "buffered2": (2, kcoro.SUSPEND, 2, "suspend"),
    "buffered10": (10, kcoro.SUSPEND, 10, "suspend"),
    "unlimited": (kcoro.UNLIMITED, kcoro.SUSPEND, math.inf, "suspend"),
    "conflated": (kcoro.CONFLATED, kcoro.SUSPEND, 1, "oldest"),
    "drop_oldest2": (2, kcoro.DROP_OLDEST, 2, "oldest"),
    "drop_latest2": (2, kcoro.DROP_LATEST, 2, "latest"),
    # a rendezvous channel with a drop policy is a size-1 dropping buffer (API.md / kotlinx)
    "rendezvous_drop_latest": (kcoro.RENDEZVOUS, kcoro.DROP_LATEST, 1, "latest"),
}

STUCK_AFTER = 10.0  # real seconds for one history (normally milliseconds; keeps shrinking bounded)

# How a spawned operation can be interrupted while parked.
HOWS = ("plain", "timeout", "scope", "fail_after", "token", "dead_token", "dead_scope")

Outcome = tuple[Any, ...]
OK = "ok"
RAISED = "raised"
MOVED_ON = ("moved_on",)


def raised(name: str) -> Outcome:
    return (RAISED, name)


# --------------------------------------------------------------------------------------------
# The sequential model
# --------------------------------------------------------------------------------------------
@dataclass
class Waiter:
    tid: int
    side: str            # "send" | "recv" | "both" (a select sending and receiving on ch)
    item: Any            # a parked sender's item
    how: str
    deadline: float      # math.inf when no deadline applies
    sel: str = ""        # "" plain op; else the select form (see SELECTS)

    def result(self, got: str, value: Any) -> Outcome:
        """What the task returns when a partner completes it on side ``got``."""
        if not self.sel:
            return (OK, value)
        return (OK, (SELECTS[self.sel][got], value))


# Select forms, with the clause index of each side on ``ch``.  The other clause of "sel_send" /
# "sel_recv" is on an idle channel nobody uses (it always loses); "sel_both" offers an item on
# ch and receives from ch in one select (it must never pair with itself).
SELECTS: dict[str, dict[str, int]] = {
    "sel_send": {"send": 0},
    "sel_recv": {"recv": 1},
    "sel_both": {"send": 0, "recv": 1},
}


@dataclass
class ChannelModel:
    cap: float
    drop: str
    buf: deque[Any] = field(default_factory=deque)
    sendq: list[int] = field(default_factory=list)
    recvq: list[int] = field(default_factory=list)
    parked: dict[int, Waiter] = field(default_factory=dict)
    closed: bool = False
    cancelled: bool = False
    undelivered: list[Any] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    sends: int = 0
    recvs: int = 0
    peak: int = 0
    now: float = 0.0

    def finish(self, tid: int, outcome: Outcome) -> None:
        w = self.parked.pop(tid)
        if w.side in ("send", "both"):
            self.sendq.remove(tid)
        if w.side in ("recv", "both"):
            self.recvq.remove(tid)
        self.outcomes[tid] = outcome

    # An offer: "ok" (accepted), "dropped" (DROP_LATEST and full), "full", "closed".
    def offer(self, item: Any) -> str:
        if self.closed:
            return "closed"
        if self.recvq:
            tid = self.recvq[0]
            self.finish(tid, self.parked[tid].result("recv", item))
            self.sends += 1
            self.recvs += 1
            return "ok"
        if len(self.buf) < self.cap:
            self.buf.append(item)
            self.peak = max(self.peak, len(self.buf))
            self.sends += 1
            return "ok"
        if self.drop == "oldest":
            self.undelivered.append(self.buf.popleft())
            self.buf.append(item)
            self.sends += 1
            return "ok"
        if self.drop == "latest":
            return "dropped"
        return "full"

    # A take: (True, item) or (False, "empty" | "closed").
    def take(self) -> tuple[bool, Any]:
        if self.buf:
            item = self.buf.popleft()
            self.recvs += 1
            if self.sendq:
                tid = self.sendq[0]
                self.buf.append(self.parked[tid].item)
                self.sends += 1
                self.finish(tid, self.parked[tid].result("send", None))
            return True, item
        if self.sendq:
            tid = self.sendq[0]
            item = self.parked[tid].item
            self.sends += 1
            self.recvs += 1
            self.finish(tid, self.parked[tid].result("send", None))
            return True, item
        return False, ("closed" if self.closed else "empty")

    def close(self) -> bool:
        if self.closed:
            return False
        self.closed = True
        for tid in list(self.sendq):
            self.finish(tid, raised("ChannelClosed"))
        if not self.buf:
            for tid in list(self.recvq):
                if tid in self.parked:  # (a "both" select already failed as a sender)
                    self.finish(tid, raised("ChannelClosed"))
        return True

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.closed = self.cancelled = True
        self.undelivered.extend(self.buf)
        self.buf.clear()
        for tid in self.sendq + self.recvq:
            if tid in self.parked:
                self.finish(tid, raised("ChannelClosed"))

    def interrupt(self, tid: int, outcome: Outcome) -> None:
        if tid in self.parked:
            self.finish(tid, outcome)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for tid, w in list(self.parked.items()):
            if w.deadline <= self.now:
                self.finish(tid, MOVED_ON if w.how == "scope" else raised("TimeoutError"))


# --------------------------------------------------------------------------------------------
# The environment shared by model and reality
# --------------------------------------------------------------------------------------------
@dataclass
class Env:
    ch: kcoro.Channel[Any]
    m: ChannelModel
    clock: MockClock
    undelivered: list[Any]
    idle: kcoro.Channel[Any] = field(default_factory=lambda: kcoro.Channel(name="idle"))
    tasks: dict[int, kcoro.Task[None]] = field(default_factory=dict)
    tokens: dict[int, kcoro.CancelToken] = field(default_factory=dict)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    next_item: int = 0
    log: list[str] = field(default_factory=list)

    def fresh_item(self) -> int:
        self.next_item += 1
        return 1000 + self.next_item

    def pick(self, tids: list[int], idx: int) -> int | None:
        return tids[idx % len(tids)] if tids else None


async def _op_task(env: Env, tid: int, side: str, item: Any, how: str, d: float) -> None:
    ch = env.ch

    def op(**kw: Any) -> Awaitable[Any]:
        if side == "send":
            return ch.send(item, **kw)
        if side == "recv":
            return ch.recv(**kw)
        if side == "sel_send":
            return kcoro.select(ch.on_send(item), env.idle.on_recv(), **kw)
        if side == "sel_recv":
            return kcoro.select(env.idle.on_recv(), ch.on_recv(), **kw)
        return kcoro.select(ch.on_send(item), ch.on_recv(), **kw)  # sel_both

    try:
        if how == "plain":
            r = await op()
        elif how == "timeout":
            r = await op(timeout=d)
        elif how in ("token", "dead_token"):
            r = await op(cancel=env.tokens[tid])
        elif how == "fail_after":
            with kcoro.fail_after(d):
                r = await op()
        else:  # scope, dead_scope
            with kcoro.move_on_after(d) as scope:
                if how == "dead_scope":
                    scope.cancel()
                r = await op()
            if scope.cancelled_caught:
                env.outcomes[tid] = MOVED_ON
                return
        env.outcomes[tid] = (OK, r)
    except kcoro.Cancelled:
        env.outcomes[tid] = raised("Cancelled")
        raise
    except Exception as exc:
        env.outcomes[tid] = raised(type(exc).__name__)


def _immediate(name: str, fn: Callable[[], Any]) -> Outcome:
    try:
        return (OK, fn())
    except Exception as exc:
        return raised(type(exc).__name__)


# --------------------------------------------------------------------------------------------
# Operations: name -> (strategy of the argument tuple, step)
# --------------------------------------------------------------------------------------------
Step = Callable[..., Awaitable[None]]


async def step_try_send(env: Env) -> None:
    item = env.fresh_item()
    r = env.m.offer(item)
    expect = {"ok": (OK, True), "dropped": (OK, False), "full": raised("WouldBlock"),
              "closed": raised("ChannelClosed")}[r]
    got = _immediate("try_send", lambda: env.ch.try_send(item))
    assert got == expect, f"try_send({item}) -> {got}, model {expect}"


async def step_try_recv(env: Env) -> None:
    ok, v = env.m.take()
    expect = (OK, v) if ok else raised("ChannelClosed" if v == "closed" else "WouldBlock")
    got = _immediate("try_recv", env.ch.try_recv)
    assert got == expect, f"try_recv -> {got}, model {expect}"


def _spawn_model(env: Env, tid: int, side: str, item: Any, how: str, d: float) -> None:
    m = env.m
    if how == "dead_token":
        m.outcomes[tid] = raised("OperationCancelled")
        return
    if how == "dead_scope":
        m.outcomes[tid] = MOVED_ON
        return
    sel = side if side.startswith("sel_") else ""
    sides = SELECTS[sel] if sel else {side: 0}
    w = Waiter(tid, "", item, how, math.inf, sel)
    # Probe in clause order (select is biased to argument order): send before receive.
    if "send" in sides:
        r = m.offer(item)
        if r == "ok" or r == "dropped":
            if r == "dropped":  # send() (not try_send) reports its own dropped item
                m.undelivered.append(item)
                m.sends += 1
            m.outcomes[tid] = w.result("send", None)
            return
        if r == "closed":
            m.outcomes[tid] = raised("ChannelClosed")
            return
    if "recv" in sides:
        ok, v = m.take()
        if ok:
            m.outcomes[tid] = w.result("recv", v)
            return
        if v == "closed":
            m.outcomes[tid] = raised("ChannelClosed")
            return
    # Nothing ready: register on every side at once.
    if "send" in sides:
        m.sendq.append(tid)
    else:
        item = None
    if "recv" in sides:
        m.recvq.append(tid)
    w.side = "both" if len(sides) == 2 else next(iter(sides))
    w.item = item
    w.deadline = m.now + d if how in ("timeout", "scope", "fail_after") else math.inf
    m.parked[tid] = w


async def _spawn(env: Env, side: str, how: str, d: float) -> None:
    tid = len(env.tasks) + 1
    item = env.fresh_item() if side in ("send", "sel_send", "sel_both") else None
    if how in ("token", "dead_token"):
        tok = env.tokens[tid] = kcoro.CancelToken()
        if how == "dead_token":
            tok.cancel()
    _spawn_model(env, tid, side, item, how, d)
    env.tasks[tid] = kcoro.spawn(_op_task, env, tid, side, item, how, d,
                                 name=f"{side}#{tid}:{how}")


async def step_send(env: Env, how: str, d: float) -> None:
    await _spawn(env, "send", how, d)


async def step_recv(env: Env, how: str, d: float) -> None:
    await _spawn(env, "recv", how, d)


async def step_select_send(env: Env, how: str, d: float) -> None:
    await _spawn(env, "sel_send", how, d)


async def step_select_recv(env: Env, how: str, d: float) -> None:
    await _spawn(env, "sel_recv", how, d)


async def step_select_both(env: Env, how: str, d: float) -> None:
    await _spawn(env, "sel_both", how, d)


async def step_cancel_task(env: Env, idx: int) -> None:
    tid = env.pick(sorted(env.tasks), idx)
    if tid is None:
        return
    env.m.interrupt(tid, raised("Cancelled"))
    env.tasks[tid].cancel()


async def step_fire_token(env: Env, idx: int) -> None:
    tid = env.pick(sorted(env.tokens), idx)
    if tid is None:
        return
    env.m.interrupt(tid, raised("OperationCancelled"))
    env.tokens[tid].cancel("model")


async def step_advance(env: Env, seconds: int) -> None:
    env.m.advance(seconds)
    env.clock.jump(seconds)


async def step_close(env: Env) -> None:
    expect = env.m.close()
    got = env.ch.close()
    assert got == expect, f"close() -> {got}, model {expect}"


async def step_cancel(env: Env) -> None:
    env.m.cancel()
    env.ch.cancel()


async def step_then_cancel(env: Env, first: str, idx: int, via: str) -> None:
    """A completion racing a cancellation, deterministically: ``first`` (which may complete a
    parked operation) and, before any task runs, the cancellation of a task that was parked.
    The abort contract says the completion wins; the model only interrupts what is still
    parked."""
    tid = env.pick(sorted(env.m.parked), idx)
    await OPS[first][1](env)
    if tid is None:
        return
    if via == "token" and tid in env.tokens:
        env.m.interrupt(tid, raised("OperationCancelled"))
        env.tokens[tid].cancel("race")
    else:
        env.m.interrupt(tid, raised("Cancelled"))
        env.tasks[tid].cancel()


_hows = st.sampled_from(("plain", "plain", *HOWS))  # plain ops are the common case
_delays = st.sampled_from([0.5, 1.5, 2.5, 4.5])  # deadlines never coincide with jumps
_idx = st.integers(0, 63)

OPS: dict[str, tuple[st.SearchStrategy[tuple[Any, ...]], Step]] = {
    "try_send": (st.just(()), step_try_send),
    "try_recv": (st.just(()), step_try_recv),
    "send": (st.tuples(_hows, _delays), step_send),
    "recv": (st.tuples(_hows, _delays), step_recv),
    "select_send": (st.tuples(_hows, _delays), step_select_send),
    "select_recv": (st.tuples(_hows, _delays), step_select_recv),
    "select_both": (st.tuples(_hows, _delays), step_select_both),
    "cancel_task": (st.tuples(_idx), step_cancel_task),
    "fire_token": (st.tuples(_idx), step_fire_token),
    "advance": (st.tuples(st.integers(1, 3)), step_advance),
    "close": (st.just(()), step_close),
    "cancel": (st.just(()), step_cancel),
    "then_cancel": (st.tuples(st.sampled_from(["try_recv", "try_send", "close", "cancel"]),
                              st.integers(0, 3), st.sampled_from(["task", "token"])),
                    step_then_cancel),
}

# close/cancel end most interesting histories, so they are drawn less often.
RARE = {"close", "cancel"}


def op_lists(ops: dict[str, tuple[st.SearchStrategy[tuple[Any, ...]], Step]] = OPS,
             ) -> st.SearchStrategy[list[tuple[str, tuple[Any, ...]]]]:
    weighted = [n for n in ops for _ in range(1 if n in RARE else 4)]
    one = st.sampled_from(weighted).flatmap(lambda n: st.tuples(st.just(n), ops[n][0]))
    # Hypothesis lists average ~5 elements; a list of lists gives histories of ~25 steps that
    # still shrink well.
    return st.lists(st.lists(one, max_size=10), max_size=8).map(
        lambda chunks: [op for chunk in chunks for op in chunk])


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------
def compare(env: Env, where: str) -> None:
    ch, m = env.ch, env.m
    ctx = f"after {where}; history: {env.log}"
    ch.check_invariants()
    assert env.outcomes == m.outcomes, f"outcomes differ {ctx}"
    for tid, task in env.tasks.items():
        if tid in m.parked:
            assert task.state == "PARKED", f"task {tid} should be parked: {task!r} {ctx}"
        else:
            assert task.done(), f"task {tid} should have finished: {task!r} {ctx}"
    assert env.undelivered == m.undelivered, f"undelivered differ {ctx}"
    assert len(ch) == len(m.buf), f"len {len(ch)} != model {len(m.buf)} {ctx}"
    s = ch.stats()
    got = (s.buffered, s.peak, s.waiting_senders, s.waiting_receivers, s.closed_for_send,
           s.closed_for_recv, s.sends, s.recvs, s.undelivered)
    expect = (len(m.buf), m.peak, len(m.sendq), len(m.recvq), m.closed,
              m.closed and not m.buf, m.sends, m.recvs, len(m.undelivered))
    assert got == expect, (
        f"stats (buffered, peak, waiting_senders, waiting_receivers, closed_for_send, "
        f"closed_for_recv, sends, recvs, undelivered) {got} != model {expect} {ctx}")
    assert ch.closed_for_send == m.closed and ch.closed_for_recv == (m.closed and not m.buf)
    idle = env.idle.stats()
    parked_on_idle = sum(1 for w in m.parked.values() if w.sel in ("sel_send", "sel_recv"))
    assert (idle.waiting_receivers, idle.waiting_senders, idle.buffered) == (
        parked_on_idle, 0, 0), f"select registrations on the idle channel {idle} {ctx}"
    env.idle.check_invariants()
    # conservation: everything accepted is received, reported, or still buffered
    assert s.sends == s.recvs + s.undelivered + s.buffered, f"conservation {s} {ctx}"


def run_history(kind: str, history: list[tuple[str, tuple[Any, ...]]],
                ops: dict[str, tuple[st.SearchStrategy[tuple[Any, ...]], Step]] = OPS) -> None:
    capacity, overflow, mcap, mdrop = KINDS[kind]
    clock = MockClock()  # moves only on clock.jump()
    log: list[str] = []

    def stuck() -> None:
        raise AssertionError(f"model run stuck: a parked task can no longer be woken or "
                             f"cancelled; history: {log}")

    async def main() -> None:
        # Fail instead of hanging if a lost wake-up leaves a task parked forever (the runtime
        # would otherwise sleep in its selector at teardown).
        watchdog.append(threading.Timer(STUCK_AFTER, current_runtime().call_soon_threadsafe,
                                        (stuck,)))
        watchdog[0].daemon = True
        watchdog[0].start()
        undelivered: list[Any] = []
        ch: kcoro.Channel[Any] = kcoro.Channel(capacity, overflow=overflow,
                                               on_undelivered=undelivered.append,
                                               name=f"model-{kind}")
        env = Env(ch, ChannelModel(mcap, mdrop), clock, undelivered, log=log)
        for name, args in history:
            env.log.append(f"{name}{args}")
            await ops[name][1](env, *args)
            await wait_all_tasks_blocked()
            compare(env, name)
        # Drain what is left (this also takes from parked senders) and compare the order.
        real: list[Any] = []
        model: list[Any] = []
        while True:
            ok, v = env.m.take()
            got = _immediate("try_recv", ch.try_recv)
            if got[0] == OK:
                real.append(got[1])
            if ok:
                model.append(v)
            if not ok or got[0] != OK:
                break
        await wait_all_tasks_blocked()
        assert real == model, f"drained {real}, model {model}; history: {env.log}"
        compare(env, "drain")
        for task in env.tasks.values():
            task.cancel()
        await wait_all_tasks_blocked()
        stuck_tasks = [t for t in env.tasks.values() if not t.done()]
        assert not stuck_tasks, f"tasks survive cancellation: {stuck_tasks}; history: {log}"

    watchdog: list[threading.Timer] = []
    try:
        kcoro.run(main, clock=clock)
    finally:
        for w in watchdog:
            w.cancel()


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=scaled(40), deadline=None)
@given(history=op_lists())
def test_channel_matches_model(kind: str, history: list[tuple[str, tuple[Any, ...]]]) -> None:
    run_history(kind, history)


# --------------------------------------------------------------------------------------------
# Hand-written histories: the model itself must notice a wrong channel (they also document a
# few interesting sequences).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_fixed_history_waiters_interrupted_every_way(kind: str) -> None:
    history: list[tuple[str, tuple[Any, ...]]] = [
        ("recv", ("plain", 0.5)), ("recv", ("timeout", 1.5)), ("recv", ("scope", 2.5)),
        ("recv", ("token", 0.5)), ("recv", ("fail_after", 4.5)),
        ("cancel_task", (0,)), ("fire_token", (0,)), ("advance", (2,)),
        ("try_send", ()), ("send", ("plain", 0.5)), ("send", ("timeout", 0.5)),
        ("send", ("token", 0.5)), ("send", ("plain", 0.5)), ("advance", (3,)),
        ("fire_token", (1,)), ("try_recv", ()), ("send", ("dead_token", 0.5)),
        ("recv", ("dead_scope", 0.5)), ("close", ()), ("try_recv", ()), ("cancel", ()),
    ]
    run_history(kind, history)


def test_model_detects_a_wrong_channel() -> None:
    """The comparison must fail when reality differs: a broken on_undelivered is noticed."""

    async def bogus_close(env: Env) -> None:
        env.m.close()
        env.m.undelivered.append("phantom")  # the model now disagrees with the channel
        env.ch.close()

    ops = dict(OPS, close=(st.just(()), bogus_close))
    with pytest.raises(AssertionError, match="undelivered differ"):
        run_history("buffered2", [("try_send", ()), ("close", ())], ops)


@pytest.mark.parametrize("kind", list(KINDS))
def test_fixed_history_selects(kind: str) -> None:
    """Selects as waiters: completed by plain partners on either side, never pairing with
    themselves, interrupted every way, failed by close; their losing registrations vanish."""
    history: list[tuple[str, tuple[Any, ...]]] = [
        ("select_both", ("plain", 0.5)), ("select_recv", ("timeout", 1.5)),
        ("select_send", ("plain", 0.5)), ("try_recv", ()), ("send", ("plain", 0.5)),
        ("select_both", ("token", 0.5)), ("recv", ("plain", 0.5)), ("fire_token", (0,)),
        ("select_recv", ("scope", 2.5)), ("advance", (3,)), ("select_both", ("plain", 0.5)),
        ("select_send", ("plain", 0.5)), ("try_send", ()), ("try_recv", ()),
        ("then_cancel", ("try_recv", 0, "task")), ("select_recv", ("plain", 0.5)),
        ("select_both", ("fail_after", 1.5)), ("close", ()), ("select_recv", ("plain", 0.5)),
    ]
    run_history(kind, history)


def test_model_detects_a_select_reporting_the_wrong_clause() -> None:
    """The select outcomes are really compared: a model expecting another index fails."""
    saved = SELECTS["sel_recv"]["recv"]
    SELECTS["sel_recv"]["recv"] = 0
    try:
        with pytest.raises(AssertionError, match="outcomes differ"):
            run_history("buffered2", [("try_send", ()), ("select_recv", ("plain", 0.5))])
    finally:
        SELECTS["sel_recv"]["recv"] = saved
