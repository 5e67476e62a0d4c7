"""The kernel lock: one short lock that serialises every ticket transition and channel update.

Why one lock: under the GIL only one thread runs Python code at a time, so per-object locks buy
no parallelism; one lock makes multi-object steps atomic for free (a select registers in all its
channels at once, as Go's ``select`` does by locking every channel), and rules out lock-order
deadlocks.  Critical sections are a few dozen bytecodes, never call user code, never allocate
objects the cyclic GC tracks when avoidable, and never block.

Why not ``threading.Lock``: an uncontended acquire/release pair costs ~200 ns here, while the
token below costs ~45 ns.  The lock is a one-element list: ``list.pop()`` and ``list.append()``
are single C calls, atomic under the GIL, so exactly one thread can take the token.  A thread
that finds the list empty is contending with a holder that was switched out mid-section (rare:
sections are far shorter than the 5 ms switch interval); it gives up the GIL with
``time.sleep(0)`` until the holder puts the token back.

Invariant: ``len(_TOKEN) == 1`` whenever no thread is inside a kernel section.  Reentrancy is a
bug (a section never calls code that could take the lock again).

Hot paths inline the pattern::

    try:
        take()
    except IndexError:
        contended()
    try:
        ...                     # the section
    finally:
        give(True)
"""

from __future__ import annotations

import time

__all__ = ["acquire", "check_invariants", "contended", "give", "held", "release", "take"]

_TOKEN: list[bool] = [True]
take = _TOKEN.pop
give = _TOKEN.append
_sleep = time.sleep


def contended() -> None:
    """Wait for the token (slow path).  Called after ``take()`` raised IndexError."""
    spins = 0
    while True:
        _sleep(0 if spins < 1000 else 0.0001)
        try:
            take()
            return
        except IndexError:
            spins += 1


def acquire() -> None:
    try:
        take()
    except IndexError:
        contended()


def release() -> None:
    give(True)


def held() -> bool:
    """True while some thread is inside a kernel section."""
    return not _TOKEN


def check_invariants() -> None:
    """Called by tests between operations: the token is back and not duplicated."""
    assert len(_TOKEN) == 1, f"kernel lock token count is {len(_TOKEN)}, expected 1"
