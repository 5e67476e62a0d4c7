"""Faults with real processes and real SIGKILL: survivors never hang, blocks are reclaimed,
what a dead process held is redelivered (at-least-once), nothing is left behind."""

from __future__ import annotations

import gc
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
from kcoro.ipc._region import LOCK_FLOCK, LOCK_MUTEX
from kcoro.testing import wait_until

from . import workers
from .conftest import detach_checking_leaks

FORK = mp.get_context("fork")
DEADLINE = 5.0  # generous for a loaded CI box; the measured detection time is ~1 ms


@pytest.fixture(autouse=True)
def _detach_after() -> Iterator[None]:
    yield
    detach_checking_leaks()


def start(target: Any, *args: Any) -> Any:
    p = FORK.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def kill(p: Any) -> float:
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    return time.monotonic()


def test_producer_killed_mid_send() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(8)
    p = start(workers.produce_forever, ch, 50_000)  # every message goes through the arena
    got = [ch.recv_blocking(timeout=20) for _ in range(20)]
    assert [g[0] for g in got] == list(range(20))
    del got
    t0 = kill(p)
    n = 0
    with pytest.raises(kcoro.ChannelClosed) as ei:
        while True:  # what it had sent is still receivable, then ChannelClosed
            ch.recv_blocking(timeout=DEADLINE)
            n += 1
    assert time.monotonic() - t0 < DEADLINE
    assert isinstance(ei.value.cause, ipc.PeerDied) and ei.value.cause.pid == p.pid
    assert n <= 9
    gc.collect()
    assert ch.arena.stats().in_use == 0  # its WRITING block, if any, was reclaimed
    assert ch.ipc_stats()["dead_peers"] == 1
    ch.check_invariants()


def test_consumer_killed_while_parked_in_recv() -> None:
    ch: ipc.Channel[Any] = ipc.Channel()
    c = start(workers.park_in_recv, ch)
    wait_until(lambda: ch._r.armed_recv_total() == 1, timeout=20)
    t0 = kill(c)
    with pytest.raises(kcoro.ChannelClosed) as ei:
        ch.send_blocking("nobody takes it", timeout=DEADLINE)  # never hangs
    assert time.monotonic() - t0 < DEADLINE
    assert isinstance(ei.value.cause, ipc.PeerDied) and ei.value.cause.pid == c.pid
    assert ch._r.armed_recv_total() == 0 and ch._r.tail == ch._r.head
    ch.check_invariants()


def test_parked_sender_unblocked_when_the_consumer_dies() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    ch.send_blocking("fills the buffer")
    c = start(workers.attach_and_sleep, ch)
    wait_until(lambda: c.pid in ch.peers(), timeout=20)
    errors: list[BaseException] = []

    async def sender() -> None:
        try:
            await ch.send("parked")
        except kcoro.ChannelClosed as exc:
            errors.append(exc)

    async def main() -> float:
        t = kcoro.spawn(sender)
        while ch.stats().waiting_senders == 0:
            await kcoro.sleep(0.001)
        t0 = kill(c)
        await t
        return time.monotonic() - t0

    assert kcoro.run(main) < DEADLINE
    assert isinstance(errors[0].__cause__, ipc.PeerDied)
    assert ch.recv_blocking(timeout=5) == "fills the buffer"  # the buffer still drains
    ch.check_invariants()


def test_killed_holder_of_payloads_is_redelivered_at_least_once() -> None:
    np = pytest.importorskip("numpy")
    ch: ipc.Channel[Any] = ipc.Channel(8, on_peer_death="ignore")
    ready: ipc.Channel[Any] = ipc.Channel(1)
    for i in range(3):
        p = ch.arena.alloc(100_000)
        p.view[:4] = i.to_bytes(4, "little")
        ch.send_blocking(p)
    ch.send_blocking(np.full(50_000, 7, dtype=np.int64))
    c = start(workers.hold_payloads, ch, 4, ready)
    assert ready.recv_blocking(timeout=20) == 4
    assert len(ch) == 0 and ch.arena.stats().in_use > 0
    kill(c)
    wait_until(lambda: len(ch) == 4, timeout=DEADLINE)  # re-queued at the head
    again = [ch.recv_blocking(timeout=5) for _ in range(4)]
    payloads = [a for a in again if isinstance(a, kcoro.Payload)]
    assert sorted(int.from_bytes(p.view[:4], "little") for p in payloads) == [0, 1, 2]
    arrays = [a for a in again if not isinstance(a, kcoro.Payload)]
    assert len(arrays) == 1 and int(arrays[0].sum()) == 7 * 50_000
    assert ch.ipc_stats()["requeued"] == 4
    assert not ch.closed_for_send  # policy "ignore": the channel carries on
    for p in payloads:
        p.release()
    del again, arrays, payloads
    gc.collect()
    assert ch.arena.stats().in_use == 0
    ch.check_invariants()


def test_one_of_two_consumers_killed_survivor_gets_everything() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4, on_peer_death="ignore")
    ready: ipc.Channel[Any] = ipc.Channel(1)
    out: ipc.Channel[Any] = ipc.Channel(1)
    victim = start(workers.hold_payloads, ch, 3, ready)
    for i in range(3):  # a memoryview is rebuilt over the block: the victim really holds it
        ch.send_blocking((i, memoryview(bytearray(20_000))))
    assert ready.recv_blocking(timeout=20) == 3
    assert ch.arena.stats().in_use >= 3 * 20_000
    survivor = start(workers.collect, ch, out)
    kill(victim)
    for i in range(3, 40):
        ch.send_blocking((i, bytearray(20_000)), timeout=20)
    ch.close()
    ids = out.recv_blocking(timeout=30)
    survivor.join(10)
    assert sorted(ids) == list(range(40))  # at-least-once: nothing the victim held is lost
    gc.collect()
    assert ch.arena.stats().in_use == 0


def test_idle_peer_killed_closes_for_everyone_and_buffer_drains() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    ch.send_blocking("buffered")
    c = start(workers.attach_and_sleep, ch)
    wait_until(lambda: c.pid in ch.peers(), timeout=20)
    t0 = kill(c)
    wait_until(lambda: ch.closed_for_send, timeout=DEADLINE)
    assert time.monotonic() - t0 < DEADLINE
    assert ch.recv_blocking(timeout=5) == "buffered"
    with pytest.raises(kcoro.ChannelClosed, match=f"peer {c.pid} died"):
        ch.recv_blocking(timeout=5)
    with pytest.raises(kcoro.ChannelClosed):
        ch.send_blocking("late")


def test_everything_killed_leaves_nothing_behind() -> None:
    """A supervisor makes a channel (abstract rendezvous), forks a child, both get SIGKILL."""
    code = r"""
import os, sys, multiprocessing as mp, kcoro.ipc as ipc
from ipc import workers
ch = ipc.Channel(4)
ch.listen("@kcoro-killall-%d" % os.getpid())
p = mp.get_context("fork").Process(target=workers.produce_forever, args=(ch, 10000))
p.start()
ch.recv_blocking(timeout=20)
print(p.pid, flush=True)
sys.stdin.read()
"""
    before = set(os.listdir("/dev/shm"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(__file__)), *sys.path]))
    sup = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=env)
    assert sup.stdout is not None
    child = int(sup.stdout.readline())
    os.kill(child, signal.SIGKILL)
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait(10)
    def gone() -> bool:
        try:
            with open(f"/proc/{child}/status") as f:
                return "zombie" in f.read()
        except FileNotFoundError:
            return True

    wait_until(gone, timeout=10)
    assert set(os.listdir("/dev/shm")) <= before
    path = f"\0kcoro-rv/kcoro-killall-{sup.pid}".encode()
    import socket

    def refused() -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except ConnectionRefusedError:
            return True
        finally:
            s.close()
        return False

    # the abstract rendezvous vanishes with its process (the kernel may release the files of
    # a killed process a tick after it became a zombie: delayed fput)
    wait_until(refused, timeout=10)


def test_waker_killed_between_claiming_and_ringing_a_bell() -> None:
    """The dead process set our bell's pending flag and never rang: the reaper must ring us
    anyway (it forgets every pending flag), or a parked receiver would sleep forever."""
    ch: ipc.Channel[Any] = ipc.Channel(4)
    out: list[Any] = []

    def park() -> None:
        try:
            ch.recv_blocking(timeout=20)
        except BaseException as exc:  # ChannelClosed, or TimeoutError if the bell was lost
            out.append(exc)

    t = threading.Thread(target=park)
    t.start()
    wait_until(lambda: ch._r.armed_recv_total() == 1, timeout=10)
    t0 = time.monotonic()
    p = start(workers.claim_a_bell_and_die, ch, ch._r.slot)
    p.join(20)
    t.join(20)
    assert p.exitcode == -signal.SIGKILL
    assert out and isinstance(out[0], kcoro.ChannelClosed), out
    assert time.monotonic() - t0 < DEADLINE
    assert ch._r.armed_recv_total() == 0


@pytest.fixture(params=["mutex", "flock"])
def lock_kind(request: Any, monkeypatch: Any) -> str:
    """Channels made in the test use this lock (robust mutex, or flock as a fallback)."""
    monkeypatch.setenv("KCORO_IPC_LOCK", request.param)
    return str(request.param)


def test_process_killed_inside_a_locked_section(lock_kind: str) -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4, on_peer_death="ignore")
    assert ch._r.lock_kind == (LOCK_FLOCK if lock_kind == "flock" else LOCK_MUTEX)
    p = start(workers.die_inside_a_section, ch)
    p.join(20)
    assert p.exitcode == -signal.SIGKILL
    # the kernel released its flock, or handed the robust mutex to the next locker with
    # EOWNERDEAD; that holder sees the dirty marker, checks the allocator, and carries on (or
    # marks the channel broken if it were inconsistent)
    assert ch.recv_blocking(timeout=DEADLINE) == "before"
    ch.send_blocking("after", timeout=DEADLINE)
    assert ch.recv_blocking(timeout=DEADLINE) == "after"
    assert ch._r.h32[18] == 0  # the dirty marker was cleared
    ch.check_invariants()


def test_killed_mid_allocator_update_marks_the_channel_broken(lock_kind: str) -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4, on_peer_death="ignore")
    p = start(workers.die_mid_allocator_update, ch)
    p.join(20)
    with pytest.raises(kcoro.ChannelClosed, match="broken"):
        ch.recv_blocking(timeout=DEADLINE)
    with pytest.raises(kcoro.ChannelClosed, match="broken"):
        ch.send_blocking("x", timeout=DEADLINE)
