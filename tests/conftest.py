"""Shared fixtures: every test ends with the kernel lock free and the token kernel consistent."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import kcoro.testing

# Stress tests scale with KCORO_STRESS (1 in CI; e.g. 20 for a long soak).
STRESS = float(os.environ.get("KCORO_STRESS", "1"))


def scaled(n: int) -> int:
    return max(1, int(n * STRESS))


@pytest.fixture(autouse=True)
def _kernel_invariants() -> Iterator[None]:
    yield
    # the kernel lock and token kernel, every live channel, runtime (tasks, scopes, groups,
    # timers) and private arena (IPC tests check their shared arenas themselves)
    kcoro.testing.check_invariants(shared_arenas=False)
