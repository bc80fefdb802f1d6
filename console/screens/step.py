"""Step detail: run history with a duration sparkline, the last error in full, the SQL it runs,
its upstream and downstream steps, and its expected duration (p50 / p95 from history)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on
from textual.binding import BindingType
from textual.widgets import DataTable, Static

from pipectl.console import data
from pipectl.console.actions import STEP, bindings
from pipectl.console.data import RequestIntent
from pipectl.console.screens.detail import DetailScreen
from pipectl.console.screens.dialogs import PublishDialog
from pipectl.console.screens.operations import Selected, StepOperations
from pipectl.console.widgets.chart import TimeChart, TimeSeries
from pipectl.console.widgets.facts import Fact, facts_table
from pipectl.console.widgets.gates import gates_table
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.dag import dependents
from pipectl.format import STATUS_MARK, STATUS_STYLE, age, clock_time, due, number, seconds
from pipectl.model import Run, RunStatus
from pipectl.request_args import PublishArgs
from pipectl.safetext import BLOCK, LINE, first_line, literal
from pipectl.store.base import Conn
from pipectl.store.console import StepDetail


class StepScreen(StepOperations, DetailScreen[StepDetail | None]):
    SCOPE = STEP
    NOUN = "Step"
    SIDE_PANELS = ("error", "sql")
    BINDINGS: ClassVar[list[BindingType]] = bindings(STEP)  # type: ignore[assignment]
    INTERESTS = frozenset({"runs", "steps"})
    TABLE_TITLE = "Runs"
    COLUMNS = (
        ColumnSpec("run", "run"),
        ColumnSpec("status", "status"),
        ColumnSpec("trigger", "trigger"),
        ColumnSpec("started", "started"),
        ColumnSpec("took", "took"),
        ColumnSpec("rows", "rows"),
        ColumnSpec("agent", "agent"),
        ColumnSpec("error", "error"),
    )

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step

    async def fetch(self, conn: Conn) -> StepDetail | None:
        return await data.step(conn, self.step)

    def show(self, snapshot: StepDetail | None) -> None:
        if snapshot is None:
            self.show_missing()
            return
        self.query_one("#info", Static).update(info_table(snapshot, self.console.clock()))
        now = self.console.clock()
        series = duration_series(snapshot, now)
        stats = snapshot.durations
        label = Text.assemble(
            ("duration ", "bold"),
            (f"last {len(series.points)} runs · ", "dim"),
            (f"p50 {seconds(stats.p50)}  p95 {seconds(stats.p95)} · ", ""),
        )
        label.append("░", "green")
        label.append(" p50 to p95  ", "dim")
        label.append("◆", "bold red")
        label.append(" failed or slower", "dim")
        self.query_one("#spark-label", Static).update(label)
        self.query_one("#chart", TimeChart).series = series
        self.show_sql(snapshot.state.sql, f"refreshes {snapshot.state.relation or '-'}")
        self._show_error(self._highlighted_run())
        self.show_table(snapshot)

    def rows(self, snapshot: StepDetail | None) -> list[TableRow]:
        if snapshot is None:
            return []
        now = self.console.clock()
        return [run_row(run, now) for run in snapshot.runs]

    # ------------------------------------------------------------------ the error panel

    def _highlighted_run(self) -> Run | None:
        if self.snapshot is None:
            return None
        key = self.table.selected_key if self.is_mounted else None
        return next((r for r in self.snapshot.runs if str(r.id) == key), None)

    @on(DataTable.RowHighlighted)
    def _run_highlighted(self) -> None:
        self._show_error(self._highlighted_run())

    def _show_error(self, highlighted: Run | None) -> None:
        """The highlighted run's error if it has one, else the step's hold (with each gate's
        evidence) while it is held, else its last failure."""
        panel = self.query_one("#error", Static)
        snapshot = self.snapshot
        run = highlighted if highlighted and highlighted.error else None
        if run is None and snapshot is not None:
            run = snapshot.held or snapshot.last_failure
        if run is None:
            panel.border_title = "Last error"
            panel.update(Text("no failures in history", style="dim"))
            return
        now = self.console.clock()
        if run.status == RunStatus.HELD:
            panel.border_title = f"Held by a gate · run {run.id} · {age(run.finished_at, now)}"
            held = literal(run.error or "", "yellow", limit=BLOCK, multiline=True)
            panel.update(Group(held, gates_table(run)))
            return
        panel.border_title = f"Error · run {run.id} · {age(run.finished_at, now)}"
        panel.update(literal(run.error or "", "red", limit=BLOCK, multiline=True))

    # ------------------------------------------------------------------ actions

    def action_state(self, action: str) -> bool | None:
        if action == "publish":
            return self.snapshot is not None and self.snapshot.held is not None
        return self.step_action_state(action)

    def action_publish(self) -> None:
        """Confirm with the exact target (step, held run, its gates), then file the request
        naming that run: the agent publishes nothing else."""
        held = self.snapshot.held if self.snapshot is not None else None
        if held is None:
            return
        step = self.step

        def file(reason: str | None) -> None:
            if reason is not None:
                self.console.file_request(
                    RequestIntent(
                        "publish", step, reason, PublishArgs(run=held.id), f"{step} run {held.id}"
                    )
                )

        self.app.push_screen(PublishDialog(step, held), file)

    def selected_step(self) -> Selected | None:
        snapshot = self.snapshot
        if snapshot is None:
            return None
        return Selected(snapshot.state.name, snapshot.state.paused)


def duration_series(detail: StepDetail, now: datetime) -> TimeSeries:
    """How long each recent run took, over the time they cover: the expected band from the
    step's p50 to its p95, failed runs and runs slower than p95 marked."""
    runs = sorted(
        (r for r in detail.runs if r.started_at and r.duration_seconds is not None),
        key=lambda r: r.started_at or r.queued_at,
    )
    points = tuple((r.started_at or r.queued_at, r.duration_seconds or 0.0) for r in runs)
    since = points[0][0] if points else now - timedelta(hours=1)
    since = min(since, now - timedelta(minutes=10))
    p50, p95 = detail.durations.p50, detail.durations.p95
    band = ((since, p50, p95),) if p95 is not None else ()
    anomalies = tuple(
        (at, value)
        for (at, value), run in zip(points, runs, strict=True)
        if run.status == RunStatus.FAILED or (p95 is not None and value > p95)
    )
    return TimeSeries(since, now, points, band, (), anomalies)


def info_table(detail: StepDetail, now: datetime) -> Table:
    state = detail.state
    status = detail.shown
    status_cell = Text(f"{STATUS_MARK.get(status, '?')} {status}")
    status_cell.stylize(STATUS_STYLE.get(status, ""))
    upstream = ", ".join(state.depends_on) or "-"
    below = ", ".join(dependents(detail.graph, state.name)) or "-"
    stats = detail.durations
    paused = "-"
    if state.paused:
        paused = f"by {state.paused_by} {age(state.paused_at, now)}" + (
            f": {state.paused_reason}" if state.paused_reason else ""
        )
    rows: list[tuple[str, Fact, str, Fact]] = [
        ("step", literal(state.name, "bold", limit=LINE), "kind", state.kind),
        ("state", status_cell, "relation", state.relation or "-"),
        (
            "schedule",
            state.schedule or "on request",
            "next run",
            "none while paused" if state.paused else due(state.next_run_at, now),
        ),
        (
            "expected",
            f"p50 {seconds(stats.p50)} · p95 {seconds(stats.p95)} (n={stats.samples})",
            "upstream",
            upstream,
        ),
        ("paused", paused, "downstream", below),
    ]
    if state.description:
        rows.append(("about", literal(state.description, "italic", limit=LINE), "", ""))
    return facts_table(rows)


def run_row(run: Run, now: datetime) -> TableRow:
    status = str(run.status)
    trigger = str(run.trigger) + (f" #{run.attempt}" if run.attempt > 1 else "")
    error = first_line(run.error)
    cells = (
        str(run.id),
        Text(f"{STATUS_MARK.get(status, '?')} {status}", style=STATUS_STYLE.get(status, "")),
        trigger,
        clock_time(run.started_at or run.queued_at, now),
        seconds(run.duration_seconds),
        number(run.rows) if run.rows is not None else "-",
        run.agent_name or "-",
        literal(error, "dim", limit=60),
    )
    sort_values = (
        run.id,
        status,
        trigger,
        (run.started_at or run.queued_at).timestamp(),
        run.duration_seconds,
        run.rows,
        run.agent_name,
        error,
    )
    return TableRow(str(run.id), cells, sort_values, f"{run.id} {status} {trigger} {error}")
