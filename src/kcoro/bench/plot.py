"""PNG charts of a run (``kcoro bench --plot DIR``), drawn with matplotlib (Agg, no display).

* ``summary.png`` — one bar per benchmark: how many times faster (right, green) or slower (left,
  red) kcoro's reference mode is than the best peer, on a log scale;
* ``B1.png`` … ``B9.png`` — every implementation of one benchmark: the bar is the median, the
  whisker spans min..max of the rounds, the dot is the best; kcoro in orange (its reference row
  darker), peers in blue, floors hatched grey; each peer is labelled with kcoro's ratio; missing
  peers are listed as "not installed" so nothing disappears silently.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

from . import report
from .runner import Row, Run, fmt_value

__all__ = ["plot_all"]

KCORO_REF, KCORO, PEER, FLOOR = "#d9480f", "#f59f00", "#4c6ef5", "#ced4da"
GOOD, BAD, MUTED = "#2b8a3e", "#c92a2a", "#868e96"


def _plt() -> Any:
    mpl = importlib.import_module("matplotlib")
    mpl.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _ticker() -> Any:
    return importlib.import_module("matplotlib.ticker")


def _tick(x: float, _pos: Any = None) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suf}"
    return f"{x:g}"


def _legend(fig: Any, run: Run, rows: list[Row]) -> None:
    patches = importlib.import_module("matplotlib.patches")
    kinds = [("kcoro (reference mode)", KCORO_REF, None),
             ("kcoro (other modes)", KCORO, None), ("peers", PEER, None),
             ("floors (no channel)", FLOOR, "//")]
    present = {"kcoro (reference mode)": any(r.is_kcoro and r.impl.ref for r in rows),
               "kcoro (other modes)": any(r.is_kcoro and not r.impl.ref for r in rows),
               "peers": any(r.impl.kind == "peer" for r in rows),
               "floors (no channel)": any(r.is_floor for r in rows)}
    handles = [patches.Patch(facecolor=c, hatch=h, edgecolor="#495057" if h else "none",
                             label=label) for label, c, h in kinds if present[label]]
    fig.legend(handles=handles, loc="upper right", ncol=2, fontsize=7.5,
               frameon=False, bbox_to_anchor=(0.995, 0.995))


def _color(r: Row) -> str:
    if r.is_kcoro:
        return KCORO_REF if (r.impl.ref and not r.with_metrics) else KCORO
    return FLOOR if r.is_floor else PEER


def _label(r: Row) -> str:
    return f"{r.impl.impl} {r.mode}".strip()


def _panel(ax: Any, run: Run, rows: list[Row], title: str) -> None:
    bench = rows[0].bench
    lower = bench.lower_is_better
    ok = sorted((r for r in rows if r.ok), key=lambda r: (r.median or 0.0) * (1 if lower else -1))
    missing = [r for r in rows if not r.ok]
    items: list[Row] = ok + missing
    ys = list(range(len(items)))[::-1]
    vals = [r.median or 0.0 for r in ok]
    positive = [v for v in vals if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 30
    for y, r in zip(ys, items):
        if not r.ok:
            why = r.detail if r.status in r.detail else (
                r.status + (f" ({r.detail[:70]})" if r.detail else ""))
            ax.text(0.01, y, why,
                    transform=ax.get_yaxis_transform(), va="center", ha="left",
                    fontsize=8, color=MUTED, style="italic")
            continue
        med = r.median or 0.0
        lo, hi = min(r.samples), max(r.samples)
        ax.barh(y, med, color=_color(r), edgecolor="#495057" if r.is_floor else "none",
                hatch="//" if r.is_floor else None, height=0.7, zorder=2)
        if len(r.samples) > 1:
            ax.plot([lo, hi], [y, y], color="#212529", lw=1, zorder=3)
            ax.plot([r.best], [y], "o", color="#212529", ms=3, zorder=4)
        txt = f" {fmt_value(med, bench.unit)}"
        ratio = report.ratio_text(run.rows, r)
        color = "#212529"
        if ratio and r.is_floor:
            c = report.compare(ref, r) if (ref := report.reference(run.rows, r)) else None
            if c is not None and c.factor:
                txt += f"  floor: kcoro {c.text}"
            color = MUTED
        elif ratio and not r.is_kcoro:
            txt += f"  {ratio}" if "idle" in ratio else f"  kcoro {ratio}"
            color = GOOD if ("faster" in ratio or "less" in ratio) else (
                BAD if ("slower" in ratio or "more" in ratio) else MUTED)
        elif r.with_metrics and ratio:
            txt += f"  ({ratio})"
        ax.text(max(hi, med), y, txt, va="center", ha="left", fontsize=8, color=color, zorder=5)
    ax.set_yticks(ys)
    ax.set_yticklabels([_label(r) for r in items], fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), items):
        if r.is_kcoro:
            tick.set_fontweight("bold")
        if not r.ok:
            tick.set_color(MUTED)
    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_ticker().FuncFormatter(_tick))
    if positive:
        lo_x = min(positive) / 3 if log else 0
        hi_x = max(max(r.samples) for r in ok) * (6 if log else 1.55)
        if bench.unit == "CPU %":
            hi_x = max(hi_x, 1.0)  # a 0-1 % axis: noise around 0 must not look like a gap
        ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(-0.7, len(items) - 0.3)
    better = "lower" if lower else "higher"
    ax.set_xlabel(f"{bench.unit} ({better} is better{', log scale' if log else ''})",
                  fontsize=9)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", color="#e9ecef", zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _footer(fig: Any, run: Run) -> None:
    m = run.machine
    fig.text(0.01, 0.005,
             f"kcoro {m.get('kcoro')} ({m.get('git_commit') or '?'}), Python {m.get('python')}, "
             f"{m.get('cpus')} CPUs, {run.started}; medians of {run.options.rounds} alternating "
             f"round(s), whisker min..max, dot best",
             fontsize=7, color=MUTED, ha="left", va="bottom")


def plot_bench(run: Run, bench_id: str, path: str) -> None:
    plt = _plt()
    rows = [r for r in run.rows if r.bench.id == bench_id]
    groups: list[str] = []
    for r in rows:
        if r.impl.group not in groups:
            groups.append(r.impl.group)
    per = [[r for r in rows if r.impl.group == g] for g in groups]
    heights = [max(2.0, 0.36 * len(p) + 1.0) for p in per]
    height = sum(heights) + 1.3
    fig, axes = plt.subplots(len(per), 1, figsize=(11, height),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    b = rows[0].bench
    fig.text(0.01, 1 - 0.12 / height, f"{b.id} {b.title}", fontsize=12, weight="bold",
             ha="left", va="top")
    fig.text(0.01, 1 - 0.42 / height, b.describe, fontsize=9, color="#495057", ha="left",
             va="top")
    for ax, g, p in zip(axes[:, 0], groups, per):
        _panel(ax, run, p, g)
    _footer(fig, run)
    fig.tight_layout(rect=(0, 0.25 / height, 1, 1 - 0.7 / height))
    _legend(fig, run, rows)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(run: Run, path: str) -> None:
    plt = _plt()
    entries = report.summary(run)
    fig, ax = plt.subplots(figsize=(11, 0.5 * max(len(entries), 3) + 1.6))
    ys = list(range(len(entries)))[::-1]
    span = 1.0
    labels = []
    for y, s in zip(ys, entries):
        head = f"{s['bench']} {s['title']}" + (f" ({s['group']})" if s["group"] else "")
        bp = s.get("best_peer")
        if s["kcoro_median"] is None or not bp or not bp.get("factor"):
            why = s["kcoro_status"] if s["kcoro_median"] is None else "no peer measured"
            labels.append(head)
            ax.text(0, y, f"  {why}", va="center", ha="left", fontsize=8, color=MUTED,
                    style="italic")
            continue
        f = bp["factor"]
        v = math.log2(f)
        span = max(span, abs(v))
        ax.barh(y, v, color=GOOD if f >= 1 else BAD, height=0.6, zorder=2)
        labels.append(f"{head}\nkcoro {s['kcoro_mode']} vs {bp['impl']} {bp['mode']}".strip())
        ax.text(v, y, f" {bp['text']} ", va="center",
                ha="left" if f >= 1 else "right", fontsize=8, zorder=3)
    lim = math.ceil(span) + 1
    ax.set_xlim(-lim, lim)
    ticks = list(range(-lim, lim + 1))
    ax.set_xticks(ticks)
    ax.set_xticklabels([("1x" if t == 0 else f"{2 ** abs(t)}x " +
                         ("faster" if t > 0 else "slower")) for t in ticks], fontsize=7)
    ax.axvline(0, color="#212529", lw=1)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.7, len(entries) - 0.3)
    ax.grid(axis="x", color="#e9ecef", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("kcoro's reference mode vs the best peer of each benchmark "
                 "(medians, log scale)", fontsize=11, loc="left")
    _footer(fig, run)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(run: Run, outdir: str) -> list[str]:
    """Write summary.png and one PNG per benchmark into ``outdir``; return the paths."""
    _plt()  # ImportError early when matplotlib is missing
    os.makedirs(outdir, exist_ok=True)
    paths = []
    p = os.path.join(outdir, "summary.png")
    plot_summary(run, p)
    paths.append(p)
    seen: list[str] = []
    for r in run.rows:
        if r.bench.id not in seen:
            seen.append(r.bench.id)
    for b in seen:
        p = os.path.join(outdir, f"{b}.png")
        plot_bench(run, b, p)
        paths.append(p)
    return paths
