"""metric: one aggregate over the last `window` (average score, p95 latency, share of negative
ratings, ...) against static bounds and, optionally, a seasonal baseline.

Probe: `SELECT aggregate, count(*) FROM table WHERE time in window AND filters`, aggregated
inside PostgreSQL. Filter operators come from a fixed map; filter values are bound parameters
converted to the column's type. An empty window is nodata (except for `count`, which is 0),
and so is a window with fewer than `min_rows` rows: a p95 or a share over a few dozen rows is
noise, and judging it would cry wolf.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field, model_validator

from pipectl.checks import timeseries
from pipectl.checks.anomaly import AnomalyConfig
from pipectl.checks.base import Context, KindSpec, number, zone
from pipectl.checks.catalog import NUMERIC_TYPES, TIME_TYPES, Catalog, Column, Need, python_value
from pipectl.checks.sql import (
    Filter,
    Params,
    Query,
    col,
    conjunction,
    filter_predicate,
    window_predicate,
)
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

MAX_MIN_ROWS = 1_000_000_000
"""More rows than any window is meant to hold: a larger min_rows is a typo, not a wish."""


class MetricCheck(CheckBase):
    kind: Literal["metric"]
    table: RelationName
    time_column: ColumnName
    aggregate: Literal[
        "avg", "sum", "min", "max", "count", "stddev", "p50", "p90", "p95", "p99", "share"
    ]
    column: ColumnName | None = None
    where: list[Filter] = Field(default_factory=list)
    share_of: list[Filter] = Field(default_factory=list)
    window: PositiveDuration = timedelta(hours=1)
    timezone: TimeZone = "UTC"
    bounds: Bounds = Bounds()
    anomaly: AnomalyConfig | None = None
    min_rows: int | None = Field(default=None, ge=1, le=MAX_MIN_ROWS)
    incremental: bool | None = None
    """The agent's ticks read only new rows (None: check_defaults.incremental)."""

    @model_validator(mode="after")
    def _shape(self) -> MetricCheck:
        if self.incremental and self.aggregate == "stddev":
            raise ValueError(
                "'incremental' does not apply to aggregate 'stddev' (its partial sums would"
                " not add up to the exact value): it reads its whole window at every tick"
            )
        if self.aggregate == "share" and not self.share_of:
            raise ValueError("aggregate 'share' needs 'share_of' (the rows to count)")
        if self.aggregate not in ("count", "share") and self.column is None:
            raise ValueError(f"aggregate {self.aggregate!r} needs 'column'")
        if self.aggregate == "count" and self.min_rows is not None:
            # A count below min_rows would read "nodata" exactly when rows stop coming.
            raise ValueError(
                "min_rows does not apply to aggregate 'count' (the count is the rows: a drop"
                " must be judged, not hidden); use bounds.warn_below"
            )
        return self


_PERCENTILES = {"p50": "0.5", "p90": "0.9", "p95": "0.95", "p99": "0.99"}
_FUNCTIONS = {"avg": "avg", "sum": "sum", "min": "min", "max": "max", "stddev": "stddev_samp"}


@dataclass(frozen=True)
class Observation:
    value: float | None
    rows: int


def aggregate_sql(check: MetricCheck, params: Params) -> str:
    """The aggregate expression; every name in it is quoted, every value bound."""
    column = col(check.column) if check.column else None
    if check.aggregate == "count":
        return f"count({column})" if column else "count(*)"
    if check.aggregate == "share":
        matching = conjunction([filter_predicate(f, params) for f in check.share_of])
        return f"count(*) FILTER (WHERE {matching})::float8 / nullif(count(*), 0)"
    assert column is not None  # the config model requires it for the other aggregates
    if check.aggregate in _PERCENTILES:
        return f"percentile_cont({_PERCENTILES[check.aggregate]}) WITHIN GROUP (ORDER BY {column})"
    return f"{_FUNCTIONS[check.aggregate]}({column})"


def _filters(check: MetricCheck, params: Params) -> str:
    return conjunction([filter_predicate(f, params) for f in check.where])


def query(check: MetricCheck, now: datetime) -> Query:
    params = Params()
    span = window_predicate(check.time_column, params, now - check.window, now)
    value = aggregate_sql(check, params)
    where = _filters(check, params)
    return Query(
        f"SELECT ({value})::float8 AS value, count(*) AS rows"
        f" FROM {check.table.sql} WHERE {span} AND {where}",
        params,
    )


def seed_query(check: MetricCheck, now: datetime) -> Query:
    """The aggregate of each earlier window over `anomaly.history`."""
    history = check.anomaly.history if check.anomaly else check.window
    return timeseries.seed_query(
        check.table,
        check.time_column,
        lambda params: aggregate_sql(check, params),
        lambda params: _filters(check, params),
        now,
        check.window,
        history,
        check.min_rows,
    )


async def probe(ctx: Context[MetricCheck]) -> Observation:
    check = ctx.check
    row = await query(check, ctx.now).fetchrow(
        ctx.conn, ctx.table(check.table), zone(check.timezone)
    )
    return Observation(row["value"], int(row["rows"]))


async def load_history(ctx: Context[MetricCheck]) -> History:
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
        empty_value=0.0 if check.aggregate == "count" else None,  # avg of nothing: no value
    )


def label(check: MetricCheck) -> str:
    """'p95(response_time_ms)', 'share(user_rating <= 2)', 'count(*)'."""
    if check.aggregate == "share":
        inner = " and ".join(_filter_text(f) for f in check.share_of)
    else:
        inner = check.column or "*"
    return f"{check.aggregate}({inner})"


def _filter_text(item: Filter) -> str:
    if item.op in ("is_null", "not_null"):
        return f"{item.column} {item.op.replace('_', ' ')}"
    return f"{item.column} {item.op} {item.value}"


def evaluate(
    check: MetricCheck, observation: Observation, hist: History, now: datetime, source: str
) -> CheckResult:
    """Pure: the aggregate against bounds and the baseline; an empty window, or one with fewer
    rows than `min_rows`, is nodata."""
    span = timeseries.window_text(check.window)
    if observation.value is None:
        reason = "no rows" if observation.rows == 0 else "no values"
        return CheckResult(
            check.name, CheckStatus.NODATA, None, f"{label(check)}: {reason} in {span}", now
        )
    if too_few_rows(check, observation):
        return CheckResult(
            check.name,
            CheckStatus.NODATA,
            None,
            f"{label(check)}: only {observation.rows} rows in {span}, too few to judge"
            f" (min_rows {check.min_rows})",
            now,
            threshold={"min_rows": check.min_rows},
            baseline={"rows": observation.rows},
        )
    judged = timeseries.judge(observation.value, check.bounds, check.anomaly, hist.values)
    what = f"{label(check)} = {number(observation.value)} over {span} ({observation.rows} rows)"
    return timeseries.series_result(
        check.name,
        now,
        source,
        observation.value,
        what,
        judged,
        hist,
        extra_baseline={"rows": observation.rows},
    )


def too_few_rows(check: MetricCheck, observation: Observation) -> bool:
    return check.min_rows is not None and observation.rows < check.min_rows


async def run(ctx: Context[MetricCheck]) -> CheckResult:
    observation = await probe(ctx)
    judged = observation.value is not None and not too_few_rows(ctx.check, observation)
    hist = await load_history(ctx) if judged else History([])
    return evaluate(ctx.check, observation, hist, ctx.now, ctx.source)


def needs(check: MetricCheck) -> list[Need]:
    found = [Need("time_column", check.table, check.time_column, TIME_TYPES, "a timestamp")]
    if check.column is not None:
        numeric = check.aggregate != "count"
        found.append(
            Need(
                "column",
                check.table,
                check.column,
                NUMERIC_TYPES if numeric else None,
                f"a number for {check.aggregate}",
            )
        )
    for key in ("where", "share_of"):
        for index, item in enumerate(getattr(check, key)):
            found.append(Need(f"{key}[{index}].column", check.table, item.column))
    return found


def check_values(check: MetricCheck, catalog: Catalog) -> list[tuple[str, str]]:
    """Each filter value must fit its column's type (checked once, at start-up)."""
    table = catalog.get(check.table)
    if table is None:
        return []
    problems: list[tuple[str, str]] = []
    for key in ("where", "share_of"):
        for index, item in enumerate(getattr(check, key)):
            column = table.columns.get(item.column)
            if column is None:
                continue
            path = f"{key}[{index}].value"
            message = filter_value_problem(item, column)
            if message:
                problems.append((path, message))
    return problems


def filter_value_problem(item: Filter, column: Column) -> str | None:
    """Why a filter's value cannot be compared with its column, or None."""
    if item.op in ("is_null", "not_null"):
        return None if item.value is None else f"op {item.op!r} takes no value"
    if item.value is None:
        return f"op {item.op!r} needs a value"
    if item.op == "in" and not isinstance(item.value, list):
        return "op 'in' needs a list of values"
    if item.op != "in" and isinstance(item.value, list):
        return f'op {item.op!r} takes one value; use op = "in" for a list'
    try:
        python_value(item.value, column)
    except ValueError as exc:
        return str(exc)
    return None


def sql(check: MetricCheck, config: Config) -> str:
    return query(check, datetime.now(UTC)).sql


KIND = KindSpec[MetricCheck](
    model=MetricCheck,
    needs=needs,
    sql=sql,
    target=lambda check: f"{check.table}.{check.column or check.time_column}",
    describe=lambda check: (
        check.description or f"{label(check)} of {check.table} over {format_duration(check.window)}"
    ),
    run=run,
    check_values=check_values,
)
