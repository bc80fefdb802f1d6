"""What volume and metric checks share: a number per window, judged against static bounds and a
seasonal baseline learned from the check's own samples.

History comes from `pipectl.samples`. When a check starts without enough comparable points,
it is *seeded* once: one aggregate query over `anomaly.history` of the table's own timestamps
gives the value of every earlier window, stored as 'seed' samples, so a baseline exists from the
first run instead of after `min_points` days.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import model_validator

from pipectl import store
from pipectl.checks import anomaly
from pipectl.checks.anomaly import AnomalyConfig
from pipectl.checks.base import Context, finite, number, point, worse
from pipectl.checks.catalog import Table
from pipectl.checks.sql import Params, Query, col, window_predicate
from pipectl.config import Strict
from pipectl.durations import format_duration
from pipectl.identifiers import Relation
from pipectl.model import CheckResult, CheckStatus, Sample


class Bounds(Strict):
    """Static thresholds; any subset may be given."""

    warn_below: float | None = None
    fail_below: float | None = None
    warn_above: float | None = None
    fail_above: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if None not in (self.warn_below, self.fail_below) and self.fail_below > self.warn_below:  # type: ignore[operator]
            raise ValueError("fail_below must not be above warn_below")
        if None not in (self.warn_above, self.fail_above) and self.fail_above < self.warn_above:  # type: ignore[operator]
            raise ValueError("fail_above must not be below warn_above")
        return self


@dataclass(frozen=True)
class History:
    """Baseline values for the point under test, and the seeds reconstructed to get them."""

    values: list[float]
    seeds: tuple[Sample, ...] = ()


async def history(
    ctx: Context[Any],
    series: str,
    config: AnomalyConfig,
    tz: ZoneInfo,
    window: timedelta,
    table: Table,
    seed: Query,
    empty_value: float | None,
) -> History:
    """Comparable baseline values; when there are too few, seed history once with `seed`."""
    ranges = anomaly.windows(ctx.now, config, tz, window)
    samples = await store.read_windows(ctx.conn, series, ranges)
    values = anomaly.comparable(samples, ctx.now, config, tz, window)
    if len(values) >= config.min_points or await store.has_seed(ctx.conn, series):
        return History(values)
    rows = await seed.fetch(ctx.conn, table, tz)
    seeds = tuple(
        point(series, ts, value, "seed")
        for ts, value in seeds_from_rows(rows, ctx.now, window, empty_value)
    )
    return History(anomaly.comparable([*samples, *seeds], ctx.now, config, tz, window), seeds)


def seed_query(
    table: Relation,
    time_column: str,
    value_sql: Callable[[Params], str],
    filters: Callable[[Params], str],
    now: datetime,
    window: timedelta,
    history: timedelta,
    min_rows: int | None = None,
) -> Query:
    """The value of each earlier window, numbered k = 1, 2, ... back from `now`, in one query.

    Window k is (now - (k+1)*window, now - k*window], the same tiling the live probe uses.
    Reads one index range of `time_column`. With `min_rows`, a window with fewer rows has no
    value (the check would not have judged it either).
    """
    params = Params()
    anchor = params.add(now, as_column=time_column)
    seconds = params.add(window.total_seconds())
    periods = max(int(history / window), 1)
    span = window_predicate(time_column, params, now - (periods + 1) * window, now - window)
    value = value_sql(params)
    where = filters(params)
    having = f" HAVING count(*) >= {params.add(min_rows)}" if min_rows is not None else ""
    return Query(
        f"SELECT floor(extract(epoch FROM ({anchor} - {col(time_column)})) / {seconds}::float8)"
        f"::int AS k, ({value})::float8 AS value"
        f" FROM {table.sql} WHERE {span} AND {where} GROUP BY 1{having}",
        params,
    )


def seeds_from_rows(
    rows: Sequence[Any], now: datetime, window: timedelta, empty_value: float | None
) -> list[tuple[datetime, float]]:
    """(time, value) per earlier window, back to the oldest window that has any rows.

    Windows with no rows count as `empty_value` (0 for counts) or are skipped (None): before
    the first row the table did not exist in its current use, so those windows teach nothing.
    """
    by_k = {int(r["k"]): r["value"] for r in rows if r["k"] is not None and r["k"] >= 1}
    if not by_k:
        return []
    out: list[tuple[datetime, float]] = []
    for k in range(max(by_k), 0, -1):
        value = by_k.get(k, empty_value)
        if value is not None:
            out.append((now - k * window, float(value)))
    return out


def judge_bounds(value: float, bounds: Bounds) -> tuple[CheckStatus, str | None]:
    """Static limits: fail beats warn."""
    limits = (
        (bounds.fail_below, CheckStatus.FAIL, "below"),
        (bounds.fail_above, CheckStatus.FAIL, "above"),
        (bounds.warn_below, CheckStatus.WARN, "below"),
        (bounds.warn_above, CheckStatus.WARN, "above"),
    )
    for limit, status, side in limits:
        if limit is None:
            continue
        if (side == "below" and value < limit) or (side == "above" and value > limit):
            return status, f"{side} the {status} limit {number(limit)}"
    return CheckStatus.OK, None


def has_bounds(bounds: Bounds) -> bool:
    return any(
        v is not None
        for v in (bounds.warn_below, bounds.fail_below, bounds.warn_above, bounds.fail_above)
    )


@dataclass(frozen=True)
class Judged:
    """The parts of a CheckResult that come from bounds and the detector."""

    status: CheckStatus
    message: str
    expected_low: float | None
    expected_high: float | None
    threshold: dict[str, Any]
    baseline: dict[str, Any]
    anomaly_score: float | None
    flagged: bool


def judge(
    value: float,
    bounds: Bounds,
    config: AnomalyConfig | None,
    baseline_values: Sequence[float],
    *,
    floor: float | None = None,
) -> Judged:
    """Bounds, then the detector; the worse status wins. `floor` clamps the band (counts >= 0)."""
    status, bounds_text = judge_bounds(value, bounds)
    notes = [bounds_text] if bounds_text else []
    threshold: dict[str, Any] = {k: v for k, v in bounds.model_dump().items() if v is not None}
    baseline: dict[str, Any] = {}
    low = bounds.warn_below if bounds.warn_below is not None else bounds.fail_below
    high = bounds.warn_above if bounds.warn_above is not None else bounds.fail_above
    score: float | None = None
    flagged = False
    if config is not None:
        detection = anomaly.detect(value, baseline_values, config)
        threshold.update(
            method=config.method,
            score_limit=config.limit,
            direction=config.direction,
            min_abs_change=config.min_abs_change,
            min_rel_change=config.min_rel_change,
        )
        baseline.update(
            points=detection.points,
            needed=detection.needed,
            seasonality=config.seasonality,
            center=finite(detection.center),
            scale=finite(detection.scale),
        )
        if detection.learning:
            notes.append(f"learning: {detection.points} of {detection.needed} comparable points")
            if not has_bounds(bounds):
                status = CheckStatus.NODATA
        else:
            assert detection.low is not None
            assert detection.high is not None
            low, high = detection.low, detection.high
            if floor is not None:
                low = max(low, floor)
            score = finite(detection.score)
            flagged = detection.flagged
            band = f"expected {number(low)}..{number(high)}"
            if flagged:
                status = worse(status, CheckStatus(config.severity))
                notes.append(
                    f"unusually {'high' if detection.direction == 'up' else 'low'}: {band}"
                )
            else:
                notes.append(band)
    return Judged(
        status=status,
        message="; ".join(notes),
        expected_low=finite(low),
        expected_high=finite(high),
        threshold=threshold,
        baseline=baseline,
        anomaly_score=score,
        flagged=flagged,
    )


def window_text(window: timedelta) -> str:
    return f"the last {format_duration(window)}"


def series_result(
    name: str,
    now: datetime,
    source: str,
    value: float,
    what: str,
    judged: Judged,
    hist: History,
    extra_baseline: dict[str, Any] | None = None,
) -> CheckResult:
    """Assemble the result of a volume/metric check: the point itself plus any seeds."""
    baseline = {**judged.baseline, **(extra_baseline or {})}
    if hist.seeds:
        baseline["seeded"] = len(hist.seeds)
    message = what + (f"; {judged.message}" if judged.message else "")
    if hist.seeds:
        message += f" (history seeded with {len(hist.seeds)} earlier windows)"
    return CheckResult(
        check=name,
        status=judged.status,
        value=finite(float(value)),
        message=message,
        observed_at=now,
        threshold=judged.threshold,
        expected_low=judged.expected_low,
        expected_high=judged.expected_high,
        baseline=baseline,
        samples=(point(name, now, value, source, anomaly=judged.flagged), *hist.seeds),
        anomaly_score=judged.anomaly_score,
    )
