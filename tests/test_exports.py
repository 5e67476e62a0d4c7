"""The public namespace (trio's test_exports style): everything in ``kcoro.__all__`` exists,
every public name is in ``__all__``, and every name API.md documents for the runtime, errors,
token kernel and channels exists with the documented shape."""

from __future__ import annotations
import __future__

import builtins
import dataclasses
import re
import types
from pathlib import Path

import pytest

import kcoro
import kcoro.testing

API_MD = Path("/work/shared/design/API.md")
SECTIONS = ("Runtime", "Errors", "Token kernel", "Channels")


def _api_text() -> str:
    if API_MD.exists():
        return API_MD.read_text()
    pytest.fail(f"{API_MD} is missing: the contract this test checks against")


def _section(title: str) -> str:
    text = _api_text()
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m is not None, f"API.md has no '## {title}' section"
    return m.group(1)


# -- __all__ ------------------------------------------------------------------------------------
def test_every_name_in_all_exists() -> None:
    missing = [n for n in kcoro.__all__ if not hasattr(kcoro, n)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(kcoro.__all__) == len(set(kcoro.__all__))


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from kcoro import *", ns)
    ns.pop("__builtins__", None)
    assert set(ns) == set(kcoro.__all__)


def test_every_public_name_is_in_all() -> None:
    public = {
        n for n, v in vars(kcoro).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)  # submodules (kcoro.testing, kcoro.cli, ...)
        and not isinstance(v, __future__._Feature)  # `from __future__ import annotations`
    }
    assert public - set(kcoro.__all__) == set()


def test_testing_helpers_are_exported() -> None:
    for n in ("MockClock", "wait_all_tasks_blocked", "wait_until"):
        assert n in kcoro.testing.__all__
        assert hasattr(kcoro.testing, n)


# -- API.md: every documented kcoro.NAME exists ----------------------------------------------------
@pytest.mark.parametrize("section", SECTIONS)
def test_every_documented_top_level_name_is_exported(section: str) -> None:
    names = set(re.findall(r"\bkcoro\.([A-Za-z_]\w*)", _section(section)))
    assert names, f"no kcoro.NAME found in API.md section {section!r}"
    missing = sorted(n for n in names if n not in kcoro.__all__ or not hasattr(kcoro, n))
    assert missing == []


def test_documented_names_include_the_core_surface() -> None:
    """A guard for the parser above: these are in API.md and must have been found."""
    found = set()
    for s in SECTIONS:
        found |= set(re.findall(r"\bkcoro\.([A-Za-z_]\w*)", _section(s)))
    assert {"run", "spawn", "TaskGroup", "sleep", "checkpoint", "current_task", "CancelScope",
            "move_on_after", "fail_after", "CancelToken", "KcoroError", "ChannelClosed",
            "WouldBlock", "OperationCancelled", "Cancelled", "UndeliveredElementError",
            "token_kernel", "Channel", "RENDEZVOUS", "UNLIMITED", "CONFLATED", "SUSPEND",
            "DROP_OLDEST", "DROP_LATEST", "stats_rate"} <= found


def test_documented_channel_methods_exist() -> None:
    names = set(re.findall(r"\bch\.([A-Za-z_]\w*)", _section("Channels")))
    assert {"send", "recv", "try_send", "try_recv", "close", "cancel", "stats"} <= names
    missing = sorted(n for n in names if not hasattr(kcoro.Channel, n))
    assert missing == []
    # `len(ch)` and `async for item in ch`
    assert hasattr(kcoro.Channel, "__len__")
    assert hasattr(kcoro.Channel, "__aiter__") and hasattr(kcoro.Channel, "__anext__")


def test_documented_channel_stats_fields_exist() -> None:
    block = re.search(r"`ChannelStats` fields.*?```(.*?)```", _section("Channels"), flags=re.S)
    assert block is not None
    documented = set()
    for line in block.group(1).splitlines():
        code = line.split("#")[0]
        documented |= set(re.findall(r"\b[a-z_]+\b", code.replace('"', " ")))
    documented -= {"rendezvous", "buffered", "unlimited", "conflated"}  # kind values
    assert {"sends", "recvs", "peak", "undelivered", "first_op_ns"} <= documented
    fields = {f.name for f in dataclasses.fields(kcoro.ChannelStats)}
    assert documented - fields == set()
    assert dataclasses.fields(kcoro.ChannelStats)  # a dataclass
    assert kcoro.ChannelStats.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_documented_stats_rate_fields_exist() -> None:
    ch: kcoro.Channel[int] = kcoro.Channel(1, name="exports")
    rate = kcoro.stats_rate(ch.stats(), ch.stats())
    for f in ("interval_s", "sends_per_s", "recvs_per_s", "bytes_sent_per_s",
              "bytes_recv_per_s"):
        assert isinstance(getattr(rate, f), float)
    documented_counters = {"sends", "recvs", "bytes_sent", "bytes_recv", "undelivered",
                           "send_would_block", "send_timeout", "send_closed", "send_cancelled",
                           "recv_would_block", "recv_timeout", "recv_closed", "recv_cancelled"}
    assert documented_counters <= set(rate.deltas)


def test_documented_task_surface() -> None:
    row = next(ln for ln in _section("Runtime").splitlines() if ln.startswith("| `Task`"))
    attrs = set(re.findall(r"`\.([A-Za-z_]\w*)", row))
    assert {"cancel", "done", "result", "name", "state"} <= attrs
    assert [a for a in attrs if not hasattr(kcoro.Task, a)] == []
    assert hasattr(kcoro.Task, "__await__")

    async def main() -> list[str]:
        async def child() -> int:
            return 7

        t = kcoro.spawn(child, name="c")
        assert t.name == "c"
        states = [t.state]
        assert await t == 7
        states.append(t.state)
        assert t.done() and t.result() == 7
        return states

    states = kcoro.run(main)
    documented = {"CREATED", "READY", "RUNNING", "PARKED", "FINISHED"}
    assert set(states) <= documented
    assert states[-1] == "FINISHED"


def test_documented_cancel_token_surface() -> None:
    tok = kcoro.CancelToken()
    child = kcoro.CancelToken(parent=tok)
    assert tok.cancelled is False  # a bool property
    tok.cancel()
    assert tok.cancelled is True
    assert child.cancelled is True


def test_documented_token_kernel_surface() -> None:
    text = _section("Token kernel")
    for n in set(re.findall(r"\bkernel\.([A-Za-z_]\w*)", text)):
        assert hasattr(kcoro.TokenKernel, n), f"kernel.{n}"
    for n in set(re.findall(r"\bticket\.([A-Za-z_]\w*)", text)) | {"key", "state"}:
        assert hasattr(kcoro.Ticket, n), f"ticket.{n}"
    assert hasattr(kcoro.Ticket, "__await__")
    k = kcoro.token_kernel()
    assert isinstance(k, kcoro.TokenKernel)
    t = k.publish(key=("exports-test", id(k)))
    assert isinstance(t, kcoro.Ticket)
    assert t.state == "NEW"
    assert t.id >= 1
    assert k.complete(t, "payload") is True
    assert t.state in ("READY", "COMPLETED")
    assert t.wait_blocking(timeout=0) == "payload"
    s = k.stats()
    for f in ("published", "parked", "completed", "cancelled", "outstanding", "zombies"):
        assert isinstance(getattr(s, f), int)
    assert isinstance(s, kcoro.TokenKernelStats)


def test_documented_errors_and_their_bases() -> None:
    rows = [ln for ln in _section("Errors").splitlines() if ln.startswith("| `")]
    bases = dict(re.findall(r"`kcoro\.(\w+)\((\w+)\)`", "\n".join(rows)))
    assert len(bases) >= 5
    for name, base in bases.items():
        cls = getattr(kcoro, name)
        expected_base = getattr(kcoro, base, None) or getattr(builtins, base)
        assert issubclass(cls, expected_base), f"{name} should derive from {base}"


def test_documented_constants() -> None:
    assert kcoro.RENDEZVOUS == 0
    assert kcoro.Channel(kcoro.UNLIMITED).kind == "unlimited"
    assert kcoro.Channel(kcoro.CONFLATED).kind == "conflated"
    assert len({kcoro.SUSPEND, kcoro.DROP_OLDEST, kcoro.DROP_LATEST}) == 3
