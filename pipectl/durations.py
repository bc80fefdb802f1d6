"""Human durations ("90s", "5m", "1h30m", "2 hours") to and from timedelta.

The one parser of durations for the config, the CLI and the console. It refuses what no
option can mean: negative, not-a-number, infinite, and anything beyond MAX_DURATION (100
years), so every duration it returns can be added to now() in Python and in PostgreSQL, fits
asyncio and threading timeouts, and formats back. Options with a tighter limit of their own
say so with `bounded` (PostgreSQL's timeouts: POSTGRES_TIMEOUT_MAX).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

# Far beyond any useful schedule, window or retention, far within timedelta (999,999,999
# days), datetime (year 9999), PostgreSQL intervals and threading.TIMEOUT_MAX (292 years).
MAX_DURATION = timedelta(days=36_500)
# statement_timeout and lock_timeout are int milliseconds in PostgreSQL (about 24.8 days).
POSTGRES_TIMEOUT_MAX = timedelta(milliseconds=2**31 - 1)

_UNITS: dict[str, float] = {
    "ms": 0.001,
    "msec": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}

_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


class DurationError(ValueError):
    """A duration string that cannot be read; the message says why."""


def parse_duration(text: str, *, maximum: timedelta = MAX_DURATION) -> timedelta:
    """Read "5m", "1h30m", "2 hours", "500ms" or "1d 12h"; reject anything else, and anything
    longer than `maximum`, with a reason."""
    if not isinstance(text, str):
        raise DurationError(f"expected a duration string such as '30s' or '5m', got {text!r}")
    source = text.strip()
    if not source:
        raise DurationError("empty duration; write one such as '30s', '5m' or '1h'")
    if source.startswith("-"):
        raise DurationError(f"duration {_shown(text)} is negative; durations are never negative")
    if source.lower().lstrip("+").startswith(("nan", "inf")):
        raise DurationError(f"duration {_shown(text)} is not a number; write one such as '30s'")
    total = 0.0
    pos = 0
    while pos < len(source):
        match = _PART.match(source, pos)
        if match is None:
            raise DurationError(
                f"cannot read duration {_shown(text)}: every number needs a unit"
                " (ms, s, m, h, d, w)"
            )
        number, unit = match.groups()
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise DurationError(
                f"unknown unit {_shown(unit)} in duration {_shown(text)}; use ms, s, m, h, d or w"
            )
        total += float(number) * factor  # inf for thousands of digits, caught below
        pos = match.end()
    if not math.isfinite(total) or total > maximum.total_seconds():
        raise DurationError(
            f"duration {_shown(text)} is too long; at most {format_duration(maximum)}"
        )
    return timedelta(seconds=total)


def bounded(
    value: timedelta, *, minimum: timedelta | None = None, maximum: timedelta | None = None
) -> timedelta:
    """`value` when within [minimum, maximum], else a DurationError saying which bound."""
    if minimum is not None and value < minimum:
        raise DurationError(f"must be at least {format_duration(minimum)}")
    if maximum is not None and value > maximum:
        raise DurationError(f"must be at most {format_duration(maximum)}")
    return value


def _shown(text: str, limit: int = 40) -> str:
    """A duration as quoted in a message: repr, cut short (it may be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 90s -> '1m30s', 0.5s -> '500ms'."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    sign = "-" if millis < 0 else ""
    millis = abs(millis)
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return sign + "".join(parts)


def humanize_age(seconds: float | None) -> str:
    """A compact age for tables: '42s', '5m', '3h', '2d'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s < 60:
        text = f"{s:.0f}s"
    elif s < 3600:
        text = f"{s / 60:.0f}m"
    elif s < 86400:
        text = f"{s / 3600:.1f}h".replace(".0h", "h")
    else:
        text = f"{s / 86400:.1f}d".replace(".0d", "d")
    return ("-" if seconds < 0 else "") + text
