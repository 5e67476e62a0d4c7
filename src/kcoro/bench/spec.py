"""What ``kcoro bench`` measures: benchmarks (B1-B9), and for each the implementations to run.

This module is pure data and is imported by the parent process only.  The workloads themselves
live in the ``wl_*`` modules, which are loaded *by file path* inside a fresh child process per
measurement (see ``_child.py``), so a peer's measurement never imports kcoro and a gevent or
trio run never shares an interpreter with anything else.

Each :class:`Impl` names its workload as ``"module:function"`` plus keyword arguments.  An impl is
one of three kinds:

* ``kcoro`` — kcoro itself, in some mode; one of them per group is the *reference* (``ref``)
  against which every peer of the group is compared;
* ``peer``  — another library; ``requires`` lists the modules it needs (a missing one is
  reported as "not installed", never skipped);
* ``floor`` — a physical or interpreter floor (``generator.send``, an eventfd hop, a memcpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BENCHES", "IMPLS", "Bench", "Impl", "benches", "impls_for", "peer_names"]

KCORO, PEER, FLOOR = "kcoro", "peer", "floor"


@dataclass(frozen=True)
class Bench:
    id: str
    title: str
    unit: str
    lower_is_better: bool
    n_full: float             # work size of the default run (round trips, messages, bytes, …)
    n_quick: float            # work size of ``--quick``
    n_what: str               # what ``n`` counts
    warmup: bool = True       # run a short warm-up of the same workload first (in the child)
    describe: str = ""


@dataclass(frozen=True)
class Impl:
    bench: str
    impl: str                 # "kcoro", "asyncio", "trio", … or a floor's name
    mode: str                 # how it is run ("rendezvous", "Queue(64)", …)
    func: str                 # "wl_module:function" run in the child
    kind: str = PEER
    group: str = ""           # sub-comparison inside a benchmark (B5's two directions)
    ref: bool = False         # the kcoro row peers of the group are compared with
    requires: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    n_scale: float = 1.0      # work size relative to the benchmark's n
    note: str = ""

    @property
    def key(self) -> str:
        g = f"{self.group}/" if self.group else ""
        return f"{self.bench}/{g}{self.impl}/{self.mode}"

    @property
    def label(self) -> str:
        return self.impl if not self.mode else f"{self.impl} {self.mode}"


BENCHES: tuple[Bench, ...] = (
    Bench("B1", "ping-pong", "ns/hop", True, 100_000, 1_000, "round trips",
          describe="two tasks bounce one int over two channels; time per one-way hop"),
    Bench("B2", "stream", "msgs/s", False, 1_000_000, 10_000, "messages",
          describe="1 producer -> 1 consumer, capacity 64, small ints"),
    Bench("B3", "fan-in 4->1", "msgs/s", False, 1_000_000, 10_000, "messages",
          describe="4 producers -> 1 consumer, capacity 64"),
    Bench("B4", "select", "msgs/s", False, 400_000, 4_000, "messages",
          describe="1 consumer selecting over 4 channels (capacity 64) fed by 4 producers"),
    Bench("B5", "threads", "msgs/s", False, 200_000, 2_000, "messages",
          describe="one OS thread -> one task (and the reverse), capacity 64"),
    Bench("B6", "ipc bulk", "GB/s", False, 1 << 30, 64 << 20, "bytes", warmup=False,
          describe="1 MiB payloads from one process to another"),
    Bench("B7", "ipc latency", "us/hop", True, 20_000, 500, "round trips", warmup=False,
          describe="small-message ping-pong between two processes"),
    Bench("B8", "idle", "CPU %", True, 5, 0.3, "seconds parked", warmup=False,
          describe="10k tasks parked on channels/tickets; CPU of one core while parked"),
    Bench("B9", "tokens", "ns/ticket", True, 100_000, 1_000, "tickets",
          describe="publish -> complete from another thread -> wake"),
)

_TRIO, _ANYIO, _GEVENT = ("trio",), ("anyio",), ("gevent",)
_AIOCH, _JANUS, _CULSANS = ("aiochannel",), ("janus",), ("culsans",)


def _chan_family(b: str, wl: str, cap: int) -> list[Impl]:
    """The peers shared by B1-B3 (asyncio-style queues, trio, anyio, gevent, threads)."""
    c = {"cap": cap}
    gev_mode, gev_cap = ("Channel", 0) if b == "B1" else (f"Queue({cap})", cap)
    tcap = 0 if b == "B1" else cap
    return [
        Impl(b, "asyncio", f"Queue({cap})", f"wl_chan:{wl}_asyncio", kwargs=c),
        Impl(b, "trio", f"memory channel({tcap})", f"wl_chan:{wl}_trio", requires=_TRIO,
             kwargs={"cap": tcap}),
        Impl(b, "anyio", f"memory stream({tcap})", f"wl_chan:{wl}_anyio", requires=_ANYIO,
             kwargs={"cap": tcap}, note="anyio on its default (asyncio) backend"),
        Impl(b, "gevent", gev_mode, f"wl_chan:{wl}_gevent", requires=_GEVENT,
             kwargs={"cap": gev_cap}, note="gevent.queue, greenlets, no monkey-patching"),
        Impl(b, "aiochannel", f"Channel({cap})", f"wl_chan:{wl}_aiochannel", requires=_AIOCH,
             kwargs=c),
        Impl(b, "janus", f"Queue({cap}) async", f"wl_chan:{wl}_janus", requires=_JANUS,
             kwargs=c, note="both ends on the async side"),
        Impl(b, "culsans", f"Queue({cap}) async", f"wl_chan:{wl}_culsans", requires=_CULSANS,
             kwargs=c, note="both ends on the async side"),
        Impl(b, "queue.Queue", f"({cap}) + threads", f"wl_chan:{wl}_threads", kwargs=c),
    ]


def _impls() -> list[Impl]:
    out: list[Impl] = []
    # -- B1 ping-pong ------------------------------------------------------------------------
    out += [
        Impl("B1", "kcoro", "rendezvous", "wl_chan:pingpong_kcoro", KCORO, ref=True,
             kwargs={"cap": 0}),
        Impl("B1", "kcoro", "buffered(1)", "wl_chan:pingpong_kcoro", KCORO, kwargs={"cap": 1}),
        Impl("B1", "kcoro", "rendezvous on asyncio", "wl_chan:pingpong_kcoro_aio", KCORO,
             kwargs={"cap": 0}, note="kcoro channels awaited from asyncio tasks"),
        Impl("B1", "kcoro", "rendezvous, 2 threads", "wl_chan:pingpong_kcoro_threads", KCORO,
             kwargs={"cap": 0}, note="send_blocking/recv_blocking between two OS threads"),
        *_chan_family("B1", "pingpong", 1),
        Impl("B1", "generator.send", "", "wl_floor:gen_send", FLOOR, n_scale=10),
        Impl("B1", "await trap", "", "wl_floor:await_trap", FLOOR, n_scale=10,
             note="a coroutine resumed by a 10-line scheduler through one yield trap"),
        Impl("B1", "greenlet.switch", "", "wl_floor:greenlet_switch", FLOOR, n_scale=10,
             requires=("greenlet",)),
    ]
    # -- B2 stream ---------------------------------------------------------------------------
    out += [
        Impl("B2", "kcoro", "buffered(64)", "wl_chan:stream_kcoro", KCORO, ref=True,
             kwargs={"cap": 64}),
        Impl("B2", "kcoro", "rendezvous", "wl_chan:stream_kcoro", KCORO, kwargs={"cap": 0}),
        Impl("B2", "kcoro", "unlimited", "wl_chan:stream_kcoro", KCORO,
             kwargs={"cap": "unlimited"}),
        Impl("B2", "kcoro", "conflated (delivered)", "wl_chan:stream_kcoro_conflated", KCORO,
             note="msgs/s counts *delivered* items: a conflated channel keeps only the latest"),
        Impl("B2", "kcoro", "zref 1 KiB", "wl_chan:stream_kcoro_zref", KCORO,
             kwargs={"cap": 64, "size": 1024}, n_scale=0.2,
             note="Arena payloads moved by reference (send_zref/recv_zref); 1/5 of the "
                  "messages: a rate, and the zref path is still being written"),
        Impl("B2", "kcoro", "buffered(64) on asyncio", "wl_chan:stream_kcoro_aio", KCORO,
             kwargs={"cap": 64}),
        *_chan_family("B2", "stream", 64),
        Impl("B2", "deque", "append+popleft", "wl_floor:deque_stream", FLOOR, n_scale=5,
             note="the data-structure floor: no switch at all"),
    ]
    # -- B3 fan-in ---------------------------------------------------------------------------
    out += [
        Impl("B3", "kcoro", "buffered(64)", "wl_chan:fanin_kcoro", KCORO, ref=True,
             kwargs={"cap": 64}),
        Impl("B3", "kcoro", "rendezvous", "wl_chan:fanin_kcoro", KCORO, kwargs={"cap": 0}),
        *_chan_family("B3", "fanin", 64),
    ]
    # -- B4 select ---------------------------------------------------------------------------
    out += [
        Impl("B4", "kcoro", "select", "wl_select:select_kcoro", KCORO, ref=True,
             kwargs={"fair": False}),
        Impl("B4", "kcoro", "select fair=True", "wl_select:select_kcoro", KCORO,
             kwargs={"fair": True}),
        Impl("B4", "kcoro", "select on asyncio", "wl_select:select_kcoro_aio", KCORO),
        Impl("B4", "asyncio", "wait(FIRST_COMPLETED)", "wl_select:select_asyncio",
             note="one Queue.get task per queue, re-armed after each completion"),
    ]
    # -- B5 threads --------------------------------------------------------------------------
    t2t, k2t = "thread->task", "task->thread"
    out += [
        Impl("B5", "kcoro", "send_blocking -> recv", "wl_threads:t2t_kcoro", KCORO, group=t2t,
             ref=True),
        Impl("B5", "kcoro", "send_blocking -> asyncio recv", "wl_threads:t2t_kcoro_aio", KCORO,
             group=t2t),
        Impl("B5", "janus", "sync put -> async get", "wl_threads:t2t_janus", group=t2t,
             requires=_JANUS),
        Impl("B5", "culsans", "sync put -> async get", "wl_threads:t2t_culsans", group=t2t,
             requires=_CULSANS),
        Impl("B5", "asyncio", "call_soon_threadsafe", "wl_threads:t2t_asyncio", group=t2t,
             note="thread -> loop.call_soon_threadsafe(Queue.put_nowait): no backpressure"),
        Impl("B5", "kcoro", "send -> recv_blocking", "wl_threads:k2t_kcoro", KCORO, group=k2t,
             ref=True),
        Impl("B5", "kcoro", "asyncio send -> recv_blocking", "wl_threads:k2t_kcoro_aio", KCORO,
             group=k2t),
        Impl("B5", "janus", "async put -> sync get", "wl_threads:k2t_janus", group=k2t,
             requires=_JANUS),
        Impl("B5", "culsans", "async put -> sync get", "wl_threads:k2t_culsans", group=k2t,
             requires=_CULSANS),
        Impl("B5", "asyncio", "run_coroutine_threadsafe(get)", "wl_threads:k2t_asyncio",
             group=k2t, note="the thread pulls each item with run_coroutine_threadsafe"),
    ]
    # -- B6 / B7 ipc (workloads provided by kcoro.ipc.bench) ---------------------------------
    out += [
        Impl("B6", "kcoro", "ipc zref", "wl_ipc:b6", KCORO, ref=True, kwargs={"peer": "kcoro"}),
        Impl("B6", "mp.Queue", "", "wl_ipc:b6", kwargs={"peer": "mp_queue"}),
        Impl("B6", "mp.Pipe", "", "wl_ipc:b6", kwargs={"peer": "mp_pipe"}),
        Impl("B6", "faster-fifo", "", "wl_ipc:b6", kwargs={"peer": "faster_fifo"},
             requires=("faster_fifo",)),
        Impl("B6", "pyzmq", "ipc copy=False", "wl_ipc:b6", kwargs={"peer": "pyzmq"},
             requires=("zmq",)),
        Impl("B6", "shared_memory", "+ pipe of offsets", "wl_ipc:b6", kwargs={"peer": "shm_ring"}),
        Impl("B6", "memcpy", "1 MiB in-process", "wl_ipc:b6_memcpy", FLOOR),
        Impl("B7", "kcoro", "ipc", "wl_ipc:b7", KCORO, ref=True, kwargs={"peer": "kcoro"}),
        Impl("B7", "mp.Pipe", "", "wl_ipc:b7", kwargs={"peer": "mp_pipe"}),
        Impl("B7", "pyzmq", "ipc", "wl_ipc:b7", kwargs={"peer": "pyzmq"}, requires=("zmq",)),
        Impl("B7", "faster-fifo", "", "wl_ipc:b7", kwargs={"peer": "faster_fifo"},
             requires=("faster_fifo",)),
        Impl("B7", "eventfd", "wake between processes", "wl_ipc:b7_eventfd", FLOOR),
    ]
    # -- B8 idle -----------------------------------------------------------------------------
    out += [
        Impl("B8", "kcoro", "10k parked on channels", "wl_idle:idle_kcoro", KCORO, ref=True,
             kwargs={"on": "channels"}),
        Impl("B8", "kcoro", "10k parked on tickets", "wl_idle:idle_kcoro", KCORO,
             kwargs={"on": "tickets"}),
        Impl("B8", "asyncio", "10k parked on Queue.get", "wl_idle:idle_asyncio",
             kwargs={"on": "queues"}),
        Impl("B8", "asyncio", "10k parked on futures", "wl_idle:idle_asyncio",
             kwargs={"on": "futures"}),
    ]
    # -- B9 tokens ---------------------------------------------------------------------------
    out += [
        Impl("B9", "kcoro", "ticket, task waits", "wl_tokens:tokens_kcoro", KCORO, ref=True),
        Impl("B9", "kcoro", "ticket, asyncio task waits", "wl_tokens:tokens_kcoro_aio", KCORO),
        Impl("B9", "asyncio", "future + call_soon_threadsafe", "wl_tokens:tokens_asyncio_future"),
        Impl("B9", "asyncio", "run_coroutine_threadsafe", "wl_tokens:tokens_asyncio_rcts",
             note="the thread submits a coroutine and waits for its result"),
        Impl("B9", "SimpleQueue", "thread round trip", "wl_tokens:thread_roundtrip", FLOOR,
             note="two SimpleQueues between two threads: the cross-thread wake floor"),
    ]
    return out


IMPLS: tuple[Impl, ...] = tuple(_impls())


def benches(only: list[str] | None = None) -> list[Bench]:
    if not only:
        return list(BENCHES)
    want = {b.upper() for b in only}
    unknown = want - {b.id for b in BENCHES}
    if unknown:
        raise ValueError(f"unknown benchmark id(s): {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(b.id for b in BENCHES)})")
    return [b for b in BENCHES if b.id in want]


def peer_names() -> list[str]:
    return sorted({i.impl for i in IMPLS if i.kind == PEER})


def impls_for(bench: str, peers: list[str] | None = None) -> list[Impl]:
    """kcoro rows and floors always; peers filtered by ``peers`` (None = all)."""
    out = []
    for i in IMPLS:
        if i.bench != bench:
            continue
        if i.kind == PEER and peers is not None and i.impl.lower() not in peers:
            continue
        out.append(i)
    return out


def get(bench: str) -> Bench:
    for b in BENCHES:
        if b.id == bench:
            return b
    raise KeyError(bench)
