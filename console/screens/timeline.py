"""4 · Timeline: runs, check status changes, requests and their outcomes, pauses, silences,
agents and cache dips, merged newest first — where an incident is reconstructed."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType

from pipectl.console import data
from pipectl.console.actions import TIMELINE, bindings
from pipectl.console.data import TimelineData
from pipectl.console.screens.base import TableScreen, TimeWindow
from pipectl.console.screens.checks import CheckScreen
from pipectl.console.screens.step import StepScreen
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.durations import format_duration
from pipectl.format import STATUS_MARK, STATUS_STYLE, clock_time
from pipectl.safetext import CELL, first_line, literal
from pipectl.store.base import Conn
from pipectl.store.console import TimelineEntry

KIND_MARKS = {
    "step.paused": "⏸",
    "step.resumed": "▶",
    "check.silence": "∅",
    "agent.started": "+",
    "agent.stopped": "-",
    "agent.lost": "✗",
    "cache.dip": "↘",
    "cache.recovered": "↗",
}


class TimelineScreen(TimeWindow, TableScreen[TimelineData]):
    SCOPE = TIMELINE
    BINDINGS: ClassVar[list[BindingType]] = bindings(TIMELINE)  # type: ignore[assignment]
    INTERESTS = frozenset({"runs", "check_results", "requests", "steps", "checks"})
    TABLE_TITLE = "Timeline"
    COLUMNS = (
        ColumnSpec("at", "at"),
        ColumnSpec("what", "what"),
        ColumnSpec("subject", "subject"),
        ColumnSpec("status", "status"),
        ColumnSpec("message", "message"),
        ColumnSpec("who", "who"),
    )

    def compose_body(self) -> ComposeResult:
        yield from self.compose_table()

    async def fetch(self, conn: Conn) -> TimelineData:
        return await data.timeline_of(conn, self.console.clock(), self.window)

    def show(self, snapshot: TimelineData) -> None:
        self.show_table(snapshot)

    def table_title(self) -> str:
        return f"Timeline · last {format_duration(self.window)}"

    def rows(self, snapshot: TimelineData) -> list[TableRow]:
        now = self.console.clock()
        return [timeline_row(e, now) for e in snapshot.entries]

    def action_window(self) -> None:
        self.next_window()
        self.refetch()

    def action_open(self) -> None:
        key = self.selected_key()
        snapshot = self.snapshot
        if key is None or snapshot is None:
            return
        entry = next((e for e in snapshot.entries if e.ref == key), None)
        if entry is None:
            return
        if entry.subject in snapshot.steps:
            self.app.push_screen(StepScreen(entry.subject))
        elif entry.subject in snapshot.checks:
            self.app.push_screen(CheckScreen(entry.subject))


def timeline_row(entry: TimelineEntry, now: datetime) -> TableRow:
    status = entry.status
    mark = KIND_MARKS.get(entry.kind) or STATUS_MARK.get(status, "•")
    style = STATUS_STYLE.get(status, "")
    message = first_line(entry.message)
    cells = (
        clock_time(entry.at, now),
        literal(f"{mark} {entry.kind}", style, limit=CELL),
        literal(entry.subject, "bold", limit=CELL),
        literal(status, style, limit=CELL),
        literal(message, "dim", limit=80),
        entry.actor or "-",
    )
    sort_values = (entry.at.timestamp(), entry.kind, entry.subject, status, message, entry.actor)
    text = f"{entry.kind} {entry.subject} {status} {entry.actor} {message}"
    return TableRow(entry.ref, cells, sort_values, text)
