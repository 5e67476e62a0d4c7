"""Plain OS threads: send_blocking / recv_blocking / iter_blocking / select_blocking, with
timeouts and tokens, and threads feeding tasks (and the reverse).

Threads cannot be ordered by a scheduler barrier, so these tests wait for observable state with
``kcoro.testing.wait_until`` (e.g. "one receiver is parked"), never with sleeps.
"""

from __future__ import annotations

import errno
import inspect
import random
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kcoro
from chan_helpers import CAPS, all_kinds, bounded_kinds, buffer_room, fifo_kinds
from conftest import scaled
from kcoro import _wait
from kcoro._context import tls
from kcoro._wakers import ThreadWaker
from kcoro.testing import wait_all_tasks_blocked, wait_until


def make(kind: str, **kw: Any) -> kcoro.Channel[Any]:
    return kcoro.Channel(CAPS[kind], name=f"thr-{kind}", **kw)


def start(fn: Callable[..., Any], *args: Any) -> threading.Thread:
    th = threading.Thread(target=fn, args=args, daemon=True)
    th.start()
    return th


def join_all(threads: list[threading.Thread], timeout: float = 30) -> None:
    for th in threads:
        th.join(timeout)
    assert not any(th.is_alive() for th in threads), "a thread is stuck"


class Outcome:
    """Run a blocking call in a thread and keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = start(self._run, fn)

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as e:
            self.error = e

    def join(self) -> Outcome:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self


def fill(ch: kcoro.Channel[Any], kind: str) -> list[Any]:
    items = [f"f{i}" for i in range(buffer_room(kind))]
    for it in items:
        assert ch.try_send(it)
    return items


# -- basic blocking operations ---------------------------------------------------------------------
@fifo_kinds
def test_thread_to_thread_fifo_with_iter_blocking(kind: str) -> None:
    ch = make(kind)
    n = scaled(300)

    def producer() -> None:
        for i in range(n):
            ch.send_blocking(i)
        ch.close()

    th = start(producer)
    assert list(ch.iter_blocking()) == list(range(n))
    join_all([th])
    assert ch.closed_for_recv


def test_conflated_send_blocking_never_blocks() -> None:
    ch = make("conflated")
    for i in range(100):
        ch.send_blocking(i)
    assert ch.recv_blocking() == 99
    with pytest.raises(kcoro.WouldBlock):
        ch.recv_blocking(timeout=0)


@all_kinds
def test_recv_blocking_timeout_leaves_channel_unchanged(kind: str) -> None:
    ch = make(kind)
    with pytest.raises(TimeoutError) as ei:
        ch.recv_blocking(timeout=0.02)
    assert ei.value.errno == errno.ETIME
    with pytest.raises(kcoro.WouldBlock):
        ch.recv_blocking(timeout=0)
    st = ch.stats()
    assert (st.recv_timeout, st.recv_would_block, st.waiting_receivers) == (1, 1, 0)
    if kind == "rendezvous":
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send(1)  # no ghost receiver left behind
    else:
        ch.try_send(1)
        assert ch.recv_blocking(timeout=1) == 1
    ch.check_invariants()


@bounded_kinds
def test_send_blocking_timeout_leaves_channel_unchanged(kind: str) -> None:
    ch = make(kind)
    filled = fill(ch, kind)
    with pytest.raises(TimeoutError):
        ch.send_blocking("late", timeout=0.02)
    with pytest.raises(kcoro.WouldBlock):
        ch.send_blocking("late", timeout=0)
    st = ch.stats()
    assert (st.send_timeout, st.send_would_block, st.waiting_senders) == (1, 1, 0)
    got = [ch.try_recv() for _ in filled]
    assert got == filled
    with pytest.raises(kcoro.WouldBlock):
        ch.try_recv()


@all_kinds
def test_blocked_receiver_thread_woken_by_send(kind: str) -> None:
    ch = make(kind)
    out = Outcome(lambda: ch.recv_blocking(timeout=10))
    wait_until(lambda: ch.stats().waiting_receivers == 1)
    ch.send_blocking("x")
    assert out.join().value == "x"


@bounded_kinds
def test_blocked_sender_thread_released_by_recv(kind: str) -> None:
    ch = make(kind)
    filled = fill(ch, kind)
    out = Outcome(lambda: ch.send_blocking("last", timeout=10))
    wait_until(lambda: ch.stats().waiting_senders == 1)
    got = [ch.recv_blocking() for _ in range(len(filled) + 1)]
    assert out.join().error is None
    assert got == [*filled, "last"]


# -- tokens ----------------------------------------------------------------------------------------
@all_kinds
def test_token_cancels_blocked_receiver_thread(kind: str) -> None:
    ch = make(kind)
    tok = kcoro.CancelToken()
    out = Outcome(lambda: ch.recv_blocking(cancel=tok))
    wait_until(lambda: ch.stats().waiting_receivers == 1)
    assert tok.cancel("stop")
    err = out.join().error
    assert isinstance(err, kcoro.OperationCancelled) and err.reason == "stop"
    assert ch.stats().waiting_receivers == 0 and ch.stats().recv_cancelled == 1
    assert not tok._tickets


@bounded_kinds
def test_token_cancels_blocked_sender_thread_item_stays_out(kind: str) -> None:
    ch = make(kind)
    filled = fill(ch, kind)
    tok = kcoro.CancelToken()
    out = Outcome(lambda: ch.send_blocking("x", cancel=tok))
    wait_until(lambda: ch.stats().waiting_senders == 1)
    tok.cancel()
    assert isinstance(out.join().error, kcoro.OperationCancelled)
    assert [ch.try_recv() for _ in filled] == filled
    with pytest.raises(kcoro.WouldBlock):
        ch.try_recv()


@all_kinds
def test_already_cancelled_token_changes_nothing(kind: str) -> None:
    ch = make(kind)
    tok = kcoro.CancelToken()
    tok.cancel("early")
    partner = Outcome(lambda: ch.recv_blocking(timeout=10))
    wait_until(lambda: ch.stats().waiting_receivers == 1)
    with pytest.raises(kcoro.OperationCancelled) as ei:
        ch.send_blocking("x", cancel=tok)
    assert ei.value.reason == "early"
    assert ch.stats().sends == 0 and ch.stats().waiting_receivers == 1
    ch.send_blocking("y")
    assert partner.join().value == "y"
    with pytest.raises(kcoro.OperationCancelled):
        ch.recv_blocking(cancel=tok, timeout=0)


def test_completion_before_token_cancel_keeps_the_item() -> None:
    ch: kcoro.Channel[str] = kcoro.Channel()
    tok = kcoro.CancelToken()
    outs = [Outcome(lambda: ch.recv_blocking(cancel=tok)) for _ in range(3)]
    wait_until(lambda: ch.stats().waiting_receivers == 3)
    assert ch.try_send("one")  # completes exactly one of them...
    tok.cancel()  # ...the others are cancelled
    for o in outs:
        o.join()
    values = [o.value for o in outs if o.error is None]
    errors = [o.error for o in outs if o.error is not None]
    assert values == ["one"]
    assert len(errors) == 2 and all(isinstance(e, kcoro.OperationCancelled) for e in errors)


# -- iter_blocking, close, cancel ------------------------------------------------------------------
def test_iter_blocking_with_timeout_raises_after_draining() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(3)
    for i in range(3):
        ch.try_send(i)
    it: Iterator[int] = ch.iter_blocking(timeout=0.02)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(TimeoutError):
        next(it)
    assert ch.stats().waiting_receivers == 0


def test_close_wakes_every_blocked_thread() -> None:
    ch: kcoro.Channel[str] = kcoro.Channel()
    receivers = [Outcome(ch.recv_blocking) for _ in range(3)]
    wait_until(lambda: ch.stats().waiting_receivers == 3)
    assert ch.close()
    for o in receivers:
        assert isinstance(o.join().error, kcoro.ChannelClosed)
    full: kcoro.Channel[str] = kcoro.Channel(1)
    full.try_send("kept")
    senders = [Outcome(lambda i=i: full.send_blocking(f"s{i}")) for i in range(3)]
    wait_until(lambda: full.stats().waiting_senders == 3)
    assert full.close()
    for o in senders:
        assert isinstance(o.join().error, kcoro.ChannelClosed)
    assert list(full.iter_blocking()) == ["kept"]  # buffered items still drain


def test_channel_cancel_wakes_blocked_threads() -> None:
    und: list[Any] = []
    ch: kcoro.Channel[str] = kcoro.Channel(1, on_undelivered=und.append)
    ch.try_send("buffered")
    sender = Outcome(lambda: ch.send_blocking("parked"))
    wait_until(lambda: ch.stats().waiting_senders == 1)
    ch.cancel("bye")
    err = sender.join().error
    assert isinstance(err, kcoro.ChannelClosed) and err.cause == "bye"
    assert und == ["buffered"]  # the parked sender's item is not reported: it kept it
    with pytest.raises(kcoro.ChannelClosed):
        ch.recv_blocking()


def test_select_blocking_from_threads() -> None:
    a: kcoro.Channel[str] = kcoro.Channel(name="a")
    b: kcoro.Channel[str] = kcoro.Channel(name="b")
    with pytest.raises(TimeoutError):
        kcoro.select_blocking(a.on_recv(), b.on_recv(), timeout=0.02)
    with pytest.raises(kcoro.WouldBlock):
        kcoro.select_blocking(a.on_recv(), b.on_recv(), timeout=0)
    out = Outcome(lambda: kcoro.select_blocking(a.on_recv(), b.on_recv(), timeout=10))
    wait_until(lambda: b.stats().waiting_receivers == 1)
    b.send_blocking("via b")
    assert out.join().value == (1, "via b")
    assert a.stats().waiting_receivers == 0 and b.stats().waiting_receivers == 0


# -- threads and tasks -----------------------------------------------------------------------------
@fifo_kinds
def test_threads_produce_tasks_consume(kind: str) -> None:
    ch = make(kind)
    per = scaled(200)
    lock = threading.Lock()
    left = [3]

    def producer(p: int) -> None:
        for i in range(per):
            ch.send_blocking((p, i))
        with lock:
            left[0] -= 1
            if left[0] == 0:
                ch.close()

    threads = [start(producer, p) for p in range(3)]

    async def main() -> list[list[Any]]:
        got: list[list[Any]] = [[] for _ in range(3)]

        async def consumer(c: int) -> None:
            async for it in ch:
                got[c].append(it)

        async with kcoro.TaskGroup() as tg:
            for c in range(3):
                tg.spawn(consumer, c)
        return got

    got = kcoro.run(main)
    join_all(threads)
    everything = [it for g in got for it in g]
    assert Counter(everything) == Counter((p, i) for p in range(3) for i in range(per))
    for g in got:  # each consumer sees each producer's items in order
        for p in range(3):
            seq = [i for q, i in g if q == p]
            assert seq == sorted(seq)


@fifo_kinds
def test_tasks_produce_threads_consume(kind: str) -> None:
    ch = make(kind)
    per = scaled(200)
    got: list[list[Any]] = [[] for _ in range(3)]

    def consumer(c: int) -> None:
        for it in ch.iter_blocking():
            got[c].append(it)

    threads = [start(consumer, c) for c in range(3)]

    async def main() -> None:
        async def producer(p: int) -> None:
            for i in range(per):
                await ch.send((p, i))

        async with kcoro.TaskGroup() as tg:
            for p in range(3):
                tg.spawn(producer, p)
        ch.close()

    kcoro.run(main)
    join_all(threads)
    everything = [it for g in got for it in g]
    assert Counter(everything) == Counter((p, i) for p in range(3) for i in range(per))


def test_task_blocked_on_thread_and_thread_blocked_on_task_ping_pong() -> None:
    ping: kcoro.Channel[int] = kcoro.Channel()
    pong: kcoro.Channel[int] = kcoro.Channel()
    n = scaled(200)

    def echo() -> None:
        for x in ping.iter_blocking():
            pong.send_blocking(x + 1)

    th = start(echo)

    async def main() -> int:
        total = 0
        for i in range(n):
            await ping.send(i)
            total += await pong.recv()
        ping.close()
        return total

    assert kcoro.run(main) == sum(i + 1 for i in range(n))
    join_all([th])


@pytest.mark.parametrize("kind", ["rendezvous", "buffered1", "buffered10", "unlimited"])
def test_mpmc_threads_with_random_timeouts_lose_nothing(kind: str) -> None:
    ch = make(kind)
    per = scaled(150)
    sent: list[list[Any]] = [[] for _ in range(3)]
    got: list[list[Any]] = [[] for _ in range(3)]
    done = threading.Event()

    def producer(p: int) -> None:
        rng = random.Random(p)
        for i in range(per):
            while True:
                try:
                    ch.send_blocking((p, i), timeout=rng.choice([0, 0.0005, 0.002]))
                    sent[p].append((p, i))
                    break
                except (TimeoutError, kcoro.WouldBlock):
                    continue  # the item is still ours: retry

    def consumer(c: int) -> None:
        rng = random.Random(100 + c)
        while True:
            try:
                got[c].append(ch.recv_blocking(timeout=rng.choice([0, 0.0005, 0.002])))
            except (TimeoutError, kcoro.WouldBlock):
                if done.is_set() and len(ch) == 0:
                    return
            except kcoro.ChannelClosed:
                return

    producers = [start(producer, p) for p in range(3)]
    consumers = [start(consumer, c) for c in range(3)]
    join_all(producers)
    ch.close()
    done.set()
    join_all(consumers)
    everything = [it for g in got for it in g]
    assert Counter(everything) == Counter(it for s in sent for it in s)
    assert len(everything) == 3 * per
    st = ch.stats()
    assert st.waiting_receivers == st.waiting_senders == 0
    ch.check_invariants()


def test_runtime_woken_by_many_threads_at_once() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED)
    n_threads, per = 4, scaled(100)

    async def main() -> int:
        barrier = threading.Barrier(n_threads)

        def producer(p: int) -> None:
            barrier.wait()
            for i in range(per):
                ch.send_blocking(p * per + i)

        ths = [start(producer, p) for p in range(n_threads)]
        await wait_all_tasks_blocked()
        total = 0
        for _ in range(n_threads * per):
            total += await ch.recv()
        join_all(ths)
        return total

    assert kcoro.run(main) == sum(range(n_threads * per))


# -- KeyboardInterrupt in a blocked thread ---------------------------------------------------------
# These replace the calling thread's waker lock with one whose first acquire raises
# KeyboardInterrupt (optionally after a partner completed the wait), which is exactly what a
# Ctrl-C arriving while the main thread is blocked looks like to kcoro -- deterministically.

class _InterruptingLock:
    def __init__(self, before: Callable[[], Any] | None) -> None:
        self.real = threading.Lock()
        self.real.acquire()
        self.before = before
        self.calls = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.calls += 1
        if self.calls == 1:
            if self.before is not None:
                self.before()  # a partner completes the wait first
            raise KeyboardInterrupt
        return self.real.acquire(blocking, timeout)

    def release(self) -> None:
        self.real.release()


@pytest.fixture
def interrupting_waker(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def install(before: Callable[[], Any] | None = None) -> None:
        w = ThreadWaker()
        w.lock = _InterruptingLock(before)  # type: ignore[assignment]
        monkeypatch.setattr(tls, "twaker", w)

    return install


@pytest.fixture
def sigint_log() -> Iterator[list[str]]:
    assert threading.current_thread() is threading.main_thread()
    log: list[str] = []
    old = signal.signal(signal.SIGINT, lambda *a: log.append("SIGINT"))
    try:
        yield log
    finally:
        signal.signal(signal.SIGINT, old)


FORMS = ["recv", "send", "select", "ticket"]


def _blocking_call(form: str, ch: kcoro.Channel[Any], tok: kcoro.CancelToken,
                   ticket: kcoro.Ticket) -> Any:
    if form == "recv":
        return ch.recv_blocking(cancel=tok)
    if form == "send":
        return ch.send_blocking("mine", cancel=tok)
    if form == "select":
        return kcoro.select_blocking(ch.on_recv())
    return ticket.wait_blocking(cancel=tok)


@pytest.mark.parametrize("form", FORMS)
def test_interrupt_after_completion_keeps_result_and_redelivers(
        form: str, interrupting_waker: Callable[..., None], sigint_log: list[str]) -> None:
    k = kcoro.token_kernel()
    try:
        ch: kcoro.Channel[Any] = kcoro.Channel(1)
        if form == "send":
            ch.try_send("first")
        ticket = k.publish()
        taken: list[Any] = []

        def partner() -> None:
            if form == "send":
                taken.append(ch.try_recv())  # frees the slot: our parked send completes
            elif form == "ticket":
                ticket.complete("payload")
            else:
                ch.try_send("item")

        interrupting_waker(partner)
        result = _blocking_call(form, ch, kcoro.CancelToken(), ticket)
        wait_until(lambda: sigint_log == ["SIGINT"])  # Ctrl-C re-delivered afterwards
        expected = {"recv": "item", "send": None, "select": (0, "item"),
                    "ticket": "payload"}[form]
        assert result == expected
        if form == "send":
            assert taken == ["first"] and ch.try_recv() == "mine"  # delivered exactly once
        st = ch.stats()
        assert st.waiting_receivers == st.waiting_senders == 0
    finally:
        k.shutdown()




@pytest.mark.parametrize("form", FORMS)
def test_interrupt_while_blocked_changes_nothing(
        form: str, interrupting_waker: Callable[..., None]) -> None:
    k = kcoro.token_kernel()
    try:
        ch: kcoro.Channel[Any] = kcoro.Channel(1)
        if form == "send":
            ch.try_send("first")
        ticket = k.publish()
        tok = kcoro.CancelToken()
        interrupting_waker(None)
        with pytest.raises(KeyboardInterrupt):
            _blocking_call(form, ch, tok, ticket)
        st = ch.stats()
        assert (st.waiting_receivers, st.waiting_senders) == (0, 0), st
        assert not tok._tickets
        if form == "ticket":
            assert ticket.state == "CANCELLED"
        k.check_invariants()
    finally:
        k.shutdown()


def test_real_sigint_while_blocked_in_recv_raises_and_pairs_with_nobody() -> None:
    assert threading.current_thread() is threading.main_thread()
    ch: kcoro.Channel[str] = kcoro.Channel()
    main_id = threading.get_ident()

    def killer() -> None:
        wait_until(lambda: blocked_in_park(main_id))
        signal.pthread_kill(main_id, signal.SIGINT)

    th = start(killer)
    with pytest.raises(KeyboardInterrupt):
        ch.recv_blocking(timeout=10)
    join_all([th])
    with pytest.raises(kcoro.WouldBlock):
        ch.try_send("x")  # the interrupted receiver is gone: nobody to pair with
    other = Outcome(lambda: ch.recv_blocking(timeout=10))
    wait_until(lambda: other.thread.ident is not None and blocked_in_park(other.thread.ident))
    ch.send_blocking("y")  # the channel still works: the new receiver gets it
    assert other.join().value == "y"


def blocked_in_park(thread_id: int) -> bool:
    """True while that thread sits in the lock acquire of kcoro's blocking park."""
    f = sys._current_frames().get(thread_id)
    return (f is not None and f.f_code is _wait._park_blocking.__code__
            and f.f_lineno in _ACQUIRE_LINES)


def _acquire_lines() -> set[int]:
    src, first = inspect.getsourcelines(_wait._park_blocking)
    return {first + i for i, line in enumerate(src) if "lk.acquire(" in line}


_ACQUIRE_LINES = _acquire_lines()
