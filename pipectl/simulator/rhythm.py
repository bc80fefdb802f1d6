"""How busy APES is at a given moment, and how many events that makes.

Activity follows office hours in UTC (busy 10:00-17:00, quiet nights) and is lower at the
weekend. `FEEDS` gives each table's rate at a weekday peak hour with `rate=1.0`; everything
else is that figure times `weight()`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime

# Share of the peak rate for each UTC hour of a weekday.
HOURLY: tuple[float, ...] = (
    0.12, 0.10, 0.10, 0.10, 0.11, 0.14, 0.22, 0.38,
    0.62, 0.85, 0.96, 1.00, 0.95, 0.97, 1.00, 0.98,
    0.92, 0.80, 0.62, 0.45, 0.34, 0.26, 0.19, 0.15,
)  # fmt: skip
WEEKEND = {5: 0.45, 6: 0.40}  # Saturday, Sunday


@dataclass(frozen=True)
class Feed:
    """A table the simulator appends to (or updates), and its peak-hour rate at rate=1.0."""

    table: str
    peak_per_hour: float
    description: str


FEEDS: dict[str, Feed] = {
    f.table: f
    for f in (
        Feed("rule_performance", 480, "one row per rule applied to a prompt"),
        Feed("user_feedback", 72, "ratings of improved prompts (~15 % of applications)"),
        Feed("prompt_improvement_sessions", 300, "one row per improvement request"),
        Feed("improvement_sessions", 40, "interactive sessions: active, then closed in place"),
        Feed("rule_combinations", 0, "running averages per rule set, from applications"),
        Feed("discovered_patterns", 10, "patterns found by the miners, occasionally"),
    )
}
FEED_NAMES: tuple[str, ...] = tuple(FEEDS)

# Redis operations per second at a weekday peak; nights keep a floor (background jobs).
REDIS_PEAK_OPS = 24.0
REDIS_FLOOR = 0.35


def weight(moment: datetime) -> float:
    """Share of the weekday peak rate at `moment` (a UTC datetime, aware or naive-UTC)."""
    hour = HOURLY[moment.hour]
    nxt = HOURLY[(moment.hour + 1) % 24]
    # Interpolate within the hour so that rates do not jump on the hour.
    value = hour + (nxt - hour) * (moment.minute / 60)
    return value * WEEKEND.get(moment.weekday(), 1.0)


def redis_weight(moment: datetime) -> float:
    """Cache traffic follows the same rhythm, but never falls below a floor."""
    return REDIS_FLOOR + (1 - REDIS_FLOOR) * weight(moment)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth for small means, normal approximation above)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
