"""``kcoro bench``: run B1-B9 (BENCHMARKS.md) for kcoro and every peer, print one table.

    kcoro bench                         # the full run quoted in docs/BENCHMARKS.md
    kcoro bench --quick                 # < 1 minute: the CI smoke run (asserts nothing on speed)
    kcoro bench --only B1,B2 --peers asyncio,trio --repeat 7 --json out.json --plot docs/bench
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks against peers (B1-B9)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small work sizes, one round: the whole run in under a minute")
    p.add_argument("--only", type=_csv, metavar="B1,B2,...", help="benchmarks to run")
    p.add_argument("--peers", type=_csv, metavar="NAME,...",
                   help="peers to include (default all; 'none' for kcoro and floors only)")
    p.add_argument("--repeat", type=int, metavar="N",
                   help="rounds of alternating measurements (default 3, --quick 1)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every work size")
    p.add_argument("--timeout", type=float, help="seconds allowed per measurement")
    p.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts (needs matplotlib)")
    p.add_argument("--ndjson", nargs="?", const="-", metavar="PATH",
                   help="per-interval channel records of every kcoro run (default: stdout; "
                        "the table then goes to stderr)")
    p.add_argument("--ndjson-interval", type=float, default=0.25, metavar="S")
    p.add_argument("--with-metrics", action="store_true",
                   help="also run every kcoro row with kcoro.metrics.serve() active")
    p.add_argument("--from-json", metavar="PATH",
                   help="measure nothing: re-print (and --plot) the results saved by --json "
                        "(--only filters them)")
    p.add_argument("--markdown", metavar="PATH",
                   help="write the results section of docs/BENCHMARKS.md (charts linked from "
                        "the --plot directory, relative to PATH)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import report
    from ..bench.runner import Options
    from ..bench.runner import run as run_bench

    if args.repeat is not None and args.repeat < 1:
        print("kcoro bench: --repeat must be >= 1", file=sys.stderr)
        return 2
    opts = Options(quick=args.quick, only=args.only, peers=args.peers, repeat=args.repeat,
                   scale=args.scale, with_metrics=args.with_metrics, ndjson=args.ndjson,
                   ndjson_interval=args.ndjson_interval, timeout=args.timeout,
                   progress=None if args.quiet else sys.stderr)
    command = ["kcoro", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else sys.argv
    try:
        if args.from_json:
            with open(args.from_json) as f:
                result = report.from_json(json.load(f))
            if args.only:
                keep = {b.upper() for b in args.only}
                result.rows = [r for r in result.rows if r.bench.id in keep]
        else:
            result = run_bench(opts, command=command)
    except ValueError as exc:
        print(f"kcoro bench: {exc}", file=sys.stderr)
        return 2
    out = sys.stderr if args.ndjson == "-" else sys.stdout
    print(report.table(result), file=out)
    print(file=out)
    for line in report.summary_lines(result):
        print(line, file=out)
    print(f"\n{len(result.rows)} rows in {result.seconds:.1f} s; ratios compare medians of "
          f"{result.options.rounds} alternating round(s); command: {' '.join(result.command)}",
          file=out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.dumps(result) + "\n")
        print(f"wrote {args.json}", file=out)
    if args.markdown:
        import os

        images = (os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.markdown)))
                  if args.plot else None)
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(report.markdown(result, images))
        print(f"wrote {args.markdown}", file=out)
    if args.plot:
        from ..bench import plot

        try:
            paths = plot.plot_all(result, args.plot)
        except ImportError as exc:
            print(f"kcoro bench: --plot needs matplotlib (pip install 'kcoro[bench]'): {exc}",
                  file=sys.stderr)
            return 1
        print(f"wrote {len(paths)} charts to {args.plot}", file=out)
    return 0
