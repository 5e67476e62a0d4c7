"""`kcoro top` headless: listing, --once [--json], --ndjson against a real second process, and
error messages (never a traceback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import kcoro.metrics
from kcoro.cli import main
from kcoro.metrics.ndjson import validate

from .conftest import Workload

KINDS = {"rv": "rendezvous", "buf": "buffered", "unl": "unlimited", "conf": "conflated"}


def test_no_argument_lists_attachable_processes(workload: Workload, metrics_dir: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    stale = os.path.join(metrics_dir, "999999999.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    assert main(["top"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == [str(workload.pid)])
    assert "workload.py" in line
    assert "999999999" not in out.replace("999999999.sock", "")
    assert "1 stale socket" in out
    assert "kcoro top PID" in out


def test_no_processes_says_how_to_start_one(metrics_dir: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top"]) == 0
    out = capsys.readouterr().out
    assert "no kcoro processes serving metrics" in out and "KCORO_METRICS=1" in out


def test_once_json_and_text(workload: Workload, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", str(workload.pid), "--once", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    validate(rec)
    kinds = {c["name"]: c["kind"] for c in rec["channels"]}
    assert {n: kinds[n] for n in KINDS} == KINDS
    idle = next(c for c in rec["channels"] if c["name"] == "idle")
    assert idle["recv_would_block"] == 3 and idle["waiting_receivers"] == 1
    tasks = {t["name"]: t for rt in rec["runtimes"] for t in rt["tasks"]}
    assert tasks["idle-waiter"]["parked_on"] == {"kind": "channel", "name": "idle"}

    assert main(["top", workload.path, "--once"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    for name, kind in KINDS.items():
        assert rows[name][1] == kind
        assert rows[name][3] != "0", f"{name} shows no traffic: {rows[name]}"
    assert rows["unl"][2] == "0/inf" or rows["unl"][2].endswith("/inf")
    assert "wb3" in rows["idle"]
    assert "task" in out and "idle-waiter: PARKED on channel idle" in out


def test_ndjson_stream_follows_the_schema(workload: Workload,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", str(workload.pid), "--ndjson", "--count", "2",
                 "--interval", "0.05"]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    for r in recs:
        validate(r)
    types = [r["type"] for r in recs]
    assert types[0] == "hello" and types[-2:] == ["summary", "end"]
    assert {"channel", "tokens", "runtime"} <= set(types)
    assert recs[-1]["reason"] == "count reached"
    chan = [r for r in recs if r["type"] == "channel"]
    assert len({r["seq"] for r in chan}) == 2
    for name, kind in KINDS.items():
        rs = [r for r in chan if r["channel"] == name]
        assert len(rs) == 2 and rs[0]["kind"] == kind
        assert all(r["packets_per_s"] > 0 and r["d_sends"] > 0 for r in rs), rs
    conf = [r for r in chan if r["channel"] == "conf"]
    assert sum(r["d_undelivered"] for r in conf) > 0  # overwritten values
    assert all(r["capacity"] is None for r in chan if r["channel"] == "unl")
    summary = {c["channel"]: c for c in recs[-2]["channels"]}
    assert summary["rv"]["samples"] == 2 and summary["rv"]["peak_packets_per_s"] > 0


def _cli(*args: str, env: dict[str, str] | None = None, **kw: object
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcoro", "top", *args], capture_output=True,
                          text=True, timeout=60, env=env, **kw)  # type: ignore[call-overload]


def test_ndjson_ends_cleanly_when_the_target_exits(workload: Workload) -> None:
    p = subprocess.Popen([sys.executable, "-m", "kcoro", "top", str(workload.pid), "--ndjson",
                          "--interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    for line in p.stdout:  # handshake: the stream is flowing
        if json.loads(line)["type"] == "channel":
            break
    workload.stop()
    rest = p.stdout.read()  # the same buffered reader: it may already hold part of the rest
    assert p.stderr is not None
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0
    last = [json.loads(ln) for ln in rest.splitlines()][-1]
    assert last["type"] == "end" and last["reason"].startswith("target gone")
    assert f"process {workload.pid} closed the metrics connection" in err
    assert "Traceback" not in err


def test_errors_are_one_line_not_a_traceback(metrics_dir: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    stale = os.path.join(metrics_dir, "999999999.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    garbage = os.path.join(metrics_dir, "garbage.sock")
    env = dict(os.environ, KCORO_METRICS_DIR=metrics_dir)
    # a server in another process that answers like an SSH daemon
    server = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
         "s.bind(sys.argv[1]); s.listen(1); print('up', flush=True)\n"
         "c, _ = s.accept(); c.sendall(b'SSH-2.0-OpenSSH_9.2\\r\\n'); c.recv(1)\n",
         garbage], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        # through the real entry point (`python -m kcoro`): exit status and stderr only
        for args, msg in [((garbage, "--once"), "does not speak the kcoro metrics protocol"),
                          (("999999999",), "stale metrics socket")]:  # live view: target first
            r = _cli(*args, env=env)
            assert r.returncode == 1, (args, r.stderr)
            assert msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # the same code in process, for the other cases
    cases = [
        ((stale, "--once"), "stale metrics socket"),
        (("999999999", "--ndjson"), "stale metrics socket"),
        ((os.path.join(metrics_dir, "none.sock"), "--once"), "no such socket"),
        (("999999998", "--once", "--json"), "no process 999999998"),
        ((str(os.getpid()), "--once"), f"process {os.getpid()} is not serving"),
    ]
    for args, msg in cases:
        assert main(["top", *args]) == 1, args
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, (args, err)
    kcoro.metrics.serve()
    r = _cli(str(os.getpid()), env=env)  # a good target, but no terminal for the live view
    assert r.returncode == 1 and "needs a terminal" in r.stderr
