"""Fixtures for the monitor tests: a private metrics directory per test, and a real second
process running a workload (tests/metrics/workload.py) that serves its metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import kcoro.metrics
from kcoro import _tokens

WORKLOAD = os.path.join(os.path.dirname(__file__), "workload.py")


def _fresh_kernel() -> None:
    k = _tokens._kernel
    if k is not None:
        k.shutdown()


@pytest.fixture(autouse=True)
def fresh_token_kernel() -> Iterator[None]:
    """Each test gets its own token kernel (its counters start at 0).  Also keeps a known core
    bug from leaking between tests: TaskGroup exits and wait_all_tasks_blocked complete
    uncounted internal tickets (tests/test_tokens.py, the strict xfail), which skews
    ``completed + cancelled <= published`` for the rest of a kernel's life."""
    _fresh_kernel()
    yield
    _fresh_kernel()


@pytest.fixture
def metrics_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short, owner-only KCORO_METRICS_DIR (Unix socket paths are limited to 107 bytes, and
    other engineers' processes must not show up in our listings)."""
    d = tempfile.mkdtemp(prefix="kcm-", dir="/tmp")
    monkeypatch.setenv("KCORO_METRICS_DIR", d)
    yield d
    kcoro.metrics.stop()
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Workload:
    proc: subprocess.Popen[str]
    pid: int
    path: str

    def stop(self) -> None:
        """The handshake: closing stdin makes the workload exit.  If it does not, fail with what
        its tasks are parked on (read with `kcoro top --once`) instead of leaving it behind."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dump = subprocess.run([sys.executable, "-m", "kcoro", "top", str(self.pid), "--once"],
                                  capture_output=True, text=True, timeout=60)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the workload did not exit after its stdin closed (its "
                                 f"TaskGroup never finished); it showed:\n{dump.stdout}"
                                 f"{dump.stderr}") from None


def start_workload(metrics_dir: str, *args: str) -> Workload:
    env = dict(os.environ, KCORO_METRICS="1", KCORO_METRICS_DIR=metrics_dir)
    proc = subprocess.Popen([sys.executable, WORKLOAD, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until READY (or EOF if it died)
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"workload did not start: {line!r}")
    _, pid, path = line.split()
    return Workload(proc, int(pid), path)


@pytest.fixture
def workload(metrics_dir: str) -> Iterator[Workload]:
    w = start_workload(metrics_dir)
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.stop()
