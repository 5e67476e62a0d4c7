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


def _ours(d: str) -> set[str]:
    """Entries of the (per-user, shared) rendezvous directory named by this test process: other
    test runs of the same user may come and go there at the same time."""
    me = str(os.getpid())
    return {n for n in os.listdir(d) if me in n}


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    before = _shm()
    d = ipc.default_dir()
    files = _ours(d)
    yield
    gc.collect()
    assert _shm() <= before, f"left in /dev/shm: {_shm() - before}"
    assert _ours(d) <= files, f"left in {d}: {_ours(d) - files}"
