"""``kcoro top``: watch a running kcoro program from outside.

``kcoro top``                     list the kcoro processes of this user that can be attached
``kcoro top PID|SOCKET``          live terminal UI (Textual; ``pip install 'kcoro[monitor]'``)
``kcoro top PID --once [--json]`` one snapshot as text (or JSON)
``kcoro top PID --ndjson``        stream records (schema: kcoro.metrics.ndjson, docs/MONITOR.md)

The target serves its metrics with ``KCORO_METRICS=1`` or ``kcoro.metrics.serve()``.  Errors
(no such process, not serving, stale socket, garbage on the socket, target exited) are one line
on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, TextIO

from ..metrics import client as _client
from ..metrics._paths import UnsafeDirectory, list_endpoints, runtime_dir
from ..metrics._snapshot import ParkedOn, Snapshot, from_dict
from ..metrics.ndjson import SCHEMA_VERSION, dumps
from ..metrics.sampler import RateBook

__all__ = ["add_parser", "describe", "fmt_rate", "render_text", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("top", help="watch a running kcoro program (live UI, JSON, NDJSON)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="PID of a process serving metrics, or its socket "
                   "path; omit to list the processes that can be attached")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: print it as JSON")
    p.add_argument("--ndjson", action="store_true",
                   help="stream channel/tokens/arena/runtime records as NDJSON")
    p.add_argument("--interval", type=float, default=0.5,
                   help="seconds between NDJSON samples / UI refreshes (default 0.5)")
    p.add_argument("--count", type=int, default=0, help="with --ndjson: stop after N samples")
    p.add_argument("--duration", type=float, default=0.0,
                   help="with --ndjson: stop after this many seconds")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the target to answer (default 5)")
    p.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"kcoro top: {msg}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        return _err("--interval must be > 0")
    if args.target is None:
        return list_targets(sys.stdout)
    try:
        if args.once or args.json:
            return once(args.target, args.json, sys.stdout, args.timeout)
        if args.ndjson:
            return stream_ndjson(args.target, sys.stdout, interval=args.interval,
                                 count=args.count, duration=args.duration,
                                 timeout=args.timeout)
        return live(args.target, args.interval)
    except _client.MonitorError as exc:
        return _err(str(exc))
    except BrokenPipeError:  # `kcoro top PID --ndjson | head`
        return 0


def list_targets(out: TextIO) -> int:
    try:
        d = runtime_dir()
        eps = list_endpoints(d)
    except UnsafeDirectory as exc:
        return _err(f"refusing the metrics directory: {exc}")
    live_eps = [e for e in eps if e.alive]
    stale = len(eps) - len(live_eps)
    if not live_eps:
        print(f"no kcoro processes serving metrics in {d}", file=out)
        print("start a program with KCORO_METRICS=1 (or call kcoro.metrics.serve()), "
              "then: kcoro top PID", file=out)
    else:
        print(f"{'PID':>8}  COMMAND", file=out)
        for e in live_eps:
            print(f"{e.pid:>8}  {e.command or '?'}", file=out)
        print(f"attach with: kcoro top PID   (sockets in {d})", file=out)
    if stale:
        print(f"({stale} stale socket(s) of exited processes in {d})", file=out)
    return 0


def _next_snapshot(conn: _client.Connection, timeout: float) -> dict[str, Any]:
    while True:
        rec = conn.read(timeout)
        if rec.get("type") == "snapshot":
            return rec


def once(target: str, as_json: bool, out: TextIO, timeout: float = 5.0) -> int:
    with _client.connect(target, timeout) as conn:
        rec = _next_snapshot(conn, timeout)
        if as_json:
            json.dump(rec, out, indent=2, allow_nan=False)
            out.write("\n")
            return 0
        # Rates need a second snapshot; it comes within the target's heartbeat (1 s).
        book = RateBook()
        book.update(from_dict(rec))
        snap = from_dict(_next_snapshot(conn, timeout))
        book.update(snap)
    out.write(render_text(snap, book, conn.hello))
    return 0


def stream_ndjson(target: str, out: TextIO, *, interval: float = 0.5, count: int = 0,
                  duration: float = 0.0, timeout: float = 5.0) -> int:
    """Write ``hello``, then every ``interval`` the records of the latest snapshot, and at the
    end ``summary`` and ``end``."""
    conn = _client.connect(target, timeout)
    conn.subscribe(interval)
    book = RateBook()

    def write(rec: dict[str, Any]) -> None:
        out.write(dumps(rec) + "\n")
        out.flush()

    write(conn.hello)
    start = time.monotonic()
    last_emit = -math.inf
    samples = 0
    reason = ""
    try:
        while True:
            left = None
            if duration:
                left = duration - (time.monotonic() - start)
                if left <= 0:
                    reason = "duration reached"
                    break
            try:
                rec = conn.read(left if left is not None else None)
            except _client.TargetGone as exc:
                reason = f"target gone: {exc}"
                print(f"kcoro top: {exc}", file=sys.stderr)
                break
            except _client.MonitorError as exc:
                if duration and time.monotonic() - start >= duration:
                    reason = "duration reached"
                    break
                raise exc
            if rec.get("type") != "snapshot":
                continue
            now = time.monotonic()
            if now - last_emit < interval:
                continue  # counters are cumulative: skipping a snapshot loses nothing
            recs = book.update(from_dict(rec))
            last_emit = now
            if book.samples == 1:
                continue  # the first snapshot is the baseline of the first interval
            for r in recs:
                write(r)
            samples += 1
            if count and samples >= count:
                reason = "count reached"
                break
    finally:
        conn.close()
    write(book.summary(conn.pid))
    write({"type": "end", "schema": SCHEMA_VERSION, "pid": conn.pid, "reason": reason})
    return 0


# -- text rendering (--once) -----------------------------------------------------------------

def fmt_rate(v: float) -> str:
    """1234567 -> '1.23M' (for msgs/s and bytes/s)."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}"
    return f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def fmt_cap(capacity: float) -> str:
    return "inf" if capacity == math.inf else str(int(capacity))


def failures(s: Any, side: str) -> str:
    """Non-zero failure counters of one side: 'wb3 to1' (would_block, timeout, closed,
    cancelled, dropped), or '-'."""
    parts = []
    for cause, short in (("would_block", "wb"), ("timeout", "to"), ("closed", "cl"),
                         ("cancelled", "cx"), ("dropped", "dr")):
        v = getattr(s, f"{side}_{cause}", 0)
        if v:
            parts.append(f"{short}{v}")
    return " ".join(parts) or "-"


def describe(on: ParkedOn | None) -> str:
    """'channel jobs', 'select a|b', 'ticket #3', 'sleep' ... ('' when not parked)."""
    if on is None:
        return ""
    return on.name if on.kind == "other" else f"{on.kind} {on.name}"


def render_text(snap: Snapshot, book: RateBook, hello: dict[str, Any] | None = None) -> str:
    lines = []
    argv = " ".join((hello or {}).get("argv", []))
    lines.append(f"kcoro pid {snap.pid}  {argv}".rstrip())
    lines.append(f"{'CHANNEL':24} {'KIND':10} {'DEPTH':>9} {'MSGS/S':>8} {'BYTES/S':>8} "
                 f"{'WAIT S/R':>8} {'SEND FAIL':>10} {'RECV FAIL':>10} {'UNDELIV':>7} "
                 f"{'ZREF S/R':>9}")
    tracks = {tr.name: tr for tr in book.tracks.values()}
    for s in snap.channels:
        tr = tracks.get(s.name)
        pps = tr.packets_per_s if tr is not None else 0.0
        bps = tr.bytes_per_s if tr is not None else 0.0
        lines.append(f"{s.name[:24]:24} {s.kind:10} {f'{s.buffered}/{fmt_cap(s.capacity)}':>9} "
                     f"{fmt_rate(pps):>8} {fmt_rate(bps):>8} "
                     f"{f'{s.waiting_senders}/{s.waiting_receivers}':>8} "
                     f"{failures(s, 'send'):>10} {failures(s, 'recv'):>10} "
                     f"{s.undelivered:>7} {f'{s.zref_sent}/{s.zref_received}':>9}")
    k = snap.tokens
    lines.append(f"tokens: outstanding={k.outstanding} zombies={k.zombies} "
                 f"published={k.published} completed={k.completed} cancelled={k.cancelled}")
    for a in snap.arenas:
        lines.append(f"arena {a.name}: in_use={a.in_use}/{a.capacity} peak={a.peak} "
                     f"spills={a.spills} fallbacks={a.fallbacks}")
    for rt in snap.runtimes:
        lines.append(f"runtime {rt.thread}: {len(rt.tasks)} tasks, steps={rt.steps}")
        for t in rt.tasks:
            on = describe(t.parked_on)
            lines.append(f"  task {t.id} {t.name}: {t.state}{' on ' + on if on else ''}")
    return "\n".join(lines) + "\n"


def live(target: str, interval: float) -> int:
    path = _client.resolve(target)
    with _client.connect(path):  # attach errors are reported here, before any UI
        pass
    try:
        from .top_app import TopApp
    except ImportError as exc:
        return _err(f"the live view needs Textual ({exc.name} is missing): "
                    f"pip install 'kcoro[monitor]'; or use --once / --ndjson")
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        return _err("the live view needs a terminal; use --once [--json] or --ndjson")
    app = TopApp(path, refresh_s=min(interval, 0.5))
    app.run()
    if app.fatal:
        return _err(app.fatal)
    return 0
