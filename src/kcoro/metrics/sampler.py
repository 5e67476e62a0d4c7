"""Per-interval rates from successive snapshots: what chanmon and bench_chan_metrics computed.

* :class:`RateBook` turns a sequence of :class:`~kcoro.metrics.Snapshot` (local or received from
  another process) into NDJSON-ready ``channel``/``tokens``/``arena``/``runtime`` records, keeping
  per channel the instantaneous, EMA (alpha 0.25, as chanmon) and peak packets/s, a short history
  for sparklines, and the sums for the final ``summary`` record.
* :class:`ChannelSampler` samples given channels (or every live one) in this process, every
  ``interval`` seconds: ``sample()`` on demand, iteration from a thread, or ``streaming(out)`` as a
  background writer of NDJSON lines (what ``kcoro bench --ndjson`` uses).

All rates come from :func:`kcoro.stats_rate` over two ChannelStats of the same channel.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from .._chan import Channel, ChannelRate, ChannelStats, stats_rate
from .._tokens import TokenKernelStats, token_kernel
from ._snapshot import ArenaRecord, RuntimeRecord, Snapshot, channel_stats_to_dict
from .ndjson import SCHEMA_VERSION, dumps

__all__ = ["ChannelSampler", "ChannelTrack", "RateBook", "sparkline"]

EMA_ALPHA = 0.25
HISTORY = 60
_FAIL_KEYS = (*(f"{side}_{cause}" for side in ("send", "recv")
                for cause in ("would_block", "timeout", "closed", "cancelled")), "send_dropped")
_ZREF_KEYS = ("sent", "received", "fallback_small", "fallback_capacity", "canceled",
              "aborted_close")
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float], width: int = 20) -> str:
    """The last ``width`` values as unicode bars scaled to their own maximum."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return _BARS[0] * len(vals)
    n = len(_BARS) - 1
    return "".join(_BARS[min(n, round(v / top * n))] if v > 0 else " " for v in vals)


class ChannelTrack:
    """Rates of one channel across samples."""

    __slots__ = ("ema", "history", "kind", "last", "n", "name", "peak", "peak_gbps", "prev",
                 "rate", "sum_gbps", "sum_pps", "zsum")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.prev: ChannelStats | None = None
        self.last: ChannelStats | None = None
        self.rate: ChannelRate | None = None
        self.ema: float | None = None
        self.peak = 0.0
        self.peak_gbps = 0.0
        self.sum_pps = 0.0
        self.sum_gbps = 0.0
        self.n = 0
        self.zsum = {"sent": 0, "received": 0, "aborted_close": 0}
        self.history: deque[float] = deque(maxlen=HISTORY)

    def update(self, curr: ChannelStats, alpha: float = EMA_ALPHA) -> ChannelRate | None:
        """Advance to ``curr``; the first snapshot of a channel is only a baseline (None):
        rates need two snapshots of known times."""
        prev = self.prev
        if prev is None or curr.sends < prev.sends or curr.recvs < prev.recvs:
            # first sight, or a new channel that reuses a dead one's identity and name
            self.prev = self.last = curr
            return None
        r = stats_rate(self.prev, curr)
        self.prev = self.last = curr
        self.rate = r
        pps = r.recvs_per_s if r.deltas["recvs"] else r.sends_per_s
        bps = r.bytes_recv_per_s if r.deltas["bytes_recv"] else r.bytes_sent_per_s
        gbps = bps * 8 / 1e9
        self.ema = pps if self.ema is None else alpha * pps + (1 - alpha) * self.ema
        self.peak = max(self.peak, pps)
        self.peak_gbps = max(self.peak_gbps, gbps)
        self.sum_pps += pps
        self.sum_gbps += gbps
        self.n += 1
        self.zsum["sent"] += r.deltas["zref_sent"]
        self.zsum["received"] += r.deltas["zref_received"]
        self.zsum["aborted_close"] += r.deltas["zref_aborted_close"]
        self.history.append(pps)
        return r

    @property
    def packets_per_s(self) -> float:
        """Received per second in the last interval (sent, if nothing was received)."""
        return self.history[-1] if self.history else 0.0

    @property
    def bytes_per_s(self) -> float:
        """Bytes received per second in the last interval (sent, if none were received)."""
        r = self.rate
        if r is None:
            return 0.0
        return r.bytes_recv_per_s if r.deltas["bytes_recv"] else r.bytes_sent_per_s

    def record(self, *, pid: int, seq: int, t: float, ident: int | None = None
               ) -> dict[str, Any]:
        """The ``channel`` record of the last :meth:`update`."""
        s, r = self.last, self.rate
        assert s is not None and r is not None, "record() before update()"
        d = r.deltas
        cap = channel_stats_to_dict(s)["capacity"]
        rec: dict[str, Any] = {
            "type": "channel", "schema": SCHEMA_VERSION, "pid": pid, "t": t, "seq": seq,
            "interval_s": r.interval_s, "channel": s.name, "kind": s.kind, "capacity": cap,
            "depth": s.buffered, "peak_depth": s.peak, "waiting_senders": s.waiting_senders,
            "waiting_receivers": s.waiting_receivers, "closed": s.closed_for_send,
            "packets_per_s": self.packets_per_s, "ema_packets_per_s": self.ema or 0.0,
            "peak_packets_per_s": self.peak,
            "sends_per_s": r.sends_per_s, "recvs_per_s": r.recvs_per_s,
            "bytes_sent_per_s": r.bytes_sent_per_s, "bytes_recv_per_s": r.bytes_recv_per_s,
            "gbps": self.bytes_per_s * 8 / 1e9,
            "sends": s.sends, "recvs": s.recvs, "bytes_sent": s.bytes_sent,
            "bytes_recv": s.bytes_recv,
            "d_sends": d["sends"], "d_recvs": d["recvs"], "d_bytes_sent": d["bytes_sent"],
            "d_bytes_recv": d["bytes_recv"],
            "failures": {k: getattr(s, k) for k in _FAIL_KEYS},
            "d_failures": {k: d.get(k, 0) for k in _FAIL_KEYS},
            "undelivered": s.undelivered, "d_undelivered": d["undelivered"],
            "zref": {k: getattr(s, f"zref_{k}") for k in _ZREF_KEYS},
            "d_zref": {k: d[f"zref_{k}"] for k in _ZREF_KEYS},
        }
        if ident is not None:
            rec["id"] = ident
        return rec

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        last = self.last
        return {"channel": self.name, "kind": self.kind, "samples": self.n,
                "avg_packets_per_s": self.sum_pps / n, "peak_packets_per_s": self.peak,
                "avg_gbps": self.sum_gbps / n, "peak_gbps": self.peak_gbps,
                "sends": last.sends if last else 0, "recvs": last.recvs if last else 0,
                "zref_per_sample": {k: v / n for k, v in self.zsum.items()}}


class RateBook:
    """Tracks rates across snapshots of one process; keyed by channel identity."""

    def __init__(self, ema_alpha: float = EMA_ALPHA) -> None:
        self.alpha = ema_alpha
        self.tracks: dict[Any, ChannelTrack] = {}
        self.seq = 0
        self.samples = 0
        self.first_mono_ns = 0
        self.last_mono_ns = 0
        self._prev_tokens: TokenKernelStats | None = None
        self._prev_arenas: dict[str, ArenaRecord] = {}
        self.tickets_per_s = 0.0
        self.tickets_history: deque[float] = deque(maxlen=HISTORY)
        self.arena_history: dict[str, deque[float]] = {}

    def _interval(self, mono_ns: int) -> float:
        prev = self.last_mono_ns
        return max((mono_ns - prev) / 1e9, 1e-6) if prev else 0.0

    def update_channels(self, stats: Sequence[ChannelStats], ids: Sequence[int] | None = None
                        ) -> list[tuple[ChannelTrack, int | None]]:
        """Advance every channel's track; return those that have a rate (seen before)."""
        out = []
        for i, s in enumerate(stats):
            ident = ids[i] if ids is not None else None
            key = ident if ident else s.name
            tr = self.tracks.get(key)
            if tr is None or tr.name != s.name:
                tr = self.tracks[key] = ChannelTrack(s.name, s.kind)
            if tr.update(s, self.alpha) is not None:
                out.append((tr, ident))
        return out

    def update(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Advance by one snapshot; return its ``channel`` records (for channels seen in an
        earlier snapshot: the first one is a baseline), then ``tokens``, ``arena`` and
        ``runtime`` records."""
        self.seq += 1
        self.samples += 1
        seq, pid, t = self.seq, snap.pid, snap.time
        interval = self._interval(snap.mono_ns)
        if not self.first_mono_ns:
            self.first_mono_ns = snap.mono_ns
        self.last_mono_ns = snap.mono_ns
        recs = [tr.record(pid=pid, seq=seq, t=t, ident=ident)
                for tr, ident in self.update_channels(snap.channels, snap.channel_ids)]
        recs.append(self._tokens_record(snap.tokens, pid, seq, t, interval))
        recs.extend(self._arena_record(a, pid, seq, t, interval) for a in snap.arenas)
        recs.extend(runtime_record(rt, pid, seq, t) for rt in snap.runtimes)
        return recs

    def _tokens_record(self, k: TokenKernelStats, pid: int, seq: int, t: float,
                       interval: float) -> dict[str, Any]:
        p = self._prev_tokens
        self._prev_tokens = k

        def delta(name: str) -> int:
            v: int = getattr(k, name)
            return v - getattr(p, name) if p is not None else 0

        self.tickets_per_s = delta("published") / interval if interval else 0.0
        self.tickets_history.append(self.tickets_per_s)
        return {"type": "tokens", "schema": SCHEMA_VERSION, "pid": pid, "t": t, "seq": seq,
                "interval_s": interval, **k.as_dict(), "tickets_per_s": self.tickets_per_s,
                "d_published": delta("published"), "d_completed": delta("completed"),
                "d_cancelled": delta("cancelled"), "d_zombies": delta("zombies")}

    def _arena_record(self, a: ArenaRecord, pid: int, seq: int, t: float,
                      interval: float) -> dict[str, Any]:
        p = self._prev_arenas.get(a.name)
        self._prev_arenas[a.name] = a
        h = self.arena_history.setdefault(a.name, deque(maxlen=HISTORY))
        h.append(float(a.in_use))
        rec: dict[str, Any] = {"type": "arena", "schema": SCHEMA_VERSION, "pid": pid, "t": t,
                               "seq": seq, "interval_s": interval, "name": a.name}
        for k in ("capacity", "in_use", "peak", "blocks", "allocs", "frees", "spills",
                  "fallbacks"):
            rec[k] = getattr(a, k)
        for k in ("allocs", "frees", "spills", "fallbacks"):
            rec[f"d_{k}"] = getattr(a, k) - getattr(p, k) if p is not None else 0
        return rec

    def summary(self, pid: int) -> dict[str, Any]:
        return {"type": "summary", "schema": SCHEMA_VERSION, "pid": pid,
                "samples": self.samples,
                "duration_s": (self.last_mono_ns - self.first_mono_ns) / 1e9,
                "channels": [tr.summary() for tr in self.tracks.values()]}


def runtime_record(rt: RuntimeRecord, pid: int, seq: int, t: float) -> dict[str, Any]:
    return {"type": "runtime", "schema": SCHEMA_VERSION, "pid": pid, "t": t, "seq": seq,
            "thread": rt.thread, "steps": rt.steps, "polls": rt.polls,
            "tasks": [{"id": x.id, "name": x.name, "state": x.state,
                       "parked_on": None if x.parked_on is None else
                       {"kind": x.parked_on.kind, "name": x.parked_on.name}}
                      for x in rt.tasks]}


class ChannelSampler:
    """Samples channels of this process every ``interval`` seconds (bench_chan_metrics).

    ``channels=None`` samples every live channel (new ones join as they appear).  The baseline
    is taken at construction, so the first sample covers the time since then.  With
    ``tokens=True`` each sample also has a ``tokens`` record.

    ``sample()`` returns the records of one interval (call it from anywhere);
    iterating blocks a thread and yields records every ``interval``;
    ``with sampler.streaming(out): workload()`` writes NDJSON lines to ``out`` (a text file or a
    callable taking one line) from a background thread, then a final sample and a ``summary``.
    """

    def __init__(self, channels: Iterable[Channel[Any]] | None = None, interval: float = 0.5,
                 *, tokens: bool = False, ema_alpha: float = EMA_ALPHA) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = float(interval)
        self._channels = None if channels is None else list(channels)
        self._tokens = tokens
        self.book = RateBook(ema_alpha)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._started_ns = time.monotonic_ns()
        self.book.first_mono_ns = self._started_ns
        self.book.last_mono_ns = self._started_ns
        for s in self._stats():  # baseline: the first interval starts now
            key = s[1] if s[1] else s[0].name
            tr = self.book.tracks[key] = ChannelTrack(s[0].name, s[0].kind)
            tr.prev = s[0]
        self.book._prev_tokens = token_kernel().stats() if tokens else None

    def _stats(self) -> list[tuple[ChannelStats, int]]:
        if self._channels is not None:
            chans = self._channels
        else:
            from .. import _registry

            chans = sorted(_registry.channels.items(), key=lambda c: (c.name, id(c)))
        return [(c.stats(), id(c)) for c in chans]

    def sample(self) -> list[dict[str, Any]]:
        """The records of the interval since the previous sample (thread-safe)."""
        with self._lock:
            pairs = self._stats()
            b = self.book
            b.seq += 1
            b.samples += 1
            now_ns = time.monotonic_ns()
            interval = b._interval(now_ns)
            b.last_mono_ns = now_ns
            t = time.time()
            recs = [tr.record(pid=self.pid, seq=b.seq, t=t, ident=ident)
                    for tr, ident in b.update_channels([p[0] for p in pairs],
                                                       [p[1] for p in pairs])]
            if self._tokens:
                recs.append(b._tokens_record(token_kernel().stats(), self.pid, b.seq, t,
                                             interval))
            return recs

    def summary(self) -> dict[str, Any]:
        """The ``summary`` record: average and peak packets/s and Gbps per channel."""
        with self._lock:
            return self.book.summary(self.pid)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        deadline = time.monotonic()
        while True:
            deadline += self.interval
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                deadline = time.monotonic()  # fell behind: do not burst
            yield from self.sample()

    @contextmanager
    def streaming(self, out: IO[str] | Callable[[str], object]) -> Iterator[ChannelSampler]:
        """Write NDJSON lines to ``out`` every ``interval`` while the block runs; on exit write a
        last sample and the ``summary`` record."""
        write: Callable[[str], object]
        if callable(out):
            write = out
        else:
            def write(line: str) -> None:
                out.write(line)
                out.flush()
        stop = threading.Event()

        def emit(recs: Iterable[dict[str, Any]]) -> None:
            for rec in recs:
                write(dumps(rec) + "\n")

        def loop() -> None:
            while not stop.wait(self.interval):
                emit(self.sample())

        th = threading.Thread(target=loop, name="kcoro-sampler", daemon=True)
        th.start()
        try:
            yield self
        finally:
            stop.set()
            th.join()
            emit(self.sample())
            emit([self.summary()])
