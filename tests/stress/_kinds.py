"""Channel kinds shared by the stress tests (TESTING.md: parametrise over every kind)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kcoro

# name -> (capacity, overflow)
KINDS: dict[str, tuple[Any, kcoro.Overflow]] = {
    "rendezvous": (kcoro.RENDEZVOUS, kcoro.SUSPEND),
    "buffered1": (1, kcoro.SUSPEND),
    "buffered2": (2, kcoro.SUSPEND),
    "buffered10": (10, kcoro.SUSPEND),
    "unlimited": (kcoro.UNLIMITED, kcoro.SUSPEND),
    "conflated": (kcoro.CONFLATED, kcoro.SUSPEND),
    "drop_oldest2": (2, kcoro.DROP_OLDEST),
    "drop_latest2": (2, kcoro.DROP_LATEST),
}

# Kinds that may lose items to on_undelivered while the channel is open.
DROPPING = {"conflated", "drop_oldest2", "drop_latest2"}


def make(kind: str, on_undelivered: Callable[[Any], object] | None = None,
         name: str | None = None) -> kcoro.Channel[Any]:
    capacity, overflow = KINDS[kind]
    return kcoro.Channel(capacity, overflow=overflow, on_undelivered=on_undelivered,
                         name=name or f"stress-{kind}")


def assert_conserved(kind: str, sent: list[Any], received: list[Any],
                     undelivered: list[Any], ch: kcoro.Channel[Any],
                     cancelled: bool = False) -> None:
    """Every accepted item is received or reported exactly once; nothing else appears.

    ``sent`` holds the items whose send succeeded.  Only dropping kinds, or a channel that was
    ``cancel()``-ed, may report items to ``on_undelivered``."""
    assert len(set(sent)) == len(sent), "the test sent an item twice"
    got = received + undelivered
    dups = len(got) - len(set(got))
    assert dups == 0, f"{dups} items delivered or reported twice"
    missing = set(sent) - set(got)
    extra = set(got) - set(sent)
    assert not missing and not extra, (
        f"{kind}: {len(missing)} items lost (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} never sent (e.g. {sorted(extra)[:5]})")
    if kind not in DROPPING and not cancelled:
        assert undelivered == [], f"{kind}: items reported undelivered: {undelivered[:5]}"
    s = ch.stats()
    assert s.sends == len(sent), f"stats.sends {s.sends} != {len(sent)} accepted"
    assert s.recvs == len(received), f"stats.recvs {s.recvs} != {len(received)} received"
    assert s.undelivered == len(undelivered), (
        f"stats.undelivered {s.undelivered} != {len(undelivered)} reported")
    assert s.waiting_senders == 0 and s.waiting_receivers == 0, s
    ch.check_invariants()
