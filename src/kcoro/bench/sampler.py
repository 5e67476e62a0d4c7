"""Per-interval NDJSON records of a running kcoro workload (``kcoro bench --ndjson``).

The Python counterpart of the C journal's ``bench_chan_metrics``: every ``interval`` seconds, one
``"type": "channel"`` record per live channel that moved something (packets/s, bytes/s and
Gbit/s, depth, zero-copy deltas), plus ``tokens`` records when available, and at the end one
``"type": "summary"`` record.  Every record also carries ``bench``, ``impl`` and ``mode``.

The records come from :class:`kcoro.metrics.ChannelSampler` (the schema of
:mod:`kcoro.metrics.ndjson`).  Without that module the same ``channel`` fields that matter here
are computed directly with :func:`kcoro.stats_rate` (``source`` says which one ran).  Sampling
runs on a daemon thread and reads ``Channel.stats()`` (a short kernel-lock section per channel):
it perturbs the measurement a little, which is why ``--ndjson`` is opt-in.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import weakref
from typing import IO, Any

__all__ = ["Sampler"]

_ZREF = ("sent", "received", "fallback_small", "fallback_capacity", "canceled", "aborted_close")


def _idle(rec: dict[str, Any]) -> bool:
    return rec.get("type") == "channel" and not rec.get("d_sends") and not rec.get("d_recvs")


class _RateSampler:
    """Fallback: ``channel`` records computed with :func:`kcoro.stats_rate`."""

    def __init__(self) -> None:
        self._prev: dict[int, tuple[Any, Any]] = {}
        self._sums: dict[int, dict[str, Any]] = {}
        self._t0 = time.monotonic()
        self.sample()  # baseline

    def sample(self) -> list[dict[str, Any]]:
        import kcoro
        from kcoro import _registry

        recs = []
        for ch in _registry.channels.items():
            curr = ch.stats()
            prev_ref = self._prev.get(id(ch))
            prev = prev_ref[1] if prev_ref is not None and prev_ref[0]() is ch else None
            self._prev[id(ch)] = (weakref.ref(ch), curr)
            if prev is None:
                continue
            r = kcoro.stats_rate(prev, curr)
            d = r.deltas
            pps = r.recvs_per_s or r.sends_per_s
            bps = r.bytes_recv_per_s or r.bytes_sent_per_s
            recs.append({
                "type": "channel", "schema": 1, "t": time.time(), "interval_s": r.interval_s,
                "channel": curr.name, "kind": curr.kind,
                "capacity": None if curr.capacity == float("inf") else curr.capacity,
                "depth": curr.buffered, "peak_depth": curr.peak,
                "waiting_senders": curr.waiting_senders,
                "waiting_receivers": curr.waiting_receivers, "closed": curr.closed_for_send,
                "packets_per_s": pps, "sends_per_s": r.sends_per_s,
                "recvs_per_s": r.recvs_per_s, "bytes_sent_per_s": r.bytes_sent_per_s,
                "bytes_recv_per_s": r.bytes_recv_per_s, "gbps": bps * 8 / 1e9,
                "sends": curr.sends, "recvs": curr.recvs,
                "d_sends": d["sends"], "d_recvs": d["recvs"],
                "zref": {k: getattr(curr, f"zref_{k}") for k in _ZREF},
                "d_zref": {k: d[f"zref_{k}"] for k in _ZREF},
            })
            if d["sends"] or d["recvs"]:
                s = self._sums.setdefault(id(ch), {"channel": curr.name, "kind": curr.kind,
                                                   "samples": 0, "sum": 0.0, "peak": 0.0,
                                                   "sum_gbps": 0.0})
                s["samples"] += 1
                s["sum"] += pps
                s["sum_gbps"] += bps * 8 / 1e9
                s["peak"] = max(s["peak"], pps)
                s.update(sends=curr.sends, recvs=curr.recvs)
        return recs

    def summary(self) -> dict[str, Any]:
        chans = []
        for s in self._sums.values():
            n = max(1, s["samples"])
            chans.append({"channel": s["channel"], "kind": s["kind"], "samples": s["samples"],
                          "avg_packets_per_s": s["sum"] / n, "peak_packets_per_s": s["peak"],
                          "avg_gbps": s["sum_gbps"] / n, "sends": s["sends"],
                          "recvs": s["recvs"]})
        return {"type": "summary", "schema": 1, "duration_s": time.monotonic() - self._t0,
                "channels": chans}


class Sampler:
    """Samples every live channel every ``interval`` seconds into ``path`` ("-" = stdout)."""

    def __init__(self, path: str, interval: float = 0.25,
                 labels: dict[str, Any] | None = None) -> None:
        self.path = path
        self.interval = max(0.001, float(interval))
        self.labels = dict(labels or {})
        self.count = 0
        self.source = ""
        self._impl: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: IO[str] | None = None

    def start(self) -> None:
        try:
            from kcoro.metrics import ChannelSampler
        except ImportError:
            self._impl, self.source = _RateSampler(), "kcoro.stats_rate"
        else:
            self._impl = ChannelSampler(interval=self.interval, tokens=True)
            self.source = "kcoro.metrics.ChannelSampler"
        self._out = sys.stdout if self.path == "-" else open(self.path, "a")  # noqa: SIM115
        self._thread = threading.Thread(target=self._loop, name="kcoro-bench-sampler",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit(self._impl.sample())

    def _emit(self, recs: list[dict[str, Any]]) -> None:
        assert self._out is not None
        lines = []
        for rec in recs:
            if _idle(rec):
                continue
            if rec.get("type") == "tokens" and not rec.get("d_published"):
                continue
            lines.append(json.dumps({**rec, **self.labels, "source": self.source}))
            self.count += 1
        if lines:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._emit(self._impl.sample())  # the last partial interval
        self._emit([self._impl.summary()])
        if self._out is not None and self.path != "-":
            self._out.close()
        self._out = None
