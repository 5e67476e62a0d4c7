"""IPC test fixtures: nothing may be left behind in /dev/shm or the rendezvous directory."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

import kcoro.ipc as ipc


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
