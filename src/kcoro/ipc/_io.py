"""The per-process IPC I/O thread: doorbells in, deaths of peers, local wake-ups out.

Doorbells are Unix datagram sockets in the Linux *abstract* namespace (no file, gone with the
process), one per (process, channel), named from the channel's uuid, the process slot and a
random nonce.  Ringing is one non-blocking ``sendto``; a full socket queue means a wake-up is
already pending, so nothing is lost by dropping the datagram.  The armed-flag protocol lives in
the region: a waiter arms (under the channel lock) before it parks; a waker rings only slots that
are armed and whose ``bell`` flag is not already set; the I/O thread clears ``bell`` *before* it
wakes the local waiters, who then re-check the channel under the lock.  So either the waiter sees
the change or the waker sees the armed flag: no wake-up is lost, and an idle process sleeps in
``poll`` (no CPU).

A once-a-second tick (only while channels are attached; one u64 read per channel) rescans
membership when its epoch changed: it catches a peer that died after claiming its slot but
before announcing itself.

Deaths: for every LIVE peer slot the thread holds a pidfd (Linux 5.3+), which becomes readable
when the process exits; the slot's liveness lock confirms it (kernel-released, so pid reuse cannot
fool it), then ``Region.reap`` reclaims the dead process's resources under the channel lock, once.

Only this thread reads doorbells; everything it does to waiters goes through ticket completion,
so kcoro tasks, asyncio tasks and blocked threads are woken by their own wakers.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kcoro.ipc")

__all__ = ["IoThread", "io_thread", "ring_bell"]

# Safety net, once a second while a channel is attached: a peer that died between claiming its
# slot and ringing us (so we never opened its pidfd) is found by comparing membership epochs.
TICK_MS = 1000


_bells: dict[bytes, socket.socket] = {}  # connected senders, one per doorbell (no name lookup)


def ring_bell(name: bytes) -> None:
    s = _bells.get(name)
    try:
        if s is None:
            if len(_bells) > 256:
                for old in _bells.values():
                    old.close()
                _bells.clear()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setblocking(False)
            try:
                s.connect(name)
            except OSError:
                s.close()
                return  # the peer is gone (its reaper handles it)
            _bells[name] = s
        s.send(b"\1")
    except BlockingIOError:
        pass  # a wake-up is already queued
    except OSError:  # the peer is gone: forget the connection
        _bells.pop(name, None)
        if s is not None:
            s.close()


class IoThread:
    """One daemon thread per process polling doorbells, pidfds and a control eventfd."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._ctl = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll.register(self._ctl, select.POLLIN)
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._ops: deque[tuple[str, int, Any]] = deque()
        self.ticks: set[Callable[[], None]] = set()  # run once a second while registered
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="kcoro-ipc-io", daemon=True)
        self._thread.start()

    def add(self, fd: int, handler: Callable[[int], None]) -> None:
        self._ops.append(("add", fd, handler))
        os.eventfd_write(self._ctl, 1)

    def remove(self, fd: int, close: bool = False) -> None:
        self._ops.append(("remove", fd, close))
        os.eventfd_write(self._ctl, 1)

    # -- synchronous forms, for handlers running on the I/O thread itself ------------------
    def register(self, fd: int, handler: Callable[[int], None]) -> None:
        self._handlers[fd] = handler
        self._poll.register(fd, select.POLLIN)

    def unregister(self, fd: int, close: bool = False) -> None:
        """Stop watching ``fd`` (and close it) -- only if it is registered, so a number that
        was already closed and reused is never closed twice."""
        if self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)
            if close:
                os.close(fd)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread."""
        self._ops.append(("call", -1, fn))
        os.eventfd_write(self._ctl, 1)

    def _apply(self) -> None:
        while self._ops:
            op, fd, arg = self._ops.popleft()
            if op == "add":
                self._handlers[fd] = arg
                self._poll.register(fd, select.POLLIN)
            elif op == "remove":
                if self._handlers.pop(fd, None) is not None:
                    self._poll.unregister(fd)
                if arg:
                    os.close(fd)
            else:
                self._safe(arg)

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # pragma: no cover - a bug; keep the thread alive
            log.exception("kcoro.ipc I/O thread handler failed")

    def _run(self) -> None:
        while True:
            try:
                events = self._poll.poll(TICK_MS if self.ticks else None)
            except InterruptedError:  # pragma: no cover
                continue
            if not events:
                for fn in list(self.ticks):
                    self._safe(fn)
            for fd, _ in events:
                if fd == self._ctl:
                    try:
                        os.eventfd_read(self._ctl)
                    except BlockingIOError:
                        pass
                    self._apply()
                    continue
                h = self._handlers.get(fd)
                if h is not None:
                    try:
                        h(fd)
                    except Exception:  # pragma: no cover - a bug; keep the thread alive
                        log.exception("kcoro.ipc I/O handler for fd %d failed", fd)


_io: IoThread | None = None
_io_lock = threading.Lock()


def io_thread() -> IoThread:
    global _io
    t = _io
    if t is None or t.pid != os.getpid():
        with _io_lock:
            if _io is None or _io.pid != os.getpid():
                _io = IoThread()
            t = _io
    return t


def _after_fork() -> None:
    global _io, _io_lock
    _io = None  # threads do not survive fork: the child starts its own on first use
    _bells.clear()  # (the inherited sockets are shared with the parent: leave them open)
    _io_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
