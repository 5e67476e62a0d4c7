"""The ``kcoro`` command line: ``kcoro demo``, ``kcoro bench``, ``kcoro top``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kcoro", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    from . import bench, demo, top

    demo.add_parser(sub)
    bench.add_parser(sub)
    top.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
