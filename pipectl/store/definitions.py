"""Steps and checks as published by agents, with their shared operator state (pause, silence)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from pipectl.model import CheckStatus
from pipectl.store.base import DB, Conn


@dataclass(frozen=True)
class StepDefinition:
    """What an agent publishes about a step; built from config by the agent."""

    name: str
    kind: str
    relation: str | None
    sql: str | None
    schedule: str | None
    depends_on: Sequence[str]
    description: str
    definition: dict[str, Any]
    enabled: bool = True


@dataclass(frozen=True)
class CheckDefinition:
    name: str
    kind: str
    target: str | None
    sql: str | None
    schedule: str | None
    description: str
    definition: dict[str, Any]
    enabled: bool = True


async def publish_steps(db: DB, steps: Sequence[StepDefinition], agent_id: UUID | None) -> None:
    """Upsert definitions; operator state (paused, next run) is kept across publishes."""
    await db.executemany(
        """
        INSERT INTO pipectl.steps AS s
            (name, kind, relation, sql, schedule, depends_on, description, definition, enabled,
             published_by, published_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
        ON CONFLICT (name) DO UPDATE SET
            kind = EXCLUDED.kind, relation = EXCLUDED.relation, sql = EXCLUDED.sql,
            schedule = EXCLUDED.schedule, depends_on = EXCLUDED.depends_on,
            description = EXCLUDED.description, definition = EXCLUDED.definition,
            enabled = EXCLUDED.enabled, published_by = EXCLUDED.published_by,
            published_at = now()
        """,
        [
            (
                s.name,
                s.kind,
                s.relation,
                s.sql,
                s.schedule,
                list(s.depends_on),
                s.description,
                s.definition,
                s.enabled,
                agent_id,
            )
            for s in steps
        ],
    )


async def publish_checks(db: DB, checks: Sequence[CheckDefinition], agent_id: UUID | None) -> None:
    await db.executemany(
        """
        INSERT INTO pipectl.checks AS c
            (name, kind, target, sql, schedule, description, definition, enabled,
             published_by, published_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
        ON CONFLICT (name) DO UPDATE SET
            kind = EXCLUDED.kind, target = EXCLUDED.target, sql = EXCLUDED.sql,
            schedule = EXCLUDED.schedule, description = EXCLUDED.description,
            definition = EXCLUDED.definition, enabled = EXCLUDED.enabled,
            published_by = EXCLUDED.published_by, published_at = now()
        """,
        [
            (
                c.name,
                c.kind,
                c.target,
                c.sql,
                c.schedule,
                c.description,
                c.definition,
                c.enabled,
                agent_id,
            )
            for c in checks
        ],
    )


PUBLISH_LOCK = 1886418274
"""The advisory lock ("ppub") under which publications are written and definitions retired
(sql/pipectl/0007_publications.sql takes the same one)."""


@dataclass(frozen=True)
class Retired:
    """A definition retired because no live agent publishes it any more."""

    table: str
    """'steps' or 'checks'."""
    name: str


async def publish(
    db: DB,
    agent_id: UUID,
    steps: Sequence[StepDefinition],
    checks: Sequence[CheckDefinition],
) -> list[Retired]:
    """An agent's whole publication, in one transaction under PUBLISH_LOCK: upsert its
    definitions, record them as its set (bringing back any that were retired) and retire
    what no live agent publishes any more. Two agents publishing at once take turns, so
    neither retires what the other is publishing. Returns what was retired."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _publish(conn, agent_id, steps, checks)
    return await _publish(db, agent_id, steps, checks)


async def _publish(
    conn: Conn,
    agent_id: UUID,
    steps: Sequence[StepDefinition],
    checks: Sequence[CheckDefinition],
) -> list[Retired]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PUBLISH_LOCK)
        await publish_steps(conn, steps, agent_id)
        await publish_checks(conn, checks, agent_id)
        await conn.execute(
            "SELECT pipectl.set_publications($1, $2::text[], $3::text[])",
            agent_id,
            [s.name for s in steps],
            [c.name for c in checks],
        )
        return await _retire(conn)


async def retire_unpublished(db: DB) -> list[Retired]:
    """Retire what no live agent publishes (after peers were declared lost, say)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _locked_retire(conn)
    return await _locked_retire(db)


async def _locked_retire(conn: Conn) -> list[Retired]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PUBLISH_LOCK)
        return await _retire(conn)


async def _retire(conn: Conn) -> list[Retired]:
    rows = await conn.fetch("SELECT tbl, name FROM pipectl.retire_unpublished()")
    return [Retired(r["tbl"], r["name"]) for r in rows]


async def agent_published(db: DB, checks: Sequence[CheckDefinition]) -> set[str]:
    """The names of `checks` that a live agent publishes with exactly this definition (for
    `pipectl check`, which records a result only for a check the agents run as it ran it)."""
    if not checks:
        return set()
    rows = await db.fetch(
        """
        SELECT c.name, c.kind, c.target, c.sql, c.schedule, c.description, c.definition,
               c.enabled
        FROM pipectl.checks c
        WHERE c.name = ANY($1::text[]) AND c.retired_at IS NULL
          AND EXISTS (SELECT 1 FROM pipectl.agents a
                      WHERE a.stopped_at IS NULL AND a.lost_at IS NULL
                        AND c.name = ANY(a.published_checks))
        """,
        [c.name for c in checks],
    )
    stored = {
        r["name"]: {
            **dict(r),
            "definition": json.loads(d) if isinstance(d := r["definition"], str) else d,
        }
        for r in rows
    }
    same = set()
    for check in checks:
        row = stored.get(check.name)
        if row is not None and (
            row["kind"],
            row["target"],
            row["sql"],
            row["schedule"],
            row["description"],
            row["definition"],
            row["enabled"],
        ) == (
            check.kind,
            check.target,
            check.sql,
            check.schedule,
            check.description,
            json.loads(json.dumps(check.definition)),
            check.enabled,
        ):
            same.add(check.name)
    return same


@dataclass(frozen=True)
class StepState:
    name: str
    kind: str
    relation: str | None
    sql: str | None
    schedule: str | None
    depends_on: list[str]
    description: str
    enabled: bool
    paused: bool
    paused_by: str | None
    paused_at: datetime | None
    paused_reason: str | None
    next_run_at: datetime | None
    definition: dict[str, Any]
    retired_at: datetime | None = None
    """Set when no live agent publishes the step any more (then enabled is false)."""


async def step_states(db: DB, names: Sequence[str] | None = None) -> list[StepState]:
    rows = await db.fetch(
        """
        SELECT name, kind, relation, sql, schedule, depends_on, description, enabled, paused,
               paused_by, paused_at, paused_reason, next_run_at, definition, retired_at
        FROM pipectl.steps
        WHERE $1::text[] IS NULL OR name = ANY($1)
        ORDER BY name
        """,
        list(names) if names is not None else None,
    )
    return [StepState(**dict(r)) for r in rows]


async def set_paused(db: DB, step: str, paused: bool, by: str, reason: str) -> bool:
    """Persist pause state as the open pause (or resume) request by `by` with `reason`,
    held by this session's agent, asked; False when the step is unknown. PostgreSQL refuses
    (InsufficientPrivilegeError) when no such request is held: pipectl.set_step_paused."""
    done: bool = await db.fetchval(
        "SELECT pipectl.set_step_paused($1, $2, $3, $4)", step, paused, by, reason
    )
    return done


async def set_next_run(db: DB, step: str, at: datetime | None) -> None:
    await db.execute("UPDATE pipectl.steps SET next_run_at = $2 WHERE name = $1", step, at)


@dataclass(frozen=True)
class CheckState:
    name: str
    kind: str
    target: str | None
    sql: str | None
    schedule: str | None
    description: str
    enabled: bool
    status: CheckStatus
    status_since: datetime
    last_value: float | None
    last_result_at: datetime | None
    silenced_until: datetime | None
    silenced_by: str | None
    silence_reason: str | None
    definition: dict[str, Any]
    retired_at: datetime | None = None
    """Set when no live agent publishes the check any more (then enabled is false)."""

    def silenced_at(self, now: datetime) -> bool:
        return self.silenced_until is not None and self.silenced_until > now


async def check_states(db: DB, names: Sequence[str] | None = None) -> list[CheckState]:
    rows = await db.fetch(
        """
        SELECT name, kind, target, sql, schedule, description, enabled, status, status_since,
               last_value, last_result_at, silenced_until, silenced_by, silence_reason, definition,
               retired_at
        FROM pipectl.checks
        WHERE $1::text[] IS NULL OR name = ANY($1)
        ORDER BY name
        """,
        list(names) if names is not None else None,
    )
    return [CheckState(**{**dict(r), "status": CheckStatus(r["status"])}) for r in rows]


async def set_silence(db: DB, check: str, until: datetime | None, by: str, reason: str) -> bool:
    """Silence a check until `until` (None: unsilence) as the open request by `by` with
    `reason`, held by this session's agent, asked; False when the check is unknown.
    PostgreSQL refuses a silence without such a request or longer than 30 days from it
    (pipectl.set_check_silence)."""
    done: bool = await db.fetchval(
        "SELECT pipectl.set_check_silence($1, $2::timestamptz, $3, $4)", check, until, by, reason
    )
    return done


async def claim_check_ticks(
    db: DB,
    checks: Sequence[str],
    nominal: datetime,
    next_due: datetime,
    tolerance: timedelta = timedelta(seconds=5),
) -> set[str]:
    """Take one tick of several checks at once; returns those this agent got. Agents racing
    for the same set lock the rows in the same order, so one of them gets them all.

    The database's clock arbitrates: a tick more than `tolerance` ahead of it is not taken
    (a clock running a day fast would push next_due to tomorrow and stop every agent's
    checks), and a next_due further ahead than one interval is not believed (one written by
    such a clock is taken over)."""
    rows = await db.fetch(
        """
        UPDATE pipectl.checks SET next_due = $3
        WHERE name = ANY($1::text[]) AND $2 <= now() + $4::interval
          AND (next_due IS NULL OR next_due <= $2
               OR next_due > now() + ($3 - $2) + $4::interval)
        RETURNING name
        """,
        sorted(checks),
        nominal,
        next_due,
        tolerance,
    )
    return {r["name"] for r in rows}
