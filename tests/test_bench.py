"""Smoke test of ``kcoro bench --quick`` (the CI run): structure only, never speed.

One quick run of every benchmark is shared by the tests below; it checks that the table and the
JSON have every benchmark id, that every peer whose library is missing is *reported* as
"not installed" (never silently dropped), and that kcoro's own rows produce numbers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kcoro.bench import report, spec
from kcoro.bench.runner import Options, Row, Run

IDS = [b.id for b in spec.BENCHES]
STATUSES = {"ok", "not installed", "not available yet", "error", "timeout"}
# rows whose workload belongs to modules other engineers are still writing
OTHERS = {"B6", "B7"}


def _bench(*args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcoro", "bench", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _installed(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    d = tmp_path_factory.mktemp("bench")
    out = d / "quick.json"
    proc = _bench("--quick", "-q", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text()), out


def test_table_has_every_benchmark_and_column(quick: tuple[str, dict[str, Any], Path]) -> None:
    table, _, _ = quick
    lines = table.splitlines()
    header = lines[0]
    for col in report.COLUMNS:
        assert col in header
    rows = [ln for ln in lines if ln.startswith("| B")]
    for bid in IDS:
        assert any(ln.startswith(f"| {bid}") for ln in rows), f"{bid} missing from the table"
    # the per-benchmark summary lines follow the table
    for bid in IDS:
        assert any(ln.startswith(f"{bid} ") for ln in lines if not ln.startswith("|"))


def test_json_structure(quick: tuple[str, dict[str, Any], Path]) -> None:
    _, doc, _ = quick
    assert doc["schema"] == 1
    assert doc["command"][:3] == ["kcoro", "bench", "--quick"]
    for key in ("python", "platform", "cpu", "cpus", "kcoro", "peer_versions"):
        assert key in doc["machine"]
    assert {b["id"] for b in doc["benchmarks"]} == set(IDS)
    assert {r["bench"] for r in doc["results"]} == set(IDS)
    for r in doc["results"]:
        assert r["status"] in STATUSES, r
        if r["status"] == "ok":
            assert r["samples"] and r["median"] is not None and r["best"] is not None
            assert r["median"] >= 0
        if r["bench"] not in OTHERS:
            assert r["status"] not in ("error", "timeout"), r
    assert {s["bench"] for s in doc["summary"]} == set(IDS)


def test_missing_peers_are_reported(quick: tuple[str, dict[str, Any], Path]) -> None:
    table, doc, _ = quick
    for impl in spec.IMPLS:
        missing = [m for m in impl.requires if not _installed(m)]
        rows = [r for r in doc["results"] if (r["bench"], r["group"], r["impl"], r["mode"])
                == (impl.bench, impl.group, impl.impl, impl.mode)]
        assert len(rows) == 1, impl.key
        if missing:
            assert rows[0]["status"] == "not installed", rows[0]
    for r in doc["results"]:
        if r["status"] == "not installed":
            line = next(ln for ln in table.splitlines()
                        if f"| {r['impl']}" in ln and r["mode"] in ln and r["bench"] in ln)
            assert "not installed" in line


def test_kcoro_rows_measure(quick: tuple[str, dict[str, Any], Path]) -> None:
    _, doc, _ = quick
    refs = [r for r in doc["results"] if r["kind"] == "kcoro" and r["reference"]]
    for r in refs:
        if r["bench"] in OTHERS or r["bench"] == "B4":
            assert r["status"] in ("ok", "not available yet"), r
        else:
            assert r["status"] == "ok", r
    for r in doc["results"]:
        if r["kind"] == "peer" and r["status"] == "ok":
            assert r["ratio_text"].endswith(("faster", "slower", "less CPU", "more CPU",
                                             "(<0.1%)")), r


def test_replot_from_json(quick: tuple[str, dict[str, Any], Path], tmp_path: Path) -> None:
    path = quick[2]
    if not _installed("matplotlib"):
        proc = _bench("--from-json", str(path), "--plot", str(tmp_path))
        assert proc.returncode == 1 and "matplotlib" in proc.stderr
        return
    # two charts keep the test short: B1 (log scale, floors) and B5 (two groups)
    proc = _bench("--from-json", str(path), "--only", "B1,B5", "--plot", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("summary", "B1", "B5"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "B2.png").exists()


def test_ndjson_and_with_metrics(tmp_path: Path) -> None:
    nd = tmp_path / "rates.ndjson"
    out = tmp_path / "m.json"
    # --scale: enough messages for several sampling intervals however fast kcoro gets
    proc = _bench("--quick", "-q", "--only", "B3", "--peers", "none", "--with-metrics",
                  "--scale", "20",
                  "--ndjson", str(nd), "--ndjson-interval", "0.005", "--json", str(out),
                  timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    metrics_rows = [r for r in doc["results"] if r["with_metrics"]]
    assert metrics_rows and all(r["kind"] == "kcoro" for r in metrics_rows)
    assert all(r["status"] in ("ok", "not available yet") for r in metrics_rows)
    assert not any(r["kind"] == "peer" for r in doc["results"])
    recs = [json.loads(ln) for ln in nd.read_text().splitlines()]
    samples = [r for r in recs if r["type"] == "channel"]
    assert samples, "no NDJSON channel records"
    for key in ("bench", "impl", "mode", "channel", "packets_per_s", "gbps", "depth",
                "d_zref", "source"):
        assert key in samples[0]
    assert {r["mode"] for r in samples} >= {"buffered(64)", "rendezvous"}
    assert all(r["bench"] == "B3" for r in samples)
    assert any(r["type"] == "summary" for r in recs)


def test_bad_arguments() -> None:
    assert _bench("--only", "B99", "--quick").returncode == 2
    assert _bench("--peers", "nosuchpeer", "--quick").returncode == 2


def _row(bench: str, impl: str, kind: str, value: float, ref: bool = False) -> Row:
    b = spec.get(bench)
    return Row(b, spec.Impl(bench, impl, "", "", kind, ref=ref), samples=[value])


def test_ratio_direction_follows_the_unit() -> None:
    # lower is better (ns/hop): kcoro 100 vs peer 300 -> 3x faster
    k, p = _row("B1", "kcoro", "kcoro", 100, ref=True), _row("B1", "x", "peer", 300)
    c = report.compare(k, p)
    assert c is not None and c.text == "3.00x faster"
    # higher is better (msgs/s): kcoro 100 vs peer 300 -> 3x slower
    k, p = _row("B2", "kcoro", "kcoro", 100, ref=True), _row("B2", "x", "peer", 300)
    c = report.compare(k, p)
    assert c is not None and c.text == "3.00x slower"
    # CPU %: both idle -> no ratio claimed
    k, p = _row("B8", "kcoro", "kcoro", 0.01, ref=True), _row("B8", "x", "peer", 0.05)
    c = report.compare(k, p)
    assert c is not None and "idle" in c.text
    run = Run(Options(), [k, p], {}, ["kcoro", "bench"], "now")
    assert "| B8" in report.table(run)


def test_b9_wakes_prints_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    from kcoro.bench import b9_wakes

    b9_wakes.main(["--n", "200", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "variant" not in ln]
    assert [r.split(" | ")[0][2:] for r in rows] == list(b9_wakes.ROWS)
    for r in rows:
        assert float(r.split(" | ")[1]) > 0  # a measured time in µs
