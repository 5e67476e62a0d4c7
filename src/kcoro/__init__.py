"""kcoro: Go/Kotlin-style channels, select and a token kernel for Python.

One channel can be shared by kcoro tasks (``kcoro.run``), asyncio tasks and plain threads at once;
every wait is a ticket in the token kernel, completed by whoever arrives.
"""

from __future__ import annotations

from ._chan import (
    CONFLATED,
    DROP_LATEST,
    DROP_OLDEST,
    RENDEZVOUS,
    SUSPEND,
    UNLIMITED,
    Channel,
    ChannelRate,
    ChannelStats,
    Overflow,
    stats_rate,
)
from ._errors import (
    Cancelled,
    ChannelClosed,
    KcoroError,
    OperationCancelled,
    UndeliveredElementError,
    WouldBlock,
)
from ._payload import Arena, ArenaStats, Payload, PayloadReleased
from ._runtime import (
    Task,
    checkpoint,
    current_task,
    current_time,
    run,
    sleep,
    spawn,
    wait_readable,
    wait_writable,
)
from ._scopes import CancelScope, CancelToken, fail_after, move_on_after
from ._select import RecvClause, SendClause, select, select_blocking
from ._taskgroup import TaskGroup
from ._tokens import Ticket, TokenKernel, TokenKernelStats, token_kernel
from ._zref import ZREF_MIN

__version__ = "0.1.0"

__all__ = [
    "CONFLATED",
    "DROP_LATEST",
    "DROP_OLDEST",
    "RENDEZVOUS",
    "SUSPEND",
    "UNLIMITED",
    "ZREF_MIN",
    "Arena",
    "ArenaStats",
    "CancelScope",
    "CancelToken",
    "Cancelled",
    "Channel",
    "ChannelClosed",
    "ChannelRate",
    "ChannelStats",
    "KcoroError",
    "OperationCancelled",
    "Overflow",
    "Payload",
    "PayloadReleased",
    "RecvClause",
    "SendClause",
    "Task",
    "TaskGroup",
    "Ticket",
    "TokenKernel",
    "TokenKernelStats",
    "UndeliveredElementError",
    "WouldBlock",
    "checkpoint",
    "current_task",
    "current_time",
    "fail_after",
    "move_on_after",
    "run",
    "select",
    "select_blocking",
    "sleep",
    "spawn",
    "stats_rate",
    "token_kernel",
    "wait_readable",
    "wait_writable",
]

# KCORO_METRICS=1 serves this process's metrics to `kcoro top` from import on (kcoro.metrics is
# imported only then; see docs/MONITOR.md).
if __import__("os").environ.get("KCORO_METRICS", "") not in ("", "0"):
    from .metrics._server import autoserve as _autoserve

    _autoserve()
