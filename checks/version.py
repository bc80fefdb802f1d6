"""version: the schema version the application deployed (`alembic_version` in APES).

Probe: the distinct values of `column` in `table` (Alembic keeps one row per head; several
heads are joined with ", "). The previous versions are the baseline of the check's last
stored result, so a change is seen once, by whichever agent runs the check first, and
survives restarts.

A change is a deploy: the result carries `deploy` {from, to, at} in its baseline, and
`pipectl.store.record_result` records a `deploy` event holding the old and new version and
every check's status just before it, so the checks before and after a deploy can be compared
(`pipectl history --events`). The check shows `on_deploy` (default warn) for `notice_for`
after a deploy, so it is seen, then ok again. An empty table is nodata.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pipectl import store
from pipectl.checks.base import Context, KindSpec
from pipectl.checks.catalog import TEXT_TYPES, Need
from pipectl.checks.sql import Params, Query, col
from pipectl.config import CheckBase, ColumnName, Config, PositiveDuration, RelationName
from pipectl.durations import format_duration, humanize_age
from pipectl.identifiers import Relation
from pipectl.model import CheckResult, CheckStatus

_STATE_KEY = "versions"


class VersionCheck(CheckBase):
    kind: Literal["version"]
    table: RelationName = Relation("public", "alembic_version")
    column: ColumnName = "version_num"
    on_deploy: Literal["ok", "warn", "fail"] = "warn"
    notice_for: PositiveDuration = timedelta(minutes=15)


def query(check: VersionCheck) -> Query:
    column = col(check.column)
    return Query(
        f"SELECT coalesce(array_agg(DISTINCT {column}::text ORDER BY {column}::text)"
        f" FILTER (WHERE {column} IS NOT NULL), '{{}}') AS versions FROM {check.table.sql}",
        Params(),
    )


def _text(versions: list[str]) -> str:
    return ", ".join(versions) if versions else "(none)"


def evaluate(
    check: VersionCheck,
    versions: list[str],
    previous: dict[str, Any] | None,
    now: datetime,
) -> CheckResult:
    """Pure: compare the deployed versions with the last recorded ones."""
    before = previous.get(_STATE_KEY) if previous else None
    last_deploy = previous.get("last_deploy") if previous else None
    threshold = {"on_deploy": check.on_deploy, "notice_for_s": check.notice_for.total_seconds()}
    baseline: dict[str, Any] = {_STATE_KEY: versions, "last_deploy": last_deploy}
    if not versions:
        return CheckResult(
            check.name,
            CheckStatus.NODATA,
            None,
            f"{check.table} holds no version",
            now,
            threshold=threshold,
            baseline=baseline,
        )
    if isinstance(before, list) and before and before != versions:
        deploy = {"from": before, "to": versions, "at": now.isoformat()}
        baseline["deploy"] = deploy
        baseline["last_deploy"] = deploy
        return CheckResult(
            check.name,
            CheckStatus(check.on_deploy),
            float(len(versions)),
            f"deployed: schema version {_text(before)} -> {_text(versions)}",
            now,
            threshold=threshold,
            baseline=baseline,
        )
    message = f"schema version {_text(versions)}"
    status = CheckStatus.OK
    if isinstance(last_deploy, dict) and isinstance(last_deploy.get("at"), str):
        age = (now - datetime.fromisoformat(last_deploy["at"])).total_seconds()
        message += f" (deployed {humanize_age(max(age, 0.0))} ago)"
        if 0 <= age < check.notice_for.total_seconds():
            status = CheckStatus(check.on_deploy)
            message += (
                f"; shown as {check.on_deploy} for {format_duration(check.notice_for)}"
                " after a deploy"
            )
    elif before is None:
        message += " (first reading)"
    return CheckResult(
        check.name,
        status,
        float(len(versions)),
        message,
        now,
        threshold=threshold,
        baseline=baseline,
    )


async def run(ctx: Context[VersionCheck]) -> CheckResult:
    check = ctx.check
    row = await query(check).fetchrow(ctx.conn)
    stored = await store.last_baseline(ctx.conn, check.name, _STATE_KEY)
    return evaluate(check, list(row["versions"]), stored.baseline if stored else None, ctx.now)


def needs(check: VersionCheck) -> list[Need]:
    return [Need("column", check.table, check.column, TEXT_TYPES, "text (the version)")]


def sql(check: VersionCheck, config: Config) -> str:
    return query(check).sql


KIND = KindSpec[VersionCheck](
    model=VersionCheck,
    needs=needs,
    sql=sql,
    target=lambda check: f"{check.table}.{check.column}",
    describe=lambda check: check.description or f"deployed schema version ({check.table})",
    run=run,
)
