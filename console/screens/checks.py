"""2 · Checks: status, value, the baseline band and a trend per check; and each check's detail
(history, threshold, the SQL it runs, silence state)."""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

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
from pipectl.console.widgets.chart import Threshold, TimeChart, TimeSeries
from pipectl.console.widgets.facts import Fact, facts_table
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.durations import DurationError, parse_duration
from pipectl.format import (
    STATUS_MARK,
    STATUS_STYLE,
    age,
    band,
    clock_time,
    number,
    seconds,
    spark,
)
from pipectl.model import CheckStatus
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
        now = self.console.clock()
        self.query_one("#info", Static).update(check_info(snapshot, now))
        series = time_series(snapshot, now)
        self.query_one("#spark-label", Static).update(chart_label(series, snapshot))
        self.query_one("#chart", TimeChart).series = series
        threshold = self.query_one("#threshold", Static)
        threshold.border_title = "Judged against"
        threshold.update(judged_against(snapshot))
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


def time_series(detail: CheckDetail, now: datetime) -> TimeSeries:
    """The chart of a check: its own sample series when it has one (else its result values)
    over the time its recent results cover, the band each result judged with, its
    thresholds, and the results that were not ok as anomalies."""
    results = sorted(detail.results, key=lambda r: r.observed_at)
    since = results[0].observed_at if results else now - timedelta(hours=1)
    if detail.samples:
        since = min(since, max(detail.samples[0].ts, now - timedelta(hours=2)))
    since = min(since, now - timedelta(minutes=10))
    if detail.samples:
        points = tuple((s.ts, s.value) for s in detail.samples if s.ts >= since)
    else:
        points = tuple((r.observed_at, r.value) for r in results if r.value is not None)
    band = tuple((r.observed_at, r.expected_low, r.expected_high) for r in results)
    anomalies = tuple(
        (r.observed_at, r.value)
        for r in results
        if r.value is not None and r.status in (CheckStatus.WARN, CheckStatus.FAIL)
    )
    latest = detail.latest
    return TimeSeries(
        since, now, points, band, thresholds_of(latest.threshold if latest else {}), anomalies
    )


THRESHOLD_WORDS = re.compile(r"^(warn|fail|error)_(above|below|after|over|under)$")


def thresholds_of(threshold: Mapping[str, Any]) -> tuple[Threshold, ...]:
    """The numeric limits a result names (warn_above, fail_below, ...), as chart lines."""
    found = []
    for key, value in threshold.items():
        match = THRESHOLD_WORDS.match(str(key))
        if match and isinstance(value, int | float) and not isinstance(value, bool):
            level = match.group(1)
            style = "yellow" if level == "warn" else "red"
            found.append(Threshold(_words(str(key)), float(value), style))
    return tuple(found)


def chart_label(series: TimeSeries, detail: CheckDetail) -> Text:
    label = Text.assemble(("value ", "bold"))
    source = "samples" if detail.samples else "results"
    label.append(f"{len(series.points)} {source} · ", "dim")
    label.append("░", "green")
    label.append(" expected  ", "dim")
    label.append("┄", "yellow")
    label.append(" threshold  ", "dim")
    label.append("◆", "bold red")
    label.append(" not ok", "dim")
    return label


def _words(key: str) -> str:
    return key.replace("_", " ")


def judged_against(detail: CheckDetail) -> Text | Table:
    """The latest result's threshold and baseline as a table of words, never a JSON dump:
    scalars as they are, lists and objects summarised (their keys or their length)."""
    latest = detail.latest
    if latest is None:
        return Text("no result yet", style="dim")
    table = Table(box=None, show_header=False, pad_edge=False, expand=True)
    table.add_column("what", style="dim", no_wrap=True)
    table.add_column("value", ratio=1)
    for key, value in latest.threshold.items():
        table.add_row(literal(_words(str(key)), limit=CELL), _value_text(value))
    result = detail.results[0] if detail.results else None
    if result is not None and (result.expected_low is not None or result.expected_high is not None):
        table.add_row("expected band", band(result.expected_low, result.expected_high))
    for key, value in latest.baseline.items():
        table.add_row(literal(f"baseline {_words(str(key))}", limit=CELL), _value_text(value))
    if latest.duration_ms is not None:
        table.add_row(
            "probe took", f"{latest.duration_ms:.0f} ms ({visible(latest.trigger, limit=CELL)})"
        )
    return table


def _value_text(value: Any) -> Text:
    if isinstance(value, dict):
        keys = ", ".join(str(k) for k in value)
        return literal(f"{len(value)} entries: {keys}" if value else "none", "dim", limit=LINE)
    if isinstance(value, list):
        return literal(f"{len(value)} values", "dim")
    if isinstance(value, float):
        return Text(number(value))
    return literal(str(value), limit=LINE)


def cadence(detail: CheckDetail) -> float | None:
    """The median gap between its recent results, in seconds: the schedule in force,
    whatever the published one says (another agent, an older config)."""
    times = sorted(r.observed_at for r in detail.results)
    gaps = sorted((b - a).total_seconds() for a, b in itertools.pairwise(times))
    gaps = [g for g in gaps if g > 0]
    if len(gaps) < 3:
        return None
    return statistics.median(gaps)


def schedule_text(detail: CheckDetail) -> Text:
    """The published schedule and, when results arrive at another pace, the one in force."""
    published = detail.state.schedule or "-"
    text = literal(published, limit=CELL)
    observed = cadence(detail)
    if observed is None:
        return text
    try:
        nominal = parse_duration(published.removeprefix("every ")).total_seconds()
    except DurationError:
        nominal = None
    if nominal is None or abs(observed - nominal) > 0.25 * nominal:
        text.append(f" · results every {seconds(observed)}", "bold yellow")
    return text


def status_explained(detail: CheckDetail, now: datetime) -> Text:
    """Why the status is what it is, where it could look odd: silenced, or held by
    hysteresis, or how many results in a row put it there."""
    state = detail.state
    status = str(state.status)
    text = status_cell(status, False)
    if state.silenced_at(now) and state.silenced_until is not None:
        text.append(
            f" (silenced until {clock_time(state.silenced_until, now)}"
            f" by {visible(state.silenced_by or '-', limit=CELL)})",
            "dim",
        )
    results = detail.results
    if not results:
        return text
    latest = results[0]
    in_row = 0
    for result in results:
        if result.status != latest.status:
            break
        in_row += 1
    hysteresis = state.definition.get("hysteresis") if isinstance(state.definition, dict) else None
    if latest.status != state.status:
        needed = f" of {hysteresis}" if isinstance(hysteresis, int) else ""
        text.append(
            f" · held: the last {in_row}{needed} results were {latest.status}"
            " (hysteresis: it changes after enough in a row)",
            "yellow",
        )
    elif state.status in (CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.ERROR):
        limit = band(latest.expected_low, latest.expected_high)
        text.append(f" · {_times(in_row)} in a row outside {limit}", "dim")
    return text


def _times(count: int) -> str:
    return "1 result" if count == 1 else f"{count} results"


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
            status_explained(detail, now),
            "since",
            f"{age(state.status_since, now)} ({clock_time(state.status_since, now)})",
        ),
        (
            "value",
            number(state.last_value),
            "expected",
            band(latest.expected_low, latest.expected_high) if latest else "-",
        ),
        ("schedule", schedule_text(detail), "last run", age(state.last_result_at, now)),
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
