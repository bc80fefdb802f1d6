"""1 · Overview: every step, check counts, cache hit tiles, agents — the incident's first look."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.widgets import Static

from pipectl.console import data
from pipectl.console.actions import OVERVIEW, bindings
from pipectl.console.data import OverviewData
from pipectl.console.screens.base import TableScreen
from pipectl.console.screens.lineage import IncidentOperations
from pipectl.console.screens.operations import Selected
from pipectl.console.screens.step import StepScreen
from pipectl.console.widgets.incidents import IncidentsPanel, incidents_of
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.console.widgets.tiles import TileData, TileRow, node_id
from pipectl.format import STATUS_MARK, STATUS_STYLE, age, due, number, percent, seconds
from pipectl.model import CheckStatus
from pipectl.safetext import CELL, LINE, first_line, literal, visible
from pipectl.store import StatusSnapshot, StepRow
from pipectl.store.base import Conn
from pipectl.store.console import CacheSeries

SOURCE_NAMES = {"redis": "Redis", "app": "App cache", "postgres": "PostgreSQL"}


class OverviewScreen(IncidentOperations, TableScreen[OverviewData]):
    SCOPE = OVERVIEW
    BINDINGS: ClassVar[list[BindingType]] = bindings(OVERVIEW)  # type: ignore[assignment]
    INTERESTS = frozenset({"runs", "steps", "checks", "check_results", "requests"})
    TABLE_TITLE = "Steps"
    COLUMNS = (
        ColumnSpec("step", "step"),
        ColumnSpec("state", "state"),
        ColumnSpec("last", "last run"),
        ColumnSpec("took", "took"),
        ColumnSpec("rows", "rows"),
        ColumnSpec("next", "next run"),
        ColumnSpec("note", "note"),
    )

    def compose_body(self) -> ComposeResult:
        yield IncidentsPanel(id="incidents")
        yield TileRow(id="tiles")
        yield from self.compose_table()
        yield Static("", id="empty")

    async def fetch(self, conn: Conn) -> OverviewData:
        return await data.overview(conn)

    def show(self, snapshot: OverviewData) -> None:
        now = self.console.clock()
        incidents = incidents_of(snapshot.lineage, snapshot.status, now)
        read_only = self.console.registry.read_only
        self.query_one(IncidentsPanel).show(incidents, snapshot.status, now, read_only=read_only)
        self.query_one(TileRow).show(tiles(snapshot, now))
        self.show_table(snapshot)
        empty = self.query_one("#empty", Static)
        empty.display = not snapshot.status.steps
        empty.update(
            Text(
                "No steps published yet: start an agent (pipectl agent) with steps in its "
                "config, and they appear here.",
                style="dim",
            )
        )

    def rows(self, snapshot: OverviewData) -> list[TableRow]:
        now = self.console.clock()
        return [step_row(step, now) for step in snapshot.status.steps]

    # ------------------------------------------------------------------ actions

    def action_state(self, action: str) -> bool | None:
        if action == "check_now":
            return bool(self.snapshot and self.snapshot.status.checks) or None
        return self.step_action_state(action)

    def selected_step(self) -> Selected | None:
        key = self.selected_key()
        if self.snapshot is None or key is None:
            return None
        for step in self.snapshot.status.steps:
            if step.name == key:
                return Selected(step.name, step.paused)
        return None

    def selected_check(self) -> Selected | None:
        """On the overview, `c` runs every check."""
        return None

    def action_open(self) -> None:
        selected = self.selected_step()
        if selected is not None:
            self.app.push_screen(StepScreen(selected.name))


def step_row(step: StepRow, now: datetime) -> TableRow:
    last = step.last_run
    when = (last.finished_at or last.started_at or last.queued_at) if last else None
    note = ""
    if step.paused:
        note = f"paused by {step.paused_by}" + (
            f": {step.paused_reason}" if step.paused_reason else ""
        )
    elif last is not None and last.error:
        note = first_line(last.error)
    state = step.state
    cells = (
        literal(step.name, "bold", limit=CELL),
        Text(f"{STATUS_MARK.get(state, '?')} {state}", style=STATUS_STYLE.get(state, "")),
        age(when, now) if last else "-",
        seconds(last.duration_seconds) if last else "-",
        number(last.rows) if last and last.rows is not None else "-",
        "paused" if step.paused else due(step.next_run_at, now),
        literal(note, "dim", limit=60),
    )
    sort_values = (
        step.name,
        -step.health.severity,
        -(when.timestamp() if when else 0.0),
        last.duration_seconds if last else None,
        last.rows if last else None,
        step.next_run_at.timestamp() if step.next_run_at else None,
        note,
    )
    return TableRow(step.name, cells, sort_values, f"{step.name} {state} {note}")


def tiles(snapshot: OverviewData, now: datetime) -> list[TileData]:
    return [
        checks_tile(snapshot.status, now),
        *(cache_tile(series, snapshot.cache) for series in snapshot.cache),
        agents_tile(snapshot.status),
    ]


def checks_tile(status: StatusSnapshot, now: datetime) -> TileData:
    counts = status.check_counts()
    body = Text()
    for index, state in enumerate(CheckStatus):
        if index:
            body.append("\n" if index == 3 else " ")
        body.append(f"{STATUS_MARK[str(state)]}{counts[state]}", STATUS_STYLE.get(str(state), ""))
    silenced = sum(1 for c in status.checks if c.silenced(now))
    if silenced:
        body.append(f" ∅{silenced}", "dim")
    unsilenced = [c.status for c in status.checks if not c.silenced(now)]
    worst = max(unsilenced, key=lambda s: s.severity, default=CheckStatus.NODATA)
    return TileData("checks", Text(f"Checks {len(status.checks)}"), body, str(worst))


def cache_tile(series: CacheSeries, every: Sequence[CacheSeries]) -> TileData:
    same_source = sum(1 for s in every if s.source == series.source)
    title = series.check if same_source > 1 else SOURCE_NAMES.get(series.source, series.source)
    ratio = series.latest.ratio if series.latest else None
    state = "nodata"
    if ratio is not None:
        state = (
            "ok" if ratio >= series.warn_below else "warn" if ratio >= series.fail_below else "fail"
        )
    body = Text(percent(ratio), style=f"bold {STATUS_STYLE.get(state, '')}")
    body.append(f" ≥{percent(series.warn_below, 0)}", style="dim")
    levels = series.latest.levels if series.latest else ()
    if levels:
        body.append("\n")
        body.append(
            " ".join(
                f"{visible(lv.level, limit=CELL)} {lv.ratio * 100:.0f}"
                for lv in levels
                if lv.ratio is not None
            ),
            style="dim",
        )
    return TileData(node_id("cache", series.check), literal(title, limit=CELL), body, state)


def agents_tile(status: StatusSnapshot) -> TileData:
    alive = len(status.agents)
    body = Text(f"{alive} alive", style="bold")
    names = ", ".join(visible(a.name, limit=CELL) for a in status.agents)
    if names:
        body.append(f" {visible(names, limit=LINE)}", style="dim")
    body.append(f"\n{status.pending_requests} pending", style="dim")
    state = "ok" if alive else ("warn" if status.steps else "nodata")
    return TileData("agents", Text("Agents"), body, state)
