"""3 · Cache: hit ratios over time by source (Redis, app levels, PostgreSQL) and level, with the
target line."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from pipectl.console import data
from pipectl.console.actions import CACHE, bindings
from pipectl.console.data import CacheData
from pipectl.console.live import Change
from pipectl.console.screens.base import DataScreen, TimeWindow
from pipectl.console.widgets.chart import LevelLines, RatioChart, RatioSeries
from pipectl.console.widgets.tiles import node_id
from pipectl.durations import format_duration
from pipectl.format import STATUS_STYLE, percent
from pipectl.safetext import LINE, literal
from pipectl.store.base import Conn
from pipectl.store.console import CacheSeries

SOURCE_NAMES = {"redis": "Redis", "app": "App", "postgres": "PostgreSQL"}


class CachePanel(Vertical):
    """One cache check: title with the reading now, the chart, the levels."""

    def __init__(self, series: CacheSeries, snapshot: CacheData, *, id: str) -> None:
        super().__init__(id=id, classes="cache-panel")
        self._first = (series, snapshot)

    def on_mount(self) -> None:
        self.show(*self._first)

    def compose(self) -> ComposeResult:
        yield RatioChart(classes="chart")
        yield LevelLines(classes="levels")

    def show(self, series: CacheSeries, snapshot: CacheData) -> None:
        ratio = series.latest.ratio if series.latest else None
        state = "nodata"
        if ratio is not None:
            state = (
                "ok"
                if ratio >= series.warn_below
                else "warn"
                if ratio >= series.fail_below
                else "fail"
            )
        source = SOURCE_NAMES.get(series.source, series.source)
        self.border_title = literal(f"{source} · {series.check}", limit=LINE)
        self.border_subtitle = (
            f"now {percent(ratio)} · target ≥{percent(series.warn_below, 0)}"
            f" · fail <{percent(series.fail_below, 0)}"
        )
        for name in ("ok", "warn", "fail", "nodata"):
            self.set_class(name == state, f"-{name}")
        chart = chart_series(series, snapshot)
        self.query_one(RatioChart).series = chart
        levels = self.query_one(LevelLines)
        levels.display = bool(chart.levels)
        levels.styles.height = len(chart.levels) or 1
        levels.series = chart


def chart_series(series: CacheSeries, snapshot: CacheData) -> RatioSeries:
    """The chart's view of one cache check: its ratios, and each level's ratios and latest."""
    names = sorted({lv.level for p in series.points for lv in p.levels})
    latest = {lv.level: lv for lv in (series.latest.levels if series.latest else ())}
    levels = tuple(
        (
            name,
            tuple(
                (p.at, next((lv.ratio for lv in p.levels if lv.level == name), None))
                for p in series.points
            ),
            latest[name].ratio if name in latest else None,
            latest[name].lookups if name in latest else 0.0,
        )
        for name in names
    )
    return RatioSeries(
        snapshot.since,
        snapshot.until,
        snapshot.bucket,
        tuple((p.at, p.ratio) for p in series.points),
        series.warn_below,
        series.fail_below,
        levels,
    )


class CacheScreen(TimeWindow, DataScreen[CacheData]):
    SCOPE = CACHE
    BINDINGS: ClassVar[list[BindingType]] = bindings(CACHE)  # type: ignore[assignment]
    INTERESTS = frozenset({"check_results", "checks"})

    def compose_body(self) -> ComposeResult:
        yield Static(id="window")
        yield VerticalScroll(id="panels")
        yield Static("", id="empty")

    def wants(self, change: Change) -> bool:
        """A result of a cache check, or any change of the checks' definitions or state."""
        if change.table == "checks":
            return True
        shown = {s.check for s in self.snapshot.series} if self.snapshot else set()
        return change.table == "check_results" and (change.subject in shown or not shown)

    async def fetch(self, conn: Conn) -> CacheData:
        return await data.cache(conn, self.console.clock(), self.window)

    def show(self, snapshot: CacheData) -> None:
        self.query_one("#window", Static).update(
            Text.assemble(
                ("Hit ratios ", "bold"),
                (f"over the last {format_duration(self.window)}", ""),
                ("  ·  w: change window · bars: ", "dim"),
                ("ok", STATUS_STYLE["ok"]),
                (" / ", "dim"),
                ("below target", STATUS_STYLE["warn"]),
                (" / ", "dim"),
                ("below fail", STATUS_STYLE["fail"]),
                ("  ╌ target", "dim"),
            )
        )
        panels = self.query_one("#panels", VerticalScroll)
        wanted = {node_id("cache", s.check) for s in snapshot.series}
        for child in list(panels.children):
            if child.id not in wanted:
                child.remove()
        for series in snapshot.series:
            panel_id = node_id("cache", series.check)
            found = panels.query(f"#{panel_id}")
            panel = found.first(CachePanel) if found else None
            if panel is None:
                panels.mount(CachePanel(series, snapshot, id=panel_id))
            else:
                panel.show(series, snapshot)
        empty = self.query_one("#empty", Static)
        empty.display = not snapshot.series
        empty.update(
            Text(
                'No cache checks published: add [[checks]] of kind "cache" (source redis, app '
                "or postgres) to the agent's config.",
                style="dim",
            )
        )

    def action_window(self) -> None:
        self.next_window()
        self.refetch()
