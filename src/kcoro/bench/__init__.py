"""``kcoro bench``: kcoro against its peers (BENCHMARKS.md, B1-B9).

* :mod:`.spec`     — the benchmarks and the implementations measured for each;
* :mod:`.runner`   — one fresh child process per measurement, kcoro and peers alternating;
* :mod:`.report`   — the table (medians, best-of-N, kcoro/peer ratios) and the JSON document;
* :mod:`.plot`     — PNG charts (matplotlib);
* :mod:`.sampler`  — per-interval NDJSON records of a running kcoro workload;
* ``wl_*``         — the workloads, loaded by file path in the child (``_child.py``).
"""

from __future__ import annotations

from .runner import Options, Row, Run, run

__all__ = ["Options", "Row", "Run", "run"]
