"""Hit-ratio charts: bars over time with the target drawn across them, and one line per cache
level on the same time axis."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from pipectl.format import SPARK_BARS, number, percent
from pipectl.safetext import visible

GUTTER = 12  # left: the scale, or the level's name
MARGIN = 17  # right: the latest reading, or a level's ratio and lookups ("100% of 1,234,567")

Points = tuple[tuple[datetime, float | None], ...]


@dataclass(frozen=True)
class RatioSeries:
    """What the chart draws: (time, ratio) points of `bucket`-wide buckets in [since, until),
    the two floors, and per level its own points and latest (ratio, lookups)."""

    since: datetime
    until: datetime
    bucket: timedelta
    points: Points
    warn_below: float
    fail_below: float
    levels: tuple[tuple[str, Points, float | None, float], ...] = ()


def columns_of(
    since: datetime, until: datetime, bucket: timedelta, points: Points, width: int
) -> list[float | None]:
    """The mean of the points in each of `width` equal slices of the window. A slice narrower
    than a bucket may hold no point: it shows its left neighbour's value, unless more than a
    bucket has passed since that point (a real gap stays a gap)."""
    span = (until - since).total_seconds()
    if width <= 0 or span <= 0:
        return []
    sums = [0.0] * width
    counts = [0] * width
    for at, ratio in points:
        index = int((at - since).total_seconds() / span * width)
        if ratio is not None and 0 <= index < width:
            sums[index] += ratio
            counts[index] += 1
    columns: list[float | None] = [s / c if c else None for s, c in zip(sums, counts, strict=True)]
    reach = math.ceil(bucket.total_seconds() / span * width)
    last: int | None = None
    for index, value in enumerate(columns):
        if value is not None:
            last = index
        elif last is not None and index - last < reach:
            columns[index] = columns[last]
    return columns


def floor_of(series: RatioSeries) -> float:
    """The chart's bottom: a little under the lowest value or fail floor, to a tenth."""
    values = [r for _, r in series.points if r is not None]
    low = min([*values, series.fail_below])
    return max(0.0, math.floor((low - 0.05) * 10) / 10)


def _state_style(value: float, series: RatioSeries) -> str:
    if value >= series.warn_below:
        return "green"
    return "yellow" if value >= series.fail_below else "red"


class RatioChart(Widget):
    """Bars coloured by floor (ok / warn / fail), the target line between them (drawn with its
    own character, so it reads without colour), the latest reading at the right."""

    series: reactive[RatioSeries | None] = reactive(None)

    def render(self) -> Text:
        series = self.series
        height = max(1, self.size.height)
        width = max(0, self.size.width - GUTTER - MARGIN)
        if series is None or not any(r is not None for _, r in series.points):
            return Text("no readings in this window", style="dim")
        bottom = floor_of(series)
        columns = columns_of(series.since, series.until, series.bucket, series.points, width)
        eighths = height * 8

        def level(value: float) -> int:
            return round((min(max(value, bottom), 1.0) - bottom) / (1.0 - bottom) * eighths)

        target_row = min(height - 1, level(series.warn_below) // 8)
        latest = next((v for v in reversed(columns) if v is not None), None)
        latest_row = min(height - 1, level(latest) // 8) if latest is not None else -1
        lines = []
        for row in range(height - 1, -1, -1):
            line = Text(no_wrap=True, overflow="crop")
            line.append(_gutter(row, height, bottom, target_row, series.warn_below), "dim")
            for value in columns:
                line.append(*_cell(value, row, level, target_row, series))
            if row == latest_row and latest is not None:
                line.append(f" ◂ {percent(latest)}", _state_style(latest, series))
            lines.append(line)
        return Text("\n").join(lines)


def _gutter(row: int, height: int, bottom: float, target_row: int, target: float) -> str:
    if row == target_row:
        return f"{target * 100:.0f}%▸".rjust(GUTTER)
    if row == height - 1:
        return "100% ".rjust(GUTTER)
    if row == 0:
        return f"{bottom * 100:.0f}% ".rjust(GUTTER)
    return " " * GUTTER


def _cell(
    value: float | None,
    row: int,
    level: Callable[[float], int],
    target_row: int,
    series: RatioSeries,
) -> tuple[str, str]:
    on_target = row == target_row
    if value is None:
        return ("╌" if on_target else " ", "dim")
    filled = level(value) - row * 8
    style = _state_style(value, series)
    if filled >= 8:
        return ("█", style)
    if filled > 0:
        return (SPARK_BARS[filled - 1], style)
    return ("╌" if on_target else " ", "dim")


class LevelLines(Widget):
    """One line per cache level, on the chart's time axis: its hit ratio (0 to 100 %) as bar
    heights, then its latest ratio and lookups."""

    series: reactive[RatioSeries | None] = reactive(None)

    def render(self) -> Text:
        series = self.series
        if series is None:
            return Text("")
        width = max(0, self.size.width - GUTTER - MARGIN)
        lines = []
        for name, points, ratio, lookups in series.levels:
            line = Text(no_wrap=True, overflow="crop")
            line.append(f"{level_label(name)} ", style="bold")
            columns = columns_of(series.since, series.until, series.bucket, points, width)
            line.append(bars(columns), "cyan")
            line.append(f" {percent(ratio, 0):>4} of {number(lookups)}"[:MARGIN], "dim")
            lines.append(line)
        return Text("\n").join(lines)


def level_label(name: str) -> str:
    """A level's name in the gutter: tables without their public schema, long ones cut,
    control characters escaped (level names are keys of a result's JSON)."""
    width = GUTTER - 1
    return visible(name.removeprefix("public."), limit=width).rjust(width)


def bars(values: Sequence[float | None]) -> str:
    """Ratios as bar heights on a fixed 0..1 scale (levels compare with each other)."""
    top = len(SPARK_BARS) - 1
    return "".join(
        " " if v is None else SPARK_BARS[min(top, max(0, int(v * len(SPARK_BARS))))] for v in values
    )
