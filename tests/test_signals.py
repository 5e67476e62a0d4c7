"""Signals landing inside kernel-lock sections (Python signal handlers run between bytecodes of
the main thread, so they can interrupt a section): Ctrl-C is deferred to the end of the section,
a handler may cancel a CancelToken, and any other re-entry is refused clearly.  (A handler of
another signal that *raises* can still interrupt a section: see the _klock docstring.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kcoro
from kcoro import _klock

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signals are delivered to the main thread")


@pytest.fixture
def interrupter() -> Iterator[Any]:
    """``start(signum)`` sends ``signum`` to ourselves every ``every`` seconds from a helper
    thread until the returned ``stop()`` is called (which waits for the thread)."""
    stops: list[Any] = []

    def start(signum: int, every: float = 0.0005) -> Any:
        done = threading.Event()

        def run() -> None:
            while not done.is_set():
                time.sleep(every)
                os.kill(os.getpid(), signum)

        th = threading.Thread(target=run, daemon=True)
        th.start()

        def stop() -> None:
            done.set()
            th.join()

        stops.append(stop)
        return stop

    yield start
    for stop in stops:
        stop()


def _quiet(signum: int, handler: Any) -> None:
    """Ignore stragglers already in flight, then install ``handler``."""
    signal.signal(signum, signal.SIG_IGN)
    time.sleep(0.02)
    signal.signal(signum, handler)


_CTRL_C_CHILD = r"""
import os, signal, sys, threading, time
import kcoro
from kcoro import _klock
assert signal.getsignal(signal.SIGINT) is _klock._sigint  # installed at import
ch = kcoro.Channel(4)
armed = [True]
def interrupter():
    while armed[0]:
        time.sleep(0.0005)
        if armed[0]:
            os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=interrupter, daemon=True).start()
kis = bad = 0
deadline = time.monotonic() + 3
while True:
    try:
        if kis >= 60 or time.monotonic() > deadline:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            break
        while time.monotonic() < deadline:
            try:  # (timeout=0: the Python sections, also with the C accelerator)
                ch.send_blocking(1, timeout=0)
                ch.recv_blocking(timeout=0)
            except kcoro.WouldBlock:
                pass
    except KeyboardInterrupt:
        kis += 1
        bad += _klock.held()
armed[0] = False
ch.check_invariants()
s = ch.stats()
print(kis, bad, _klock.held(), s.sends == s.recvs + len(ch), flush=True)
os._exit(0)  # pending SIGINTs stay blocked
"""


def test_ctrl_c_is_deferred_out_of_kernel_sections() -> None:
    # In a child process: a stray SIGINT must never reach the test runner.
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_CHILD], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kis, bad, held, conserved = proc.stdout.split()
    assert int(kis) > 0  # interrupts really landed, many of them inside sections
    assert (bad, held, conserved) == ("0", "False", "True")


def test_handler_cancelling_a_token_inside_a_section_is_deferred(interrupter: Any) -> None:
    tok = kcoro.CancelToken()
    inside = [0]

    def on_usr1(signum: int, frame: Any) -> None:
        if _klock.owned_by_me():
            inside[0] += 1
            tok.cancel("shutdown")  # the usual SIGTERM idiom: must not deadlock

    old = signal.signal(signal.SIGUSR1, on_usr1)
    stop = interrupter(signal.SIGUSR1, every=0.0002)
    try:
        ch: kcoro.Channel[int] = kcoro.Channel(4)
        deadline = time.monotonic() + 5
        while not inside[0] and time.monotonic() < deadline:
            ch.send_blocking(1, timeout=0)  # timeout=0: Python sections in either build
            ch.recv_blocking(timeout=0)
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        stop()
        _quiet(signal.SIGUSR1, old)
    assert inside[0] > 0, "no signal landed inside a section in 5 s"
    assert tok.cancelled and tok.reason == "shutdown"
    assert not _klock.held()
    ch.check_invariants()


def test_other_reentry_from_a_handler_is_a_clear_error() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1)
    other: kcoro.Channel[int] = kcoro.Channel(1)
    errors: list[BaseException] = []

    def on_usr2(signum: int, frame: Any) -> None:
        try:
            other.try_send(2)
        except RuntimeError as exc:
            errors.append(exc)

    old = signal.signal(signal.SIGUSR2, on_usr2)
    try:
        _klock.acquire()  # as if the main thread were inside a section of ``ch``
        try:
            signal.raise_signal(signal.SIGUSR2)  # the handler runs right here
        finally:
            _klock.release()
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert errors and "signal handler" in str(errors[0])
    assert not _klock.held() and len(other) == 0
    ch.check_invariants()
