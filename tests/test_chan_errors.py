"""Bad input to channels, the error hierarchy and errno attributes, and the constructor policies
(RENDEZVOUS + a drop policy, CONFLATED/UNLIMITED + a policy)."""

from __future__ import annotations

import asyncio
import errno
import math
import sys
import threading
from typing import Any

import pytest

import kcoro
from chan_helpers import Recorder, assert_failures, assert_stats, make, run, settle
from kcoro.testing import wait_until

pytestmark = pytest.mark.timeout(60)


# -- capacity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity", [-2, -3, -100, -(2**40)])
def test_negative_capacity_is_a_value_error(capacity: int) -> None:
    with pytest.raises(ValueError):
        kcoro.Channel(capacity)


@pytest.mark.parametrize("capacity", [1.5, 2.0, 0.0, -math.inf, math.nan, "3", b"3", None,
                                      [1], True, False, object()])
def test_non_integer_capacity_is_a_type_error(capacity: Any) -> None:
    with pytest.raises(TypeError):
        kcoro.Channel(capacity)


@pytest.mark.parametrize("capacity,kind", [(0, "rendezvous"), (1, "buffered"), (7, "buffered"),
                                           (2**62, "buffered"), (math.inf, "unlimited"),
                                           (kcoro.CONFLATED, "conflated")])
def test_valid_capacities(capacity: Any, kind: str) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(capacity)
    assert ch.kind == kind
    ch.check_invariants()


def test_capacity_constants() -> None:
    assert kcoro.RENDEZVOUS == 0
    assert kcoro.Channel().kind == "rendezvous"
    assert kcoro.Channel().capacity == 0
    assert math.inf == kcoro.UNLIMITED
    assert kcoro.Channel(kcoro.CONFLATED).capacity == 1


# -- overflow ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overflow", ["drop_oldest", "SUSPEND", None, 0, 1, object()])
def test_invalid_overflow_is_a_type_error(overflow: Any) -> None:
    with pytest.raises(TypeError):
        kcoro.Channel(2, overflow=overflow)


@pytest.mark.parametrize("capacity", [kcoro.CONFLATED, kcoro.UNLIMITED])
@pytest.mark.parametrize("overflow", [kcoro.DROP_OLDEST, kcoro.DROP_LATEST])
def test_conflated_and_unlimited_with_a_drop_policy_are_rejected(capacity: Any,
                                                                 overflow: Any) -> None:
    with pytest.raises(ValueError):
        kcoro.Channel(capacity, overflow=overflow)


@pytest.mark.parametrize("capacity", [kcoro.CONFLATED, kcoro.UNLIMITED, 0, 1, 5])
def test_suspend_is_accepted_by_every_kind(capacity: Any) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(capacity, overflow=kcoro.SUSPEND)
    assert ch.kind == kcoro.Channel(capacity).kind


def test_rendezvous_with_drop_latest_is_a_size_1_drop_latest_buffer() -> None:
    async def main() -> None:
        rec = Recorder()
        ch: kcoro.Channel[int] = kcoro.Channel(kcoro.RENDEZVOUS, overflow=kcoro.DROP_LATEST,
                                               on_undelivered=rec)
        assert ch.capacity == 1
        assert ch.try_send(1) is True  # no receiver needed: one slot
        assert ch.try_send(2) is False  # refused, not reported
        await ch.send(3)  # accepted and dropped: reported
        assert rec.items == [3]
        assert len(ch) == 1
        assert await ch.recv() == 1
        with pytest.raises(kcoro.WouldBlock):
            ch.try_recv()
        ch.check_invariants()

    run(main)


# -- on_undelivered and name --------------------------------------------------------------------
@pytest.mark.parametrize("handler", [1, "print", [], object()])
def test_non_callable_on_undelivered_is_a_type_error(handler: Any) -> None:
    with pytest.raises(TypeError):
        kcoro.Channel(1, on_undelivered=handler)


def test_callable_objects_are_accepted_as_on_undelivered() -> None:
    rec = Recorder()
    ch: kcoro.Channel[int] = kcoro.Channel(kcoro.CONFLATED, on_undelivered=rec)
    ch.try_send(1)
    ch.try_send(2)
    assert rec.items == [1]
    kcoro.Channel(1, on_undelivered=print)
    kcoro.Channel(1, on_undelivered=None)


@pytest.mark.parametrize("name", [123, b"jobs", ["jobs"], object()])
def test_name_must_be_a_str(name: Any) -> None:
    with pytest.raises(TypeError):
        kcoro.Channel(1, name=name)


def test_name_given_and_default() -> None:
    assert kcoro.Channel(1, name="jobs").name == "jobs"
    assert kcoro.Channel(1, name="jobs").stats().name == "jobs"
    a: kcoro.Channel[int] = kcoro.Channel(1)
    b: kcoro.Channel[int] = kcoro.Channel(1)
    assert isinstance(a.name, str) and a.name
    assert a.name != b.name  # default names tell channels apart
    assert a.name == a.name == a.stats().name  # and are stable


# -- timeouts -----------------------------------------------------------------------------------
BAD_TIMEOUT_VALUE = [-1, -0.001, -math.inf, math.nan]
BAD_TIMEOUT_TYPE = [object(), [1], (1,), complex(1, 0), {}]


async def _async_op(ch: kcoro.Channel[Any], op: str, timeout: Any) -> None:
    if op == "send":
        await ch.send("item", timeout=timeout)
    else:
        await ch.recv(timeout=timeout)


def _blocking_op(ch: kcoro.Channel[Any], op: str, timeout: Any) -> None:
    if op == "send":
        ch.send_blocking("item", timeout=timeout)
    elif op == "recv":
        ch.recv_blocking(timeout=timeout)
    else:
        list(ch.iter_blocking(timeout=timeout))


def _check_untouched(ch: kcoro.Channel[Any]) -> None:
    assert_stats(ch, sends=0, recvs=0, buffered=0, waiting_senders=0, waiting_receivers=0)
    assert_failures(ch)
    ch.check_invariants()


@pytest.mark.parametrize("kind", ["rendezvous", "buffered2", "unlimited"])
@pytest.mark.parametrize("op", ["send", "recv"])
def test_bad_timeout_in_async_ops_is_rejected_with_no_side_effect(kind: str, op: str) -> None:
    async def main() -> None:
        ch = make(kind)
        if kind == "rendezvous":  # a partner that would complete the op at once
            partner = kcoro.spawn(ch.recv) if op == "send" else kcoro.spawn(ch.send, "p")
            await settle()
        for bad in BAD_TIMEOUT_VALUE:
            with pytest.raises(ValueError):
                await _async_op(ch, op, bad)
        for bad in BAD_TIMEOUT_TYPE:
            with pytest.raises(TypeError):
                await _async_op(ch, op, bad)
        if kind == "rendezvous":
            assert ch.stats().waiting_receivers + ch.stats().waiting_senders == 1
            partner.cancel()
            with pytest.raises(kcoro.Cancelled):
                await partner
        assert_stats(ch, sends=0, recvs=0, buffered=0)
        assert_failures(ch, **({"recv_cancelled": 1} if kind == "rendezvous" and op == "send"
                               else {"send_cancelled": 1} if kind == "rendezvous" else {}))
        ch.check_invariants()

    run(main)


@pytest.mark.parametrize("op", ["send", "recv", "iter"])
def test_bad_timeout_in_blocking_ops_is_rejected(op: str) -> None:
    ch: kcoro.Channel[Any] = kcoro.Channel(2)
    for bad in BAD_TIMEOUT_VALUE:
        with pytest.raises(ValueError):
            _blocking_op(ch, op, bad)
    for bad in BAD_TIMEOUT_TYPE:
        with pytest.raises(TypeError):
            _blocking_op(ch, op, bad)
    _check_untouched(ch)


def test_bad_timeout_in_asyncio_is_rejected() -> None:
    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(2)
        for op in ("send", "recv"):
            with pytest.raises(ValueError):
                await _async_op(ch, op, -1)
            with pytest.raises(TypeError):
                await _async_op(ch, op, object())
        _check_untouched(ch)

    asyncio.run(main())


@pytest.mark.parametrize("bad", ["0.01", "0", b"0.01"], ids=["str", "str-zero", "bytes"])
def test_string_timeout_is_a_type_error(bad: Any) -> None:
    ch: kcoro.Channel[Any] = kcoro.Channel(1)
    with pytest.raises(TypeError):
        ch.recv_blocking(timeout=bad)


@pytest.mark.parametrize("timeout", [0.001, 1, 2.5, 10**6])
def test_numeric_timeouts_of_any_type_are_accepted(timeout: Any) -> None:
    async def main() -> None:
        ch: kcoro.Channel[Any] = kcoro.Channel(1)
        with pytest.raises(TimeoutError) as ei:
            await ch.recv(timeout=timeout)
        assert ei.value.errno == errno.ETIME
        await ch.send(1, timeout=timeout)
        assert await ch.recv(timeout=timeout) == 1
        assert_failures(ch, recv_timeout=1)

    run(main)


# -- wrong context --------------------------------------------------------------------------------
def test_blocking_forms_refuse_to_run_inside_a_kcoro_runtime() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        ch.try_send(1)
        with pytest.raises(RuntimeError):
            ch.send_blocking(2)
        with pytest.raises(RuntimeError):
            ch.recv_blocking()
        with pytest.raises(RuntimeError):
            next(ch.iter_blocking())
        assert len(ch) == 1  # nothing happened
        assert ch.try_recv() == 1

    run(main)


def test_blocking_forms_refuse_to_run_inside_an_asyncio_loop() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        with pytest.raises(RuntimeError):
            ch.send_blocking(2)
        with pytest.raises(RuntimeError):
            ch.recv_blocking(timeout=0)
        assert len(ch) == 0

    asyncio.run(main())


@pytest.mark.parametrize("op", ["send", "recv"])
def test_async_op_awaited_with_no_loop_is_a_runtime_error(op: str) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    if op == "recv":
        ch.try_send(1)
    coro = ch.send(5) if op == "send" else ch.recv()
    with pytest.raises(RuntimeError):
        coro.send(None)
    coro.close()
    # Nothing happened: a send delivered nothing, a recv consumed nothing.
    assert len(ch) == (0 if op == "send" else 1)


def test_try_ops_work_without_any_loop() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    assert ch.try_send(1) is True
    assert ch.try_recv() == 1


# -- the error hierarchy and errno --------------------------------------------------------------
def test_error_hierarchy() -> None:
    for cls in (kcoro.ChannelClosed, kcoro.WouldBlock, kcoro.OperationCancelled,
                kcoro.UndeliveredElementError):
        assert issubclass(cls, kcoro.KcoroError)
    assert issubclass(kcoro.KcoroError, Exception)
    assert issubclass(kcoro.Cancelled, BaseException)
    assert not issubclass(kcoro.Cancelled, Exception)  # `except Exception` does not swallow it


def test_errno_constants() -> None:
    assert kcoro.ChannelClosed.errno == errno.EPIPE
    assert kcoro.WouldBlock.errno == errno.EAGAIN
    assert kcoro.OperationCancelled.errno == errno.ECANCELED
    assert isinstance(kcoro.KcoroError.errno, int)
    assert isinstance(kcoro.UndeliveredElementError.errno, int)


def test_errno_of_raised_errors() -> None:
    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(1)
        with pytest.raises(kcoro.WouldBlock) as wb:
            ch.try_recv()
        assert wb.value.errno == errno.EAGAIN
        with pytest.raises(TimeoutError) as te:
            await ch.recv(timeout=1)
        assert type(te.value) is TimeoutError  # the builtin
        assert te.value.errno == errno.ETIME
        tok = kcoro.CancelToken()
        tok.cancel("why")
        with pytest.raises(kcoro.OperationCancelled) as oc:
            await ch.recv(cancel=tok)
        assert oc.value.errno == errno.ECANCELED
        assert oc.value.reason == "why"
        ch.close()
        with pytest.raises(kcoro.ChannelClosed) as cc:
            await ch.send(1)
        assert cc.value.errno == errno.EPIPE
        assert cc.value.index is None  # set only by select

    run(main)


def test_errno_from_threads() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    with pytest.raises(TimeoutError) as te:
        ch.recv_blocking(timeout=0.001)
    assert te.value.errno == errno.ETIME
    tok = kcoro.CancelToken()
    threading.Timer(0, tok.cancel, args=("late",)).start()
    with pytest.raises(kcoro.OperationCancelled) as oc:
        ch.recv_blocking(cancel=tok)
    assert oc.value.errno == errno.ECANCELED
    assert oc.value.reason == "late"
    assert ch.stats().waiting_receivers == 0


def test_undelivered_element_error_carries_the_handler_exception() -> None:
    boom = RuntimeError("handler failed")

    def handler(item: Any) -> None:
        raise boom

    ch: kcoro.Channel[int] = kcoro.Channel(3, on_undelivered=handler)
    for i in range(3):
        ch.try_send(i)
    with pytest.raises(kcoro.UndeliveredElementError) as ei:
        ch.cancel()
    assert ei.value.__cause__ is boom
    assert isinstance(ei.value.errno, int)
    # The channel is cancelled and consistent anyway.
    assert ch.closed_for_recv
    assert_stats(ch, undelivered=3, buffered=0)
    ch.check_invariants()



@pytest.mark.parametrize("capacity", [
    2**30, 2**62, sys.maxsize - 1,
    sys.maxsize,
    10**20,
])
def test_large_int_capacity_is_reported_exactly(capacity: int) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(capacity)
    assert ch.kind == "buffered"
    assert ch.capacity == capacity
    assert ch.stats().capacity == capacity
    assert f"0/{capacity}" in repr(ch)


def test_infinite_timeout_waits_like_none() -> None:
    """timeout=math.inf is a valid bounded-wait value that never expires (kcoro task on the real
    clock, asyncio task, thread)."""

    async def kcoro_main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        r = kcoro.spawn(_recv_inf, ch)
        await settle()
        assert r.state == "PARKED"
        await ch.send(1)
        assert await r == 1

    kcoro.run(kcoro_main)

    async def aio_main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel()
        r = asyncio.ensure_future(ch.recv(timeout=math.inf))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not r.done()
        await ch.send(2)
        assert await r == 2

    asyncio.run(aio_main())

    ch: kcoro.Channel[int] = kcoro.Channel()
    got: list[int] = []
    th = threading.Thread(target=lambda: got.append(ch.recv_blocking(timeout=math.inf)))
    th.start()
    wait_until(lambda: ch.stats().waiting_receivers == 1)
    ch.send_blocking(3)
    th.join(timeout=10)
    assert got == [3]
    assert_failures(ch)


async def _recv_inf(ch: kcoro.Channel[int]) -> int:
    return await ch.recv(timeout=math.inf)
