"""A hit-ratio chart: bars over time, with the target drawn as a line across them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from pipectl.format import SPARK_BARS, spark

GUTTER = 6


@dataclass(frozen=True)
class RatioSeries:
    """What the chart draws: (time, ratio) points in [since, until), and the two floors."""

    since: datetime
    until: datetime
    points: tuple[tuple[datetime, float | None], ...]
    warn_below: float
    fail_below: float


def columns_of(series: RatioSeries, width: int) -> list[float | None]:
    """The mean ratio of the points falling in each of `width` equal slices of the window."""
    span = (series.until - series.since).total_seconds()
    sums = [0.0] * width
    counts = [0] * width
    if width <= 0 or span <= 0:
        return []
    for at, ratio in series.points:
        if ratio is None:
            continue
        index = int((at - series.since).total_seconds() / span * width)
        if 0 <= index < width:
            sums[index] += ratio
            counts[index] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def floor_of(series: RatioSeries) -> float:
    """The chart's bottom: a little under the lowest value or fail floor, to a tenth."""
    values = [r for _, r in series.points if r is not None]
    low = min([*values, series.fail_below])
    return max(0.0, math.floor((low - 0.05) * 10) / 10)


class RatioChart(Widget):
    """Bars coloured by floor (ok / warn / fail), target line in between; NO_COLOR safe since
    the target is drawn with its own character."""

    series: reactive[RatioSeries | None] = reactive(None)

    def render(self) -> Text:
        series = self.series
        height = max(1, self.size.height)
        width = max(0, self.size.width - GUTTER)
        if series is None or not any(r is not None for _, r in series.points):
            return Text("no readings in this window", style="dim")
        bottom = floor_of(series)
        columns = columns_of(series, width)
        eighths = height * 8

        def level(value: float) -> int:
            return round((min(max(value, bottom), 1.0) - bottom) / (1.0 - bottom) * eighths)

        target_row = min(height - 1, level(series.warn_below) // 8)
        lines = []
        for row in range(height - 1, -1, -1):
            line = Text()
            line.append(_gutter(row, height, bottom, target_row, series.warn_below), "dim")
            for value in columns:
                line.append(*_cell(value, row, level, target_row, series))
            lines.append(line)
        return Text("\n").join(lines)


def _gutter(row: int, height: int, bottom: float, target_row: int, target: float) -> str:
    if row == target_row:
        return f"{target * 100:4.0f}%▸"
    if row == height - 1:
        return " 100% "
    if row == 0:
        return f"{bottom * 100:4.0f}% "
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
    style = (
        "green" if value >= series.warn_below else "yellow" if value >= series.fail_below else "red"
    )
    if filled >= 8:
        return ("█", style)
    if filled > 0:
        return (SPARK_BARS[filled - 1], style)
    return ("╌" if on_target else " ", "dim")


def sparkline(values: Sequence[float | None], width: int) -> str:
    """Level sparklines: a gap for buckets without lookups."""
    known = [v for v in values[-width:] if v is not None]
    if not known:
        return ""
    drawn = iter(spark(known, len(known), low=0.0))
    return "".join(next(drawn) if v is not None else " " for v in values[-width:])
