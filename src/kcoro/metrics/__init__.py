"""Live metrics: every channel, the token kernel, arenas, runtimes and tasks, in one call, and
served to monitors in other processes (``kcoro top``).

* :func:`snapshot` — one frozen :class:`Snapshot` of everything live in this process.
* :func:`serve` / :func:`stop` — push snapshots on a Unix socket (``<runtime dir>/<pid>.sock``,
  owner-only) from a background thread; ``KCORO_METRICS=1`` in the environment does this at
  ``import kcoro``.  See :mod:`kcoro.metrics._server` for the emit rules.
* :mod:`kcoro.metrics.client` — attach to such a process (``connect(pid_or_path)``).
* :mod:`kcoro.metrics.sampler` — per-interval rates (:class:`ChannelSampler` for benches).
* :mod:`kcoro.metrics.ndjson` — the NDJSON record schema shared by all of the above.
* :mod:`kcoro.metrics.prometheus` — a ``prometheus_client`` collector (extra ``[monitor]``).

Nothing here is on a hot path: channels keep their counters anyway; this package only reads them.
"""

from __future__ import annotations

from ._paths import Endpoint, list_endpoints, runtime_dir, socket_path_for
from ._server import MetricsServer, current_server, serve, stop
from ._snapshot import ArenaRecord, ParkedOn, RuntimeRecord, Snapshot, TaskRecord, snapshot
from .sampler import ChannelSampler

__all__ = [
    "ArenaRecord",
    "ChannelSampler",
    "Endpoint",
    "MetricsServer",
    "ParkedOn",
    "RuntimeRecord",
    "Snapshot",
    "TaskRecord",
    "current_server",
    "list_endpoints",
    "runtime_dir",
    "serve",
    "snapshot",
    "socket_path_for",
    "stop",
]
