"""Encoding messages for a shared ring: pickle protocol 5 with out-of-band buffers in the arena.

* A small pickle with no out-of-band buffer travels *inline* in the ring entry (one copy into
  the entry, none on the way out but the unpickling).
* Anything else goes into one arena block laid out as::

      u32 pickle_len | u32 nbuf | nbuf x (u64 offset, u64 length) | pickle | buffers (64-aligned)

  Large buffers (numpy arrays, bytearray, PickleBuffer, memoryview) are *out of band*: written
  once into the block by the sender, and rebuilt by the receiver **over the shared memory**
  (``pickle.loads(..., buffers=[read-only views of the block])``): zero-copy reads.  bytes and
  bytearray own their memory in Python, so the receiver copies them once when it rebuilds them;
  numpy arrays and memoryviews are true views.
* A :class:`~kcoro.Payload` of the channel's own arena travels as a descriptor (block index,
  generation, nbytes): no bytes move at all.

The receiver's views pin the block through one exporter per message; the exporter's finalizer is
the ACK that frees the block (generation-checked).  Frames are bounds-checked: a malformed or
truncated block raises :class:`ProtocolError` naming the sender slot and is released.
"""

from __future__ import annotations

import ctypes
import io
import pickle
import struct
import weakref
from typing import TYPE_CHECKING, Any

from .._errors import KcoroError
from .._payload import Payload, _ctype

if TYPE_CHECKING:
    from ._region import Entry, Region

__all__ = ["MessageTooLarge", "ProtocolError", "decode_block", "decode_inline", "pickle_obj"]

_H = struct.Struct("<II")
_B = struct.Struct("<QQ")


class ProtocolError(KcoroError):
    """A peer sent a malformed or truncated message (it is dropped; others are unaffected)."""

    import errno as _e

    errno = _e.EPROTO

    def __init__(self, *args: object, peer: int | None = None) -> None:
        super().__init__(*args)
        self.peer = peer


class MessageTooLarge(KcoroError):
    """A message does not fit in the channel's arena (larger than its largest block)."""

    import errno as _e

    errno = _e.EMSGSIZE


def _rebuild_mv(buf: Any) -> memoryview:
    return memoryview(buf)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            return _rebuild_mv, (pickle.PickleBuffer(obj),)
        return NotImplemented


def pickle_obj(obj: Any) -> tuple[bytes, list[memoryview]]:
    """(pickle bytes, out-of-band buffers as flat byte views)."""
    bufs: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(obj, 5, buffer_callback=bufs.append)
    except TypeError:
        bufs = []
        f = io.BytesIO()
        _Pickler(f, 5, buffer_callback=bufs.append).dump(obj)
        data = f.getvalue()
    return data, [b.raw() for b in bufs]


def block_size(data: bytes, bufs: list[memoryview]) -> tuple[int, list[int]]:
    """Total block bytes and the offset of the pickle then of each buffer."""
    off = (_H.size + _B.size * len(bufs) + 63) & ~63
    offs = [off]
    off = (off + len(data) + 63) & ~63
    for b in bufs:
        offs.append(off)
        off = (off + b.nbytes + 63) & ~63
    return off, offs


def write_block(dst: memoryview, data: bytes, bufs: list[memoryview], offs: list[int]) -> None:
    _H.pack_into(dst, 0, len(data), len(bufs))
    for k, b in enumerate(bufs):
        _B.pack_into(dst, _H.size + _B.size * k, offs[k + 1], b.nbytes)
    p = offs[0]
    dst[p:p + len(data)] = data
    for k, b in enumerate(bufs):
        o = offs[k + 1]
        dst[o:o + b.nbytes] = b


def decode_inline(e: Entry) -> Any:
    try:
        return pickle.loads(e.data[:e.length])
    except Exception as exc:
        raise ProtocolError(f"malformed inline message from peer slot {e.slot}: {exc}",
                            peer=e.slot) from exc


def _exporter(region: Region, e: Entry) -> Any:
    a = region.arena
    blen = a.min_block << a._m.order[e.idx]
    exp = _ctype(blen).from_buffer(region.map, a._data_off + (e.idx << a._shift))
    weakref.finalize(exp, a._finalize_block, e.idx, e.gen, region.pid)
    return exp, blen


def decode_block(region: Region, e: Entry) -> Any:
    """Rebuild a pickled message over its block (zero-copy for out-of-band buffers)."""
    exp, blen = _exporter(region, e)
    mv = memoryview(exp).cast("B").toreadonly()
    del exp  # the views below keep it (and so the block) alive
    try:
        plen, nbuf = _H.unpack_from(mv, 0)
        p0 = (_H.size + _B.size * nbuf + 63) & ~63
        if nbuf > 1 << 16 or p0 + plen > blen:
            raise ValueError(f"header out of bounds (pickle {plen} bytes, {nbuf} buffers)")
        bufs = []
        for k in range(nbuf):
            o, n = _B.unpack_from(mv, _H.size + _B.size * k)
            if o < p0 or o + n > blen:
                raise ValueError(f"buffer {k} out of bounds ({o}+{n} > {blen})")
            bufs.append(mv[o:o + n])
        return pickle.loads(mv[p0:p0 + plen], buffers=bufs)
    except Exception as exc:
        raise ProtocolError(f"malformed message block from peer slot {e.slot}: {exc}",
                            peer=e.slot) from exc


def decode_payload(region: Region, e: Entry) -> Payload:
    a = region.arena
    if e.nbytes > (a.min_block << a._m.order[e.idx]):
        a._finalize_block(e.idx, e.gen, region.pid)
        raise ProtocolError(f"payload descriptor from peer slot {e.slot} is larger than its "
                            f"block", peer=e.slot)
    p = Payload._block(a, e.idx, e.nbytes, e.gen)
    p._lock = region.plock  # its refcount is this process's business only
    return p


_ = ctypes
