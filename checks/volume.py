"""volume: rows whose timestamp falls in the last `window`, against bounds and a seasonal baseline.

Probe: a count over an index range of `column` plus `max(column)` to tell an empty table
(nodata) from a quiet window (a count of 0, which may well be an anomaly), in one round trip.
Where quality rules scan the whole table at the same instant (`pipectl check`, or ticks of the
same schedule), the two counts are columns of that scan instead (`RIDE`): the table is read
once, not once more through the index.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pipectl.checks import timeseries
from pipectl.checks.anomaly import AnomalyConfig
from pipectl.checks.base import Context, KindSpec, Ride, zone
from pipectl.checks.catalog import TIME_TYPES, Need
from pipectl.checks.quality import whole_table_scan
from pipectl.checks.sql import Params, Query, col, window_predicate
from pipectl.checks.timeseries import Bounds, History
from pipectl.config import (
    CheckBase,
    ColumnName,
    Config,
    PositiveDuration,
    RelationName,
    TimeZone,
)
from pipectl.durations import format_duration
from pipectl.model import CheckResult, CheckStatus


class VolumeCheck(CheckBase):
    kind: Literal["volume"]
    table: RelationName
    column: ColumnName
    window: PositiveDuration = timedelta(hours=1)
    timezone: TimeZone = "UTC"
    bounds: Bounds = Bounds()
    anomaly: AnomalyConfig | None = AnomalyConfig()
    incremental: bool | None = None
    """The agent's ticks read only new rows (None: check_defaults.incremental)."""


@dataclass(frozen=True)
class Observation:
    rows: int
    empty: bool
    """The table has no rows at all (as opposed to none in this window)."""


def query(check: VolumeCheck, now: datetime) -> Query:
    params = Params()
    span = window_predicate(check.column, params, now - check.window, now)
    return Query(
        f"SELECT (SELECT count(*) FROM {check.table.sql} WHERE {span}) AS rows,"
        f" (SELECT max({col(check.column)}) FROM {check.table.sql}) IS NULL AS empty",
        params,
    )


def seed_query(check: VolumeCheck, now: datetime) -> Query:
    """Rows per earlier window over `anomaly.history` (see timeseries.seed_query)."""
    history = check.anomaly.history if check.anomaly else check.window
    return timeseries.seed_query(
        check.table,
        check.column,
        lambda params: "count(*)",
        lambda params: "TRUE",
        now,
        check.window,
        history,
    )


async def probe(ctx: Context[VolumeCheck]) -> Observation:
    check = ctx.check
    row = await query(check, ctx.now).fetchrow(
        ctx.conn, ctx.table(check.table), zone(check.timezone)
    )
    return Observation(int(row["rows"]), bool(row["empty"]))


async def load_history(ctx: Context[VolumeCheck]) -> History:
    check = ctx.check
    if check.anomaly is None:
        return History([])
    return await timeseries.history(
        ctx,
        check.name,
        check.anomaly,
        zone(check.timezone),
        check.window,
        ctx.table(check.table),
        seed_query(check, ctx.now),
        empty_value=0.0,  # an hour without rows is a real observation: zero
    )


def evaluate(
    check: VolumeCheck, observation: Observation, hist: History, now: datetime, source: str
) -> CheckResult:
    """Pure: the count against bounds and the baseline (an empty table is nodata)."""
    if observation.empty:
        return CheckResult(check.name, CheckStatus.NODATA, None, f"{check.table} has no rows", now)
    judged = timeseries.judge(
        float(observation.rows), check.bounds, check.anomaly, hist.values, floor=0.0
    )
    what = f"{observation.rows} rows in {timeseries.window_text(check.window)}"
    return timeseries.series_result(check.name, now, source, observation.rows, what, judged, hist)


async def run(ctx: Context[VolumeCheck]) -> CheckResult:
    return await _judged(ctx, await probe(ctx))


async def _judged(ctx: Context[VolumeCheck], observation: Observation) -> CheckResult:
    hist = History([]) if observation.empty else await load_history(ctx)
    return evaluate(ctx.check, observation, hist, ctx.now, ctx.source)


def _host_scan(check: VolumeCheck) -> Hashable:
    return whole_table_scan(check.table, check.timezone)


def scan_counts(check: VolumeCheck, params: Params, now: datetime) -> list[str]:
    """The probe's two answers as counts over every row of the table: the rows in the
    window, and the rows with a `column` at all (none: the table is empty, as max() IS NULL
    says in `query`)."""
    span = window_predicate(check.column, params, now - check.window, now)
    return [f"count(*) FILTER (WHERE {span})", f"count({col(check.column)})"]


async def from_scan(ctx: Context[VolumeCheck], counts: Sequence[int]) -> CheckResult:
    in_window, with_time = counts
    return await _judged(ctx, Observation(in_window, with_time == 0))


RIDE = Ride[VolumeCheck](host_key=_host_scan, columns=scan_counts, finish=from_scan)


def needs(check: VolumeCheck) -> list[Need]:
    return [Need("column", check.table, check.column, TIME_TYPES, "a timestamp", indexed=True)]


def sql(check: VolumeCheck, config: Config) -> str:
    return query(check, datetime.now(UTC)).sql


KIND = KindSpec[VolumeCheck](
    model=VolumeCheck,
    needs=needs,
    sql=sql,
    target=lambda check: f"{check.table}.{check.column}",
    describe=lambda check: (
        check.description
        or f"rows of {check.table} per {format_duration(check.window)} (by {check.column})"
    ),
    run=run,
    ride=RIDE,
)
