"""The live view of ``kcoro top`` (Textual).  Imported only by ``kcoro top PID``.

Two views over the snapshots a target pushes (``kcoro.metrics.serve``):

* channels — one row per channel: kind, depth/capacity, msgs/s (instant, EMA, peak), bytes/s,
  waiting senders/receivers, failures by cause, undelivered, zref counters and a msgs/s
  sparkline; below it the token kernel (outstanding, zombies, tickets/s) and the arenas;
* tasks — every task of every runtime, its state and the channel/ticket it is parked on.

Keys: c/t/v views, s sort column, r reverse, / filter, esc clear filter, p or space pause,
? help, q quit.  When the target goes away the last data stays on screen with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import ContentSwitcher, DataTable, Footer, Input, Static

from ..metrics import client as _client
from ..metrics._snapshot import Snapshot, from_dict
from ..metrics.sampler import ChannelTrack, RateBook, sparkline
from .top import describe, failures, fmt_cap, fmt_rate

__all__ = ["CHANNEL_COLUMNS", "SORTS", "TASK_COLUMNS", "TopApp"]

CHANNEL_COLUMNS = ("channel", "kind", "depth/cap", "msgs/s", "ema", "peak", "bytes/s",
                   "wait s/r", "send fail", "recv fail", "undeliv", "zref s/r/fb", "trend")
TASK_COLUMNS = ("runtime", "id", "task", "state", "parked on")
ARENA_COLUMNS = ("arena", "in use", "peak", "capacity", "blocks", "spills", "fallbacks",
                 "trend")

_Row = tuple[Any, ChannelTrack | None]


def _fails(r: _Row) -> int:
    s = r[0]
    return int(sum(getattr(s, f"{side}_{c}") for side in ("send", "recv")
                   for c in ("would_block", "timeout", "closed", "cancelled")))


def _pps(r: _Row) -> float:
    return r[1].packets_per_s if r[1] is not None else 0.0


def _bps(r: _Row) -> float:
    return r[1].bytes_per_s if r[1] is not None else 0.0


# (label, key, descending by default)
SORTS: tuple[tuple[str, Callable[[_Row], Any], bool], ...] = (
    ("name", lambda r: r[0].name, False),
    ("msgs/s", _pps, True),
    ("bytes/s", _bps, True),
    ("depth", lambda r: r[0].buffered, True),
    ("waiting", lambda r: r[0].waiting_senders + r[0].waiting_receivers, True),
    ("failures", _fails, True),
)

HELP = """\
[b]kcoro top[/b] — keys

  c / t / v    channels view / tasks view / switch view
  s            sort by the next column (name, msgs/s, bytes/s, depth, waiting, failures)
  r            reverse the sort
  /            filter by name (channels) or name/parked-on (tasks); enter to keep
  escape       clear the filter
  p, space     pause / resume the display (sampling goes on)
  ?, h         this help
  q            quit

msgs/s = received per second (sent when nothing is received), instant / EMA (alpha 0.25) / peak.
fail: wb would-block, to timeout, cl closed, cx cancelled, dr dropped by overflow.
zref s/r/fb: zero-copy references sent / received / fallbacks to copy.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,h", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 100; height: auto; border: round $accent; padding: 1 2;
                          background: $panel; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class TopApp(App[None]):
    """``kcoro top`` on one target socket."""

    TITLE = "kcoro top"
    CSS = """
    #status { height: 1; background: $boost; padding: 0 1; }
    #views { height: 1fr; }
    #channels-view { height: 1fr; }
    #channels { height: 1fr; }
    #tokens { height: auto; padding: 0 1; }
    #arenas { height: auto; max-height: 8; }
    #tasks { height: 1fr; }
    #filter { display: none; }
    #filter.visible { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("c", "view('channels')", "Channels"),
        Binding("t", "view('tasks')", "Tasks"),
        Binding("v", "toggle_view", "Switch view", show=False),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("p,space", "pause", "Pause"),
        Binding("question_mark,h", "help", "Help"),
    ]

    def __init__(self, path: str, refresh_s: float = 0.25) -> None:
        super().__init__()
        self.path = path
        self.refresh_s = refresh_s
        self.book = RateBook()
        self.snap: Snapshot | None = None
        self.hello: dict[str, Any] = {}
        self.paused = False
        self.sort_index = 0
        self.sort_reverse = False
        self.filter_text = ""
        self.view = "channels"
        self.state = "connecting"
        self.fatal = ""  # an attach error: the CLI prints it after the UI exits
        self.samples = 0
        self.dropped = 0
        self._dirty = False
        self._conn: _client.AsyncConnection | None = None

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("kcoro top: connecting…", id="status")
        yield Input(placeholder="filter (enter to keep, esc to clear)", id="filter")
        with ContentSwitcher(initial="channels-view", id="views"):
            with Vertical(id="channels-view"):
                yield DataTable(id="channels", cursor_type="row", zebra_stripes=True)
                yield Static("", id="tokens")
                yield DataTable(id="arenas", cursor_type="none", show_cursor=False)
            yield DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        for tid, cols in (("#channels", CHANNEL_COLUMNS), ("#tasks", TASK_COLUMNS),
                          ("#arenas", ARENA_COLUMNS)):
            table = self.query_one(tid, DataTable)
            for c in cols:
                table.add_column(c, key=c)
        self.set_interval(self.refresh_s, self._tick)
        self.run_worker(self._read_loop(), exclusive=True, exit_on_error=False)
        self.query_one("#channels", DataTable).focus()

    # -- data ------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            conn = await _client.connect_async(self.path)
        except Exception as exc:  # MonitorError, or a bug: shown, never a traceback
            self.state = f"cannot attach: {exc}"
            self.fatal = str(exc) or type(exc).__name__
            self._dirty = True
            self._tick()
            return
        self._conn = conn
        self.hello = conn.hello
        conn.subscribe(self.refresh_s)
        self.state = "live"
        try:
            while True:
                rec = await conn.read()
                if rec.get("type") == "snapshot":
                    self.feed(rec)
        except _client.TargetGone as exc:
            self.state = f"disconnected: {exc}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # garbage from the target, or a bug in the view
            self.state = f"error: {exc}"
        finally:
            conn.close()
            self._dirty = True
            self._tick()

    def feed(self, rec: dict[str, Any]) -> None:
        """Take one ``snapshot`` record (sampling goes on while paused)."""
        snap = from_dict(rec)
        self.book.update(snap)
        self.snap = snap
        self.samples += 1
        self.dropped = int(rec.get("dropped", 0))
        self._dirty = True

    def _tick(self) -> None:
        try:
            if self._dirty and not self.paused:
                self._dirty = False
                self.redraw()
            self._draw_status()
        except NoMatches:  # the app is shutting down: its widgets are gone
            pass

    # -- drawing ---------------------------------------------------------------------------------
    def _draw_status(self) -> None:
        argv = " ".join(self.hello.get("argv", []))[:60]
        pid = self.hello.get("pid", "?")
        state = "PAUSED" if self.paused and self.state == "live" else self.state
        label, _, desc = SORTS[self.sort_index]
        arrow = "↑" if desc == self.sort_reverse else "↓"
        filt = f" · filter '{self.filter_text}'" if self.filter_text else ""
        self.query_one("#status", Static).update(
            f"kcoro top · pid {pid} {argv} · {state} · {self.view} · sort {label}{arrow}"
            f"{filt} · samples {self.samples} · dropped {self.dropped}")

    def redraw(self) -> None:
        self._draw_channels()
        self._draw_tasks()

    def channel_rows(self) -> list[_Row]:
        snap = self.snap
        if snap is None:
            return []
        tracks = {}
        for key, tr in self.book.tracks.items():
            tracks[key] = tr
        rows: list[_Row] = []
        for s, ident in zip(snap.channels, snap.channel_ids):
            if self.filter_text and self.filter_text.lower() not in s.name.lower():
                continue
            rows.append((s, tracks.get(ident or s.name)))
        _, key, desc = SORTS[self.sort_index]
        rows.sort(key=key, reverse=desc != self.sort_reverse)
        return rows

    def _draw_channels(self) -> None:
        table = self.query_one("#channels", DataTable)
        keep = table.cursor_row
        table.clear()
        for row in self.channel_rows():
            s, tr = row
            table.add_row(
                s.name, s.kind, f"{s.buffered}/{fmt_cap(s.capacity)}",
                fmt_rate(tr.packets_per_s if tr else 0.0),
                fmt_rate(tr.ema or 0.0 if tr else 0.0), fmt_rate(tr.peak if tr else 0.0),
                fmt_rate(_bps(row)), f"{s.waiting_senders}/{s.waiting_receivers}",
                failures(s, "send"), failures(s, "recv"), str(s.undelivered),
                f"{s.zref_sent}/{s.zref_received}/"
                f"{s.zref_fallback_small + s.zref_fallback_capacity}",
                sparkline(tr.history if tr else [], 16))
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1), animate=False)
        snap = self.snap
        tokens = self.query_one("#tokens", Static)
        arenas = self.query_one("#arenas", DataTable)
        arenas.clear()
        if snap is None:
            tokens.update("")
            return
        k = snap.tokens
        tokens.update(
            f"[b]tokens[/b]  outstanding {k.outstanding}  zombies {k.zombies}  "
            f"tickets/s {fmt_rate(self.book.tickets_per_s)} "
            f"{sparkline(self.book.tickets_history, 16)}  published {k.published}  "
            f"completed {k.completed}  cancelled {k.cancelled}   "
            f"[b]arenas[/b] {len(snap.arenas) or 'none'}")
        for a in snap.arenas:
            arenas.add_row(a.name, str(a.in_use), str(a.peak), str(a.capacity), str(a.blocks),
                           str(a.spills), str(a.fallbacks),
                           sparkline(self.book.arena_history.get(a.name, []), 16))

    def task_rows(self) -> list[tuple[str, str, str, str, str]]:
        snap = self.snap
        if snap is None:
            return []
        out = []
        f = self.filter_text.lower()
        for rt in snap.runtimes:
            for t in rt.tasks:
                on = describe(t.parked_on)
                if f and f not in t.name.lower() and f not in on.lower():
                    continue
                out.append((rt.thread, str(t.id), t.name, t.state, on))
        return out

    def _draw_tasks(self) -> None:
        table = self.query_one("#tasks", DataTable)
        keep = table.cursor_row
        table.clear()
        for row in self.task_rows():
            table.add_row(*row)
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1), animate=False)

    # -- actions ---------------------------------------------------------------------------------
    def action_view(self, name: str) -> None:
        self.view = name
        self.query_one("#views", ContentSwitcher).current = f"{name}-view" \
            if name == "channels" else "tasks"
        self.query_one(f"#{name}", DataTable).focus()
        self._draw_status()

    def action_toggle_view(self) -> None:
        self.action_view("tasks" if self.view == "channels" else "channels")

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.sort_reverse = False
        self.redraw()
        self._draw_status()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.redraw()
        self._draw_status()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self._dirty = True
        self._tick()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.value = self.filter_text
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("visible")
        self.filter_text = ""
        self.redraw()
        self.query_one(f"#{self.view}", DataTable).focus()
        self._draw_status()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.redraw()
        self._draw_status()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.remove_class("visible")
        self.query_one(f"#{self.view}", DataTable).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
