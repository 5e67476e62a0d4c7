"""The kernel lock: one short lock that serialises every ticket transition and channel update.

Why one lock: under the GIL only one thread runs Python code at a time, so per-object locks buy
no parallelism; one lock makes multi-object steps atomic for free (a select registers in all its
channels at once, as Go's ``select`` does by locking every channel), and rules out lock-order
deadlocks.  Critical sections are a few dozen bytecodes, never call user code, never allocate
objects the cyclic GC tracks, and never block.

The lock is a one-entry dict, ``_OWNER = {0: thread ident}``: ``dict.setdefault`` and
``dict.pop`` with an int key are single C calls, atomic under the GIL, so exactly one thread can
insert its ident — and the owner is known exactly at every instant (unlike a bare token).  An
uncontended acquire/release costs a few hundred ns in Python; the hot paths run in the C
accelerator (``_speedups.c``), which takes no lock at all: its sections run no Python code, so
no other thread can interleave, and it only checks that no Python thread is inside a section.

Signals.  A Python signal handler runs between two bytecodes of the main thread, possibly inside
a section.  kcoro therefore installs a SIGINT handler (when the default one is in place) that
*defers* ``KeyboardInterrupt`` while the main thread owns the lock: ``release()`` raises it right
after the section ends, so an interrupt never leaves the lock held or a channel half-updated.
A handler that calls back into kcoro while its thread owns the lock would deadlock: ``acquire()``
raises ``RuntimeError`` instead, except for ``CancelToken.cancel()`` (the usual SIGTERM idiom),
which is deferred to the end of the section with :func:`defer`.

Invariant (``check_invariants``): outside any section, nobody owns the lock and nothing is
deferred.

What remains: a handler of *another* signal that raises an exception may land in the few
bytecodes between taking the lock and entering the ``try`` below, or inside a section and leave a
half-done update; pure Python cannot close that window without masking signals around every
section (two syscalls).  Raise from such handlers only with care, or let them set a flag or cancel
a token instead (both safe).

Section pattern (``acquire`` outside the ``try``: a re-entrant ``acquire`` that raises must not
release the outer section's lock)::

    _acquire()
    try:
        ...                     # the section
    finally:
        _release()
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

__all__ = ["acquire", "check_invariants", "defer", "held", "owned_by_me", "release"]

_OWNER: dict[int, int] = {}
_claim = _OWNER.setdefault
_owner = _OWNER.get
_get_ident = threading.get_ident
_sleep = time.sleep

_pending: list[Callable[[], object]] = []   # calls deferred by re-entrant signal handlers
_ki_pending = [False]                        # a KeyboardInterrupt deferred in a section
_MAIN = threading.main_thread().ident


def acquire() -> None:
    me = _get_ident()
    got = _claim(0, me)
    if got is not me:
        _contended(me, got)


def _contended(me: int, got: int) -> None:
    if got == me:
        raise RuntimeError(
            "kcoro re-entered from a signal handler or a finalizer that interrupted a kcoro "
            "operation in the same thread; do the work outside the handler (e.g. with "
            "CancelToken.cancel(), loop.call_soon_threadsafe or another thread)")
    spins = 0
    while True:
        _sleep(0 if spins < 1000 else 0.0001)  # give the owner the GIL
        got = _claim(0, me)
        if got is me:
            return
        spins += 1


def release() -> None:
    del _OWNER[0]  # one C call: nothing can interrupt between the check and the delete
    if _pending or _ki_pending[0]:
        _after_release()


def _after_release() -> None:
    while _pending:
        fn = _pending.pop(0)
        fn()
    if _ki_pending[0] and _get_ident() == _MAIN:
        _ki_pending[0] = False
        raise KeyboardInterrupt


def held() -> bool:
    """True while some thread is inside a kernel section."""
    return bool(_OWNER)


def owned_by_me() -> bool:
    return _owner(0) == _get_ident()


def defer(fn: Callable[[], object]) -> None:
    """Run ``fn()`` when the current thread's section ends (for re-entrant signal handlers)."""
    _pending.append(fn)


def _sigint(signum: int, frame: object) -> None:
    if _owner(0) == _MAIN:  # the main thread is inside a section: finish it first
        _ki_pending[0] = True
        return
    raise KeyboardInterrupt


def install_sigint_handler() -> None:
    """Replace Python's default SIGINT handler by one that defers KeyboardInterrupt out of
    kernel sections (it behaves identically everywhere else).  A custom handler is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _sigint)
    except (ValueError, OSError):  # not the main interpreter / no signal support
        pass


def check_invariants() -> None:
    """Called by tests between operations: nobody owns the lock, nothing is deferred."""
    assert not _OWNER, f"kernel lock still owned by thread {_OWNER.get(0)}"
    assert not _pending and not _ki_pending[0], "deferred kernel work left behind"


install_sigint_handler()
