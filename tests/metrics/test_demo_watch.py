"""`kcoro demo pipeline --watch` keeps the pipeline alive for `kcoro top`; the default demo run
ends by pointing to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from kcoro.cli import main
from kcoro.metrics.ndjson import validate


def test_default_demo_ends_by_pointing_to_watch_and_top() -> None:
    r = subprocess.run([sys.executable, "-m", "kcoro", "demo", "--items", "200"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == (
        "Watch it live: run `kcoro demo pipeline --watch`, then `kcoro top PID` in another "
        "terminal.")


def test_watch_serves_the_running_pipeline(metrics_dir: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(os.environ, KCORO_METRICS_DIR=metrics_dir)
    p = subprocess.Popen([sys.executable, "-m", "kcoro", "demo", "pipeline", "--watch"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().startswith(f"pipeline running with metrics served (pid "
                                              f"{p.pid}")
        assert f"kcoro top {p.pid}" in p.stdout.readline()
        assert main(["top", str(p.pid), "--ndjson", "--count", "1", "--interval", "0.05"]) == 0
        recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
        for r in recs:
            validate(r)
        chans = {r["channel"]: r for r in recs if r["type"] == "channel"}
        assert chans["jobs"]["packets_per_s"] > 0 and chans["results"]["packets_per_s"] > 0
        tasks = {t["name"] for r in recs if r["type"] == "runtime" for t in r["tasks"]}
        assert {"producer", "worker-0", "sink"} <= tasks
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err
