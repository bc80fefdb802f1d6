"""Check results: every observation stored; the check's shown status moves with hysteresis."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pipectl.model import CheckResult, CheckStatus
from pipectl.store.base import DB, Conn
from pipectl.store.samples import add_samples


@dataclass(frozen=True)
class Transition:
    """The hysteresis state after one more raw status."""

    status: CheckStatus
    pending: CheckStatus | None
    pending_count: int

    def changed_from(self, previous: CheckStatus) -> bool:
        return self.status != previous


def apply_hysteresis(
    status: CheckStatus,
    pending: CheckStatus | None,
    pending_count: int,
    raw: CheckStatus,
    needed: int,
    first: bool = False,
) -> Transition:
    """A new status shows only after `needed` consecutive results agree on it.

    The very first result of a check is adopted at once: there is no earlier state to protect
    from flapping.
    """
    if first or raw == status:
        return Transition(raw, None, 0)
    count = pending_count + 1 if raw == pending else 1
    if count >= needed:
        return Transition(raw, None, 0)
    return Transition(status, raw, count)


@dataclass(frozen=True)
class StoredResult:
    id: int
    status: CheckStatus
    previous: CheckStatus
    silenced: bool

    @property
    def changed(self) -> bool:
        return self.status != self.previous


async def record_result(
    conn: Conn,
    result: CheckResult,
    *,
    hysteresis: int,
    agent_id: UUID | None,
    trigger: str = "schedule",
    trace_id: str | None = None,
) -> StoredResult:
    """Store one result, its samples and the check's new state, atomically.

    The check must have been published (pipectl.checks row exists)."""
    async with conn.transaction():
        state = await conn.fetchrow(
            "SELECT kind, status, pending_status, pending_count, last_result_at,"
            " silenced_until FROM pipectl.checks WHERE name = $1 FOR UPDATE",
            result.check,
        )
        if state is None:
            raise LookupError(f"check {result.check!r} is not published in pipectl.checks")
        previous = CheckStatus(state["status"])
        pending = CheckStatus(state["pending_status"]) if state["pending_status"] else None
        step = apply_hysteresis(
            previous,
            pending,
            state["pending_count"],
            result.status,
            hysteresis,
            first=state["last_result_at"] is None,
        )
        silenced = bool(state["silenced_until"] and state["silenced_until"] > result.observed_at)
        crossing = await _cache_crossing(conn, result) if state["kind"] == "cache" else None
        deploy = result.baseline.get("deploy") if state["kind"] == "version" else None
        if isinstance(deploy, dict):
            await _deploy_event(conn, result, deploy)
        result_id: int = await conn.fetchval(
            """
            INSERT INTO pipectl.check_results
                (check_name, status, value, threshold, expected_low, expected_high, baseline,
                 message, silenced, trigger, observed_at, duration_ms, agent_id, trace_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            RETURNING id
            """,
            result.check,
            str(result.status),
            result.value,
            result.threshold,
            result.expected_low,
            result.expected_high,
            result.baseline,
            result.message,
            silenced,
            trigger,
            result.observed_at,
            result.duration_ms,
            agent_id,
            trace_id,
        )
        await conn.execute(
            """
            UPDATE pipectl.checks
            SET status = $2, pending_status = $3, pending_count = $4, last_value = $5,
                last_result_at = $6,
                status_since = CASE WHEN status <> $2 THEN $6 ELSE status_since END
            WHERE name = $1
            """,
            result.check,
            str(step.status),
            str(step.pending) if step.pending else None,
            step.pending_count,
            result.value,
            result.observed_at,
        )
        if step.changed_from(previous):
            await conn.execute(
                "INSERT INTO pipectl.events (kind, subject, message, detail)"
                " VALUES ('check.status', $1, $2, $3)",
                result.check,
                f"{result.check}: {previous} -> {step.status}: {result.message}"
                + (" (silenced)" if silenced else ""),
                {
                    "from": str(previous),
                    "to": str(step.status),
                    "value": result.value,
                    "silenced": silenced,
                    "result_id": result_id,
                },
            )
        if crossing is not None:
            await _record_crossing(conn, result, result_id, crossing)
        if result.samples:
            await add_samples(conn, result.samples)
    return StoredResult(result_id, step.status, previous, silenced)


async def _cache_crossing(conn: Conn, result: CheckResult) -> str | None:
    """'cache.dip' when a hit ratio falls below its target (the warn floor, carried as
    expected_low) after a value at or above it, or as the check's first value;
    'cache.recovered' on the way back. Stored as events so that the timeline reads a week of
    dips from the events index instead of every cache result."""
    target = result.expected_low
    if result.value is None or target is None:
        return None
    previous: float | None = await conn.fetchval(
        "SELECT value FROM pipectl.check_results"
        " WHERE check_name = $1 AND value IS NOT NULL AND observed_at < $2"
        " ORDER BY observed_at DESC LIMIT 1",
        result.check,
        result.observed_at,
    )
    if result.value < target and (previous is None or previous >= target):
        return "cache.dip"
    if result.value >= target and previous is not None and previous < target:
        return "cache.recovered"
    return None


async def _record_crossing(conn: Conn, result: CheckResult, result_id: int, kind: str) -> None:
    value, target = result.value or 0.0, result.expected_low or 0.0  # both set: a crossing
    dipped = kind == "cache.dip"
    await conn.execute(
        "INSERT INTO pipectl.events (at, kind, subject, message, detail)"
        " VALUES ($1, $2, $3, $4, $5)",
        result.observed_at,
        kind,
        result.check,
        f"{value * 100:.1f}% (target {target * 100:.1f}%)",
        {
            "to": "warn" if dipped else "ok",
            "value": value,
            "target": target,
            "result_id": result_id,
        },
    )


@dataclass(frozen=True)
class ResultRow:
    id: int
    check: str
    status: CheckStatus
    value: float | None
    expected_low: float | None
    expected_high: float | None
    message: str
    silenced: bool
    observed_at: datetime


async def count_results(db: DB) -> int:
    """Check results kept, of every check."""
    count: int = await db.fetchval("SELECT count(*) FROM pipectl.check_results")
    return count


async def recent_results(db: DB, check: str, limit: int = 100) -> list[ResultRow]:
    rows = await db.fetch(
        """
        SELECT id, check_name AS check, status, value, expected_low, expected_high, message,
               silenced, observed_at
        FROM pipectl.check_results WHERE check_name = $1
        ORDER BY observed_at DESC LIMIT $2
        """,
        check,
        limit,
    )
    return [ResultRow(**{**dict(r), "status": CheckStatus(r["status"])}) for r in rows]


@dataclass(frozen=True)
class BaselineRow:
    """The baseline jsonb a check stored with one of its results."""

    check: str
    baseline: dict[str, Any]
    observed_at: datetime


async def _deploy_event(conn: Conn, result: CheckResult, deploy: dict[str, Any]) -> None:
    """A deploy (the schema version changed): the old and new version and every other
    check's status just before it, so before and after can be compared."""
    rows = await conn.fetch(
        "SELECT name, status, last_value, last_result_at FROM pipectl.checks"
        " WHERE name <> $1 AND enabled ORDER BY name",
        result.check,
    )
    before = {
        r["name"]: {
            "status": r["status"],
            "value": r["last_value"],
            "at": r["last_result_at"].isoformat() if r["last_result_at"] else None,
        }
        for r in rows
    }
    await conn.execute(
        "INSERT INTO pipectl.events (kind, subject, message, detail) VALUES ('deploy', $1, $2, $3)",
        result.check,
        result.message,
        {**deploy, "checks_before": before},
    )


async def last_baseline(db: DB, check: str, key: str) -> BaselineRow | None:
    """The newest stored result of `check` whose baseline holds `key`.

    Checks that compare with their own previous observation (counters for cache ratios, the
    recorded shape for schema checks) keep that state here, so it survives agent restarts and
    is shared by every agent.
    """
    rows = await latest_baselines(db, [check], key)
    return rows.get(check)


async def latest_baselines(db: DB, checks: Sequence[str], key: str) -> dict[str, BaselineRow]:
    """For each check, the newest stored result whose baseline holds `key`."""
    rows = await db.fetch(
        """
        SELECT c.name AS check, r.baseline, r.observed_at
        FROM unnest($1::text[]) AS c(name)
        JOIN LATERAL (
            SELECT baseline, observed_at FROM pipectl.check_results
            WHERE check_name = c.name AND baseline ? $2
            ORDER BY observed_at DESC LIMIT 1
        ) r ON true
        """,
        list(checks),
        key,
    )
    out: dict[str, BaselineRow] = {}
    for row in rows:
        baseline = row["baseline"]
        if isinstance(baseline, str):  # a connection without pipectl's JSON codec
            baseline = json.loads(baseline)
        out[row["check"]] = BaselineRow(row["check"], baseline, row["observed_at"])
    return out
