"""Per-interval rates (ChannelSampler, RateBook) and the NDJSON schema they follow."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

import kcoro
from kcoro.metrics import ChannelSampler
from kcoro.metrics._snapshot import (
    Snapshot,
    channel_stats_from_dict,
    channel_stats_to_dict,
    snapshot,
)
from kcoro.metrics.ndjson import RECORDS, SCHEMA_VERSION, SchemaError, dumps, json_schema, validate
from kcoro.metrics.sampler import RateBook, sparkline

KINDS: dict[str, Any] = {"rendezvous": kcoro.RENDEZVOUS, "buffered": 16,
                         "unlimited": kcoro.UNLIMITED, "conflated": kcoro.CONFLATED}


@pytest.mark.parametrize("kind", list(KINDS))
def test_sampler_reports_interval_deltas_for_every_kind(kind: str) -> None:
    ch: kcoro.Channel[bytes] = kcoro.Channel(KINDS[kind], name=f"smp-{kind}")
    sampler = ChannelSampler([ch], interval=0.1)

    async def main() -> None:
        async def consumer() -> None:
            async for _ in ch:
                pass

        async with kcoro.TaskGroup() as tg:
            tg.spawn(consumer)
            for _ in range(10):
                await ch.send(b"0123456789")
                await kcoro.checkpoint()
            ch.close()

    kcoro.run(main)
    (rec,) = sampler.sample()
    validate(rec)
    assert (rec["channel"], rec["kind"]) == (f"smp-{kind}", kind)
    assert rec["d_sends"] == 10 and rec["d_bytes_sent"] == 100
    assert rec["d_recvs"] == rec["recvs"] and rec["d_recvs"] >= 1
    assert rec["capacity"] == (None if kind == "unlimited" else ch.stats().as_dict()["capacity"])
    assert rec["packets_per_s"] > 0 and rec["interval_s"] > 0
    assert rec["d_undelivered"] == 10 - rec["d_recvs"]  # only a conflated channel loses items
    assert rec["closed"] is True
    (again,) = sampler.sample()
    assert again["d_sends"] == 0 and again["packets_per_s"] == 0.0
    assert again["seq"] == rec["seq"] + 1


def test_failures_and_tokens_are_counted_per_interval() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1, name="smp-fail")
    sampler = ChannelSampler([ch], interval=1, tokens=True)
    ch.try_send(1)
    for _ in range(3):
        with pytest.raises(kcoro.WouldBlock):
            ch.try_send(2)
    with pytest.raises(TimeoutError):
        ch.send_blocking(3, timeout=0.001)
    t = kcoro.token_kernel().publish()
    t.complete()
    chan, tokens = sampler.sample()
    validate(chan)
    validate(tokens)
    assert chan["d_failures"]["send_would_block"] == 3
    assert chan["d_failures"]["send_timeout"] == 1
    assert chan["failures"]["send_would_block"] == 3
    assert chan["depth"] == 1 and chan["peak_depth"] == 1
    assert tokens["d_published"] >= 1 and tokens["d_completed"] >= 1
    assert tokens["type"] == "tokens"


def test_streaming_writes_ndjson_lines_ending_with_a_summary() -> None:
    lines: list[str] = []
    ch: kcoro.Channel[bytes] = kcoro.Channel(4, name="smp-stream")
    with ChannelSampler([ch], interval=0.05).streaming(lines.append):
        for _ in range(50):
            ch.try_send(b"abcd")
            ch.try_recv()
    recs = [json.loads(ln) for ln in lines]
    assert all(ln.endswith("\n") for ln in lines)
    for r in recs:
        validate(r)
    assert recs[-1]["type"] == "summary"
    chan = [r for r in recs if r["type"] == "channel"]
    assert sum(r["d_sends"] for r in chan) == 50
    summary = recs[-1]["channels"][0]
    assert summary["channel"] == "smp-stream" and summary["sends"] == 50
    assert summary["samples"] == len(chan)
    assert summary["peak_packets_per_s"] >= summary["avg_packets_per_s"] > 0


def _stats(name: str, sends: int, recvs: int, t_ns: int, nbytes: int = 0) -> Any:
    return channel_stats_from_dict({"name": name, "kind": "buffered", "capacity": 8,
                                    "sends": sends, "recvs": recvs, "bytes_sent": nbytes,
                                    "bytes_recv": nbytes, "snapshot_ns": t_ns})


def _snap(t_s: float, *chans: Any) -> Snapshot:
    base = snapshot()
    return Snapshot(pid=1, time=t_s, mono_ns=int(t_s * 1e9), channels=tuple(chans),
                    channel_ids=tuple(range(1, len(chans) + 1)), tokens=base.tokens,
                    arenas=(), runtimes=())


def test_ratebook_instant_ema_peak_from_successive_snapshots() -> None:
    book = RateBook()
    first = book.update(_snap(1.0, _stats("a", 0, 0, 1_000_000_000)))
    assert [r["type"] for r in first] == ["tokens"]  # the first snapshot is the baseline
    recs = book.update(_snap(2.0, _stats("a", 100, 100, 2_000_000_000, 1000)))
    (a,) = [r for r in recs if r["type"] == "channel"]
    assert a["packets_per_s"] == pytest.approx(100.0)
    assert a["bytes_recv_per_s"] == pytest.approx(1000.0)
    assert a["gbps"] == pytest.approx(8e-6)
    assert a["ema_packets_per_s"] == pytest.approx(100.0)
    recs = book.update(_snap(3.0, _stats("a", 100, 300, 3_000_000_000)))
    (a,) = [r for r in recs if r["type"] == "channel"]
    assert a["packets_per_s"] == pytest.approx(200.0)
    assert a["ema_packets_per_s"] == pytest.approx(0.25 * 200 + 0.75 * 100)
    assert a["peak_packets_per_s"] == pytest.approx(200.0)
    for r in recs:
        validate(r)
    s = book.summary(1)
    validate(s)
    assert s["channels"][0]["avg_packets_per_s"] == pytest.approx(150.0)


def test_schema_rejects_malformed_records() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(2, name="smp-schema")
    rec = ChannelSampler([ch], interval=1).sample()[0]
    validate(rec)
    for mutate, where in [
        (lambda r: r.pop("depth"), "depth"),
        (lambda r: r.update(depth="3"), "depth"),
        (lambda r: r.update(closed=1), "closed"),
        (lambda r: r.update(d_sends=True), "d_sends"),
        (lambda r: r["d_zref"].pop("sent"), "d_zref.sent"),
        (lambda r: r.update(schema=SCHEMA_VERSION + 1), "schema"),
        (lambda r: r.update(type="nonsense"), "type"),
    ]:
        bad = copy.deepcopy(rec)
        mutate(bad)
        with pytest.raises(SchemaError) as ei:
            validate(bad)
        assert ei.value.path == where
    with pytest.raises(SchemaError):
        validate([rec])
    extra = dict(rec, new_field=1)
    validate(extra)  # readers ignore unknown fields
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_json_schema_document_covers_every_record_type() -> None:
    doc = json_schema()
    consts = [v["properties"]["type"]["const"] for v in doc["oneOf"]]
    assert consts == list(RECORDS)
    chan = doc["oneOf"][consts.index("channel")]
    assert chan["properties"]["capacity"]["type"] == ["integer", "null"]
    assert "packets_per_s" in chan["required"]
    json.dumps(doc)


def test_channel_stats_json_form_round_trips() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(kcoro.UNLIMITED, name="smp-rt")
    s = ch.stats()
    d = channel_stats_to_dict(s, 7)
    assert d["capacity"] is None and d["id"] == 7
    assert channel_stats_from_dict(d) == s


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([1, 2, 4, 8]) == "▂▃▅█"
    assert len(sparkline(range(100), width=10)) == 10


def test_a_channel_reusing_a_dead_ones_identity_starts_a_new_baseline() -> None:
    book = RateBook()
    book.update(_snap(1.0, _stats("a", 500, 500, 1_000_000_000)))
    recs = book.update(_snap(2.0, _stats("a", 10, 10, 2_000_000_000)))  # counters went back
    assert [r["type"] for r in recs] == ["tokens"]  # a baseline, not a negative rate
    recs = book.update(_snap(3.0, _stats("a", 30, 30, 3_000_000_000)))
    (a,) = [r for r in recs if r["type"] == "channel"]
    assert a["packets_per_s"] == pytest.approx(20.0)


def test_the_library_does_not_import_the_monitor_dependencies() -> None:
    import subprocess
    import sys

    code = ("import sys, kcoro, kcoro.metrics, kcoro.metrics.client, kcoro.cli; "
            "kcoro.metrics.snapshot(); "
            "print(sorted(m for m in ('textual', 'prometheus_client', 'rich') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
