"""Shared helpers for the channel suites (tests/test_chan_*.py).

``KINDS`` is the kotlinx ``TestChannelKind`` list: every channel behaviour that applies to a kind
is parametrised over it.  ``run`` runs a test body on a native runtime with an autojumping mock
clock, so timeouts take no real time and tasks are ordered with ``wait_all_tasks_blocked`` only.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import kcoro
from kcoro.testing import MockClock, wait_all_tasks_blocked

T = TypeVar("T")

# (id, capacity argument)
KIND_PARAMS: list[tuple[str, Any]] = [
    ("rendezvous", kcoro.RENDEZVOUS),
    ("buffered1", 1),
    ("buffered2", 2),
    ("buffered10", 10),
    ("unlimited", kcoro.UNLIMITED),
    ("conflated", kcoro.CONFLATED),
]
KIND_IDS = [k for k, _ in KIND_PARAMS]
CAPS = dict(KIND_PARAMS)

# Kinds whose senders park when the buffer is full (SUSPEND with a finite buffer).
BOUNDED_IDS = ["rendezvous", "buffered1", "buffered2", "buffered10"]
# Kinds that keep every item in FIFO order (conflated keeps only the latest).
FIFO_IDS = ["rendezvous", "buffered1", "buffered2", "buffered10", "unlimited"]
# Kinds whose sends never park.
NONBLOCKING_SEND_IDS = ["unlimited", "conflated"]


def kind_param(ids: list[str]) -> pytest.MarkDecorator:
    """``@kind_param(FIFO_IDS)``: parametrise a test's ``kind`` argument over these kinds."""
    return pytest.mark.parametrize("kind", ids)


all_kinds = kind_param(KIND_IDS)
bounded_kinds = kind_param(BOUNDED_IDS)
fifo_kinds = kind_param(FIFO_IDS)


def make(kind: str, **kw: Any) -> kcoro.Channel[Any]:
    return kcoro.Channel(CAPS[kind], name=kw.pop("name", f"test-{kind}"), **kw)


def buffer_room(kind: str) -> int:
    """How many sends complete with no receiver (a large number stands for unlimited)."""
    cap = CAPS[kind]
    if cap == kcoro.CONFLATED:
        return 1
    if cap == kcoro.UNLIMITED:
        return 1000
    return int(cap)


def expected_capacity(kind: str) -> float:
    cap = CAPS[kind]
    if cap == kcoro.CONFLATED:
        return 1
    if cap == kcoro.UNLIMITED:
        return math.inf
    return int(cap)


def expected_kind(kind: str) -> str:
    if kind.startswith("buffered"):
        return "buffered"
    return kind


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``kcoro.run`` with an autojumping mock clock (timeouts cost no real time)."""
    return kcoro.run(fn, *args, clock=MockClock(autojump_threshold=0))


async def settle() -> None:
    """Let every other task run until it parks (the "all tasks blocked" barrier)."""
    await wait_all_tasks_blocked()


async def drain(ch: kcoro.Channel[Any]) -> list[Any]:
    """Everything ``try_recv`` can take right now (stops at WouldBlock or ChannelClosed)."""
    out = []
    while True:
        try:
            out.append(ch.try_recv())
        except (kcoro.WouldBlock, kcoro.ChannelClosed):
            return out


def counters(ch: kcoro.Channel[Any], *names: str) -> dict[str, Any]:
    s = ch.stats()
    return {n: getattr(s, n) for n in names}


def assert_stats(ch: kcoro.Channel[Any], **expected: Any) -> None:
    """Every named field of ``ch.stats()`` has exactly the expected value."""
    got = counters(ch, *expected)
    assert got == expected, f"stats of {ch!r}: {got} != {expected}"


# Every failure counter of ChannelStats, per side.
FAILURE_COUNTERS = (
    "send_would_block", "send_timeout", "send_closed", "send_cancelled", "send_dropped",
    "recv_would_block", "recv_timeout", "recv_closed", "recv_cancelled",
)


def assert_failures(ch: kcoro.Channel[Any], **nonzero: int) -> None:
    """The failure counters are exactly ``nonzero`` and 0 for every other cause."""
    expected = dict.fromkeys(FAILURE_COUNTERS, 0)
    expected.update(nonzero)
    assert_stats(ch, **expected)


class Recorder:
    """An ``on_undelivered`` handler that records what it was given."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, item: Any) -> None:
        self.items.append(item)
