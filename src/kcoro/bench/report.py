"""Turn a :class:`~kcoro.bench.runner.Run` into the table, the summary and the JSON document.

Ratios compare *medians* measured side by side in one run (BENCHMARKS.md).  Every peer and floor
row is compared with its group's kcoro reference row, in the direction of the unit: for ns/hop,
µs/hop, ns/ticket and CPU % lower is better, for msgs/s and GB/s higher is better.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .runner import OK, Row, Run, fmt_value
from .spec import BENCHES

__all__ = [
    "COLUMNS",
    "Comparison",
    "compare",
    "from_json",
    "markdown",
    "summary_lines",
    "table",
    "to_json",
]

COLUMNS = ("bench", "impl", "mode", "value", "unit", "median", "best", "runs", "kcoro/peer")
IDLE_CPU = 0.1  # CPU %: below this on both sides the ratio is noise


@dataclass(frozen=True)
class Comparison:
    """kcoro reference vs one other row.  ``factor`` >= 1 means kcoro is better by that much."""

    factor: float
    text: str
    raw_ratio: float  # kcoro median / other median


def _group_key(row: Row) -> tuple[str, str]:
    return row.bench.id, row.impl.group


def reference(rows: list[Row], row: Row) -> Row | None:
    for r in rows:
        if (_group_key(r) == _group_key(row) and r.impl.ref and not r.with_metrics
                and r.ok):
            return r
    return None


def compare(kcoro: Row, other: Row) -> Comparison | None:
    k, o = kcoro.median, other.median
    if k is None or o is None:
        return None
    unit = kcoro.bench.unit
    if unit == "CPU %":
        if max(k, o) < IDLE_CPU:
            return Comparison(1.0, f"both idle (<{IDLE_CPU}%)", k / o if o else 1.0)
        f = max(o, 1e-3) / max(k, 1e-3)
        text = f"{f:.2f}x less CPU" if f >= 1 else f"{1 / f:.2f}x more CPU"
        return Comparison(f, text, k / o if o else float("inf"))
    if k <= 0 or o <= 0:
        return None
    f = o / k if kcoro.bench.lower_is_better else k / o
    text = f"{f:.2f}x faster" if f >= 1 else f"{1 / f:.2f}x slower"
    return Comparison(f, text, k / o)


def _metrics_overhead(rows: list[Row], row: Row) -> str:
    for r in rows:
        if r.impl is row.impl and not r.with_metrics and r.ok and row.ok:
            a, b = r.median, row.median
            assert a is not None and b is not None
            pct = ((b / a - 1) if row.bench.lower_is_better else (a / b - 1)) * 100
            return f"metrics cost {pct:+.1f}%"
    return ""


def best_peer(rows: list[Row], row: Row) -> Row | None:
    peers = [r for r in rows if _group_key(r) == _group_key(row) and r.impl.kind == "peer"
             and r.ok]
    if not peers:
        return None
    sign = 1.0 if row.bench.lower_is_better else -1.0
    return min(peers, key=lambda r: sign * (r.median or 0.0))


def ratio_text(rows: list[Row], row: Row) -> str:
    if not row.ok:
        return ""
    if row.with_metrics:
        return _metrics_overhead(rows, row)
    if row.is_kcoro:
        if row.impl.ref:
            return "reference"
        bp = best_peer(rows, row)
        c = compare(row, bp) if bp is not None else None
        if c is None:
            return ""
        return c.text if "idle" in c.text else f"{c.text} than best peer"
    ref = reference(rows, row)
    c = compare(ref, row) if ref is not None else None
    if c is None:
        return ""
    return c.text + (" (floor)" if row.is_floor else "")


def _label_bench(row: Row) -> str:
    return row.bench.id + (f" {row.impl.group}" if row.impl.group else "")


def table_rows(run: Run) -> list[dict[str, str]]:
    out = []
    for r in run.rows:
        unit = r.bench.unit
        if r.ok:
            value = fmt_value(r.median, unit)
            if r.status != OK:
                value += f" ({r.status})"
        else:
            value = r.status
        out.append({
            "bench": _label_bench(r), "impl": r.impl.impl, "mode": r.mode, "value": value,
            "unit": unit,
            "median": f"{r.median:.6g}" if r.median is not None else "-",
            "best": f"{r.best:.6g}" if r.best is not None else "-",
            "runs": str(len(r.samples)), "kcoro/peer": ratio_text(run.rows, r),
        })
    return out


def table(run: Run) -> str:
    """The results as one Markdown table (readable in a terminal, pasteable into docs)."""
    rows = table_rows(run)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in COLUMNS}
    right = {"value", "median", "best", "runs"}

    def line(vals: dict[str, str]) -> str:
        cells = [vals[c].rjust(widths[c]) if c in right else vals[c].ljust(widths[c])
                 for c in COLUMNS]
        return "| " + " | ".join(cells) + " |"

    sep = "|" + "|".join(("-" * (widths[c] + 1) + ":") if c in right else "-" * (widths[c] + 2)
                         for c in COLUMNS) + "|"
    return "\n".join([line({c: c for c in COLUMNS}), sep, *(line(r) for r in rows)])


def summary(run: Run) -> list[dict[str, Any]]:
    """Per benchmark (and group): the kcoro reference, the best peer and the floors."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for r in run.rows:
        if not (r.impl.ref and r.is_kcoro and not r.with_metrics):
            continue
        key = _group_key(r)
        if key in seen:
            continue
        seen.add(key)
        s: dict[str, Any] = {"bench": r.bench.id, "group": r.impl.group,
                             "title": r.bench.title, "unit": r.bench.unit,
                             "kcoro_mode": r.mode, "kcoro_status": r.status,
                             "kcoro_median": r.median}
        bp = best_peer(run.rows, r) if r.ok else None
        if bp is not None:
            c = compare(r, bp)
            s["best_peer"] = {"impl": bp.impl.impl, "mode": bp.mode, "median": bp.median,
                              "factor": c.factor if c else None, "text": c.text if c else ""}
        floors = []
        for f in run.rows:
            if f.is_floor and _group_key(f) == key and f.ok and r.ok:
                c = compare(r, f)
                floors.append({"impl": f.impl.impl, "median": f.median,
                               "factor": c.factor if c else None, "text": c.text if c else ""})
        s["floors"] = floors
        missing = [f"{m.impl.impl} {m.mode}".strip() for m in run.rows
                   if _group_key(m) == key and m.status != OK and not m.samples]
        s["missing"] = missing
        out.append(s)
    return out


def summary_lines(run: Run) -> list[str]:
    lines = []
    for s in summary(run):
        head = f"{s['bench']} {s['title']}" + (f" ({s['group']})" if s["group"] else "")
        if s["kcoro_median"] is None:
            lines.append(f"{head}: kcoro {s['kcoro_mode']}: {s['kcoro_status']}")
            continue
        txt = (f"{head}: kcoro {s['kcoro_mode']} "
               f"{fmt_value(s['kcoro_median'], s['unit'])} {s['unit']}")
        bp = s.get("best_peer")
        if bp:
            who = "" if "idle" in bp["text"] else "kcoro "
            peer = f"{bp['impl']} {bp['mode']}".strip()
            txt += (f"; best peer {peer} "
                    f"{fmt_value(bp['median'], s['unit'])} -> {who}{bp['text']}")
        for f in s["floors"]:
            if f["factor"]:
                txt += (f"; floor {f['impl']} {fmt_value(f['median'], s['unit'])} "
                        f"(kcoro {f['text']})")
        lines.append(txt)
    return lines


def to_json(run: Run) -> dict[str, Any]:
    o = run.options
    rows = []
    for r, t in zip(run.rows, table_rows(run)):
        ref = reference(run.rows, r)
        c = compare(ref, r) if ref is not None and ref is not r and not r.is_kcoro else None
        rows.append({
            "bench": r.bench.id, "group": r.impl.group, "impl": r.impl.impl, "mode": r.mode,
            "kind": r.impl.kind, "reference": r.impl.ref and not r.with_metrics,
            "with_metrics": r.with_metrics, "status": r.status, "detail": r.detail,
            "unit": r.bench.unit, "lower_is_better": r.bench.lower_is_better,
            "n": r.n, "n_what": r.bench.n_what,
            "samples": r.samples, "median": r.median, "best": r.best,
            "seconds": r.seconds, "extra": r.extras, "note": r.impl.note,
            "ratio_text": t["kcoro/peer"],
            "kcoro_factor": c.factor if c else None,
            "kcoro_over_peer": c.raw_ratio if c else None,
        })
    return {
        "schema": 1, "tool": "kcoro bench", "command": run.command, "started": run.started,
        "seconds": round(run.seconds, 3), "machine": run.machine,
        "options": {"quick": o.quick, "only": o.only, "peers": o.peers, "repeat": o.rounds,
                    "scale": o.scale, "with_metrics": o.with_metrics, "ndjson": o.ndjson},
        "benchmarks": [{"id": b.id, "title": b.title, "unit": b.unit,
                        "lower_is_better": b.lower_is_better, "describe": b.describe,
                        "n_full": b.n_full, "n_quick": b.n_quick, "n_what": b.n_what}
                       for b in BENCHES if any(r.bench is b for r in run.rows)],
        "results": rows,
        "summary": summary(run),
    }


def dumps(run: Run) -> str:
    return json.dumps(to_json(run), indent=2)


def from_json(doc: dict[str, Any]) -> Run:
    """Rebuild a :class:`Run` from :func:`to_json` output (to re-draw plots or re-print)."""
    from .runner import Options
    from .spec import IMPLS, Impl, get

    rows = []
    for d in doc["results"]:
        wm = bool(d.get("with_metrics"))
        mode = d["mode"]
        if wm and mode.endswith(" +metrics"):
            mode = mode[: -len(" +metrics")]
        impl = next((i for i in IMPLS if (i.bench, i.group, i.impl, i.mode)
                     == (d["bench"], d["group"], d["impl"], mode)), None)
        if impl is None:
            impl = Impl(d["bench"], d["impl"], mode, "", d["kind"], group=d["group"],
                        ref=bool(d.get("reference")), note=d.get("note", ""))
        rows.append(Row(bench=get(d["bench"]), impl=impl, with_metrics=wm, status=d["status"],
                        detail=d.get("detail", ""), samples=list(d["samples"]),
                        seconds=list(d.get("seconds", [])), extras=list(d.get("extra", [])),
                        n=d.get("n", 0)))
    o = doc.get("options", {})
    opts = Options(quick=bool(o.get("quick")), only=o.get("only"), peers=o.get("peers"),
                   repeat=o.get("repeat"), scale=o.get("scale", 1.0),
                   with_metrics=bool(o.get("with_metrics")), ndjson=o.get("ndjson"))
    return Run(options=opts, rows=rows, machine=doc.get("machine", {}),
               command=list(doc.get("command", [])), started=doc.get("started", ""),
               seconds=float(doc.get("seconds", 0.0)))


def markdown(run: Run, images: str | None = "bench") -> str:
    """The results section of docs/BENCHMARKS.md: command, machine, charts, table, summary."""
    m = run.machine
    out = [
        f"Command: `{' '.join(run.command)}` ({run.options.rounds} alternating round(s), "
        f"{run.seconds / 60:.0f} min), started {run.started}.",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, Python {m.get('python', '?')}, "
        f"{m.get('platform', '?')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_start') or [])}. "
        f"kcoro {m.get('kcoro', '?')} at commit `{m.get('git_commit') or '?'}`. Peers: "
        + ", ".join(f"{k} {v}" for k, v in (m.get("peer_versions") or {}).items() if v) + ".",
        "",
    ]
    if images:
        out += [f"![kcoro vs the best peer of each benchmark]({images}/summary.png)", ""]
    out += [table(run), "", "Per benchmark (kcoro's reference mode):", ""]
    out += [f"* {line}" for line in summary_lines(run)]
    if images:
        out += [""]
        seen: list[str] = []
        for r in run.rows:
            if r.bench.id not in seen:
                seen.append(r.bench.id)
                out += [f"![{r.bench.id} {r.bench.title}]({images}/{r.bench.id}.png)", ""]
    return "\n".join(out).rstrip() + "\n"
