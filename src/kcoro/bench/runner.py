"""Run the plan: every measurement in a fresh child process, kcoro and peers alternating.

For each benchmark the rows are measured in rounds: ``kcoro, peer1, peer2, …, kcoro, peer1, …``
(``repeat`` rounds), so slow drifts of a shared machine hit every implementation alike.  A peer
whose library is missing is reported "not installed" without spawning anything; a row that says
"not installed" / "not available yet" / "error" once is not retried in later rounds.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import spec
from .spec import FLOOR, KCORO, Bench, Impl

__all__ = ["Options", "Row", "Run", "machine_info", "run"]

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")
MARKER = "KCORO-BENCH-RESULT "
OK, MISSING, NOT_YET, ERROR, TIMEOUT = ("ok", "not installed", "not available yet", "error",
                                        "timeout")
PEER_DISTS = ("trio", "anyio", "gevent", "greenlet", "aiochannel", "janus", "culsans",
              "faster-fifo", "pyzmq", "matplotlib")


@dataclass
class Options:
    quick: bool = False
    only: list[str] | None = None
    peers: list[str] | None = None
    repeat: int | None = None
    scale: float = 1.0            # multiplies every work size (tests use < 1)
    with_metrics: bool = False
    ndjson: str | None = None     # path ("-" = stdout) for per-interval records of kcoro rows
    ndjson_interval: float = 0.25
    timeout: float | None = None  # per measurement
    progress: TextIO | None = None

    @property
    def rounds(self) -> int:
        return self.repeat if self.repeat is not None else (1 if self.quick else 3)

    @property
    def child_timeout(self) -> float:
        return self.timeout if self.timeout is not None else (60.0 if self.quick else 900.0)


@dataclass
class Row:
    bench: Bench
    impl: Impl
    with_metrics: bool = False
    status: str = OK
    detail: str = ""
    samples: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)
    n: float = 0

    @property
    def mode(self) -> str:
        return self.impl.mode + (" +metrics" if self.with_metrics else "")

    @property
    def key(self) -> str:
        return self.impl.key + ("+metrics" if self.with_metrics else "")

    @property
    def ok(self) -> bool:
        return self.status == OK and bool(self.samples)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def best(self) -> float | None:
        if not self.samples:
            return None
        return min(self.samples) if self.bench.lower_is_better else max(self.samples)

    @property
    def is_kcoro(self) -> bool:
        return self.impl.kind == KCORO

    @property
    def is_floor(self) -> bool:
        return self.impl.kind == FLOOR


@dataclass
class Run:
    options: Options
    rows: list[Row]
    machine: dict[str, Any]
    command: list[str]
    started: str
    seconds: float = 0.0


def _available(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for d in PEER_DISTS:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out


def _git_commit() -> str | None:
    """The commit of the kcoro being measured, "+dirty" when its sources differ from it.
    ``KCORO_BENCH_COMMIT`` names it when the sources are an export outside the repository."""
    if os.environ.get("KCORO_BENCH_COMMIT"):
        return os.environ["KCORO_BENCH_COMMIT"]
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        r = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10, check=False)
        d = subprocess.run(["git", "-C", src, "status", "--porcelain", "--", "."],
                           capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = r.stdout.strip()
    if not commit or r.returncode:
        return None
    return commit + ("+dirty" if d.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import kcoro

    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
        "loadavg_start": load, "kcoro": kcoro.__version__, "git_commit": _git_commit(),
        "peer_versions": _versions(),
    }


def work_size(bench: Bench, impl: Impl, opts: Options) -> float:
    n = (bench.n_quick if opts.quick else bench.n_full) * impl.n_scale * opts.scale
    if bench.id == "B8":
        return max(0.2, float(n))
    return max(4, int(n))


def _warmup(bench: Bench, n: float) -> int:
    if not bench.warmup:
        return 0
    return max(4, int(n) // 10)


def _plan(opts: Options) -> list[tuple[Bench, list[Row]]]:
    peers = [p.strip().lower() for p in opts.peers] if opts.peers else None
    if peers is not None and peers != ["all"]:
        known = {p.lower() for p in spec.peer_names()}
        unknown = [p for p in peers if p not in known and p != "none"]
        if unknown:
            raise ValueError(f"unknown peer(s): {', '.join(unknown)} "
                             f"(known: {', '.join(spec.peer_names())})")
    else:
        peers = None
    plan = []
    for b in spec.benches(opts.only):
        rows = []
        for impl in spec.impls_for(b.id, peers):
            rows.append(Row(b, impl))
            if opts.with_metrics and impl.kind == KCORO:
                rows.append(Row(b, impl, with_metrics=True))
        plan.append((b, rows))
    return plan


def _spawn(row: Row, n: float, opts: Options) -> dict[str, Any]:
    module, func = row.impl.func.split(":")
    child_spec = {
        "module": module, "func": func, "n": n, "kwargs": row.impl.kwargs,
        "warmup": _warmup(row.bench, n), "kcoro": row.is_kcoro, "with_metrics": row.with_metrics,
        # B8 parks 10k channels and moves nothing: sampling them would be all it measures
        "ndjson": opts.ndjson if row.bench.id != "B8" else None,
        "ndjson_interval": opts.ndjson_interval,
        "labels": {"bench": row.bench.id, "impl": row.impl.impl, "mode": row.mode},
    }
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    try:
        proc = subprocess.run([sys.executable, CHILD, json.dumps(child_spec)],
                              capture_output=True, text=True, timeout=opts.child_timeout,
                              env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"status": TIMEOUT, "detail": f"no result within {opts.child_timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            res: dict[str, Any] = json.loads(line[len(MARKER):])
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": ERROR, "detail": f"child exited {proc.returncode}: " + " | ".join(tail)}


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("msgs/s",):
        for div, suf in ((1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.3g}{suf}"
        return f"{v:.3g}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def run(opts: Options, command: list[str] | None = None,
        on_result: Callable[[Row], None] | None = None) -> Run:
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    out = opts.progress
    plan = _plan(opts)
    rows: list[Row] = []
    for bench, brows in plan:
        rows += brows
        for row in brows:
            row.n = work_size(bench, row.impl, opts)
            missing = [m for m in row.impl.requires if not _available(m)]
            if missing:
                row.status, row.detail = MISSING, f"needs {', '.join(missing)}"
        for rnd in range(opts.rounds):
            for row in brows:
                if row.status != OK:
                    continue
                res = _spawn(row, row.n, opts)
                st = res.get("status", ERROR)
                if st == OK:
                    row.samples.append(float(res["value"]))
                    row.seconds.append(float(res.get("seconds", 0.0)))
                    row.extras.append(dict(res.get("extra", {})))
                else:
                    row.status, row.detail = st, str(res.get("detail", ""))
                if out is not None:
                    shown = (f"{fmt_value(row.samples[-1], bench.unit)} {bench.unit}"
                             if st == OK else f"{st}: {row.detail}")
                    print(f"[{bench.id} {rnd + 1}/{opts.rounds}] {row.impl.label}"
                          f"{' +metrics' if row.with_metrics else ''}: {shown}",
                          file=out, flush=True)
        for row in brows:
            if on_result is not None:
                on_result(row)
    return Run(options=dataclasses.replace(opts, progress=None), rows=rows,
               machine=machine_info(), command=command or sys.argv,
               started=started, seconds=time.perf_counter() - t0)
