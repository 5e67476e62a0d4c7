"""Frozen records of everything kcoro knows about this process, taken in one call.

:func:`snapshot` walks the weak registries (:mod:`kcoro._registry`) and asks each object for its
public ``stats()``; each of those takes the kernel lock for a few dozen bytecodes, so a snapshot
never holds the lock across objects and never stalls the program for long.  Tasks are read
without the kernel lock: their ``state``/``parked_on`` are single attribute reads, and the task set
is copied by one C-level call (atomic under the GIL).

A snapshot is plain data: :meth:`Snapshot.to_dict` gives its JSON form (the ``snapshot`` record of
:mod:`kcoro.metrics.ndjson`), :func:`from_dict` reads it back (what a monitor does).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, fields
from typing import Any

from .. import _registry
from .._chan import Channel, ChannelStats
from .._runtime import Task
from .._tokens import Ticket, TokenKernelStats, token_kernel

__all__ = [
    "ARENA_FIELDS",
    "ArenaRecord",
    "ParkedOn",
    "RuntimeRecord",
    "Snapshot",
    "TaskRecord",
    "channel_stats_from_dict",
    "channel_stats_to_dict",
    "from_dict",
    "snapshot",
]

ARENA_FIELDS = ("capacity", "in_use", "peak", "blocks", "allocs", "frees", "spills", "fallbacks")
CHANNEL_FIELDS = tuple(f.name for f in fields(ChannelStats))
TOKEN_FIELDS = tuple(f.name for f in fields(TokenKernelStats))


@dataclass(frozen=True, slots=True)
class ParkedOn:
    """What a parked task waits for, described for humans and monitors.

    ``kind``: ``channel`` | ``select`` | ``ticket`` | ``task`` | ``taskgroup`` | ``other``;
    ``name``: the channel name (for ``select``, the channel names joined by ``|``), ticket id/key,
    task name, or the wait's own label (``sleep``, ``fd 7`` ...).
    """

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    name: str
    state: str
    parked_on: ParkedOn | None


@dataclass(frozen=True, slots=True)
class RuntimeRecord:
    """One native runtime (one OS thread running ``kcoro.run``) and its live tasks."""

    thread: str
    steps: int
    polls: int
    tasks: tuple[TaskRecord, ...]


@dataclass(frozen=True, slots=True)
class ArenaRecord:
    """An arena's ``stats()`` (bytes for capacity/in_use/peak)."""

    name: str
    capacity: int
    in_use: int
    peak: int
    blocks: int
    allocs: int
    frees: int
    spills: int
    fallbacks: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything at one instant: channels (sorted by name), token kernel, arenas, runtimes."""

    pid: int
    time: float  # wall clock (time.time())
    mono_ns: int  # time.monotonic_ns(), the clock of ChannelStats.snapshot_ns
    channels: tuple[ChannelStats, ...]
    channel_ids: tuple[int, ...]  # a stable identity per live channel (parallel to channels)
    tokens: TokenKernelStats
    arenas: tuple[ArenaRecord, ...]
    runtimes: tuple[RuntimeRecord, ...]

    def channel(self, name: str) -> ChannelStats:
        """The first channel called ``name`` (KeyError if none)."""
        for s in self.channels:
            if s.name == name:
                return s
        raise KeyError(name)

    def tasks(self) -> list[TaskRecord]:
        return [t for rt in self.runtimes for t in rt.tasks]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready ``snapshot`` record (see :mod:`kcoro.metrics.ndjson`)."""
        from .ndjson import SCHEMA_VERSION

        return {
            "type": "snapshot",
            "schema": SCHEMA_VERSION,
            "pid": self.pid,
            "t": self.time,
            "mono_ns": self.mono_ns,
            "channels": [channel_stats_to_dict(s, i)
                         for s, i in zip(self.channels, self.channel_ids)],
            "tokens": self.tokens.as_dict(),
            "arenas": [dataclasses.asdict(a) for a in self.arenas],
            "runtimes": [
                {"thread": rt.thread, "steps": rt.steps, "polls": rt.polls,
                 "tasks": [{"id": t.id, "name": t.name, "state": t.state,
                            "parked_on": (None if t.parked_on is None else
                                          {"kind": t.parked_on.kind, "name": t.parked_on.name})}
                           for t in rt.tasks]}
                for rt in self.runtimes
            ],
        }


def channel_stats_to_dict(s: ChannelStats, ident: int | None = None) -> dict[str, Any]:
    """JSON form of a ChannelStats: ``capacity`` is ``null`` for an unlimited channel (JSON has
    no infinity)."""
    d = s.as_dict()
    if d["capacity"] == math.inf:
        d["capacity"] = None
    else:
        d["capacity"] = int(d["capacity"])
    if ident is not None:
        d["id"] = ident
    return d


def channel_stats_from_dict(d: dict[str, Any]) -> ChannelStats:
    """Rebuild a ChannelStats from its JSON form; fields a newer or older sender lacks read 0."""
    kw: dict[str, Any] = {}
    for f in fields(ChannelStats):
        v = d.get(f.name)
        if f.name == "capacity":
            v = math.inf if v is None else v
        elif v is None:
            v = "" if f.type == "str" else False if f.type == "bool" else 0
        kw[f.name] = v
    return ChannelStats(**kw)


def from_dict(d: dict[str, Any]) -> Snapshot:
    """Rebuild a :class:`Snapshot` from a ``snapshot`` record (as a monitor receives it)."""
    chans = [(channel_stats_from_dict(c), int(c.get("id", 0))) for c in d.get("channels", ())]
    tok = d.get("tokens") or {}
    return Snapshot(
        pid=int(d.get("pid", 0)),
        time=float(d.get("t", 0.0)),
        mono_ns=int(d.get("mono_ns", 0)),
        channels=tuple(c for c, _ in chans),
        channel_ids=tuple(i for _, i in chans),
        tokens=TokenKernelStats(**{k: int(tok.get(k, 0)) for k in TOKEN_FIELDS}),
        arenas=tuple(ArenaRecord(name=str(a.get("name", "")),
                                 **{k: int(a.get(k, 0)) for k in ARENA_FIELDS})
                     for a in d.get("arenas", ())),
        runtimes=tuple(
            RuntimeRecord(
                thread=str(rt.get("thread", "")), steps=int(rt.get("steps", 0)),
                polls=int(rt.get("polls", 0)),
                tasks=tuple(TaskRecord(
                    id=int(t.get("id", 0)), name=str(t.get("name", "")),
                    state=str(t.get("state", "")),
                    parked_on=(None if not t.get("parked_on") else
                               ParkedOn(str(t["parked_on"].get("kind", "other")),
                                        str(t["parked_on"].get("name", "")))))
                              for t in rt.get("tasks", ())))
            for rt in d.get("runtimes", ())),
    )


# -- taking a snapshot -------------------------------------------------------------------------

def _describe(on: object) -> ParkedOn:
    if isinstance(on, Channel):
        return ParkedOn("channel", on.name)
    if isinstance(on, tuple):  # a select's clauses
        names = [c.ch.name for c in on if isinstance(getattr(c, "ch", None), Channel)]
        return ParkedOn("select", "|".join(names))
    if isinstance(on, Ticket):
        label = f"#{on.id}" if on.id else "internal"
        if on.key is not None:
            label += f" key={on.key!r}"[:80]
        return ParkedOn("ticket", label)
    if isinstance(on, Task):
        return ParkedOn("task", on.name)
    if isinstance(on, str):
        return ParkedOn("other", on)
    tn = type(on).__name__
    return ParkedOn("taskgroup" if tn == "TaskGroup" else "other", tn)


def _task_record(t: Task[Any]) -> TaskRecord:
    on = t.parked_on
    return TaskRecord(id=t.id, name=t.name, state=t.state,
                      parked_on=None if on is None else _describe(on))


def _runtime_record(rt: Any) -> RuntimeRecord:
    tasks: list[Task[Any]] = []
    for _ in range(3):  # the owning thread may change the set while we copy it
        try:
            tasks = rt.tasks()
            break
        except RuntimeError:
            continue
    return RuntimeRecord(thread=str(getattr(rt, "thread_name", "?")),
                         steps=int(getattr(rt, "steps", 0)), polls=int(getattr(rt, "polls", 0)),
                         tasks=tuple(_task_record(t) for t in tasks))


def _arena_record(a: Any) -> ArenaRecord:
    st = a.stats()
    if isinstance(st, dict):
        get = st.get
    else:
        def get(k: str, default: Any = 0) -> Any:
            return getattr(st, k, default)
    name = getattr(a, "name", None) or f"arena#{id(a) & 0xFFFFFF:06x}"
    return ArenaRecord(name=str(name), **{k: int(get(k, 0) or 0) for k in ARENA_FIELDS})


def snapshot() -> Snapshot:
    """One frozen :class:`Snapshot` of every live channel, the token kernel, arenas, runtimes
    and their tasks.  Thread-safe; callable from any thread."""
    chans = sorted(_registry.channels.items(), key=lambda c: (c.name, id(c)))
    stats = tuple(c.stats() for c in chans)
    ids = tuple(id(c) for c in chans)
    tokens = token_kernel().stats()
    arenas: list[ArenaRecord] = []
    arena_ids: list[int] = []
    for a in _registry.arenas.items():
        try:
            arenas.append(_arena_record(a))
            arena_ids.append(id(a))
        except Exception:  # an arena being torn down: leave it out of this snapshot
            continue
    names = [a.name for a in arenas]
    arenas = [a if names.count(a.name) == 1 else
              dataclasses.replace(a, name=f"{a.name}#{ident & 0xFFFFFF:06x}")
              for a, ident in zip(arenas, arena_ids)]  # several arenas may share a name
    runtimes = tuple(_runtime_record(rt) for rt in _registry.runtimes.items())
    return Snapshot(pid=os.getpid(), time=time.time(), mono_ns=time.monotonic_ns(),
                    channels=stats, channel_ids=ids, tokens=tokens,
                    arenas=tuple(sorted(arenas, key=lambda a: a.name)),
                    runtimes=tuple(sorted(runtimes, key=lambda r: r.thread)))
