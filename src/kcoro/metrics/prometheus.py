"""Export kcoro metrics through ``prometheus_client`` (``pip install 'kcoro[monitor]'``).

::

    from kcoro.metrics import prometheus
    prometheus.register()                 # into prometheus_client's default registry
    prometheus.start_http_server(9464)    # or serve /metrics yourself

Every scrape takes one :func:`kcoro.metrics.snapshot`.  Names (label ``channel`` and ``kind``
on every channel series; a name shared by several live channels gets ``#2``, ``#3`` ...)::

    kcoro_channel_sends_total  kcoro_channel_recvs_total
    kcoro_channel_sent_bytes_total  kcoro_channel_received_bytes_total
    kcoro_channel_failures_total{op="send|recv",cause="would_block|timeout|closed|cancelled|dropped"}
    kcoro_channel_undelivered_total
    kcoro_channel_zref_total{event="sent|received|fallback_small|fallback_capacity|canceled|aborted_close"}
    kcoro_channel_depth  kcoro_channel_peak_depth  kcoro_channel_capacity (+Inf: unlimited)
    kcoro_channel_waiting_senders  kcoro_channel_waiting_receivers  kcoro_channel_closed
    kcoro_tokens_{published,parked,completed,cancelled,zombies}_total
    kcoro_tokens_outstanding  kcoro_tokens_keyed
    kcoro_arena_{capacity,in_use,peak}_bytes{arena}  kcoro_arena_blocks{arena}
    kcoro_arena_{allocs,frees,spills,fallbacks}_total{arena}
    kcoro_runtime_{steps,polls}_total{thread}  kcoro_runtime_tasks{thread,state}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._snapshot import Snapshot, snapshot

__all__ = ["KcoroCollector", "exposition", "register", "start_http_server"]

_CH = ["channel", "kind"]
_STATES = ("CREATED", "READY", "RUNNING", "PARKED")


class KcoroCollector(Collector):
    """A collector reading one snapshot per scrape from ``source`` (default: this process)."""

    def __init__(self, source: Callable[[], Snapshot] = snapshot) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return []  # no scrape at registration time

    def collect(self) -> Iterable[Metric]:
        snap = self.source()
        yield from _channel_metrics(snap)
        yield from _token_metrics(snap)
        yield from _arena_metrics(snap)
        yield from _runtime_metrics(snap)


def _channel_metrics(snap: Snapshot) -> Iterable[Metric]:
    def counter(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=_CH + (extra or []))

    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=_CH)

    sends = counter("kcoro_channel_sends", "Items accepted by send")
    recvs = counter("kcoro_channel_recvs", "Items received")
    bsent = counter("kcoro_channel_sent_bytes", "Bytes of bytes-like items and payloads sent")
    brecv = counter("kcoro_channel_received_bytes", "Bytes of bytes-like items and payloads "
                    "received")
    fails = counter("kcoro_channel_failures", "Operations that failed, by side and cause",
                    ["op", "cause"])
    undel = counter("kcoro_channel_undelivered", "Accepted items no receiver got")
    zref = counter("kcoro_channel_zref", "Zero-copy reference events", ["event"])
    depth = gauge("kcoro_channel_depth", "Items buffered now")
    peak = gauge("kcoro_channel_peak_depth", "Most items ever buffered")
    cap = gauge("kcoro_channel_capacity", "Buffer capacity (+Inf: unlimited)")
    wsend = gauge("kcoro_channel_waiting_senders", "Senders parked now")
    wrecv = gauge("kcoro_channel_waiting_receivers", "Receivers parked now")
    closed = gauge("kcoro_channel_closed", "1 once closed for send")
    seen: Counter[str] = Counter()
    for s in snap.channels:
        seen[s.name] += 1
        name = s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}"
        lab = [name, s.kind]
        sends.add_metric(lab, s.sends)
        recvs.add_metric(lab, s.recvs)
        bsent.add_metric(lab, s.bytes_sent)
        brecv.add_metric(lab, s.bytes_recv)
        for op in ("send", "recv"):
            for cause in ("would_block", "timeout", "closed", "cancelled"):
                fails.add_metric([*lab, op, cause], getattr(s, f"{op}_{cause}"))
        fails.add_metric([*lab, "send", "dropped"], s.send_dropped)
        undel.add_metric(lab, s.undelivered)
        for ev in ("sent", "received", "fallback_small", "fallback_capacity", "canceled",
                   "aborted_close"):
            zref.add_metric([*lab, ev], getattr(s, f"zref_{ev}"))
        depth.add_metric(lab, s.buffered)
        peak.add_metric(lab, s.peak)
        cap.add_metric(lab, float(s.capacity))
        wsend.add_metric(lab, s.waiting_senders)
        wrecv.add_metric(lab, s.waiting_receivers)
        closed.add_metric(lab, 1.0 if s.closed_for_send else 0.0)
    return [sends, recvs, bsent, brecv, fails, undel, zref, depth, peak, cap, wsend, wrecv,
            closed]


def _token_metrics(snap: Snapshot) -> Iterable[Metric]:
    k = snap.tokens
    out: list[Metric] = []
    for f, doc in (("published", "Tickets published (public and internal waits)"),
                   ("parked", "Waits that parked on a ticket"),
                   ("completed", "Tickets completed"), ("cancelled", "Tickets cancelled"),
                   ("zombies", "Late completions of finished or unknown tickets")):
        out.append(CounterMetricFamily(f"kcoro_tokens_{f}", doc, value=getattr(k, f)))
    out.append(GaugeMetricFamily("kcoro_tokens_outstanding", "Tickets not yet finished",
                                 value=k.outstanding))
    out.append(GaugeMetricFamily("kcoro_tokens_keyed", "Live tickets with a correlation key",
                                 value=k.keyed))
    return out


def _arena_metrics(snap: Snapshot) -> Iterable[Metric]:
    lab = ["arena"]
    fams: dict[str, Any] = {
        "capacity": GaugeMetricFamily("kcoro_arena_capacity_bytes", "Arena size", labels=lab),
        "in_use": GaugeMetricFamily("kcoro_arena_in_use_bytes", "Bytes allocated now",
                                    labels=lab),
        "peak": GaugeMetricFamily("kcoro_arena_peak_bytes", "Most bytes ever allocated",
                                  labels=lab),
        "blocks": GaugeMetricFamily("kcoro_arena_blocks", "Blocks allocated now", labels=lab),
    }
    for f in ("allocs", "frees", "spills", "fallbacks"):
        fams[f] = CounterMetricFamily(f"kcoro_arena_{f}", f"Arena {f}", labels=lab)
    for a in snap.arenas:
        for f, fam in fams.items():
            fam.add_metric([a.name], getattr(a, f))
    return list(fams.values())


def _runtime_metrics(snap: Snapshot) -> Iterable[Metric]:
    steps = CounterMetricFamily("kcoro_runtime_steps", "Task steps run", labels=["thread"])
    polls = CounterMetricFamily("kcoro_runtime_polls", "Selector polls", labels=["thread"])
    tasks = GaugeMetricFamily("kcoro_runtime_tasks", "Live tasks by state",
                              labels=["thread", "state"])
    for rt in snap.runtimes:
        steps.add_metric([rt.thread], rt.steps)
        polls.add_metric([rt.thread], rt.polls)
        by_state = Counter(t.state for t in rt.tasks)
        for st in _STATES:
            tasks.add_metric([rt.thread, st], by_state.get(st, 0))
    return [steps, polls, tasks]


def register(registry: CollectorRegistry | None = None,
             source: Callable[[], Snapshot] = snapshot) -> KcoroCollector:
    """Register a :class:`KcoroCollector` (default: prometheus_client's global registry)."""
    c = KcoroCollector(source)
    (REGISTRY if registry is None else registry).register(c)
    return c


def start_http_server(port: int, addr: str = "127.0.0.1",
                      registry: CollectorRegistry | None = None) -> Any:
    """Serve ``/metrics`` on ``addr:port`` (loopback by default) from a daemon thread, with the
    kcoro collector registered in ``registry`` (default: a fresh one holding only kcoro's)."""
    if registry is None:
        registry = CollectorRegistry()
        register(registry)
    return _start_http_server(port, addr=addr, registry=registry)


def exposition(source: Callable[[], Snapshot] = snapshot) -> bytes:
    """The text exposition of one snapshot (what a scrape returns)."""
    reg = CollectorRegistry()
    register(reg, source)
    return generate_latest(reg)
