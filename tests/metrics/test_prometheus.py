"""kcoro.metrics.prometheus: the same counters through prometheus_client, conventional names."""

from __future__ import annotations

import math
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import kcoro
from kcoro.metrics import prometheus
from kcoro.testing import wait_all_tasks_blocked


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_has_channel_token_and_arena_series() -> None:
    buf: kcoro.Channel[bytes] = kcoro.Channel(4, name="prom-buf")
    dup: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED, name="prom-buf")
    buf.try_send(b"abc")
    buf.try_send(b"de")
    buf.try_recv()
    buf.try_recv()
    with pytest.raises(kcoro.WouldBlock):
        buf.try_recv()
    arena = kcoro.Arena(1 << 16, name="prom-arena")
    p = arena.alloc(100)
    got = _samples(prometheus.exposition())
    # two live channels share a name: one keeps it, the other is "prom-buf#2"
    names = {dict(labels)["kind"]: dict(labels)["channel"] for name, labels in got
             if name == "kcoro_channel_sends_total" and
             dict(labels)["channel"].startswith("prom-buf")}
    assert sorted(names.values()) == ["prom-buf", "prom-buf#2"]
    lab = (("channel", names["buffered"]), ("kind", "buffered"))
    assert got[("kcoro_channel_sends_total", lab)] == 2
    assert got[("kcoro_channel_recvs_total", lab)] == 2
    assert got[("kcoro_channel_sent_bytes_total", lab)] == 5
    assert got[("kcoro_channel_received_bytes_total", lab)] == 5
    assert got[("kcoro_channel_failures_total",
                tuple(sorted((*lab, ("op", "recv"), ("cause", "would_block")))))] == 1
    assert got[("kcoro_channel_depth", lab)] == 0
    assert got[("kcoro_channel_peak_depth", lab)] == 2
    assert got[("kcoro_channel_capacity", lab)] == 4
    dup_lab = (("channel", names["unlimited"]), ("kind", "unlimited"))
    assert math.isinf(got[("kcoro_channel_capacity", dup_lab)])
    assert ("kcoro_tokens_outstanding", ()) in got
    assert ("kcoro_tokens_zombies_total", ()) in got
    assert got[("kcoro_arena_in_use_bytes", (("arena", "prom-arena"),))] > 0
    assert got[("kcoro_arena_allocs_total", (("arena", "prom-arena"),))] == 1
    p.release()
    del dup, arena


def test_registered_collector_serves_http_on_loopback() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(2, name="prom-http")
    ch.try_send(1)
    reg = CollectorRegistry()
    prometheus.register(reg)
    server, thread = prometheus.start_http_server(0, registry=reg)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read()
        got = _samples(body)
        assert got[("kcoro_channel_sends_total",
                    (("channel", "prom-http"), ("kind", "buffered")))] == 1
    finally:
        server.shutdown()
        thread.join(10)


def test_runtime_tasks_by_state() -> None:
    async def main() -> bytes:
        ch: kcoro.Channel[int] = kcoro.Channel(name="prom-rt")

        async def waiter() -> None:
            await ch.recv()

        t = kcoro.spawn(waiter)
        await wait_all_tasks_blocked()
        text = prometheus.exposition()
        await ch.send(1)
        await t
        return text

    got = _samples(kcoro.run(main))
    parked = [v for (name, labels), v in got.items()
              if name == "kcoro_runtime_tasks" and dict(labels)["state"] == "PARKED"]
    running = [v for (name, labels), v in got.items()
               if name == "kcoro_runtime_tasks" and dict(labels)["state"] == "RUNNING"]
    assert 1 in parked and 1 in running
    assert any(name == "kcoro_runtime_steps_total" for name, _ in got)
