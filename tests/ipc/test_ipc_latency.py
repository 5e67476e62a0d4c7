"""The small-message path (B7): spin scoring, ping-pong between processes sharing one CPU."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro.ipc as ipc

from .conftest import detach_checking_leaks

FORK = mp.get_context("fork")


@pytest.fixture(autouse=True)
def _detach_after() -> Iterator[None]:
    yield
    detach_checking_leaks()


def test_spin_scoring_backs_off_and_recovers() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    assert ch._spin_allowed()
    for k in range(1, 12):
        ch._spin_paid(False)
        skipped = 0
        while not ch._spin_allowed():
            skipped += 1
        assert skipped == (1 << min(k, 8)) - 1
    ch._spin_paid(True)
    ch._spin_paid(False)
    assert ch._spin_skip == 1  # one success resets the score


def _echo(a: ipc.Channel[Any], b: ipc.Channel[Any], n: int, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    for _ in range(n):
        b.send_blocking(a.recv_blocking(timeout=30))


def test_ping_pong_sharing_one_cpu() -> None:
    """Both processes pinned to the same CPU: every hop needs a doorbell and a context switch
    (a spinner would only burn its partner's time slice).  Values arrive in order, and the
    hops stay far below the 4 ms scheduler tick a spinning partner would cost."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    a: ipc.Channel[Any] = ipc.Channel(1)
    b: ipc.Channel[Any] = ipc.Channel(1)
    n = 400
    p = FORK.Process(target=_echo, args=(a, b, n, cpu), daemon=True)
    p.start()
    try:
        os.sched_setaffinity(0, {cpu})
        t0 = time.perf_counter()
        for i in range(n):
            a.send_blocking(i, timeout=30)
            assert b.recv_blocking(timeout=30) == i
        per_hop = (time.perf_counter() - t0) / n / 2
    finally:
        os.sched_setaffinity(0, before)
    p.join(10)
    assert p.exitcode == 0
    assert per_hop < 2e-3, f"{per_hop * 1e6:.0f} µs per hop"
