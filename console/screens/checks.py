"""2 · Checks: status, value, the baseline band and a trend per check; and each check's detail
(history, threshold, the SQL it runs, silence state)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import ClassVar

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.widgets import Static

from pipectl.console import data
from pipectl.console.actions import CHECK, CHECKS, bindings
from pipectl.console.data import ChecksData
from pipectl.console.screens.base import TableScreen
from pipectl.console.screens.detail import DetailScreen
from pipectl.console.screens.operations import CheckOperations, Selected
from pipectl.console.widgets.facts import Fact, facts_table
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.format import STATUS_MARK, STATUS_STYLE, age, band, clock_time, number, spark
from pipectl.safetext import CELL, LINE, first_line, literal, visible
from pipectl.store import CheckRow
from pipectl.store.base import Conn
from pipectl.store.console import CheckDetail
from pipectl.store.results import ResultRow

TREND_WIDTH = 16


def status_cell(status: str, silenced: bool) -> Text:
    text = Text(f"{STATUS_MARK.get(status, '?')} {status}", style=STATUS_STYLE.get(status, ""))
    if silenced:
        text.append(" (silenced)", style="dim")
    return text


class ChecksScreen(CheckOperations, TableScreen[ChecksData]):
    SCOPE = CHECKS
    BINDINGS: ClassVar[list[BindingType]] = bindings(CHECKS)  # type: ignore[assignment]
    INTERESTS = frozenset({"checks", "check_results"})
    TABLE_TITLE = "Checks"
    COLUMNS = (
        ColumnSpec("check", "check"),
        ColumnSpec("status", "status"),
        ColumnSpec("value", "value"),
        ColumnSpec("band", "expected"),
        ColumnSpec("trend", "trend", sortable=False),
        ColumnSpec("since", "since"),
        ColumnSpec("message", "message"),
    )

    def compose_body(self) -> ComposeResult:
        yield from self.compose_table()
        yield Static("", id="empty")

    async def fetch(self, conn: Conn) -> ChecksData:
        return await data.checks(conn)

    def show(self, snapshot: ChecksData) -> None:
        self.show_table(snapshot)
        empty = self.query_one("#empty", Static)
        empty.display = not snapshot.status.checks
        empty.update(Text("No checks published yet.", style="dim"))

    def rows(self, snapshot: ChecksData) -> list[TableRow]:
        now = self.console.clock()
        return [check_row(c, snapshot.trends.get(c.name, ()), now) for c in snapshot.status.checks]

    def action_state(self, action: str) -> bool | None:
        return self.check_action_state(action)

    def selected_check(self) -> Selected | None:
        key = self.selected_key()
        if self.snapshot is None or key is None:
            return None
        now = self.console.clock()
        for check in self.snapshot.status.checks:
            if check.name == key:
                return Selected(check.name, check.silenced(now))
        return None

    def action_open(self) -> None:
        selected = self.selected_check()
        if selected is not None:
            self.app.push_screen(CheckScreen(selected.name))


def check_row(check: CheckRow, trend: tuple[float, ...], now: datetime) -> TableRow:
    status = str(check.status)
    silenced = check.silenced(now)
    message = first_line(check.message)
    cells = (
        literal(check.name, "bold", limit=CELL),
        status_cell(status, silenced),
        number(check.value),
        band(check.expected_low, check.expected_high),
        Text(spark(trend, TREND_WIDTH), style=STATUS_STYLE.get(status, "")),
        age(check.status_since, now),
        literal(message, "dim", limit=70),
    )
    sort_values = (
        check.name,
        -check.status.severity,
        check.value,
        check.expected_low,
        None,
        check.status_since.timestamp(),
        message,
    )
    return TableRow(check.name, cells, sort_values, f"{check.name} {status} {check.kind} {message}")


class CheckScreen(CheckOperations, DetailScreen[CheckDetail | None]):
    SCOPE = CHECK
    NOUN = "Check"
    SIDE_PANELS = ("threshold", "sql")
    BINDINGS: ClassVar[list[BindingType]] = bindings(CHECK)  # type: ignore[assignment]
    INTERESTS = frozenset({"checks", "check_results"})
    TABLE_TITLE = "Results"
    COLUMNS = (
        ColumnSpec("at", "at"),
        ColumnSpec("status", "status"),
        ColumnSpec("value", "value"),
        ColumnSpec("band", "expected"),
        ColumnSpec("message", "message"),
    )

    def __init__(self, check: str) -> None:
        super().__init__(check)
        self.check = check

    async def fetch(self, conn: Conn) -> CheckDetail | None:
        return await data.check(conn, self.check, self.console.clock())

    def show(self, snapshot: CheckDetail | None) -> None:
        if snapshot is None:
            self.show_missing()
            return
        self.query_one("#info", Static).update(check_info(snapshot, self.console.clock()))
        values = _series_values(snapshot)
        source = "samples" if snapshot.samples else "results"
        self.show_trend(
            values, Text.assemble(("value ", "bold"), (f"last {len(values)} {source}", "dim"))
        )
        threshold = self.query_one("#threshold", Static)
        threshold.border_title = "Threshold and baseline"
        latest = snapshot.latest
        threshold.update(
            Syntax(
                visible(
                    json.dumps(
                        {"threshold": latest.threshold, "baseline": latest.baseline},
                        indent=1,
                        default=str,
                    ),
                    limit=1500,
                    multiline=True,
                ),
                "json",
                word_wrap=True,
                theme="ansi_dark",
            )
            if latest
            else Text("no result yet", style="dim")
        )
        state = snapshot.state
        self.show_sql(state.sql, f"{state.kind} check of {state.target or '-'}")
        self.show_table(snapshot)

    def rows(self, snapshot: CheckDetail | None) -> list[TableRow]:
        if snapshot is None:
            return []
        now = self.console.clock()
        return [result_row(r, now) for r in snapshot.results]

    def action_state(self, action: str) -> bool | None:
        return self.check_action_state(action)

    def selected_check(self) -> Selected | None:
        if self.snapshot is None:
            return None
        state = self.snapshot.state
        return Selected(state.name, state.silenced_at(self.console.clock()))


def _series_values(detail: CheckDetail) -> list[float]:
    """The check's own sample series when it has one, else its result values."""
    if detail.samples:
        return [s.value for s in detail.samples]
    return [r.value for r in reversed(detail.results) if r.value is not None]


def check_info(detail: CheckDetail, now: datetime) -> Table:
    state = detail.state
    silenced = state.silenced_at(now)
    latest = detail.results[0] if detail.results else None
    silence = "-"
    if silenced and state.silenced_until is not None:
        silence = f"until {clock_time(state.silenced_until, now)} by {state.silenced_by}" + (
            f": {state.silence_reason}" if state.silence_reason else ""
        )
    rows: list[tuple[str, Fact, str, Fact]] = [
        (
            "check",
            literal(state.name, "bold", limit=LINE),
            "kind",
            f"{state.kind} of {state.target or '-'}",
        ),
        (
            "status",
            status_cell(str(state.status), silenced),
            "since",
            f"{age(state.status_since, now)} ({clock_time(state.status_since, now)})",
        ),
        (
            "value",
            number(state.last_value),
            "expected",
            band(latest.expected_low, latest.expected_high) if latest else "-",
        ),
        ("schedule", state.schedule or "-", "last run", age(state.last_result_at, now)),
        ("silenced", silence, "", ""),
    ]
    if latest and latest.message:
        rows.append(("message", literal(latest.message, "italic", limit=LINE), "", ""))
    return facts_table(rows)


def result_row(result: ResultRow, now: datetime) -> TableRow:
    status = str(result.status)
    message = first_line(result.message)
    cells = (
        clock_time(result.observed_at, now),
        status_cell(status, result.silenced),
        number(result.value),
        band(result.expected_low, result.expected_high),
        literal(message, "dim", limit=70),
    )
    sort_values = (
        result.observed_at.timestamp(),
        -result.status.severity,
        result.value,
        result.expected_low,
        message,
    )
    return TableRow(str(result.id), cells, sort_values, f"{status} {message}")
