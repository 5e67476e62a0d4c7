"""Cross-process channels: kinds, forms, contexts, close/cancel, payloads, select, rendezvous."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import multiprocessing as mp
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro
import kcoro.ipc as ipc
from kcoro.testing import wait_until

from . import workers
from .conftest import detach_checking_leaks

FORK = mp.get_context("fork")
SPAWN = mp.get_context("spawn")
KINDS = [kcoro.RENDEZVOUS, 1, 4, kcoro.UNLIMITED]


@pytest.fixture(autouse=True)
def _detach_after() -> Iterator[None]:
    yield
    detach_checking_leaks()


def start(target: Any, *args: Any, ctx: Any = FORK) -> Any:
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def in_region(arr: Any, ch: ipc.Channel[Any]) -> bool:
    """Does the array's memory lie inside the channel's shared mapping (zero-copy)?"""
    base = ctypes.addressof(ctypes.c_char.from_buffer(ch._r.map))
    addr = arr.__array_interface__["data"][0]
    return bool(base <= addr < base + len(ch._r.map))


@pytest.mark.parametrize("cap", KINDS)
def test_every_kind_fifo_from_a_forked_producer(cap: Any) -> None:
    ch: ipc.Channel[int] = ipc.Channel(cap)
    p = start(workers.produce, ch, 300)
    got = list(ch.iter_blocking(timeout=30))
    p.join(10)
    assert got == list(range(300))
    s = ch.stats()
    assert (s.sends, s.recvs) == (300, 300) and s.closed_for_recv
    assert s.kind == ("unlimited" if cap == kcoro.UNLIMITED else
                      "rendezvous" if cap == 0 else "buffered")
    ch.check_invariants()


def test_spawn_children_get_the_endpoint_by_pickling() -> None:
    a: ipc.Channel[Any] = ipc.Channel(2)
    b: ipc.Channel[Any] = ipc.Channel(64)  # the child forwards while we still send
    p = start(workers.consume_to, a, b, ctx=SPAWN)
    for i in range(50):
        a.send_blocking(("x", i), timeout=30)
    a.close()
    assert list(b.iter_blocking(timeout=30)) == [("x", i) for i in range(50)]
    p.join(30)
    assert p.exitcode == 0


def test_kcoro_tasks_and_asyncio_across_processes() -> None:
    a: ipc.Channel[Any] = ipc.Channel()
    b: ipc.Channel[Any] = ipc.Channel(1)
    p = start(workers.echo_asyncio, a, b)

    async def main() -> None:
        for i in range(30):
            await a.send({"i": i})
            assert await b.recv() == {"i": i}
        a.close()
        with pytest.raises(kcoro.ChannelClosed):
            await b.recv()

    kcoro.run(main)
    p.join(10)
    assert p.exitcode == 0


def test_several_local_tasks_share_one_endpoint() -> None:
    ch: ipc.Channel[int] = ipc.Channel(2)
    p = start(workers.produce, ch, 200)
    got: list[int] = []

    async def worker() -> None:
        async for x in ch:
            got.append(x)

    async def main() -> None:
        async with kcoro.TaskGroup() as tg:
            for _ in range(4):
                tg.spawn(worker)

    kcoro.run(main)
    p.join(10)
    assert sorted(got) == list(range(200))


def test_asyncio_receiver() -> None:
    ch: ipc.Channel[int] = ipc.Channel(4)
    p = start(workers.produce, ch, 100)

    async def main() -> list[int]:
        return [x async for x in ch]

    assert asyncio.run(main()) == list(range(100))
    p.join(10)


def test_try_forms_and_rendezvous_try_send_needs_a_parked_receiver() -> None:
    ch: ipc.Channel[Any] = ipc.Channel()
    with pytest.raises(kcoro.WouldBlock):
        ch.try_send(1)
    with pytest.raises(kcoro.WouldBlock):
        ch.try_recv()
    out: ipc.Channel[Any] = ipc.Channel(1)
    p = start(workers.echo_blocking, ch, out, 1)
    wait_until(lambda: ch._r.armed_recv_total() == 1, timeout=20)
    assert ch.try_send("direct") is True
    assert out.recv_blocking(timeout=20) == "direct"
    p.join(10)
    b: ipc.Channel[int] = ipc.Channel(2)
    assert b.try_send(1) and b.try_send(2)
    with pytest.raises(kcoro.WouldBlock):
        b.try_send(3)
    assert b.try_recv() == 1 and len(b) == 1
    assert b.stats().send_would_block == 1 and ch.stats().recv_would_block == 1


def test_overflow_policies_and_conflated() -> None:
    old: ipc.Channel[int] = ipc.Channel(2, overflow=kcoro.DROP_OLDEST)
    for i in range(5):
        old.send_blocking(i)
    assert [old.try_recv(), old.try_recv()] == [3, 4]
    assert old.stats().undelivered == 3
    new: ipc.Channel[int] = ipc.Channel(2, overflow=kcoro.DROP_LATEST)
    assert [new.try_send(i) for i in range(4)] == [True, True, False, False]
    assert [new.try_recv(), new.try_recv()] == [0, 1]
    conf: ipc.Channel[int] = ipc.Channel(kcoro.CONFLATED)
    for i in range(10):
        assert conf.try_send(i)
    assert conf.try_recv() == 9 and conf.kind == "conflated"
    for c in (old, new, conf):
        c.check_invariants()


def test_timeouts_in_every_context() -> None:
    ch: ipc.Channel[Any] = ipc.Channel()
    with pytest.raises(TimeoutError):
        ch.recv_blocking(timeout=0.05)
    with pytest.raises(TimeoutError):
        ch.send_blocking(1, timeout=0.05)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await ch.recv(timeout=0.05)
        with pytest.raises(TimeoutError):
            await ch.send(2, timeout=0.05)
        with kcoro.move_on_after(0.05):
            await ch.recv()

    kcoro.run(main)

    async def amain() -> None:
        with pytest.raises(TimeoutError):
            await ch.recv(timeout=0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await ch.send(3)

    asyncio.run(amain())
    s = ch.stats()
    assert s.recv_timeout >= 2 and s.send_timeout >= 2
    assert ch._r.tail == ch._r.head, "a timed-out send left its offer behind"
    assert ch._r.armed_recv_total() == 0 and ch._r.armed_send_total() == 0
    ch.check_invariants()


def test_cancel_token_from_another_thread() -> None:
    ch: ipc.Channel[Any] = ipc.Channel()
    token = kcoro.CancelToken()
    errors: list[BaseException] = []

    def rx() -> None:
        try:
            ch.recv_blocking(cancel=token)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=rx)
    t.start()
    wait_until(lambda: ch._r.armed_recv_total() == 1)
    token.cancel("stop")
    t.join(10)
    assert isinstance(errors[0], kcoro.OperationCancelled)
    assert ch._r.armed_recv_total() == 0
    ch.try_send  # the channel is still usable  # noqa: B018
    b: ipc.Channel[int] = ipc.Channel(1)
    b.send_blocking(5)
    assert b.recv_blocking() == 5


def test_close_drains_then_closed_and_parked_sender_keeps_item() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(2)
    ch.send_blocking("a")
    ch.send_blocking("b")
    p = start(workers.park_in_send, ch, "c")  # parks: the buffer is full
    wait_until(lambda: ch.stats().waiting_senders == 1, timeout=20)
    assert ch.close() is True and ch.close() is False
    p.join(20)
    assert p.exitcode == 7  # the parked sender got ChannelClosed
    assert [ch.recv_blocking(), ch.recv_blocking()] == ["a", "b"]
    with pytest.raises(kcoro.ChannelClosed):
        ch.recv_blocking()
    with pytest.raises(kcoro.ChannelClosed):
        ch.try_send("d")
    assert ch.closed_for_recv
    ch.check_invariants()


def test_close_wakes_parked_receiver_in_another_process() -> None:
    ch: ipc.Channel[Any] = ipc.Channel()
    done: ipc.Channel[Any] = ipc.Channel(1)

    def body() -> None:
        try:
            ch.recv_blocking()
        except kcoro.ChannelClosed:
            done.send_blocking("closed")

    p = start(body)
    wait_until(lambda: ch._r.armed_recv_total() == 1, timeout=20)
    ch.close()
    assert done.recv_blocking(timeout=20) == "closed"
    p.join(10)


def test_cancel_discards_and_frees_blocks() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    ch.send_blocking(bytearray(100_000))  # goes through the arena
    p = ch.arena.alloc(5000)
    ch.send_zref(p).close() if False else ch.send_blocking(p)
    assert ch.arena.stats().in_use > 0
    ch.cancel()
    assert ch.arena.stats().in_use == 0
    s = ch.stats()
    assert s.undelivered == 2 and s.zref_aborted_close == 1
    with pytest.raises(kcoro.ChannelClosed, match="cancelled"):
        ch.recv_blocking()


def test_payload_travels_as_descriptor_and_ack_frees_block() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    out: ipc.Channel[Any] = ipc.Channel(16)

    def body() -> None:
        for _ in range(10):
            with ch.recv_blocking() as p:
                n = int.from_bytes(p.view[:8], "little")
                out.send_blocking((n, p.offset, p.view[-1], p.nbytes))

    c = start(body)
    offsets = []
    for i in range(10):
        p = ch.arena.alloc(200_000)
        p.view[:8] = i.to_bytes(8, "little")
        p.view[-1] = i
        offsets.append(p.offset)
        ch.send_blocking(p)
        assert p.released  # the reference moved to the receiver
    got = [out.recv_blocking(timeout=20) for _ in range(10)]
    assert got == [(i, offsets[i], i, 200_000) for i in range(10)]
    c.join(10)
    wait_until(lambda: ch.arena.stats().in_use == 0, timeout=10)
    z = ch.zstats()
    assert z["zref_sent"] == 10 and z["zref_received"] == 10


def test_sender_views_pin_a_moved_block() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    p = ch.arena.alloc(4096)
    v = p.view
    v[:3] = b"abc"
    ch.send_blocking(p)
    q = ch.try_recv()
    q.release()  # the receiver is done, but the sender still has a view
    assert ch.arena.stats().in_use == 4096
    assert bytes(v[:3]) == b"abc"
    del v
    gc.collect()
    assert ch.arena.stats().in_use == 0


def test_stale_and_duplicate_acks_are_rejected() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    p = ch.arena.alloc(100)
    idx, gen = p._idx, p.generation
    p.release()
    ch._r.ack(idx, gen)  # a duplicate ACK of a freed block
    q = ch.arena.alloc(100)
    assert q._idx == idx and q.generation == gen + 1
    ch._r.ack(idx, gen)  # a stale ACK must not free the reused block
    assert not q.released and ch.arena.stats().in_use == 4096
    assert ch.ipc_stats()["stale_acks"] == 2
    q.release()


def test_numpy_arrays_are_rebuilt_over_shared_memory() -> None:
    np = pytest.importorskip("numpy")
    ch: ipc.Channel[Any] = ipc.Channel(2)
    p = start(workers.send_numpy, ch, 8)
    arrays = list(ch.iter_blocking(timeout=30))
    p.join(10)
    assert [int(a[0, 0]) for a in arrays] == list(range(8))
    assert all(a.shape == (64, 1024) and a.dtype == np.int32 for a in arrays)
    assert all(in_region(a, ch) for a in arrays), "received arrays were copied"
    assert not arrays[0].flags.writeable
    assert ch.arena.stats().in_use > 0
    del arrays
    gc.collect()
    assert ch.arena.stats().in_use == 0


def test_buffers_bytes_and_memoryview_roundtrip() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(8)
    big = bytes(range(256)) * 1000
    ch.send_blocking(big)
    ch.send_blocking(bytearray(big))
    ch.send_blocking(memoryview(big))
    ch.send_blocking({"nested": [memoryview(b"x" * 100_000), 1]})
    assert ch.recv_blocking() == big
    ba = ch.recv_blocking()
    assert type(ba) is bytearray and ba == big
    mv = ch.recv_blocking()
    assert type(mv) is memoryview and mv.tobytes() == big
    d = ch.recv_blocking()
    assert bytes(d["nested"][0]) == b"x" * 100_000
    del mv, d
    gc.collect()
    assert ch.arena.stats().in_use == 0


def test_oversized_message_is_a_clear_error_and_full_arena_waits() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(8, arena_bytes=1 << 20)
    with pytest.raises(ipc.MessageTooLarge, match="arena"):
        ch.send_blocking(bytearray(2 << 20))
    held = ch.arena.alloc(600_000)  # a 1 MiB block: the arena is full
    with pytest.raises(kcoro.WouldBlock):
        ch.try_send(bytearray(100_000))
    with pytest.raises(TimeoutError):
        ch.send_blocking(bytearray(100_000), timeout=0.05)
    threading.Timer(0.05, held.release).start()
    ch.send_blocking(bytearray(100_000), timeout=20)  # waits until the block is freed
    assert len(ch.recv_blocking()) == 100_000
    gc.collect()
    assert ch.arena.stats().in_use == 0


def test_select_mixes_ipc_and_local_channels() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    out: ipc.Channel[Any] = ipc.Channel(4)
    local: kcoro.Channel[Any] = kcoro.Channel(1)
    p = start(workers.produce, ch, 5, False)

    async def main() -> list[Any]:
        got = []
        local.try_send("local")
        for _ in range(6):
            i, v = await kcoro.select(ch.on_recv(), local.on_recv(), timeout=20)
            got.append((i, v))
        i, _ = await kcoro.select(out.on_send("via-select"), timeout=20)
        assert i == 0
        return got

    got = kcoro.run(main)
    p.join(10)
    assert (1, "local") in got
    assert sorted(v for i, v in got if i == 0) == [0, 1, 2, 3, 4]
    assert out.recv_blocking(timeout=20) == "via-select"


def test_select_timeout_leaves_the_item_for_the_next_receive() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)

    async def main() -> Any:
        with pytest.raises(TimeoutError):
            await kcoro.select(ch.on_recv(), timeout=0.05)
        ch.try_send("later")
        return await ch.recv(timeout=20)

    assert kcoro.run(main) == "later"


def test_listen_connect_by_path_owner_only() -> None:
    d = ipc.default_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    path = os.path.join(d, f"t-{os.getpid()}.sock")
    ch: ipc.Channel[Any] = ipc.Channel(4)
    assert ch.listen(path) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    code = ("import kcoro.ipc as ipc, sys; c = ipc.connect(sys.argv[1]); "
            "c.send_blocking(('unrelated', 42)); print(c.kind)")
    res = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "buffered"
    assert ch.recv_blocking(timeout=10) == ("unrelated", 42)
    ch.detach()
    assert not os.path.exists(path)


def test_stale_socket_file_is_replaced() -> None:
    path = os.path.join(ipc.default_dir(), f"stale-{os.getpid()}.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # a listener that died without unlinking
    ch: ipc.Channel[Any] = ipc.Channel(1)
    ch.listen(path)
    other: ipc.Channel[Any] = ipc.Channel(1)
    with pytest.raises(FileExistsError, match="live listener"):
        other.listen(path)
    ch.detach()
    assert not os.path.exists(path)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_connection_from_another_user_is_refused() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    ch.listen(f"@kcoro-test-uid-{os.getpid()}")
    path = os.path.join(ipc.default_dir(), f"uid-{os.getpid()}.sock")
    ch2: ipc.Channel[Any] = ipc.Channel(1)
    ch2.listen(path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            res = b""
            for target in (f"@kcoro-test-uid-{os.getppid()}", path):
                try:
                    ipc.connect(target, timeout=5)
                    res += b"A"
                except ConnectionRefusedError:
                    res += b"R"
                except PermissionError:
                    res += b"P"
                except Exception:
                    res += b"?"
            os.write(w, res)
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 8)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"RP"  # abstract: refused by SO_PEERCRED; file: 0600 denies it
    assert ch._listener.refused == 1
    ch.detach()
    ch2.detach()


def test_malformed_frames_drop_that_peer_only() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(2)
    name = f"@kcoro-test-bad-{os.getpid()}"
    ch.listen(name)
    lst = ch._listener
    for junk in (b"garbage!!!!!!!!!", b"KCRV\x01\x00\x01\x00\xff\xff\xff\x7f", b"KCRV"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(b"\0kcoro-rv/" + name[1:].encode())
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        try:
            reply = s.recv(200)
        except ConnectionResetError:
            reply = b""
        assert reply == b"" or reply.startswith(b"KCRV")  # an ERROR frame, or a reset
        s.close()
    wait_until(lambda: len(lst.errors) == 3, timeout=10)
    assert any("bad frame" in e for e in lst.errors)
    assert any("exceeds" in e for e in lst.errors)
    assert any("truncated" in e for e in lst.errors)
    good = ipc.connect(name)
    good.send_blocking("still fine")
    assert ch.recv_blocking(timeout=10) == "still fine"


def test_malformed_ring_entry_raises_protocol_error_and_is_dropped() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    ch.send_blocking("first")
    r = ch._r
    with r.lock:  # forge an entry whose block descriptor is not a queued block
        pos = r.tail
        r.write_entry(pos, 2, 0xFFFF, 0, 7, 12345, 4096)
        r.h64[6] = pos + 1
    ch.send_blocking("after")
    assert ch.recv_blocking() == "first"
    with pytest.raises(ipc.ProtocolError, match="invalid message descriptor"):
        ch.recv_blocking()
    assert ch.recv_blocking() == "after"
    assert ch.ipc_stats()["protocol_errors"] == 1


def test_stats_and_zstats_move() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1, overflow=kcoro.DROP_OLDEST)
    ch.send_blocking(ch.arena.alloc(10))
    ch.send_blocking(b"z" * 10)  # evicts the payload: zref canceled
    asyncio.run(ch.send_zref(bytearray(100)))  # a buffer copied in: fallback_small
    with ch.recv_blocking() as p:
        assert p.nbytes == 100
    private = kcoro.Arena(4096)
    q = private.alloc(100)  # not in the channel's arena: copied into it (fallback_capacity)
    ch.send_blocking(q)
    assert q.released
    with ch.recv_blocking() as r:
        assert r.nbytes == 100 and r.arena is ch.arena
    z = ch.zstats()
    assert z["zref_sent"] == 3 and z["zref_received"] == 2
    assert z["canceled"] == 1 and z["fallback_small"] == 1 and z["fallback_capacity"] == 1
    s = ch.stats()
    assert s.sends == 4 and s.recvs == 2 and s.undelivered == 2
    assert s.first_op_ns and s.last_op_ns >= s.first_op_ns
    assert "ipc.Channel" in repr(ch)


def test_nothing_in_dev_shm_and_memfd_is_used() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(1)
    link = os.readlink(f"/proc/self/fd/{ch._r.fd}")
    assert link.startswith("/memfd:kcoro-ipc")


def test_select_over_ipc_from_asyncio_and_threads() -> None:
    ch: ipc.Channel[Any] = ipc.Channel(4)
    local: kcoro.Channel[Any] = kcoro.Channel(1)
    p = start(workers.produce, ch, 3, False)

    async def amain() -> list[Any]:
        return [await kcoro.select(local.on_recv(), ch.on_recv(), timeout=20)
                for _ in range(2)]

    got = asyncio.run(amain())
    assert got == [(1, 0), (1, 1)]
    i, v = kcoro.select_blocking(local.on_recv(), ch.on_recv(), timeout=20)
    assert (i, v) == (1, 2)
    p.join(10)


def test_idle_waiters_spend_no_cpu() -> None:
    """A thread parked on an IPC channel sleeps in poll (after a 50 µs spin): over a second of
    waiting this process uses a tiny fraction of that second of CPU."""
    ch: ipc.Channel[Any] = ipc.Channel()
    other: ipc.Channel[Any] = ipc.Channel()
    c = start(workers.park_in_recv, other)  # a peer parked too (its own process)
    wait_until(lambda: other._r.armed_recv_total() == 1, timeout=20)
    t0 = time.process_time()
    with pytest.raises(TimeoutError):
        ch.recv_blocking(timeout=1.0)
    used = time.process_time() - t0
    assert used < 0.2, f"{used:.3f}s of CPU while parked for 1s"
    os.kill(c.pid, 9)
    c.join(10)
