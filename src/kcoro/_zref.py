"""Zero-copy sends on channels: move a :class:`~kcoro._payload.Payload` reference, never the bytes.

``send_zref(obj)`` takes ownership of one reference (move semantics):

* a ``Payload`` travels as itself (one reference moves from the sender to the receiver);
* a foreign bytes-like buffer is *aliased* (a payload over the caller's memory that kcoro never
  frees), except a small one (< ``ZREF_MIN`` bytes), which is copied: ``fallback_small``;
* a payload that its arena served from a spill allocation (the arena was full or too small)
  still travels by reference and is counted as ``fallback_capacity``.

Ownership and release (exactly once): when ``send_zref`` returns, the channel owns the reference
and either delivers it (``recv_zref`` returns it: the receiver owns it) or releases it — dropped
by an overflow policy or a conflated overwrite (``canceled``), discarded by ``Channel.cancel()``
(``aborted_close``).  When ``send_zref`` raises, the reference is released by kcoro: cancelled
or timed out → ``canceled``; refused because the channel is closed (also a parked sender failed by
``close()``) → ``aborted_close``.  ``WouldBlock`` (``try_send_zref`` / ``timeout=0``) is the one
exception: nothing happened, and the caller keeps its reference so it can retry.

Counters live on the channel (``ChannelStats.zref_*``, ``Channel.zstats()``) and are updated under
the kernel lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _klock
from ._accel import speedups as _speedups
from ._chan import register_sized_type
from ._errors import ChannelClosed, WouldBlock
from ._payload import Payload

if TYPE_CHECKING:
    from ._chan import Channel

__all__ = ["ZREF_MIN", "recv_zref", "send_zref"]

register_sized_type(Payload, lambda p: p.nbytes)  # bytes_sent / bytes_recv count payloads
if _speedups is not None and hasattr(_speedups, "configure_payload"):
    _speedups.configure_payload(Payload)  # the C sections read the size themselves

ZREF_MIN = 64  # foreign buffers smaller than this are copied (cheaper than tracking an alias)


def _prepare(obj: Any) -> tuple[Payload, int, int]:
    """(payload, fallback_small, fallback_capacity) for what ``send_zref`` was given."""
    if type(obj) is Payload:
        if obj.released:
            obj.view  # raises PayloadReleased with a clear message  # noqa: B018
        return obj, 0, 1 if obj.spilled else 0
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(f"send_zref() needs a Payload or a bytes-like object, got "
                        f"{type(obj).__name__}") from None
    if mv.nbytes < ZREF_MIN:
        return Payload(bytes(mv)), 1, 0
    return Payload(obj), 0, 0


def _count(ch: Channel[Any], sent: int = 0, received: int = 0, small: int = 0, cap: int = 0,
           canceled: int = 0, aborted: int = 0) -> None:
    _klock.acquire()
    try:
        ch.zref_sent += sent
        ch.zref_received += received
        ch.zref_fallback_small += small
        ch.zref_fallback_capacity += cap
        ch.zref_canceled += canceled
        ch.zref_aborted_close += aborted
    finally:
        _klock.release()


def _count_sent(ch: Channel[Any], small: int, cap: int) -> None:
    _klock.acquire()
    try:
        ch.zref_sent += 1
        if small:
            ch.zref_fallback_small += small
        if cap:
            ch.zref_fallback_capacity += cap
    finally:
        _klock.release()


def _failed(ch: Channel[Any], p: Payload, exc: BaseException, small: int, cap: int) -> None:
    if isinstance(exc, WouldBlock):
        return  # nothing happened: the caller keeps its reference
    _count(ch, small=small, cap=cap, canceled=0 if isinstance(exc, ChannelClosed) else 1,
           aborted=1 if isinstance(exc, ChannelClosed) else 0)
    if not p.released:
        p.release()


async def send_zref(ch: Channel[Any], obj: Any, timeout: float | None = None,
                    cancel: Any = None) -> None:
    p, small, cap = _prepare(obj)
    try:
        await ch.send(p, timeout=timeout, cancel=cancel)
    except BaseException as exc:
        _failed(ch, p, exc, small, cap)
        raise
    _count_sent(ch, small, cap)


def send_zref_blocking(ch: Channel[Any], obj: Any, timeout: float | None = None,
                       cancel: Any = None) -> None:
    p, small, cap = _prepare(obj)
    try:
        ch.send_blocking(p, timeout=timeout, cancel=cancel)
    except BaseException as exc:
        _failed(ch, p, exc, small, cap)
        raise
    _count_sent(ch, small, cap)


def try_send_zref(ch: Channel[Any], obj: Any) -> bool:
    p, small, cap = _prepare(obj)
    try:
        ok = ch.try_send(p)
    except BaseException as exc:
        _failed(ch, p, exc, small, cap)
        raise
    if not ok:  # DROP_LATEST on a full buffer: the caller still owns it (as try_send)
        return False
    _count_sent(ch, small, cap)
    return True


def _received(ch: Channel[Any], item: Any) -> Payload:
    if type(item) is Payload:
        _klock.acquire()
        try:
            ch.zref_received += 1
        finally:
            _klock.release()
        return item
    try:
        return Payload(item)
    except TypeError:
        raise TypeError(f"recv_zref() received a {type(item).__name__}, not a payload or a "
                        f"bytes-like object (use recv())") from None


async def recv_zref(ch: Channel[Any], timeout: float | None = None,
                    cancel: Any = None) -> Payload:
    return _received(ch, await ch.recv(timeout=timeout, cancel=cancel))


def recv_zref_blocking(ch: Channel[Any], timeout: float | None = None,
                       cancel: Any = None) -> Payload:
    return _received(ch, ch.recv_blocking(timeout=timeout, cancel=cancel))


def try_recv_zref(ch: Channel[Any]) -> Payload:
    return _received(ch, ch.try_recv())


def release_undelivered(ch: Channel[Any], items: list[Any] | tuple[Any, ...]) -> None:
    """Called by ``Channel._report`` after ``on_undelivered``: release every payload that the
    channel accepted but will never deliver (each exactly once) and count it."""
    n = 0
    for item in items:
        if type(item) is Payload:
            n += 1
            if not item.released:
                item.release()
    if n:
        if ch._cancelled:
            _count(ch, aborted=n)
        else:
            _count(ch, canceled=n)
