"""The demos print what the journal's lab programs expect."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def run_demo(name: str, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "kcoro", "demo", name, *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_park_demo_order() -> None:
    assert run_demo("park").splitlines() == [
        "[main] resuming",
        "[co] before park",
        "[main] first resume return",
        "[co] after park",
        "[main] second resume return",
    ]


def test_tokens_demo_complete_and_cancel_paths() -> None:
    lines = run_demo("tokens").splitlines()
    assert lines[:5] == [
        "[main] initializing token kernel...",
        "[coroutine] published ticket id=1, parking...",
        "[main] coroutine parked with ticket id=1",
        "[main] completing ticket id=1 from another thread",
        "[coroutine] resumed payload=b'ok' len=2 status=COMPLETED",
    ]
    assert lines[5:9] == [
        "[coroutine] published ticket id=2, parking...",
        "[main] coroutine parked with ticket id=2",
        "[main] cancelling ticket id=2 from another thread",
        "[coroutine] resumed: OperationCancelled reason='demo cancel' status=CANCELLED",
    ]
    assert "late completion accepted=False" in lines[9]
    assert "zombies=1" in lines[9]


@pytest.mark.parametrize("workers", [1, 3])
def test_pipeline_demo_reports_throughput_and_stats(workers: int) -> None:
    out = run_demo("pipeline", "--items", "3000", "--workers", str(workers))
    assert re.search(rf"pipeline: 3000 items through {workers} workers in [\d.]+s "
                     r"\([\d,]+ items/s\); checksum ok", out)
    for name in ("jobs", "results"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name))
        assert "sends=3000 recvs=3000" in line
        assert "buffered=0 closed=True waiting=0/0" in line
