"""kcoro.metrics.serve(): the Unix socket, the emit rules, slow monitors, and every way
attaching can fail (each a clear MonitorError)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import kcoro
import kcoro.metrics
from kcoro.metrics import client
from kcoro.metrics._server import MetricsServer
from kcoro.metrics.ndjson import validate
from kcoro.testing import wait_until


def test_serve_publishes_an_owner_only_socket_and_removes_it(metrics_dir: str) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(4, name="srv-chan")
    ch.try_send(1)
    srv = kcoro.metrics.serve()
    assert kcoro.metrics.serve() is srv  # idempotent
    assert srv.path == os.path.join(metrics_dir, f"{os.getpid()}.sock")
    st = os.stat(srv.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(metrics_dir).st_mode) == 0o700
    with client.connect(os.getpid()) as conn:
        assert conn.hello["pid"] == os.getpid()
        validate(conn.hello)
        snap = conn.read(timeout=10)  # sent at once on connect
        validate(snap)
        assert snap["seq"] == 1 and snap["dropped"] == 0
        assert any(c["name"] == "srv-chan" and c["buffered"] == 1 for c in snap["channels"])
    eps = kcoro.metrics.list_endpoints()
    assert [(e.pid, e.alive) for e in eps] == [(os.getpid(), True)]
    kcoro.metrics.stop()
    assert not os.path.exists(srv.path)
    assert kcoro.metrics.current_server() is None


def _ops(ch: kcoro.Channel[int], n: int) -> None:
    for _ in range(n):
        ch.try_send(0)
        ch.try_recv()


def _ticks(srv: MetricsServer, n: int) -> None:
    """Wait until the server has checked its emit rules ``n`` more times."""
    t0 = srv.stats()["ticks"]
    wait_until(lambda: srv.stats()["ticks"] >= t0 + n, timeout=30)


def test_emit_rules_min_ops_min_interval_and_heartbeat(metrics_dir: str) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1, name="srv-rules")
    srv = MetricsServer(os.path.join(metrics_dir, "rules.sock"), emit_min_ops=50,
                        emit_min_ms=3_600_000, tick_ms=5, heartbeat_s=3600).start()
    try:
        with client.connect(srv.path) as conn:
            conn.read(timeout=10)  # the on-connect snapshot
            base = srv.stats()["samples"]
            _ops(ch, 20)  # 20 items < emit_min_ops, long before emit_min_ms: nothing
            _ticks(srv, 3)
            assert srv.stats()["samples"] == base
            _ops(ch, 40)  # 60 items in all: emitted at the next tick
            snap = conn.read(timeout=10)
            assert next(c for c in snap["channels"] if c["name"] == "srv-rules")["sends"] == 60
            assert srv.stats()["samples"] == base + 1
    finally:
        srv.stop()
    # a few ops and emit_min_ms elapsed: emitted; no ops at all: only the heartbeat
    srv = MetricsServer(os.path.join(metrics_dir, "rules2.sock"), emit_min_ops=10_000,
                        emit_min_ms=1, tick_ms=5, heartbeat_s=3600).start()
    try:
        with client.connect(srv.path) as conn:
            conn.read(timeout=10)
            _ops(ch, 1)
            assert next(c for c in conn.read(timeout=10)["channels"]
                        if c["name"] == "srv-rules")["sends"] == 61
            base = srv.stats()["samples"]
            _ticks(srv, 3)
            assert srv.stats()["samples"] == base  # idle: nothing to say
    finally:
        srv.stop()
    srv = MetricsServer(os.path.join(metrics_dir, "rules3.sock"), tick_ms=5,
                        heartbeat_s=0.01).start()
    try:
        with client.connect(srv.path) as conn:
            seqs = [conn.read(timeout=10)["seq"] for _ in range(3)]
            assert seqs == [1, 2, 3]  # idle, yet alive
    finally:
        srv.stop()


def test_subscribe_limits_how_often_a_monitor_gets_snapshots(metrics_dir: str) -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1, name="srv-sub")
    srv = MetricsServer(os.path.join(metrics_dir, "sub.sock"), emit_min_ops=1, emit_min_ms=1,
                        tick_ms=5, heartbeat_s=0.005).start()
    try:
        with client.connect(srv.path) as fast, client.connect(srv.path) as slow:
            slow.subscribe(0.2)
            fast.read(timeout=10)
            slow.read(timeout=10)
            seen = [slow.read(timeout=10)["mono_ns"] for _ in range(3)]
            # ticks are 5 ms apart, yet this monitor gets one snapshot per ~0.2 s (the bound is
            # loose: a snapshot's own timestamp is taken a moment after its tick)
            assert all(b - a >= 0.15e9 for a, b in itertools.pairwise(seen)), seen
            _ops(ch, 1)
            # the other monitor kept getting every tick's snapshot meanwhile
            n = 0
            while fast.read(timeout=10)["mono_ns"] < seen[-1]:
                n += 1
            assert n >= 3
            validate({"type": "subscribe", "schema": 1, "interval_s": 0.2})
    finally:
        srv.stop()


def test_a_stuck_monitor_gets_dropped_samples_not_backpressure(metrics_dir: str) -> None:
    # Big snapshots (many long-named channels) fill the socket buffer of a monitor that never
    # reads; the program must keep running and the drops must be counted.
    chans = [kcoro.Channel(1, name=f"stuck-{i:04d}-" + "x" * 150) for i in range(300)]
    srv = MetricsServer(os.path.join(metrics_dir, "stuck.sock"), emit_min_ops=1,
                        emit_min_ms=1, tick_ms=2, heartbeat_s=0.002).start()
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stuck.connect(srv.path)
        done = 0
        while srv.stats()["dropped"] < 3:  # the program runs on, unblocked
            _ops(chans[done % 300], 1)
            done += 1
            assert done < 10_000_000, "no sample was ever dropped"
        assert srv.stats()["clients"] == 1
        # drain: once the monitor catches up, a later snapshot carries its drop count
        f = stuck.makefile("rb")
        for line in f:
            rec = json.loads(line)
            if rec["type"] == "snapshot" and rec["dropped"] > 0:
                assert rec["seq"] >= 1
                break
    finally:
        stuck.close()
        srv.stop()


@pytest.fixture
def fake_server(metrics_dir: str) -> Iterator[tuple[str, list[bytes]]]:
    """A Unix socket that answers every connection with the bytes queued in ``replies``."""
    path = os.path.join(metrics_dir, "fake.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(4)
    replies: list[bytes] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            with conn:
                if replies:
                    conn.sendall(replies.pop(0))
                    if not replies or replies[0] != b"<hold>":
                        continue
                    replies.pop(0)
                conn.recv(1)  # hold it open until the client gives up

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    yield path, replies
    stop.set()
    lst.shutdown(socket.SHUT_RDWR)
    lst.close()
    th.join(10)


def test_a_socket_speaking_garbage_is_a_clear_error(
        fake_server: tuple[str, list[bytes]]) -> None:
    path, replies = fake_server
    replies.append(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(client.MonitorError, match="does not speak the kcoro metrics protocol"):
        client.connect(path)
    replies.append(b'{"type": "hello", "schema": 99}\n')
    with pytest.raises(client.MonitorError, match="schema 99"):
        client.connect(path)
    replies.append(b"\x00" * 10000)
    with pytest.raises(client.MonitorError, match="does not speak"):
        client.connect(path)
    replies.extend([b"", b"<hold>"])  # says nothing at all
    with pytest.raises(client.MonitorError, match=r"no data within 0.3s"):
        client.connect(path, timeout=0.3)


def test_stale_missing_and_wrong_targets_are_clear_errors(metrics_dir: str) -> None:
    stale = os.path.join(metrics_dir, "999999999.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # the file stays, nobody listens: what a killed process leaves
    with pytest.raises(client.MonitorError, match=r"stale metrics socket .* process 999999999 "
                                                  r"is gone"):
        client.connect(stale)
    with pytest.raises(client.MonitorError, match="stale"):
        client.connect(999999999)
    assert [(e.pid, e.alive) for e in kcoro.metrics.list_endpoints()] == [(999999999, False)]
    os.unlink(stale)
    with pytest.raises(client.MonitorError, match="no process 999999999"):
        client.connect(999999999)
    with pytest.raises(client.MonitorError, match=f"process {os.getpid()} is not serving"):
        client.connect(os.getpid())
    with pytest.raises(client.MonitorError, match="no such socket"):
        client.connect(os.path.join(metrics_dir, "nope.sock"))
    regular = os.path.join(metrics_dir, "file.txt")
    open(regular, "w").close()
    with pytest.raises(client.MonitorError, match="is not a Unix socket"):
        client.connect(regular)


def test_unsafe_metrics_directory_is_refused(tmp_path: object,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    d = os.path.join(str(tmp_path), "open")
    os.mkdir(d)
    os.chmod(d, 0o777)
    monkeypatch.setenv("KCORO_METRICS_DIR", d)
    with pytest.raises(OSError, match="accessible to other users"):
        kcoro.metrics.serve()
    with pytest.raises(client.MonitorError, match="refusing the metrics directory"):
        client.connect(12345)


def test_a_target_that_exits_while_attached(workload: object) -> None:
    from .conftest import Workload

    assert isinstance(workload, Workload)
    conn = client.connect(workload.pid)
    try:
        assert conn.read(timeout=10)["type"] == "snapshot"
        workload.stop()
        with pytest.raises(client.TargetGone, match=f"process {workload.pid} closed"):
            while True:
                conn.read(timeout=10)
    finally:
        conn.close()
    assert not os.path.exists(workload.path)  # it cleaned up after itself
    with pytest.raises(client.MonitorError, match=f"no process {workload.pid}"):
        client.connect(workload.pid)


def test_serve_refuses_a_live_foreign_socket_and_replaces_a_stale_one(metrics_dir: str) -> None:
    path = os.path.join(metrics_dir, "shared.sock")
    first = MetricsServer(path).start()
    try:
        with pytest.raises(FileExistsError):
            MetricsServer(path).start()
    finally:
        first.stop()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    second = MetricsServer(path).start()
    try:
        with client.connect(path) as conn:
            assert conn.pid == os.getpid()
    finally:
        second.stop()


def test_env_var_serves_an_unmodified_program(metrics_dir: str) -> None:
    code = ("import kcoro, kcoro.metrics, sys; s = kcoro.metrics.current_server(); "
            "print(s.path if s else 'none', flush=True); sys.stdin.read()")
    env = dict(os.environ, KCORO_METRICS="1", KCORO_METRICS_DIR=metrics_dir)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None and p.stdin is not None
        path = p.stdout.readline().strip()
        assert path == os.path.join(metrics_dir, f"{p.pid}.sock")
        with client.connect(p.pid) as conn:
            assert conn.hello["pid"] == p.pid
        p.stdin.close()
        assert p.wait(timeout=30) == 0
        assert not os.path.exists(path)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    env["KCORO_METRICS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], input="", capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.stdout.strip() == "none"


def test_a_forked_child_does_not_inherit_the_server(metrics_dir: str) -> None:
    from kcoro.metrics import _server

    for auto in (False, True):
        if auto:
            _server.autoserve()
        else:
            kcoro.metrics.serve()
        parent = kcoro.metrics.current_server()
        assert parent is not None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it serves, then leave without cleanup handlers
            try:
                srv = kcoro.metrics.current_server()
                os.write(w, (srv.path if srv is not None else "none").encode())
                if srv is not None:
                    srv.stop()
            finally:
                os._exit(0)
        os.close(w)
        got = os.read(r, 4096).decode()
        os.close(r)
        os.waitpid(pid, 0)
        if auto:  # KCORO_METRICS=1 semantics: the child serves itself, under its own pid
            assert got == os.path.join(metrics_dir, f"{pid}.sock")
        else:
            assert got == "none"
        assert os.path.exists(parent.path)  # the parent's socket is untouched
        with client.connect(os.getpid()) as conn:
            assert conn.pid == os.getpid()
        kcoro.metrics.stop()


def test_default_directory_is_a_private_metrics_subdirectory(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = str(tmp_path)
    monkeypatch.delenv("KCORO_METRICS_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    d = kcoro.metrics.runtime_dir(create=True)
    assert d == os.path.join(xdg, "kcoro", "metrics")
    for part in (os.path.dirname(d), d):
        assert stat.S_IMODE(os.stat(part).st_mode) == 0o700
    assert kcoro.metrics.socket_path_for(42) == os.path.join(d, "42.sock")
