"""Per-thread context: which kcoro runtime (if any) this thread is running.

Kept in its own tiny module so that the runtime, scopes and waits can share it without import
cycles.  ``_tls.rt`` is set by :func:`kcoro.run` for the duration of the run; ``rt.current`` is the
task being stepped (None between steps).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._runtime import Runtime


class _TLS(threading.local):
    rt: Runtime | None = None
    twaker: Any = None  # the thread's reusable blocking waker (see _wakers.ThreadWaker)


tls = _TLS()
