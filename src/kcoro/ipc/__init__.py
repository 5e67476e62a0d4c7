"""Cross-process channels: ``kcoro.ipc.Channel`` and friends (design: docs/IPC.md).

    ch = kcoro.ipc.Channel(8)                       # in the parent
    p = multiprocessing.Process(target=worker, args=(ch,))   # fork or spawn: ch pickles
    path = ch.listen("/run/user/1000/kcoro/jobs")   # or let unrelated processes connect
    ch2 = kcoro.ipc.connect(path)                   # ... from another process

Objects travel pickled (protocol 5); large buffers (numpy arrays, memoryview, bytearray) are
placed once in the channel's shared arena and rebuilt over it on the receiving side.  Payloads
from ``ch.arena.alloc(n)`` travel as descriptors.  Shared memory is a memfd: nothing is left in
``/dev/shm``, even after ``kill -9``.
"""

from __future__ import annotations

from ._chan import UNLIMITED_SLOTS, Channel, PeerDied
from ._codec import MessageTooLarge, ProtocolError
from ._rendezvous import connect, default_dir

__all__ = ["UNLIMITED_SLOTS", "Channel", "MessageTooLarge", "PeerDied", "ProtocolError",
           "connect", "default_dir"]
