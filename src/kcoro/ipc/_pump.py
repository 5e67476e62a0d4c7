"""Select over IPC channels: each endpoint lends ``kcoro.select`` clauses of *local* channels
that a pump connects to the shared ring.

* ``ipc_ch.on_recv()`` registers *demand* and returns ``rx.on_recv()``, where ``rx`` is a local
  rendezvous channel.  The receive pump (a daemon thread of this process) takes one item from the
  IPC channel only when there is demand, then offers it on ``rx`` (``send_blocking``): the select
  (or any later ``recv`` on this endpoint in this process, which looks at ``rx`` first) gets it.
  So a process never hoards more than one item, and only after it asked for one.
* ``ipc_ch.on_send(item)`` returns ``tx.on_send(item)``: the send pump receives from the local
  rendezvous channel ``tx`` and sends on the IPC channel.  The clause completes when the pump has
  taken the item (at most one item in flight per endpoint); if the IPC channel is closed by then,
  the item is undelivered (a payload is released) and ``tx`` is closed, so later selects see
  ``ChannelClosed`` on that clause.

``kcoro.select`` itself needs nothing IPC-specific: its clauses are ordinary local clauses, with
the lock and registration rules of local channels.  Closing the IPC channel closes ``rx`` once
the pump sees it (a select on ``on_recv()`` then gets ``ChannelClosed``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .._chan import Channel as LocalChannel
from .._errors import ChannelClosed, OperationCancelled
from .._payload import Payload
from .._scopes import CancelToken

if TYPE_CHECKING:
    from ._chan import Channel

log = logging.getLogger("kcoro.ipc")

__all__ = ["Pump", "pump_for"]


class Pump:
    def __init__(self, ch: Channel[Any]) -> None:
        self.ch = ch
        self.rx: LocalChannel[Any] = LocalChannel(0, name=f"{ch.name}:select-rx")
        self.tx: LocalChannel[Any] = LocalChannel(0, name=f"{ch.name}:select-tx")
        self.stop = CancelToken()
        self._demand = threading.Event()
        self._rx_thread: threading.Thread | None = None
        self._tx_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def on_recv(self) -> Any:
        with self._lock:
            if self._rx_thread is None:
                self._rx_thread = threading.Thread(target=self._recv_loop, daemon=True,
                                                   name=f"kcoro-ipc-rx:{self.ch.name}")
                self._rx_thread.start()
        self._demand.set()
        return self.rx.on_recv()

    def on_send(self, item: Any) -> Any:
        with self._lock:
            if self._tx_thread is None:
                self._tx_thread = threading.Thread(target=self._send_loop, daemon=True,
                                                   name=f"kcoro-ipc-tx:{self.ch.name}")
                self._tx_thread.start()
        return self.tx.on_send(item)

    def _recv_loop(self) -> None:
        while True:
            self._demand.wait()
            self._demand.clear()
            try:
                item = self.ch.recv_blocking(cancel=self.stop)
            except ChannelClosed as exc:
                self.rx.cancel(exc)  # nothing buffered: waiters get ChannelClosed
                return
            except OperationCancelled:
                return
            except Exception as exc:  # a malformed message: report it to the selecting side
                log.warning("kcoro.ipc select pump on %r: %s", self.ch.name, exc)
                continue
            try:
                self.rx.send_blocking(item, cancel=self.stop)
            except (ChannelClosed, OperationCancelled):
                self._undelivered(item)
                return

    def _send_loop(self) -> None:
        while True:
            try:
                item = self.tx.recv_blocking(cancel=self.stop)
            except (ChannelClosed, OperationCancelled):
                return
            try:
                self.ch.send_blocking(item, cancel=self.stop)
            except (ChannelClosed, OperationCancelled):
                self._undelivered(item)
                self.tx.close()
                return

    def _undelivered(self, item: Any) -> None:
        if type(item) is Payload and not item.released:
            item.release()

    def take_held(self) -> tuple[bool, Any]:
        """An item the receive pump fetched but no select took: (True, item) or (False, None)."""
        if self._rx_thread is None:
            return False, None
        try:
            return True, self.rx.try_recv()
        except Exception:
            return False, None

    def shutdown(self) -> None:
        self.stop.cancel("endpoint detached")


_pumps: dict[int, Pump] = {}
_plock = threading.Lock()


def pump_for(ch: Channel[Any]) -> Pump:
    p = ch.__dict__.get("_pump")
    if p is None:
        with _plock:
            p = ch.__dict__.get("_pump")
            if p is None:
                ch._ensure()
                p = ch.__dict__["_pump"] = Pump(ch)
                ch._frr = None  # receives look at the pump's held item first (Python path)
    return p
