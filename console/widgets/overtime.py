"""What the wide Overview draws over the last hours: a run strip per step (Gantt-like), each
cache's hit ratio per bucket, and how fresh each input is. Pure functions of a snapshot and a
width, returning Rich Text; the screen puts them in Statics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from pipectl.console.widgets.chart import columns_of, time_axis
from pipectl.format import SPARK_BARS, STATUS_MARK, STATUS_STYLE, percent, seconds
from pipectl.safetext import literal, visible
from pipectl.store import CheckRow
from pipectl.store.console import CacheSeries, RunSpan

NAME_WIDTH = 27  # the step or check name in front of each strip

# One character per column of the strip: what the worst run in it ended as.
STRIP_MARK = {"failed": "█", "cancelled": "▓", "skipped": "·", "succeeded": "▌", "running": "▶"}
STRIP_STYLE = {
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "yellow",
    "succeeded": "green",
    "running": "cyan",
}
STRIP_RANK = {"succeeded": 1, "skipped": 2, "cancelled": 3, "running": 4, "failed": 5}


def run_strip(spans: Sequence[RunSpan], since: datetime, until: datetime, width: int) -> Text:
    """One character per slice of [since, until): the worst outcome among the runs that started
    in it (a run still going spans to the right edge)."""
    span = (until - since).total_seconds()
    worst: list[str | None] = [None] * max(0, width)
    if width <= 0 or span <= 0:
        return Text("")
    for run in spans:
        first = int((run.start - since).total_seconds() / span * width)
        status = "running" if run.status in ("queued", "running") else run.status
        last = width - 1 if status == "running" else first
        if run.end is not None and status != "running":
            last = int((run.end - since).total_seconds() / span * width)
        for column in range(max(0, first), min(width - 1, last) + 1):
            current = worst[column]
            if current is None or STRIP_RANK.get(status, 0) > STRIP_RANK.get(current, 0):
                worst[column] = status
    text = Text(no_wrap=True, overflow="crop")
    for shown in worst:
        if shown is None:
            text.append(" ")
        else:
            text.append(STRIP_MARK.get(shown, "?"), STRIP_STYLE.get(shown, ""))
    return text


def run_strips(
    spans: dict[str, tuple[RunSpan, ...]], since: datetime, until: datetime, width: int
) -> Text:
    """Every step's strip under each other, a time axis below and what the marks mean."""
    columns = max(0, width - NAME_WIDTH - 1)
    lines = []
    for step, runs in spans.items():
        line = literal(visible(step, limit=NAME_WIDTH - 1).ljust(NAME_WIDTH), "bold")
        line.append(run_strip(runs, since, until, columns))
        lines.append(line)
    if not lines:
        return Text("no steps", style="dim")
    lines.append(time_axis(since, until, columns, NAME_WIDTH))
    legend = Text(" " * NAME_WIDTH, no_wrap=True, overflow="crop")
    for status in ("succeeded", "failed", "skipped", "cancelled", "running"):
        legend.append(STRIP_MARK[status], STRIP_STYLE[status])
        legend.append(f" {status}  ", "dim")
    lines.append(legend)
    return Text("\n").join(lines)


def _floor_style(value: float, series: CacheSeries) -> str:
    if value >= series.warn_below:
        return "green"
    return "yellow" if value >= series.fail_below else "red"


def cache_strips(
    history: Sequence[CacheSeries],
    names: dict[str, str],
    since: datetime,
    until: datetime,
    bucket: timedelta,
    width: int,
) -> Text:
    """Each cache's hit ratio per bucket as bar heights between its fail floor and 100 %,
    coloured by floor, with each level's ratio under it; the latest reading at the right."""
    columns = max(0, width - NAME_WIDTH - 8)
    lines = []
    for series in history:
        label = names.get(series.check, series.check)
        line = literal(visible(label, limit=NAME_WIDTH - 1).ljust(NAME_WIDTH), "bold")
        points = tuple((p.at, p.ratio) for p in series.points)
        bottom = max(0.0, min(series.fail_below, 1.0) - 0.1)
        for value in columns_of(since, until, bucket, points, columns):
            if value is None:
                line.append(" ")
                continue
            height = (min(max(value, bottom), 1.0) - bottom) / (1.0 - bottom or 1.0)
            index = min(len(SPARK_BARS) - 1, max(0, round(height * (len(SPARK_BARS) - 1))))
            line.append(SPARK_BARS[index], _floor_style(value, series))
        latest = series.latest.ratio if series.latest else None
        line.append(f" {percent(latest, 0):>5}", "bold")
        lines.append(line)
        levels: dict[str, list[tuple[datetime, float | None]]] = {}
        for point in series.points:
            for level in point.levels:
                levels.setdefault(level.level, []).append((point.at, level.ratio))
        for level_name, level_points in sorted(levels.items()):
            row = literal(
                ("  " + visible(level_name, limit=NAME_WIDTH - 3)).ljust(NAME_WIDTH), "dim"
            )
            for value in columns_of(since, until, bucket, tuple(level_points), columns):
                if value is None:
                    row.append(" ")
                else:
                    index = min(len(SPARK_BARS) - 1, max(0, int(value * len(SPARK_BARS))))
                    row.append(SPARK_BARS[index], "cyan")
            lines.append(row)
    if not lines:
        return Text("no cache checks", style="dim")
    lines.append(time_axis(since, until, columns, NAME_WIDTH))
    return Text("\n").join(lines)


def freshness_lines(checks: Sequence[CheckRow], now: datetime, width: int) -> Text:
    """How old each watched input's newest row is against its limit, worst first."""
    fresh = [c for c in checks if c.kind == "freshness"]
    if not fresh:
        return Text("no freshness checks", style="dim")
    fresh.sort(key=lambda c: (-c.status.severity, c.name))
    bar_width = max(4, min(20, width - NAME_WIDTH - 30))
    lines = []
    for check in fresh:
        status = str(check.status)
        target = (check.target or check.name).removeprefix("public.")
        line = Text(f"{STATUS_MARK.get(status, '?')} ", STATUS_STYLE.get(status, ""))
        line.append(visible(target, limit=NAME_WIDTH - 3).ljust(NAME_WIDTH - 2), "bold")
        limit = check.expected_high
        if check.value is None:
            line.append("no reading", "dim")
        else:
            line.append(f"{seconds(check.value):>6} old", STATUS_STYLE.get(status, ""))
            if limit:
                filled = min(bar_width, round(check.value / limit * bar_width))
                line.append(" ▕")
                line.append("█" * filled, STATUS_STYLE.get(status, ""))
                line.append(" " * (bar_width - filled) + "▏")
                line.append(f" limit {seconds(limit)}", "dim")
        if check.silenced(now):
            line.append(" (silenced)", "dim")
        lines.append(line)
    return Text("\n").join(lines)


Draw = Callable[[int], Text]


class Drawn(Widget):
    """Text drawn for the width the widget gets (strips fill whatever room there is)."""

    DEFAULT_CSS = """
    Drawn {
        height: auto;
    }
    """

    draw: reactive[Draw | None] = reactive(None, layout=True)

    def render(self) -> Text:
        draw = self.draw
        width = self.content_size.width or self.size.width
        return draw(width) if draw is not None and width > 0 else Text("")
