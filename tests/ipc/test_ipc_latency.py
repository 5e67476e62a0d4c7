"""The small-message path (B7): spin scoring, ping-pong between processes sharing one CPU."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro
import kcoro.ipc as ipc

from .conftest import detach_checking_leaks

FORK = mp.get_context("fork")


@pytest.fixture(autouse=True)
def _detach_after() -> Iterator[None]:
    yield
    detach_checking_leaks()


def test_spin_scoring_backs_off_and_recovers() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    assert ch._spin_allowed()
    for k in range(1, 12):
        ch._spin_paid(False)
        skipped = 0
        while not ch._spin_allowed():
            skipped += 1
        assert skipped == (1 << min(k, 8)) - 1
    ch._spin_paid(True)
    ch._spin_paid(False)
    assert ch._spin_skip == 1  # one success resets the score


def _echo(a: ipc.Channel[Any], b: ipc.Channel[Any], n: int, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    for _ in range(n):
        b.send_blocking(a.recv_blocking(timeout=30))


def test_ping_pong_sharing_one_cpu() -> None:
    """Both processes pinned to the same CPU: every hop needs a doorbell and a context switch
    (a spinner would only burn its partner's time slice).  Values arrive in order, and the
    hops stay far below the 4 ms scheduler tick a spinning partner would cost."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    a: ipc.Channel[Any] = ipc.Channel(1)
    b: ipc.Channel[Any] = ipc.Channel(1)
    n = 400
    p = FORK.Process(target=_echo, args=(a, b, n, cpu), daemon=True)
    p.start()
    try:
        os.sched_setaffinity(0, {cpu})
        t0 = time.perf_counter()
        for i in range(n):
            a.send_blocking(i, timeout=30)
            assert b.recv_blocking(timeout=30) == i
        per_hop = (time.perf_counter() - t0) / n / 2
    finally:
        os.sched_setaffinity(0, before)
    p.join(10)
    assert p.exitcode == 0
    assert per_hop < 2e-3, f"{per_hop * 1e6:.0f} µs per hop"


# -- the C fast path (kcoro.ipc._fastring) and its hand-offs to the Python path ------------------
def test_fast_path_is_selected_unless_pure() -> None:
    from kcoro.ipc import _chan

    ch: ipc.Channel[Any] = ipc.Channel(1)
    assert (ch._fr is not None) == (_chan._fastring is not None)
    if os.environ.get("KCORO_PURE"):
        assert ch._fr is None
    elif os.environ.get("KCORO_REQUIRE_SPEEDUPS"):  # `make test`: a failed build must not hide
        assert ch._fr is not None, "kcoro.ipc._fastring was not built"
    code = "import kcoro.ipc._chan as c; print(c._fastring)"
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KCORO_PURE": "1"},
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "None", res.stderr


def test_c_and_pure_processes_share_a_channel() -> None:
    """One process with the C fast path, one without (KCORO_PURE=1): same lock, same bells."""
    ping: ipc.Channel[Any] = ipc.Channel(1)
    pong: ipc.Channel[Any] = ipc.Channel(1)
    p1 = ping.listen(f"@kcoro-test-ping-{os.getpid()}")  # abstract: no file
    p2 = pong.listen(f"@kcoro-test-pong-{os.getpid()}")
    code = ("import kcoro.ipc as ipc, sys\n"
            "a, b = ipc.connect(sys.argv[1]), ipc.connect(sys.argv[2])\n"
            "for x in a.iter_blocking(timeout=30):\n"
            "    b.send_blocking(x)\n"
            "b.close()\n")
    env = {**os.environ}
    if os.environ.get("KCORO_PURE"):
        env.pop("KCORO_PURE")  # the other way round
    else:
        env["KCORO_PURE"] = "1"
    child = subprocess.Popen([sys.executable, "-c", code, p1, p2], env=env)
    try:
        for i in range(300):
            v: Any = i if i % 3 else ("t", i, b"x" * (i % 50))
            ping.send_blocking(v, timeout=30)
            assert pong.recv_blocking(timeout=30) == v
        ping.close()
        with pytest.raises(kcoro.ChannelClosed):
            pong.recv_blocking(timeout=30)
    finally:
        assert child.wait(60) == 0
    ping.check_invariants()
    pong.check_invariants()


def test_recv_timeout_leaves_nothing_armed() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(2)
    with pytest.raises(TimeoutError):
        ch.recv_blocking(timeout=0.05)
    r = ch._r
    assert r.armed_recv_total() == 0 and not ch._leader.locked()
    assert ch.stats().recv_timeout == 1
    ch.send_blocking("x")
    assert ch.recv_blocking(timeout=1) == "x"


class _Alarm(Exception):
    pass


def test_signal_interrupts_a_parked_receiver() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(2)

    def handler(signum: int, frame: Any) -> None:
        raise _Alarm()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_Alarm):
            ch.recv_blocking()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert ch._r.armed_recv_total() == 0 and not ch._leader.locked()
    assert ch.stats().recv_cancelled == 1
    ch.send_blocking(5)
    assert ch.recv_blocking(timeout=1) == 5
    # a parked sender (full buffer, its offer in the ring) withdraws its offer
    ch.send_blocking(1)
    ch.send_blocking(2)
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_Alarm):
            ch.send_blocking(bytearray(1000))  # a block in the arena, not inline
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert ch._r.armed_send_total() == 0 and not ch._leader.locked()
    assert ch.stats().send_cancelled == 1
    assert [ch.recv_blocking(timeout=1) for _ in range(2)] == [1, 2]
    with pytest.raises(kcoro.WouldBlock):
        ch.try_recv()
    assert ch.arena.stats().in_use == 0


def _produce(ch: ipc.Channel[Any], n: int) -> None:
    for i in range(n):
        ch.send_blocking(i)
    ch.close()


def test_two_receiving_threads_one_leader() -> None:
    """Only one thread waits on the direct bell; the other goes through the I/O thread."""
    ch: ipc.Channel[Any] = ipc.Channel(4)
    got: list[list[int]] = [[], []]

    def take(k: int) -> None:
        for x in ch.iter_blocking(timeout=30):
            got[k].append(x)

    ts = [threading.Thread(target=take, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    n = 2000
    p = FORK.Process(target=_produce, args=(ch, n), daemon=True)
    p.start()
    for t in ts:
        t.join(60)
    p.join(10)
    assert sorted(got[0] + got[1]) == list(range(n))
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])


def test_malformed_inline_entry_names_its_sender() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    r = ch._r
    with r.lock:  # forge an inline entry that is not a pickle
        pos = r.tail
        r.write_entry(pos, 1, 0xFFFF, 5, 0, 0, 5, b"\xffjunk")
        r.h64[6] = pos + 1
    ch.send_blocking("after")
    with pytest.raises(ipc.ProtocolError, match="malformed inline message") as ei:
        ch.recv_blocking(timeout=5)
    assert ei.value.peer == r.slot
    assert ch.recv_blocking(timeout=5) == "after"
    assert ch.ipc_stats()["protocol_errors"] == 1


def test_payloads_between_c_and_pure_processes() -> None:
    """Both allocators (C and Python) work the same shared arena metadata: payloads and
    out-of-band buffers go back and forth, blocks come back, invariants hold."""
    ping: ipc.Channel[Any] = ipc.Channel(4, arena_bytes=4 << 20)
    pong: ipc.Channel[Any] = ipc.Channel(4, arena_bytes=4 << 20)
    p1 = ping.listen(f"@kcoro-test-pping-{os.getpid()}")
    p2 = pong.listen(f"@kcoro-test-ppong-{os.getpid()}")
    code = ("import kcoro.ipc as ipc, sys\n"
            "a, b = ipc.connect(sys.argv[1]), ipc.connect(sys.argv[2])\n"
            "for x in a.iter_blocking(timeout=30):\n"
            "    if isinstance(x, bytearray):\n"
            "        b.send_blocking(x)\n"
            "        continue\n"
            "    q = b.arena.alloc(x.nbytes)\n"
            "    q.view[:] = x.view\n"
            "    x.release()\n"
            "    b.send_blocking(q)\n"
            "a.check_invariants()\n"
            "b.close()\n")
    env = {**os.environ}
    if os.environ.get("KCORO_PURE"):
        env.pop("KCORO_PURE")
    else:
        env["KCORO_PURE"] = "1"
    child = subprocess.Popen([sys.executable, "-c", code, p1, p2], env=env)
    try:
        for i in range(200):
            n = 1000 + 7919 * i % 300_000
            if i % 5 == 0:
                ping.send_blocking(bytearray([i % 251]) * n, timeout=30)
                back = pong.recv_blocking(timeout=30)
                assert len(back) == n and back[0] == back[-1] == i % 251
                continue
            p = ping.arena.alloc(n)
            p.view[:] = bytes([i % 251]) * n
            ping.send_blocking(p, timeout=30)
            with pong.recv_blocking(timeout=30) as q:
                assert q.nbytes == n and q.view[0] == q.view[-1] == i % 251
        ping.close()
        with pytest.raises(kcoro.ChannelClosed):
            pong.recv_blocking(timeout=30)
    finally:
        assert child.wait(60) == 0
    for ch in (ping, pong):
        ch.check_invariants()
        assert ch.arena.stats().in_use == 0


def test_async_forms_take_the_c_path_and_keep_cancelled_scope_semantics() -> None:
    """kcoro tasks and asyncio complete at once through the C helper when they can; a kcoro
    task in a cancelled scope still gets Cancelled and consumes / delivers nothing."""
    ch: ipc.Channel[Any] = ipc.Channel(4)

    async def kmain() -> None:
        await ch.send(1)
        p = ch.arena.alloc(100)
        p.view[:3] = b"abc"
        await ch.send(p)
        assert await ch.recv() == 1
        with await ch.recv() as q:
            assert bytes(q.view[:3]) == b"abc"
        await ch.send("kept")
        with kcoro.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(kcoro.Cancelled):
                await ch.recv()
            with pytest.raises(kcoro.Cancelled):
                await ch.send("never")
        assert await ch.recv() == "kept"

    kcoro.run(kmain)

    async def amain() -> None:
        await ch.send(("t", 2))
        assert await ch.recv() == ("t", 2)
        await ch.send_zref(ch.arena.alloc(10))
        with await ch.recv_zref() as q:
            assert q.nbytes == 10

    asyncio.run(amain())
    s = ch.stats()
    assert s.sends == s.recvs == 5
    assert ch.zstats()["zref_sent"] == 2
