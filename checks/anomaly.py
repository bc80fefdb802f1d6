"""The anomaly detector: which past points are comparable, and is this value unusual?

Pure functions, no I/O, so the maths is testable with property tests and benchmarkable
(`python -m bench.detector`).

- **Baseline points.** Only measured ('live') and reconstructed ('seed') samples that were not
  themselves flagged, strictly before the point under test. Backfills and manual runs never
  teach the baseline what normal looks like.
- **Seasonality.** With a seasonality, the baseline holds one value per past period (day or
  week): the median of that period's points within a tolerance of the same phase (same hour
  of day, same day of week, same hour of week, in the check's time zone). `hour_and_daytype`
  compares with the same hour on the same kind of day only (weekdays with weekdays,
  weekends with weekends): daily and weekly rhythm with a month of history, where
  `hour_of_week` would need `min_points` weeks. Points measured
  every minute are strongly correlated; one value per period keeps `min_points` an honest
  count of independent observations. Without seasonality every point counts.
- **Score.** Robust by default: the modified z-score 0.6745 * (x - median) / MAD, flagged
  beyond 3.5. The option `zscore` uses mean and standard deviation (3 sigma). A series with no
  spread (MAD = 0) falls back to the mean absolute deviation, then to 1 % of the level, so a
  constant series does not divide by zero and does not alert on a tiny wobble.
- **Materiality.** A change must also exceed `min_abs_change` and `min_rel_change` (a fraction
  of the expected level) to count. The band reported (expected low / high) is the statistical
  band widened by those floors, so a value inside the band is never flagged.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field

from pipectl.config import PositiveDuration, Strict
from pipectl.model import Sample


class AnomalyConfig(Strict):
    """A check's `anomaly` table: how its value is compared with its robust baseline."""

    method: Literal["mad", "zscore"] = "mad"
    threshold: float | None = Field(default=None, gt=0)
    seasonality: Literal[
        "none", "hour_of_day", "hour_and_daytype", "day_of_week", "hour_of_week"
    ] = "hour_and_daytype"
    min_points: int = Field(default=14, ge=3)
    history: PositiveDuration = timedelta(days=56)
    direction: Literal["both", "up", "down"] = "both"
    min_abs_change: float = Field(default=0.0, ge=0)
    min_rel_change: float = Field(default=0.0, ge=0)
    severity: Literal["warn", "fail"] = "warn"

    @property
    def limit(self) -> float:
        """The score beyond which a point is anomalous: 3.5 for MAD, 3 (sigma) for z-score."""
        if self.threshold is not None:
            return self.threshold
        return 3.5 if self.method == "mad" else 3.0


BASELINE_SOURCES = frozenset({"live", "seed"})
"""Sample sources a baseline may learn from."""

# Conversion of spread measures into a standard deviation for normal data.
_MAD_TO_SIGMA = 1.0 / 0.6745
_MEAN_AD_TO_SIGMA = math.sqrt(math.pi / 2)
# Scale used when the baseline has no spread at all: 1 % of its level, never zero.
_FLAT_RELATIVE = 0.01
_FLAT_ABSOLUTE = 1e-9

_PERIODS = {
    "hour_of_day": timedelta(days=1),
    "hour_and_daytype": timedelta(days=1),
    "day_of_week": timedelta(weeks=1),
    "hour_of_week": timedelta(weeks=1),
}


@dataclass(frozen=True)
class Detection:
    """What the detector concluded about one value against its baseline."""

    points: int
    needed: int
    center: float | None = None
    scale: float | None = None
    score: float | None = None
    low: float | None = None
    high: float | None = None
    flagged: bool = False

    @property
    def learning(self) -> bool:
        """Too few comparable points to judge: the result is `nodata`, never an alert."""
        return self.points < self.needed

    @property
    def direction(self) -> str | None:
        """'up' or 'down' for a flagged value, None otherwise."""
        if not self.flagged or self.score is None:
            return None
        return "up" if self.score > 0 else "down"


def tolerance(seasonality: str, window: timedelta) -> timedelta:
    """How far from the same phase a point may be and still count as comparable."""
    if seasonality == "day_of_week":
        return timedelta(hours=12)
    return min(max(window / 2, timedelta(minutes=5)), timedelta(hours=1))


def windows(
    now: datetime, config: AnomalyConfig, tz: ZoneInfo, window: timedelta
) -> list[tuple[datetime, datetime]]:
    """The time ranges holding comparable points, oldest first (what to read from storage)."""
    if config.seasonality == "none":
        return [(now - config.history, now)]
    slack = tolerance(config.seasonality, window)
    return [(target - slack, target + slack) for target in _targets(now, config, tz)]


def _targets(now: datetime, config: AnomalyConfig, tz: ZoneInfo) -> list[datetime]:
    """The same phase in each past period, by wall clock in `tz` (right across DST changes)."""
    period = _PERIODS[config.seasonality]
    local = now.astimezone(tz)
    oldest = now - config.history
    found: list[datetime] = []
    step = 1
    while True:
        target = local - step * period  # wall-clock arithmetic: same local hour
        if target < oldest:
            break
        if config.seasonality != "hour_and_daytype" or _weekend(target) == _weekend(local):
            found.append(target)
        step += 1
    found.reverse()
    return found


def _weekend(moment: datetime) -> bool:
    return moment.weekday() >= 5


def comparable(
    samples: Sequence[Sample],
    now: datetime,
    config: AnomalyConfig,
    tz: ZoneInfo,
    window: timedelta,
) -> list[float]:
    """Baseline values for a point at `now`: eligible samples, one value per period."""
    eligible = sorted(
        (s for s in samples if s.source in BASELINE_SOURCES and not s.anomaly and s.ts < now),
        key=lambda s: s.ts,
    )
    if config.seasonality == "none":
        oldest = now - config.history
        return [s.value for s in eligible if s.ts >= oldest]
    times = [s.ts for s in eligible]
    values: list[float] = []
    for low, high in windows(now, config, tz, window):
        start = bisect.bisect_left(times, low)
        end = bisect.bisect_right(times, high)
        period = [eligible[i].value for i in range(start, end)]
        if period:
            values.append(statistics.median(period))
    return values


def center_and_scale(baseline: Sequence[float], method: str) -> tuple[float, float]:
    """Expected level and the spread one unit of score stands for (a sigma estimate)."""
    if method == "zscore":
        center = statistics.fmean(baseline)
        scale = statistics.stdev(baseline) if len(baseline) > 1 else 0.0
        spread_fallback = statistics.fmean(abs(x - center) for x in baseline) * _MEAN_AD_TO_SIGMA
    else:
        center = statistics.median(baseline)
        scale = statistics.median(abs(x - center) for x in baseline) * _MAD_TO_SIGMA
        spread_fallback = statistics.fmean(abs(x - center) for x in baseline) * _MEAN_AD_TO_SIGMA
    if scale <= 0:
        scale = spread_fallback
    if scale <= 0:
        scale = max(abs(center) * _FLAT_RELATIVE, _FLAT_ABSOLUTE)
    return center, scale


def detect(value: float, baseline: Sequence[float], config: AnomalyConfig) -> Detection:
    """Judge one value against its baseline values (the point under test is not among them)."""
    if len(baseline) < config.min_points:
        return Detection(points=len(baseline), needed=config.min_points)
    center, scale = center_and_scale(baseline, config.method)
    half_width = max(
        config.limit * scale,
        config.min_abs_change,
        config.min_rel_change * abs(center),
    )
    low, high = center - half_width, center + half_width
    above = value > high and config.direction in ("both", "up")
    below = value < low and config.direction in ("both", "down")
    return Detection(
        points=len(baseline),
        needed=config.min_points,
        center=center,
        scale=scale,
        score=(value - center) / scale,
        low=low,
        high=high,
        flagged=above or below,
    )
