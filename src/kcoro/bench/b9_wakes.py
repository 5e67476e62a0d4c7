"""Where B9's time goes: the two cross-thread wake-ups every variant pays, side by side.

    python -m kcoro.bench.b9_wakes [--n 20000] [--rounds 3]

Every row hands a token to a helper thread through a ``queue.SimpleQueue`` and waits for the
thread's answer; only the way the waiting side sleeps and is woken differs:

* ``simplequeue``: the answer comes back through a second SimpleQueue (the B9 floor);
* ``lock bell``: through a ``threading.Lock`` the waiter holds and the thread releases (how an
  idle kcoro runtime with no fd to watch sleeps);
* ``eventfd+epoll``: through an eventfd the waiter polls with epoll (how it slept before);
* ``kcoro ticket`` / ``asyncio future``: B9's own kcoro and asyncio rows (``wl_tokens``).
"""

from __future__ import annotations

import argparse
import os
import selectors
import statistics
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from . import wl_tokens

_perf = time.perf_counter


def _lock_bell(n: int) -> float:
    q: SimpleQueue[Any] = SimpleQueue()
    bell = threading.Lock()
    bell.acquire()

    def completer() -> None:
        while q.get() is not None:
            bell.release()

    th = threading.Thread(target=completer)
    th.start()
    t0 = _perf()
    for i in range(n):
        q.put(i)
        bell.acquire()
    el = _perf() - t0
    q.put(None)
    th.join()
    return el / n * 1e9


def _eventfd_epoll(n: int) -> float:
    q: SimpleQueue[Any] = SimpleQueue()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    sel = selectors.EpollSelector()
    sel.register(efd, selectors.EVENT_READ)

    def completer() -> None:
        while q.get() is not None:
            os.eventfd_write(efd, 1)

    th = threading.Thread(target=completer)
    th.start()
    t0 = _perf()
    for i in range(n):
        q.put(i)
        sel.select(None)
        os.eventfd_read(efd)
    el = _perf() - t0
    q.put(None)
    th.join()
    sel.close()
    os.close(efd)
    return el / n * 1e9


ROWS: dict[str, Callable[[int], float]] = {
    "simplequeue (floor)": lambda n: wl_tokens.thread_roundtrip(n)[0],
    "lock bell": _lock_bell,
    "eventfd+epoll": _eventfd_epoll,
    "kcoro ticket": lambda n: wl_tokens.tokens_kcoro(n)[0],
    "asyncio future": lambda n: wl_tokens.tokens_asyncio_future(n)[0],
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kcoro.bench.b9_wakes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="round trips per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    a = ap.parse_args(argv)
    res: dict[str, list[float]] = {k: [] for k in ROWS}
    for _ in range(a.rounds):
        for name, fn in ROWS.items():
            res[name].append(fn(a.n))
    print("| variant | µs per round trip (median) | rounds |")
    print("|---|---:|---|")
    for name, v in res.items():
        runs = ", ".join(f"{x / 1000:.1f}" for x in v)
        print(f"| {name} | {statistics.median(v) / 1000:.1f} | {runs} |")


if __name__ == "__main__":
    main()
