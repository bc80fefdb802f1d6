"""audit: a step's published content against a full recompute of its defining query.

Probe: `pipectl.audit.audit_step` (the same comparison as `pipectl audit STEP`: one statement
computing both sides, both `EXCEPT ALL` directions, floats to 9 significant digits) inside
the engine's read-only probe transaction, in a savepoint so that a failed audit leaves that
transaction usable. Value: the rows that differ, both directions; fail when any does. The
counts, a few example rows each way, the reference time and (for a matview) the last refresh
are the result's evidence.

Only for `incremental` steps, and on their state: the summary as the next refresh would
publish it now (kept buckets, rows since the last refresh, the window's edge) against a full
recompute at the same time, both in one statement, so rows written between the last refresh
and the audit cannot make them differ (comparing the published table would fail on every live
table: what arrived since the refresh is in the recompute only). A `matview` step is refused
at config check for the same reason: a matview differs from a recompute by what arrived since
its refresh, which is staleness, measured by freshness checks; `pipectl audit STEP` still
shows it. A full recompute reads the summary's whole window, so the kind runs hourly with a
two-minute timeout unless told otherwise.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pipectl.audit import Audit, AuditError, audit_step, auditable
from pipectl.checks.base import Context, KindSpec, point
from pipectl.checks.catalog import Need
from pipectl.config import CheckBase, Config, Name, PositiveDuration, PostgresTimeout
from pipectl.durations import format_duration
from pipectl.model import CheckResult, CheckStatus

VALUE_LIMIT = 200
"""Characters kept of a text value in the examples stored as evidence."""


class AuditCheck(CheckBase):
    kind: Literal["audit"]
    step: Name
    every: PositiveDuration | None = timedelta(hours=1)
    timeout: PostgresTimeout | None = timedelta(minutes=2)


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > VALUE_LIMIT:
        return value[:VALUE_LIMIT] + "…"
    if isinstance(value, list):
        return [_cut(v) for v in value[:20]]
    return value


def evidence(found: Audit) -> dict[str, Any]:
    """What the result keeps: the audit's JSON, example values cut short."""
    out = found.as_json()
    for key in ("examples_only_in_summary", "examples_only_in_recompute"):
        out[key] = [{k: _cut(v) for k, v in row.items()} for row in out[key]]
    for key in ("audited_at", "reference_at", "published_at"):
        value = out[key]
        out[key] = value.isoformat() if value is not None else None
    return out


def evaluate(check: AuditCheck, found: Audit, now: datetime, source: str) -> CheckResult:
    """Pure: ok when equal, fail when any row differs (or the column types do)."""
    message = found.verdict().removeprefix(f"{found.step}: ")
    if found.kind == "matview" and not found.equal:
        stale = found.stale_for
        message += (
            f"; a matview refreshed {format_duration(stale)} ago differs from a recompute by"
            " what arrived since (staleness)"
            if stale is not None
            else "; a matview differs from a recompute by what arrived since its refresh"
        )
    if found.newer_rows and not found.equal:
        message += (
            f"; {found.newer_rows} source rows are dated at or after its reference time"
            " (arrived since its refresh: the next one adds them)"
        )
    return CheckResult(
        check=check.name,
        status=CheckStatus.OK if found.equal else CheckStatus.FAIL,
        value=float(found.differing),
        message=message,
        observed_at=now,
        threshold={"max_differing_rows": 0},
        expected_low=0.0,
        expected_high=0.0,
        baseline=evidence(found),
        samples=(point(check.name, now, found.differing, source),),
    )


async def run(ctx: Context[AuditCheck]) -> CheckResult:
    check = ctx.check
    step = ctx.config.step(check.step)  # config validation made sure it exists
    try:
        # A savepoint: a statement the audit had cancelled leaves the probe usable.
        async with ctx.conn.transaction():
            found = await audit_step(
                ctx.conn,
                step,
                timezone=ctx.config.agent.timezone,
                limit=ctx.timeout,
                basis="state",
            )
    except AuditError as exc:
        return CheckResult(check.name, CheckStatus.ERROR, None, str(exc), ctx.now)
    return evaluate(check, found, ctx.now, ctx.source)


def check_config(check: AuditCheck, config: Config) -> list[tuple[str, str]]:
    """The step must be one the audit can recompute (config validation names unknown ones)."""
    try:
        step = config.step(check.step)
    except KeyError:
        return [("step", f"unknown step {check.step!r}")]
    reason = auditable(step)
    if reason is None and step.kind != "incremental":
        reason = (
            f"step {step.name} is a {step.kind} step: a scheduled audit needs an incremental"
            " step (a materialized view differs from a recompute by whatever arrived since its"
            " refresh, on every live table: that is staleness, which freshness checks measure;"
            f" `pipectl audit {step.name}` still compares it by hand)"
        )
    return [("step", reason)] if reason is not None else []


def needs(check: AuditCheck) -> list[Need]:
    return []  # the step's relation is validated with the steps


def sql(check: AuditCheck, config: Config) -> str:
    return (
        f"-- step {check.step}: the summary its next refresh would publish now against a full"
        " recompute of its defining query in the same statement, both ways with EXCEPT ALL,"
        " floats to 9 significant digits (pipectl.audit)"
    )


KIND = KindSpec[AuditCheck](
    model=AuditCheck,
    needs=needs,
    sql=sql,
    target=lambda check: f"step {check.step}",
    describe=lambda check: (
        check.description
        or f"step {check.step}'s content equals a full recompute of its defining query"
    ),
    run=run,
    check_config=check_config,
)
