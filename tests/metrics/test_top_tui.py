"""`kcoro top` live view, driven headlessly with Textual's pilot against a real second process
running a workload (tests/metrics/workload.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from kcoro.cli.top_app import CHANNEL_COLUMNS, TASK_COLUMNS, HelpScreen, TopApp

from .conftest import Workload

KINDS = {"rv": "rendezvous", "buf": "buffered", "unl": "unlimited", "conf": "conflated"}


async def until(pilot: Pilot[Any], cond: Callable[[], bool], what: str,
                timeout: float = 30.0) -> None:
    """Let the app run until ``cond()`` holds (data comes from another process)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"the UI never showed {what}")
        await pilot.pause(0.02)


def rows(app: TopApp, table_id: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    table = app.query_one(table_id, DataTable)
    return [dict(zip(columns, map(str, table.get_row_at(i)))) for i in range(table.row_count)]


def status(app: TopApp) -> str:
    return str(app.query_one("#status", Static).render())


def test_live_view_channels_tasks_and_keys(workload: Workload) -> None:
    async def scenario() -> None:
        app = TopApp(workload.path, refresh_s=0.25)
        async with app.run_test(size=(220, 50)) as pilot:
            def chans() -> dict[str, dict[str, str]]:
                return {r["channel"]: r for r in rows(app, "#channels", CHANNEL_COLUMNS)}

            def traffic_everywhere() -> bool:
                c = chans()
                return all(n in c and c[n]["msgs/s"] != "0" and c[n]["trend"].strip()
                           for n in KINDS)

            await until(pilot, traffic_everywhere, "msgs/s on every channel kind")
            c = chans()
            for name, kind in KINDS.items():
                assert c[name]["kind"] == kind
                assert c[name]["bytes/s"] != "0"  # 100-byte items
            assert c["unl"]["depth/cap"].endswith("/inf")
            assert c["buf"]["depth/cap"].endswith("/8")
            assert c["idle"]["recv fail"] == "wb3" and c["idle"]["wait s/r"] == "0/1"
            assert c["idle"]["msgs/s"] == "0"
            assert int(c["conf"]["undeliv"]) > 0
            assert "live" in status(app) and f"pid {workload.pid}" in status(app)
            assert "outstanding" in str(app.query_one("#tokens", Static).render())

            # sort by msgs/s: the idle channels go to the bottom
            await pilot.press("s")
            assert "sort msgs/s" in status(app)
            order = [r["channel"] for r in rows(app, "#channels", CHANNEL_COLUMNS)]
            assert set(order[:4]) == set(KINDS) and set(order[4:]) == {"idle", "stop"}

            # filter
            await pilot.press("slash", "i", "d", "l", "e", "enter")
            assert [r["channel"] for r in rows(app, "#channels", CHANNEL_COLUMNS)] == ["idle"]
            await pilot.press("escape")
            assert len(rows(app, "#channels", CHANNEL_COLUMNS)) == 6

            # tasks view: what each task is parked on
            await pilot.press("t")
            await until(pilot, lambda: len(rows(app, "#tasks", TASK_COLUMNS)) >= 10, "tasks")
            tasks = {r["task"]: r for r in rows(app, "#tasks", TASK_COLUMNS)}
            assert tasks["idle-waiter"]["state"] == "PARKED"
            assert tasks["idle-waiter"]["parked on"] == "channel idle"
            assert tasks["consume-rv"]["parked on"] in ("channel rv", "")
            await pilot.press("slash", *"idle", "enter")
            assert [r["task"] for r in rows(app, "#tasks", TASK_COLUMNS)] == ["idle-waiter"]
            await pilot.press("escape", "c")

            # pause freezes the display while sampling goes on
            await pilot.press("p")
            assert "PAUSED" in status(app)
            frozen = app.samples
            await until(pilot, lambda: app.samples > frozen + 2, "new samples while paused")
            await pilot.press("p")
            assert "PAUSED" not in status(app)

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

            # the target exits: the last data stays, with the reason
            await asyncio.get_running_loop().run_in_executor(None, workload.stop)
            await until(pilot, lambda: "disconnected" in status(app), "the disconnect")
            assert f"process {workload.pid} closed" in status(app) or \
                "closed the metrics connection" in status(app)
            assert len(rows(app, "#channels", CHANNEL_COLUMNS)) == 6
            await pilot.press("q")

    asyncio.run(scenario())


def test_live_view_attach_error_is_shown_not_raised(metrics_dir: str) -> None:
    stale = os.path.join(metrics_dir, "999999999.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()

    async def scenario() -> None:
        app = TopApp(stale, refresh_s=0.05)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: bool(app.fatal), "the attach error")
            assert "cannot attach: stale metrics socket" in status(app)
            await pilot.press("q")

    asyncio.run(scenario())
