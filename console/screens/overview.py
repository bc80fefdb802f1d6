"""1 · Overview: every step, check counts, cache hit tiles, agents — the incident's first look.

Top to bottom: room for the incidents panel (`#incidents`, filled by its own widget), the
tiles, the steps, the highlighted step's note in full, on a wide terminal the last hours (runs
per step, cache ratios, input freshness), and one line saying what every mark means."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from pipectl.console import data
from pipectl.console.actions import OVERVIEW, bindings
from pipectl.console.data import OverviewData
from pipectl.console.screens.base import TableScreen
from pipectl.console.screens.lineage import IncidentOperations
from pipectl.console.screens.operations import Selected
from pipectl.console.screens.step import StepScreen
from pipectl.console.widgets.incidents import IncidentsPanel, incidents_of
from pipectl.console.widgets.overtime import Drawn, cache_strips, freshness_lines, run_strips
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.console.widgets.tiles import TileData, TileRow, node_id
from pipectl.format import STATUS_MARK, STATUS_STYLE, age, due, number, percent, seconds
from pipectl.model import CheckStatus
from pipectl.safetext import CELL, LINE, first_line, literal, visible
from pipectl.store import StatusSnapshot, StepRow
from pipectl.store.base import Conn
from pipectl.store.console import CacheSeries, StepHealth

# What every mark on the Overview means, in one line under it.
LEGEND = (
    ("✓", "ok", "green"),
    ("!", "warn", "yellow"),
    ("✗", "fail", "red"),
    ("⚠", "error", "magenta"),
    ("…", "no data", "dim"),
    ("∅", "silenced", "dim"),
    ("⏸", "paused", "yellow"),
    ("‖", "held", "yellow"),
    ("↻", "running", "cyan"),
)
WIDE = 120  # from this width on (the app's -wide breakpoint) the last hours are drawn

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
        yield Static("", id="step-note")
        with Horizontal(id="hours"):
            yield Drawn(id="strips", classes="panel")
            with Vertical(id="hours-side"):
                yield Drawn(id="cache-hours", classes="panel")
                yield Drawn(id="freshness", classes="panel")
        yield Static(legend(), id="legend")

    async def fetch(self, conn: Conn) -> OverviewData:
        return await data.overview(conn, self.console.clock(), self.app.size.width >= WIDE)

    def show(self, snapshot: OverviewData) -> None:
        now = self.console.clock()
        incidents = incidents_of(snapshot.lineage, snapshot.status, now)
        read_only = self.console.registry.read_only
        self.query_one(IncidentsPanel).show(incidents, snapshot.status, now, read_only=read_only)
        self.query_one(TileRow).show(tiles(snapshot, now))
        self.show_table(snapshot)
        self._show_note()
        self._show_hours(snapshot, now)
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
        return [
            step_row(step, now, snapshot.health.get(step.name)) for step in snapshot.status.steps
        ]

    def _show_note(self) -> None:
        """The highlighted step's note in full: the table's column cuts it at 80 columns."""
        box = self.query_one("#step-note", Static)
        snapshot = self.snapshot
        key = self.selected_key() if self.is_mounted else None
        step = next((s for s in snapshot.status.steps if s.name == key), None) if snapshot else None
        note = step_note(step, snapshot.health.get(step.name)) if snapshot and step else ""
        box.display = bool(note)
        if step is not None and note:
            box.update(
                Text.assemble(
                    literal(step.name, "bold", limit=CELL), ": ", literal(note, limit=LINE)
                )
            )

    def on_resize(self) -> None:
        """Grown wide: read the last hours now (a narrow load does not read them)."""
        snapshot = self.snapshot
        if snapshot is not None and snapshot.since is None and self.app.size.width >= WIDE:
            self.refetch()
        elif snapshot is not None:
            self._show_hours(snapshot, self.console.clock())

    @on(DataTable.RowHighlighted)
    def _step_highlighted(self) -> None:
        self._show_note()

    def _show_hours(self, snapshot: OverviewData, now: datetime) -> None:
        wide = self.app.size.width >= WIDE and snapshot.since is not None
        hours = self.query_one("#hours", Horizontal)
        hours.display = wide
        if not wide or snapshot.since is None or snapshot.until is None:
            return
        since, until = snapshot.since, snapshot.until
        strips = self.query_one("#strips", Drawn)
        strips.border_title = f"Runs · last {age(since, now).removesuffix(' ago')}"
        strips.draw = functools.partial(run_strips, snapshot.spans, since, until)
        cache = self.query_one("#cache-hours", Drawn)
        cache.border_title = "Cache hit ratio · per 5 min"
        names = {s.check: cache_title(s, snapshot.cache) for s in snapshot.cache_history}
        cache.draw = functools.partial(
            cache_strips, snapshot.cache_history, names, since, until, data.OVERVIEW_BUCKET
        )
        fresh = self.query_one("#freshness", Drawn)
        fresh.border_title = "Input freshness · newest row"
        fresh.draw = functools.partial(freshness_lines, snapshot.status.checks, now)

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


def legend() -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for index, (mark, meaning, style) in enumerate(LEGEND):
        if index:
            text.append(" ")  # one space: all nine fit in 80 columns
        text.append(mark, style)
        text.append(f" {meaning}", "dim")
    return text


def step_note(step: StepRow, health: StepHealth | None) -> str:
    """Why the step looks as it does: paused by whom, or its failures and the attempt now."""
    if step.paused:
        return f"paused by {step.paused_by}" + (
            f": {step.paused_reason}" if step.paused_reason else ""
        )
    if health is not None and (note := health.note(step)):
        return note
    last = step.last_run
    if last is not None and last.error and step.state != "ok":
        return first_line(last.error)
    return ""


def step_row(step: StepRow, now: datetime, health: StepHealth | None = None) -> TableRow:
    last = step.last_run
    when = (last.finished_at or last.started_at or last.queued_at) if last else None
    note = step_note(step, health)
    state = step.state
    mark = STATUS_MARK.get(state, "?")
    style = STATUS_STYLE.get(state, "")
    severity = step.health.severity
    cells = (
        literal(step.name, "bold", limit=CELL),
        Text(f"{mark} {state}", style=style),
        age(when, now) if last else "-",
        seconds(last.duration_seconds) if last else "-",
        number(last.rows) if last and last.rows is not None else "-",
        "paused" if step.paused else due(step.next_run_at, now),
        literal(note, "dim", limit=LINE),
    )
    sort_values = (
        step.name,
        -severity,
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


# The checks tile's words: what is wrong on its first line, the rest on its second.
COUNT_WORDS = {
    CheckStatus.FAIL: "fail",
    CheckStatus.ERROR: "error",
    CheckStatus.WARN: "warn",
    CheckStatus.OK: "ok",
    CheckStatus.NODATA: "no data",
}


def checks_tile(status: StatusSnapshot, now: datetime) -> TileData:
    """Counts by status in words; a silenced check counts as silenced, never as failing."""
    counts = dict.fromkeys(CheckStatus, 0)
    silenced = 0
    for check in status.checks:
        if check.silenced(now):
            silenced += 1
        else:
            counts[check.status] += 1
    bad = [s for s in (CheckStatus.FAIL, CheckStatus.ERROR, CheckStatus.WARN) if counts[s]]
    rest = [s for s in (CheckStatus.OK, CheckStatus.NODATA) if counts[s]]
    body = Text()
    for line, states in enumerate((bad, rest)):
        if line:
            body.append("\n")
        for index, state in enumerate(states):
            body.append(" " if index else "")
            body.append(
                f"{STATUS_MARK[str(state)]}{counts[state]} {COUNT_WORDS[state]}",
                STATUS_STYLE.get(str(state), ""),
            )
        if line == 0 and not bad:
            body.append("nothing failing", "green")
    if silenced:
        body.append(f" ∅{silenced} silenced", "dim")
    unsilenced = [c.status for c in status.checks if not c.silenced(now)]
    worst = max(unsilenced, key=lambda s: s.severity, default=CheckStatus.NODATA)
    return TileData("checks", Text(f"Checks {len(status.checks)}"), body, str(worst))


def cache_title(series: CacheSeries, every: Sequence[CacheSeries]) -> str:
    """The source's name, or the check's when two checks watch the same source."""
    same_source = sum(1 for s in every if s.source == series.source)
    return series.check if same_source > 1 else SOURCE_NAMES.get(series.source, series.source)


def cache_tile(series: CacheSeries, every: Sequence[CacheSeries]) -> TileData:
    title = cache_title(series, every)
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
