"""``kcoro demo ipc``: a multi-process pipeline passing frames zero-copy, with its stats."""

from __future__ import annotations

import re
import subprocess
import sys


def test_ipc_demo_runs_zero_copy_and_leaves_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "kcoro", "demo", "ipc"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"ipc pipeline: 120 (numpy|bytearray) frames of 921,600 bytes, camera -> 2 "
                     r"worker processes -> collector in [\d.]+s .*checksum ok; zero-copy yes", out)
    frames = next(ln for ln in out.splitlines()
                  if ln.strip().startswith("frames ") and "per worker" not in ln)
    assert "sends=120 recvs=120" in frames and "zref_sent=120 zref_received=120" in frames
    arena = next(ln for ln in out.splitlines() if ln.strip().startswith("arena"))
    assert "in_use=0" in arena and "allocs=120 frees=120 spills=0" in arena
    assert "dead_peers=0" in out and "protocol_errors=0" in out
