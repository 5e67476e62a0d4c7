"""The exception hierarchy.

Every library error derives from :class:`KcoroError` and carries an ``errno`` attribute with the
matching constant from Python's :mod:`errno` module, mirroring the C kcoro return codes
(``-EPIPE``, ``-EAGAIN``, ``-ETIME``, ``-ECANCELED``).  Bounded waits raise the builtin
:class:`TimeoutError` (``errno.ETIME``).  Task cancellation is :class:`Cancelled`, a
``BaseException`` so that ``except Exception`` does not swallow it (as in trio and curio).

Ownership rule: when an operation raises, the sender still owns its item; when it returns, the
receiver owns it.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "Cancelled",
    "ChannelClosed",
    "KcoroError",
    "OperationCancelled",
    "UndeliveredElementError",
    "WouldBlock",
    "make_timeout",
]


class KcoroError(Exception):
    """Base class of kcoro's errors; ``errno`` holds the matching :mod:`errno` constant."""

    errno: int = _errno.EIO

    def __init__(self, *args: object) -> None:
        super().__init__(*args)


class ChannelClosed(KcoroError):
    """Send on a closed channel, or receive on a closed and drained one (EPIPE).

    ``index`` is the clause index when raised by ``select``; ``cause`` is the value given to
    ``Channel.cancel(cause)`` if the channel was cancelled with one.
    """

    errno = _errno.EPIPE

    def __init__(self, *args: object, index: int | None = None, cause: object = None) -> None:
        super().__init__(*args)
        self.index = index
        self.cause = cause


class WouldBlock(KcoroError):
    """A ``try_*`` operation, or ``timeout=0``, could not complete at once (EAGAIN)."""

    errno = _errno.EAGAIN


class OperationCancelled(KcoroError):
    """The operation's :class:`CancelToken` fired or its ticket was cancelled (ECANCELED).

    Nothing was transferred.  ``reason`` is the reason passed to the canceller, if any.
    """

    errno = _errno.ECANCELED

    def __init__(self, *args: object, reason: object = None) -> None:
        super().__init__(*args)
        self.reason = reason


class UndeliveredElementError(KcoroError):
    """An ``on_undelivered`` handler raised; the original exception is ``__cause__``."""

    errno = _errno.EIO


class Cancelled(BaseException):
    """The *task* was cancelled (cancel scope, ``Task.cancel()``, ``TaskGroup``).

    Do not catch it without re-raising: the enclosing cancel scope absorbs it.
    """


def make_timeout(what: str) -> TimeoutError:
    """A builtin ``TimeoutError`` with ``errno.ETIME`` set, as every bounded wait raises."""
    return TimeoutError(_errno.ETIME, f"{what} timed out")
