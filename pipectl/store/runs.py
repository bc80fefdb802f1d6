"""Runs: one row per execution of a step, from queued to a final status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from pipectl.model import Run, RunStatus, Trigger
from pipectl.store.base import DB

_RUN_COLUMNS = """
    r.id, r.step, r.trigger, r.status, r.queued_at, r.started_at, r.finished_at,
    r.scheduled_for, r.requested_by, r.request_id, r.attempt, r.agent_id, a.name AS agent_name,
    r.rows, r.error, r.detail, r.trace_id
"""


def _run(row: asyncpg.Record | Mapping[str, Any]) -> Run:
    data = dict(row)
    data["trigger"] = Trigger(data["trigger"])
    data["status"] = RunStatus(data["status"])
    return Run(**data)


@dataclass(frozen=True)
class TickClaim:
    run_id: int | None
    """The run created for the tick; None when another agent had it, or it is not due."""
    ahead: timedelta | None = None
    """Set when the tick lies further in the future than the database's clock allows: the
    claiming clock is wrong, and the tick was left for its time."""


async def claim_tick(
    db: DB,
    step: str,
    scheduled_for: datetime,
    agent_id: UUID,
    tolerance: timedelta = timedelta(seconds=5),
) -> TickClaim:
    """Create the run for one scheduled tick, unless another agent already did, or the tick
    is more than `tolerance` ahead of the database's clock (an agent whose clock runs ahead
    must not take tomorrow's tick today: the real one would find it taken), or peers have
    declared `agent_id` lost. The agent's row is share-locked for that: a reaper that holds
    it first makes this claim see `lost_at` and insert nothing; a claim that holds it first
    makes the reaper (SKIP LOCKED) come back at its next heartbeat, when it will fail this
    run with the rest. Without it a tick claimed just after the reap stayed queued for good:
    its agent abandons what it holds when it notices, and nobody reaps it twice."""
    row = await db.fetchrow(
        """
        WITH due AS (SELECT $2::timestamptz - (now() + $4::interval) AS ahead),
        live AS (
            SELECT id FROM pipectl.agents
            WHERE id = $3 AND lost_at IS NULL AND stopped_at IS NULL
            FOR SHARE
        ),
        claimed AS (
            INSERT INTO pipectl.runs (step, trigger, scheduled_for, agent_id)
            SELECT $1, 'schedule', $2, $3 FROM due, live WHERE due.ahead <= interval '0'
            ON CONFLICT (step, scheduled_for) WHERE trigger = 'schedule' AND attempt = 1
            DO NOTHING
            RETURNING id
        )
        SELECT (SELECT id FROM claimed) AS run_id, (SELECT ahead FROM due) AS ahead
        """,
        step,
        scheduled_for,
        agent_id,
        tolerance,
    )
    assert row is not None
    ahead: timedelta = row["ahead"]
    return TickClaim(row["run_id"], ahead + tolerance if ahead > timedelta(0) else None)


async def create_run(
    db: DB,
    step: str,
    trigger: Trigger,
    agent_id: UUID | None,
    *,
    requested_by: str | None = None,
    request_id: int | None = None,
    parent_run_id: int | None = None,
    attempt: int = 1,
    scheduled_for: datetime | None = None,
    status: RunStatus = RunStatus.QUEUED,
    error: str | None = None,
) -> int:
    run_id: int = await db.fetchval(
        """
        INSERT INTO pipectl.runs
            (step, trigger, agent_id, requested_by, request_id, parent_run_id, attempt,
             scheduled_for, status, error,
             started_at, finished_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                CASE WHEN $9 IN ('skipped', 'cancelled', 'failed') THEN now() END,
                CASE WHEN $9 IN ('skipped', 'cancelled', 'failed') THEN now() END)
        RETURNING id
        """,
        step,
        str(trigger),
        agent_id,
        requested_by,
        request_id,
        parent_run_id,
        attempt,
        scheduled_for,
        str(status),
        error,
    )
    return run_id


async def start_run(db: DB, run_id: int, trace_id: str | None = None) -> None:
    await db.execute(
        "UPDATE pipectl.runs SET status = 'running', started_at = now(), trace_id = $2"
        " WHERE id = $1 AND status = 'queued'",
        run_id,
        trace_id,
    )


async def finish_run(
    db: DB,
    run_id: int,
    status: RunStatus,
    *,
    rows: int | None = None,
    error: str | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Record the end of a run. False if it had already ended (a peer declared it lost)."""
    done = await db.fetchval(
        """
        UPDATE pipectl.runs
        SET status = $2, finished_at = now(), started_at = coalesce(started_at, now()),
            rows = $3, error = $4, detail = detail || $5
        WHERE id = $1 AND status IN ('queued', 'running')
        RETURNING id
        """,
        run_id,
        str(status),
        rows,
        error,
        detail or {},
    )
    return done is not None


async def close_unfinished_runs(
    db: DB, agent_id: UUID, status: RunStatus, reason: str
) -> list[int]:
    """Close this agent's runs still queued or running (shutdown, or cut off by an outage)."""
    rows = await db.fetch(
        """
        UPDATE pipectl.runs
        SET status = $2, finished_at = now(), started_at = coalesce(started_at, now()),
            error = $3
        WHERE agent_id = $1 AND status IN ('queued', 'running')
        RETURNING id
        """,
        agent_id,
        str(status),
        reason,
    )
    return [r["id"] for r in rows]


async def get_run(db: DB, run_id: int) -> Run | None:
    row = await db.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM pipectl.runs r"
        " LEFT JOIN pipectl.agents a ON a.id = r.agent_id WHERE r.id = $1",
        run_id,
    )
    return _run(row) if row else None


async def recent_runs(db: DB, steps: Sequence[str] | None = None, limit: int = 50) -> list[Run]:
    """Newest first; `steps` narrows to those steps (index runs_step_time_idx)."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS} FROM pipectl.runs r
        LEFT JOIN pipectl.agents a ON a.id = r.agent_id
        WHERE ($1::text[] IS NULL OR r.step = ANY($1))
        ORDER BY r.queued_at DESC, r.id DESC
        LIMIT $2
        """,
        list(steps) if steps is not None else None,
        limit,
    )
    return [_run(r) for r in rows]


def last_success_sql(step: str) -> str:
    """When `step` last succeeded, as a scalar subquery (a backward scan of
    runs_last_success_idx), for a probe that reads it in the round trip that reads the data it
    is compared with (checks/freshness.py). `step` is the placeholder ($n) bound to the name."""
    return (
        f"(SELECT max(finished_at) FROM pipectl.runs WHERE step = {step} AND status = 'succeeded')"
    )


async def last_success(db: DB, step: str) -> datetime | None:
    finished: datetime | None = await db.fetchval(f"SELECT {last_success_sql('$1')}", step)
    return finished


async def run_counts(db: DB) -> dict[str, tuple[int, int]]:
    """Per step, (succeeded, all) runs kept."""
    rows = await db.fetch(
        "SELECT step, count(*) FILTER (WHERE status = 'succeeded') AS ok, count(*) AS total"
        " FROM pipectl.runs GROUP BY step ORDER BY step"
    )
    return {r["step"]: (r["ok"], r["total"]) for r in rows}


async def has_unfinished(db: DB, step: str, ended: Sequence[int] = ()) -> bool:
    """Whether a run of `step` is queued or running, leaving out the runs in `ended` (ours,
    over, their end not yet recorded)."""
    busy: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pipectl.runs WHERE step = $1"
        " AND status IN ('queued', 'running') AND id <> ALL($2::bigint[]))",
        step,
        list(ended),
    )
    return busy


async def tick_exists(db: DB, step: str, scheduled_for: datetime) -> bool:
    found: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pipectl.runs WHERE step = $1 AND scheduled_for = $2"
        " AND trigger = 'schedule')",
        step,
        scheduled_for,
    )
    return found


async def latest_unfinished(db: DB, steps: Sequence[str]) -> dict[str, Run]:
    """The newest queued or running run of each step that has one: one probe of
    runs_step_unfinished_idx per step."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS}
        FROM unnest($1::text[]) AS s(step)
        CROSS JOIN LATERAL (
            SELECT * FROM pipectl.runs x
            WHERE x.step = s.step AND x.status IN ('queued', 'running')
            ORDER BY x.queued_at DESC, x.id DESC
            LIMIT 1
        ) r
        LEFT JOIN pipectl.agents a ON a.id = r.agent_id
        """,
        list(steps),
    )
    return {r["step"]: _run(r) for r in rows}
