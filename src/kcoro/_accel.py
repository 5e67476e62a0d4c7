"""The optional C accelerator: ``kcoro._speedups``, unless it is not built or ``KCORO_PURE`` is
set in the environment.  Everything works without it; it only makes the fast paths of channel
operations in kcoro tasks cheaper (see ``_speedups.c``)."""

from __future__ import annotations

import os
from types import ModuleType

speedups: ModuleType | None = None
if not os.environ.get("KCORO_PURE"):
    try:
        from . import _speedups as speedups  # type: ignore[attr-defined, no-redef]
    except ImportError:
        speedups = None

__all__ = ["speedups"]
