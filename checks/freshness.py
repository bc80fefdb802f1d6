"""freshness: how old is the newest row (and, for a summary, its last successful refresh)?

Probe: `max(column)` (a backward index scan when the column is indexed, never a table scan)
and, with `step`, the newest `finished_at` of that step's succeeded runs, in one round trip.
A `timestamp without time zone` is read as wall-clock time in the check's `timezone`.
Value: the age in seconds of whichever is worse; the message names which.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import model_validator

from pipectl.checks.base import Context, KindSpec, point, zone
from pipectl.checks.catalog import TIME_TYPES, Need, Table
from pipectl.checks.sql import Params, Query, col
from pipectl.config import (
    CheckBase,
    ColumnName,
    Config,
    Name,
    PositiveDuration,
    RelationName,
    TimeZone,
)
from pipectl.durations import format_duration, humanize_age
from pipectl.model import CheckResult, CheckStatus
from pipectl.store.runs import last_success_sql


class FreshnessCheck(CheckBase):
    kind: Literal["freshness"]
    table: RelationName
    column: ColumnName
    warn_after: PositiveDuration
    error_after: PositiveDuration
    timezone: TimeZone = "UTC"
    on_empty: Literal["nodata", "fail"] = "nodata"
    step: Name | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FreshnessCheck:
        if self.error_after < self.warn_after:
            raise ValueError("error_after must not be shorter than warn_after")
        return self


@dataclass(frozen=True)
class Observation:
    newest: datetime | None
    """Newest value of the column, timezone-aware; None when the table has no rows."""
    refreshed_at: datetime | None = None
    """Last successful refresh of `step`; None when it never succeeded."""
    step: str | None = None
    """The refreshed step watched, when it has something to refresh."""


def refresh_step(check: FreshnessCheck, config: Config) -> str | None:
    """The step whose refreshes count: only a step that refreshes something (not a plain view)."""
    if check.step is None:
        return None
    try:
        step = config.step(check.step)
    except KeyError:
        return None
    return None if step.kind == "view" else step.name


def query(check: FreshnessCheck, step: str | None) -> Query:
    params = Params()
    sql = f"SELECT (SELECT max({col(check.column)}) FROM {check.table.sql}) AS newest"
    if step is not None:
        sql += f", {last_success_sql(params.add(step))} AS refreshed_at"
    return Query(sql, params)


async def probe(ctx: Context[FreshnessCheck]) -> Observation:
    check = ctx.check
    step = refresh_step(check, ctx.config)
    table = ctx.table(check.table)
    row = await query(check, step).fetchrow(ctx.conn, table, zone(check.timezone))
    newest = as_aware(row["newest"], table, check)
    return Observation(newest, row["refreshed_at"] if step else None, step)


def as_aware(value: datetime | None, table: Table, check: FreshnessCheck) -> datetime | None:
    """A column value as an aware time: wall-clock values are read in the check's zone."""
    if value is None:
        return None
    if table.column(check.column).type == "timestamptz" or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=zone(check.timezone)).astimezone(UTC)


@dataclass(frozen=True)
class _Part:
    status: CheckStatus
    age: float | None
    text: str


def _aged(what: str, at: datetime, now: datetime, check: FreshnessCheck) -> _Part:
    age = (now - at).total_seconds()
    if age < 0:
        return _Part(
            CheckStatus.OK, 0.0, f"{what} is {humanize_age(-age)} in the future (clock skew?)"
        )
    if age > check.error_after.total_seconds():
        status = CheckStatus.FAIL
    elif age > check.warn_after.total_seconds():
        status = CheckStatus.WARN
    else:
        status = CheckStatus.OK
    return _Part(status, age, f"{what} {humanize_age(age)} old")


def evaluate(
    check: FreshnessCheck, observation: Observation, now: datetime, source: str
) -> CheckResult:
    """Pure: the worse of data age and refresh age against warn_after / error_after."""
    limits = (
        f"warn after {format_duration(check.warn_after)}, "
        f"fail after {format_duration(check.error_after)}"
    )
    if observation.newest is None:
        empty = CheckStatus.FAIL if check.on_empty == "fail" else CheckStatus.NODATA
        parts = [_Part(empty, None, f"{check.table} has no rows")]
    else:
        parts = [_aged(f"newest {check.table}.{check.column}", observation.newest, now, check)]
    if observation.step is not None:
        if observation.refreshed_at is None:
            text = f"step {observation.step} has not succeeded yet"
            parts.append(_Part(CheckStatus.NODATA, None, text))
        else:
            what = f"last refresh of {observation.step}"
            parts.append(_aged(what, observation.refreshed_at, now, check))
    # The worse status wins; between equals, the older age.
    worst = max(parts, key=lambda part: (part.status.severity, part.age or 0.0))
    status = worst.status
    ages = [part.age for part in parts if part.age is not None]
    value = worst.age if worst.age is not None else max(ages, default=None)
    others = [p.text for p in parts if p is not worst]
    message = worst.text + (f" ({limits})" if worst.age is not None else "")
    if others:
        message += "; " + "; ".join(others)
    baseline: dict[str, object] = {
        "newest": observation.newest.isoformat() if observation.newest else None,
        "data_age_s": parts[0].age,
    }
    if observation.step is not None:
        baseline["step"] = observation.step
        baseline["refreshed_at"] = (
            observation.refreshed_at.isoformat() if observation.refreshed_at else None
        )
        baseline["refresh_age_s"] = parts[1].age
    samples = (point(check.name, now, value, source),) if value is not None else ()
    return CheckResult(
        check=check.name,
        status=status,
        value=value,
        message=message,
        observed_at=now,
        threshold={
            "warn_after_s": check.warn_after.total_seconds(),
            "error_after_s": check.error_after.total_seconds(),
        },
        expected_low=0.0,
        expected_high=check.warn_after.total_seconds(),
        baseline=baseline,
        samples=samples,
    )


async def run(ctx: Context[FreshnessCheck]) -> CheckResult:
    return evaluate(ctx.check, await probe(ctx), ctx.now, ctx.source)


def needs(check: FreshnessCheck) -> list[Need]:
    return [Need("column", check.table, check.column, TIME_TYPES, "a timestamp", indexed=True)]


def describe(check: FreshnessCheck) -> str:
    return check.description or (
        f"age of the newest {check.table}.{check.column}"
        + (f" and of step {check.step}'s last refresh" if check.step else "")
    )


def sql(check: FreshnessCheck, config: Config) -> str:
    return query(check, refresh_step(check, config)).sql


KIND = KindSpec[FreshnessCheck](
    model=FreshnessCheck,
    needs=needs,
    sql=sql,
    target=lambda check: f"{check.table}.{check.column}",
    describe=describe,
    run=run,
)
