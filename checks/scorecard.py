"""The data-quality scorecard: per watched table, four ratios against the 99.9 % target.

- completeness: share of required values present (not_null rules);
- accuracy: share of rows passing range and accepted-value rules;
- consistency: share of rows passing references, json_keys, unique and custom rules;
- timeliness: share of freshness observations within the SLA (`warn_after`) over the window.

A rule's `dimension` overrides where it counts. The quality ratios come from each quality
check's newest result (its own `window`), the timeliness ratio from the freshness samples of the
scorecard window. Nothing is probed here: the console and the metrics exporter read what the
checks already stored; `pipectl check` passes its fresh results in as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipectl import store
from pipectl.checks.freshness import FreshnessCheck
from pipectl.checks.quality import QualityCheck, dimension
from pipectl.config import Config
from pipectl.model import CheckResult
from pipectl.store.base import Conn

TARGET = 0.999
DIMENSIONS = ("completeness", "accuracy", "consistency", "timeliness")


@dataclass(frozen=True)
class Tally:
    """Passing and total observations of one dimension."""

    passed: float = 0.0
    total: float = 0.0

    def plus(self, passed: float, total: float) -> Tally:
        return Tally(self.passed + passed, self.total + total)

    @property
    def ratio(self) -> float | None:
        return self.passed / self.total if self.total else None


@dataclass(frozen=True)
class ScoreRow:
    table: str
    tallies: dict[str, Tally] = field(default_factory=dict)
    target: float = TARGET

    def ratio(self, dimension_name: str) -> float | None:
        tally = self.tallies.get(dimension_name)
        return tally.ratio if tally else None

    def below_target(self) -> list[str]:
        """Dimensions measured and under the target."""
        return [d for d in DIMENSIONS if (r := self.ratio(d)) is not None and r < self.target]

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            **{d: self.ratio(d) for d in DIMENSIONS},
            "target": self.target,
            "below_target": self.below_target(),
        }


def score(
    config: Config,
    quality: Mapping[str, tuple[int, int]],
    freshness: Mapping[str, Sequence[float]],
) -> list[ScoreRow]:
    """Pure: quality check name -> (rows_checked, violations); freshness name -> ages (s)."""
    tallies: dict[str, dict[str, Tally]] = {}
    for check in config.checks:
        if not check.enabled:
            continue
        if isinstance(check, QualityCheck) and check.name in quality:
            rows, violations = quality[check.name]
            table = tallies.setdefault(str(check.table), {})
            name = dimension(check.rule)
            passed = max(rows - violations, 0)
            table[name] = table.get(name, Tally()).plus(passed, rows)
        elif isinstance(check, FreshnessCheck):
            table = tallies.setdefault(str(check.table), {})
            ages = freshness.get(check.name, ())
            within = sum(1 for age in ages if age <= check.warn_after.total_seconds())
            table["timeliness"] = table.get("timeliness", Tally()).plus(within, len(ages))
    return [ScoreRow(name, found) for name, found in sorted(tallies.items())]


async def compute(
    conn: Conn,
    config: Config,
    *,
    now: datetime | None = None,
    window: timedelta = timedelta(days=1),
    fresh: Sequence[CheckResult] = (),
) -> list[ScoreRow]:
    """The scorecard from stored results and samples, plus `fresh` results not yet stored."""
    when = now or datetime.now(UTC)
    enabled = [c for c in config.checks if c.enabled]
    quality_names = [c.name for c in enabled if isinstance(c, QualityCheck)]
    stored = await store.latest_baselines(conn, quality_names, "rows_checked")
    quality: dict[str, tuple[int, int]] = {
        name: (int(row.baseline["rows_checked"]), int(row.baseline["violations"]))
        for name, row in stored.items()
    }
    fresh_by_name = {r.check: r for r in fresh}
    for name in quality_names:
        result = fresh_by_name.get(name)
        if result is not None and "rows_checked" in result.baseline:
            quality[name] = (
                int(result.baseline["rows_checked"]),
                int(result.baseline["violations"]),
            )
    freshness: dict[str, list[float]] = {}
    for check in enabled:
        if not isinstance(check, FreshnessCheck):
            continue
        points = {
            s.ts: s.value
            for s in await store.read_series(
                conn, check.name, when - window, until=when + timedelta(microseconds=1)
            )
        }
        result = fresh_by_name.get(check.name)
        if result is not None and result.value is not None and result.observed_at <= when:
            points[result.observed_at] = result.value
        freshness[check.name] = list(points.values())
    return score(config, quality, freshness)
