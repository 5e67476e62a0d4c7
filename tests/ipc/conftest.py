"""IPC test fixtures: nothing may be left behind in /dev/shm or the rendezvous directory."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

import kcoro.ipc as ipc
from kcoro.ipc import _chan as ipc_chan
from kcoro.ipc._region import F_BROKEN


def detach_checking_leaks() -> None:
    """Leak check, then leave: every live endpoint's arena is back to in_use == 0 once the
    test dropped what it held (blocks still queued in a channel count as in use)."""
    gc.collect()
    try:
        for ch in list(ipc_chan._live._s):
            if ch._r.slot >= 0 and ch._pid == os.getpid() and not ch._r.flags & F_BROKEN:
                assert ch.arena.stats().in_use == 0, f"{ch!r} leaked {ch.arena.stats()}"
                ch.check_invariants()
    finally:
        ipc_chan._live.detach_all()


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    before = _shm()
    d = ipc.default_dir()
    files = set(os.listdir(d))
    yield
    gc.collect()
    assert _shm() <= before, f"left in /dev/shm: {_shm() - before}"
    assert set(os.listdir(d)) <= files, f"left in {d}: {set(os.listdir(d)) - files}"
