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
    own character, so it reads without colour), the latest reading at the right, a clock axis
    under them."""

    series: reactive[RatioSeries | None] = reactive(None)

    def render(self) -> Text:
        series = self.series
        # The last row is the clock axis once there is room for bars above it.
        axis = self.size.height >= 3
        height = max(1, self.size.height - (1 if axis else 0))
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
        if axis:
            lines.append(time_axis(series.since, series.until, width, GUTTER))
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


# ------------------------------------------------------------------------------ time series

# A line one fifth of a row thick: the scan line nearest the value, top to bottom.
SCAN_LINES = "⎺⎻─⎼⎽"
TIME_GUTTER = 9  # left: the value scale
TIME_MARGIN = 16  # right: the latest value, threshold names


@dataclass(frozen=True)
class Threshold:
    label: str
    value: float
    style: str


@dataclass(frozen=True)
class TimeSeries:
    """A check's values over [since, until): the line, the expected band behind it (as each
    result judged it), thresholds as lines, anomalies (results not ok) marked."""

    since: datetime
    until: datetime
    points: tuple[tuple[datetime, float], ...]
    band: tuple[tuple[datetime, float | None, float | None], ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    anomalies: tuple[tuple[datetime, float], ...] = ()


def time_axis(since: datetime, until: datetime, width: int, indent: int) -> Text:
    """Clock labels (local time) under `width` columns covering [since, until), as many as
    fit, on round steps (5 minutes to a day)."""
    span = (until - since).total_seconds()
    if width <= 0 or span <= 0:
        return Text(" " * indent)
    line = [" "] * width
    steps = (300, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
    step = next((s for s in steps if span / s * 8 <= width), steps[-1])
    first = math.floor(since.timestamp() / step + 1) * step
    tick = first
    while tick < until.timestamp():
        column = int((tick - since.timestamp()) / span * width)
        # Local wall time, as clock_time shows times everywhere else.
        moment = (since + timedelta(seconds=tick - since.timestamp())).astimezone()
        label = f"╵{moment:%H:%M}" if step < 86400 else f"╵{moment:%d %b}"
        if column + len(label) <= width and all(c == " " for c in line[column : column + 7]):
            line[column : column + len(label)] = label
        tick += step
    return Text(" " * indent + "".join(line), style="dim", no_wrap=True, overflow="crop")


def _slices(
    since: datetime, until: datetime, width: int, points: Sequence[tuple[datetime, float]]
) -> list[float | None]:
    span = (until - since).total_seconds()
    sums = [0.0] * width
    counts = [0] * width
    for at, value in points:
        index = int((at - since).total_seconds() / span * width)
        if 0 <= index < width:
            sums[index] += value
            counts[index] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def _band_columns(series: TimeSeries, width: int) -> list[tuple[float | None, float | None]]:
    """Each column's band: the one the latest result at or before it judged with."""
    span = (series.until - series.since).total_seconds()
    out: list[tuple[float | None, float | None]] = []
    ordered = sorted(series.band)
    index = 0
    current: tuple[float | None, float | None] = (None, None)
    for column in range(width):
        end = series.since + timedelta(seconds=span * (column + 1) / width)
        while index < len(ordered) and ordered[index][0] < end:
            current = (ordered[index][1], ordered[index][2])
            index += 1
        out.append(current if index else (None, None))
    return out


def scale_of(series: TimeSeries) -> tuple[float, float]:
    """The value range drawn: the values, the band and the thresholds, a little padded."""
    values = [v for _, v in series.points]
    values += [v for _, lo, hi in series.band for v in (lo, hi) if v is not None]
    values += [t.value for t in series.thresholds]
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    return low - pad, high + pad


class TimeChart(Widget):
    """A line over time with a clock axis: the expected band shaded behind it (░), thresholds
    as dashed lines with their names at the right, anomalies as ◆. Marks carry the meaning
    without colour."""

    series: reactive[TimeSeries | None] = reactive(None)

    def render(self) -> Text:
        series = self.series
        height = max(2, self.size.height) - 1  # the last row is the time axis
        width = max(0, self.size.width - TIME_GUTTER - TIME_MARGIN)
        if series is None or not series.points or width <= 0:
            return Text("no values in this window", style="dim")
        low, high = scale_of(series)
        rows = height * len(SCAN_LINES)

        def position(value: float) -> int:
            """Sub-row from the top (0) to the bottom (rows - 1)."""
            fraction = (high - value) / (high - low)
            return min(rows - 1, max(0, int(fraction * rows)))

        line = _slices(series.since, series.until, width, series.points)
        marked = _slices(series.since, series.until, width, series.anomalies)
        bands = _band_columns(series, width)
        threshold_rows = {position(t.value) // len(SCAN_LINES): t for t in series.thresholds}
        latest = series.points[-1][1] if series.points else None
        latest_row = position(latest) // len(SCAN_LINES) if latest is not None else -1
        out = []
        for row in range(height):
            text = Text(no_wrap=True, overflow="crop")
            text.append(_scale_label(row, height, low, high).rjust(TIME_GUTTER - 1) + " ", "dim")
            threshold = threshold_rows.get(row)
            previous: float | None = None
            for column in range(width):
                value = line[column]
                cell = _time_cell(row, value, marked[column], bands[column], threshold, position)
                if _joins(row, previous, value, position) and cell[0] in " ░┄":
                    cell = ("│", "cyan")
                text.append(*cell)
                if value is not None:
                    previous = value
            if row == latest_row and latest is not None:
                text.append(f" ◂ {number(latest)}"[:TIME_MARGIN], "bold")
            elif threshold is not None:
                text.append(
                    f" {visible(threshold.label)} {number(threshold.value)}"[:TIME_MARGIN],
                    threshold.style,
                )
            out.append(text)
        out.append(time_axis(series.since, series.until, width, TIME_GUTTER))
        return Text("\n").join(out)


def _joins(
    row: int, previous: float | None, value: float | None, position: Callable[[float], int]
) -> bool:
    """Whether the line's vertical stroke from the previous value to this one crosses `row`
    (so that a jump reads as a line, not as scattered dots)."""
    if previous is None or value is None:
        return False
    lines = len(SCAN_LINES)
    a, b = sorted((position(previous) // lines, position(value) // lines))
    return a < row < b


def _scale_label(row: int, height: int, low: float, high: float) -> str:
    if row == 0:
        return number(high)
    if row == height - 1:
        return number(low)
    return ""


def _time_cell(
    row: int,
    value: float | None,
    anomaly: float | None,
    band: tuple[float | None, float | None],
    threshold: Threshold | None,
    position: Callable[[float], int],
) -> tuple[str, str]:
    lines = len(SCAN_LINES)
    if anomaly is not None and position(anomaly) // lines == row:
        return ("◆", "bold red")
    if value is not None and position(value) // lines == row:
        return (SCAN_LINES[position(value) % lines], "bold cyan")
    if threshold is not None:
        return ("┄", threshold.style)
    low, high = band
    if low is not None or high is not None:
        top = position(high) // lines if high is not None else 0
        bottom = position(low) // lines if low is not None else 10**6
        if top <= row <= bottom:
            return ("░", "green")
    return (" ", "")
