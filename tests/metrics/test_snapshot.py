"""kcoro.metrics.snapshot(): every live channel, the token kernel, arenas, runtimes and tasks."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import threading
from typing import Any

import pytest

import kcoro
from kcoro import _registry
from kcoro.metrics import ArenaRecord, snapshot
from kcoro.metrics._snapshot import from_dict
from kcoro.metrics.ndjson import dumps, validate
from kcoro.testing import wait_all_tasks_blocked


def test_every_channel_kind_with_live_counters() -> None:
    async def main() -> None:
        rv: kcoro.Channel[bytes] = kcoro.Channel(name="s-rv")
        buf: kcoro.Channel[bytes] = kcoro.Channel(2, name="s-buf")
        unl: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED, name="s-unl")
        conf: kcoro.Channel[int] = kcoro.Channel(kcoro.CONFLATED, name="s-conf")

        async def rx() -> None:
            for _ in range(3):
                await rv.recv()

        t = kcoro.spawn(rx)
        for _ in range(3):
            await rv.send(b"abcd")
        await t
        await buf.send(b"12")
        await buf.send(b"34")
        with pytest.raises(kcoro.WouldBlock):
            buf.try_send(b"56")
        with pytest.raises(TimeoutError):
            await buf.send(b"78", timeout=0.001)
        for i in range(5):
            await unl.send(i)
        await unl.recv()
        for i in range(4):
            await conf.send(i)  # three overwritten: undelivered
        assert await conf.recv() == 3
        with pytest.raises(kcoro.WouldBlock):
            conf.try_recv()
        conf.close()

        snap = snapshot()
        by = {s.name: s for s in snap.channels}
        assert by["s-rv"].kind == "rendezvous" and by["s-rv"].capacity == 0
        assert (by["s-rv"].sends, by["s-rv"].recvs, by["s-rv"].bytes_recv) == (3, 3, 12)
        b = by["s-buf"]
        assert (b.kind, b.capacity, b.buffered, b.peak) == ("buffered", 2, 2, 2)
        assert (b.send_would_block, b.send_timeout) == (1, 1)
        u = by["s-unl"]
        assert (u.kind, u.capacity, u.sends, u.recvs, u.buffered) == ("unlimited", math.inf,
                                                                       5, 1, 4)
        c = by["s-conf"]
        assert (c.kind, c.undelivered, c.recv_would_block, c.closed_for_send) == (
            "conflated", 3, 1, True)
        assert snap.channel("s-buf") is b
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.pid = 0  # type: ignore[misc]

    kcoro.run(main)


def test_tasks_show_what_they_are_parked_on() -> None:
    async def main() -> None:
        a: kcoro.Channel[int] = kcoro.Channel(name="p-a")
        b: kcoro.Channel[int] = kcoro.Channel(1, name="p-b")
        ticket = kcoro.token_kernel().publish(key="p-key")

        async def on_chan() -> None:
            await a.recv()

        async def on_select() -> None:
            await kcoro.select(a.on_recv(), b.on_recv())

        async def on_ticket() -> None:
            await ticket

        async def sleeper() -> None:
            await kcoro.sleep(3600)

        tasks = [kcoro.spawn(f, name=f.__name__)
                 for f in (on_chan, on_select, on_ticket, sleeper)]
        await wait_all_tasks_blocked()
        snap = snapshot()
        recs = {t.name: t for t in snap.tasks()}
        me = recs[kcoro.current_task().name]
        assert me.state == "RUNNING" and me.parked_on is None
        on = {n: (recs[n].state, recs[n].parked_on) for n in
              ("on_chan", "on_select", "on_ticket", "sleeper")}
        assert on["on_chan"][0] == "PARKED"
        assert on["on_chan"][1] is not None
        assert (on["on_chan"][1].kind, on["on_chan"][1].name) == ("channel", "p-a")
        assert on["on_select"][1] is not None
        assert (on["on_select"][1].kind, on["on_select"][1].name) == ("select", "p-a|p-b")
        assert on["on_ticket"][1] is not None and on["on_ticket"][1].kind == "ticket"
        assert f"#{ticket.id}" in on["on_ticket"][1].name
        assert "p-key" in on["on_ticket"][1].name
        assert on["sleeper"][1] is not None and on["sleeper"][1].name == "sleep"
        # waiting receivers are counted on the channels too (a select counts in each)
        assert snap.channel("p-a").waiting_receivers == 2
        assert snap.channel("p-b").waiting_receivers == 1
        rt = next(r for r in snap.runtimes if any(t.name == "on_chan" for t in r.tasks))
        assert rt.thread == threading.current_thread().name and rt.steps >= 0
        kcoro.token_kernel().complete(ticket)
        for t in tasks:
            t.cancel()

    kcoro.run(main)


def _make_unnamed() -> kcoro.Channel[int]:
    return kcoro.Channel(3)


def test_channels_are_held_weakly_and_auto_named_from_where_they_were_made() -> None:
    ch = _make_unnamed()
    name = ch.name
    assert name.startswith("test_snapshot.py:")
    assert any(s.name == name for s in snapshot().channels)
    del ch
    gc.collect()
    assert not any(s.name == name for s in snapshot().channels)


class FakeArena:
    """Stands in for kcoro.Arena (the payload engineer's, not merged yet): what the registry
    contract says an arena has — a name and ``stats()`` with the eight fields."""

    name = "fake-arena"

    def stats(self) -> Any:
        return {"capacity": 4096, "in_use": 1024, "peak": 2048, "blocks": 2, "allocs": 5,
                "frees": 3, "spills": 1, "fallbacks": 0}


def test_arenas_and_token_kernel_are_in_the_snapshot() -> None:
    arena = FakeArena()
    _registry.arenas.add(arena)
    try:
        before = snapshot().tokens
        t = kcoro.token_kernel().publish()
        kcoro.token_kernel().complete(t.id)
        kcoro.token_kernel().complete(t.id)  # late: a zombie
        snap = snapshot()
        assert snap.tokens.published >= before.published + 1
        assert snap.tokens.zombies == before.zombies + 1
        assert ArenaRecord("fake-arena", 4096, 1024, 2048, 2, 5, 3, 1, 0) in snap.arenas
    finally:
        _registry.arenas.discard(arena)


def test_real_arenas_are_in_the_snapshot_with_unique_names() -> None:
    a, b = kcoro.Arena(1 << 16), kcoro.Arena(1 << 16)
    p = a.alloc(1000)
    recs = [r for r in snapshot().arenas if r.name.startswith("arena")]
    assert len({r.name for r in recs}) == len(recs) >= 2  # both default to "arena"
    mine = [r for r in recs if r.in_use > 0]
    assert len(mine) == 1 and mine[0].capacity == 1 << 16 and mine[0].allocs == 1
    p.release()
    del a, b


def test_json_round_trip_validates_against_the_schema() -> None:
    keep = [kcoro.Channel(kcoro.UNLIMITED, name="rt-unl"), kcoro.Channel(4, name="rt-buf")]
    keep[1].try_send(b"xyz")
    arena = FakeArena()
    _registry.arenas.add(arena)
    try:
        snap = snapshot()
    finally:
        _registry.arenas.discard(arena)
    d = snap.to_dict()
    validate(d)
    line = dumps(d)  # no Infinity: an unlimited capacity is null
    assert '"capacity":null' in line
    back = from_dict(json.loads(line))
    assert back == snap


def test_snapshots_from_another_thread_while_channels_run() -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    taken = []

    def watcher() -> None:
        try:
            while not stop.is_set():
                taken.append(snapshot())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    async def main() -> None:
        ch: kcoro.Channel[int] = kcoro.Channel(4, name="th-chan")

        async def consumer() -> None:
            async for _ in ch:
                pass

        th = threading.Thread(target=watcher)
        th.start()
        async with kcoro.TaskGroup() as tg:
            tg.spawn(consumer)
            n = 0
            while len(taken) < 20 or n < 2000:
                await ch.send(n)
                n += 1
            ch.close()
        stop.set()
        th.join()
        ch.check_invariants()

    kcoro.run(main)
    assert not errors
    sends = [s.channel("th-chan").sends for s in taken if any(c.name == "th-chan"
                                                              for c in s.channels)]
    assert sends == sorted(sends)  # counters only grow
