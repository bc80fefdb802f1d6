"""Text forms shared by the CLI and the console: marks, colours, ages, numbers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pipectl.durations import humanize_age

# A mark per status so state reads without colour (NO_COLOR, screen readers, grep).
STATUS_MARK = {
    "ok": "✓",
    "running": "↻",
    "never": "·",
    "paused": "⏸",
    "skipped": "↷",
    "cancelled": "⊘",
    "held": "‖",
    "failed": "✗",
    "failing": "✗",
    "warn": "!",
    "fail": "✗",
    "error": "⚠",
    "nodata": "…",
    "queued": "…",
    "succeeded": "✓",
    "claimed": "↻",
    "rejected": "⊘",
}

STATUS_STYLE = {
    "ok": "green",
    "succeeded": "green",
    "running": "cyan",
    "queued": "cyan",
    "never": "dim",
    "nodata": "dim",
    "paused": "yellow",
    "skipped": "yellow",
    "cancelled": "yellow",
    "held": "yellow",
    "warn": "yellow",
    "failed": "red",
    "failing": "red",
    "fail": "red",
    "error": "magenta",
    "claimed": "cyan",
    "rejected": "yellow",
}


def status_text(status: str) -> str:
    return f"{STATUS_MARK.get(status, '?')} {status}"


def age(moment: datetime | None, now: datetime) -> str:
    """'42s ago' / 'in 3m' / '-'."""
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    if seconds >= 0:
        return f"{humanize_age(seconds)} ago"
    return f"in {humanize_age(-seconds)}"


def due(moment: datetime | None, now: datetime) -> str:
    """When something is next due: 'in 3m', or 'overdue 12m' when its time has passed."""
    if moment is None:
        return "-"
    late = (now - moment).total_seconds()
    return f"overdue {humanize_age(late)}" if late > 1 else f"in {humanize_age(max(0.0, -late))}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    return humanize_age(value)


def number(value: float | None) -> str:
    """Compact numbers for tables: 0.934, 1,204, 3.2e+06."""
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e9:
        return f"{int(value):,}"
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def band(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return "-"
    if high is None:
        return f"≥{number(low)}"
    if low is None:
        return f"≤{number(high)}"
    return f"{number(low)}..{number(high)}"


SPARK_BARS = "▁▂▃▄▅▆▇█"


def spark(values: Sequence[float], width: int, low: float | None = None) -> str:
    """A one-line bar chart of the last `width` values; `low` pins the bottom (0 for ratios).
    Equal values draw a flat mid-height line, no values draw nothing."""
    points = list(values)[-width:] if width > 0 else []
    if not points:
        return ""
    bottom = min(points) if low is None else min(low, min(points))
    top = max(points)
    if top == bottom:
        return SPARK_BARS[len(SPARK_BARS) // 2 - 1] * len(points)
    scale = (len(SPARK_BARS) - 1) / (top - bottom)
    return "".join(SPARK_BARS[round((v - bottom) * scale)] for v in points)


def percent(ratio: float | None, digits: int = 1) -> str:
    """0.9312 -> '93.1%'; '-' when unknown."""
    return "-" if ratio is None else f"{ratio * 100:.{digits}f}%"


def clock_time(moment: datetime | None, now: datetime) -> str:
    """Local wall time: '14:03:07' today, 'Mar 02 14:03' on another day."""
    if moment is None:
        return "-"
    local = moment.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%b %d %H:%M")
