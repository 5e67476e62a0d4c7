"""``kcoro bench`` (filled in by the benchmark module)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks against peers")
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("kcoro bench: not yet implemented")
    return 1
