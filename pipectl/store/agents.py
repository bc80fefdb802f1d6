"""Agents table: registration, heartbeats, and declaring silent peers lost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from pipectl.model import Agent
from pipectl.store.base import DB, Conn


async def register_agent(
    db: DB,
    *,
    agent_id: UUID,
    name: str,
    host: str,
    pid: int,
    version: str,
    heartbeat_seconds: float,
) -> None:
    """One statement, so the row and its event exist together, and registering the same id
    again (a rejoin retried after a failed heartbeat) changes nothing."""
    await db.execute(
        """
        WITH agent AS (
            INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        INSERT INTO pipectl.events (kind, subject, message, detail)
        SELECT 'agent.started', $2, $7, $8 FROM agent
        """,
        agent_id,
        name,
        host,
        pid,
        version,
        heartbeat_seconds,
        f"agent {name} started on {host} (pid {pid}, version {version})",
        {"agent_id": str(agent_id)},
    )


@dataclass(frozen=True)
class Beat:
    alive: bool
    """False when peers already declared this agent lost (or its row is gone)."""
    server_now: datetime
    """The database's clock at the heartbeat (statement time)."""


async def heartbeat(db: DB, agent_id: UUID, status_line: str | None = None) -> Beat:
    """Refresh last_seen, and read the database's clock."""
    row = await db.fetchrow(
        """
        WITH beat AS (
            UPDATE pipectl.agents SET last_seen = now(), status_line = coalesce($2, status_line)
            WHERE id = $1 RETURNING lost_at IS NULL AS alive
        )
        SELECT coalesce((SELECT alive FROM beat), false) AS alive, statement_timestamp() AS now
        """,
        agent_id,
        status_line,
    )
    assert row is not None
    return Beat(row["alive"], row["now"])


# An agent holds a shared session-level advisory lock (LIVENESS_NAMESPACE, hashtext(id)) on
# its listening connection for as long as it lives: the kernel closes a dead process's
# sockets, the server ends its sessions and the lock goes with them. Peers see it in
# pg_locks, whatever host or PID namespace the agent runs in (a PID seen from another
# container, or hidden by ProtectProc=invisible, says nothing).
LIVENESS_NAMESPACE = 0x70697066


async def hold_liveness(conn: Conn, agent_id: UUID) -> None:
    await conn.execute(
        "SELECT pg_advisory_lock_shared($1, hashtext($2))", LIVENESS_NAMESPACE, str(agent_id)
    )


async def release_liveness(conn: Conn, agent_id: UUID) -> None:
    await conn.execute(
        "SELECT pg_advisory_unlock_shared($1, hashtext($2))", LIVENESS_NAMESPACE, str(agent_id)
    )


_SESSIONS_GONE = f"""
NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = {LIVENESS_NAMESPACE}::bigint::oid
      AND l.objid = (hashtext(a.id::text)::bigint & 4294967295)::oid
)
AND a.last_seen < now() - make_interval(secs => a.heartbeat_seconds * 1.5)
"""


async def stop_agent(db: DB, agent_id: UUID) -> None:
    name = await db.fetchval(
        "UPDATE pipectl.agents SET stopped_at = now(), last_seen = now()"
        " WHERE id = $1 RETURNING name",
        agent_id,
    )
    if name is not None:
        await db.execute(
            "INSERT INTO pipectl.events (kind, subject, message, detail)"
            " VALUES ('agent.stopped', $1, $2, $3)",
            name,
            f"agent {name} stopped",
            {"agent_id": str(agent_id)},
        )


async def alive_agents(db: DB) -> list[Agent]:
    rows = await db.fetch(
        """
        SELECT id, name, host, pid, version, started_at, last_seen, stopped_at, lost_at,
               heartbeat_seconds, status_line
        FROM pipectl.agents
        WHERE stopped_at IS NULL AND lost_at IS NULL
          AND last_seen > now() - make_interval(secs => heartbeat_seconds * 3)
        ORDER BY started_at
        """
    )
    return [Agent(**dict(r)) for r in rows]


@dataclass(frozen=True)
class Retry:
    run_id: int
    step: str
    attempt: int


@dataclass(frozen=True)
class LostAgent:
    agent_id: UUID
    name: str
    why: str
    failed_runs: int
    released_requests: int
    retries: tuple[Retry, ...] = ()
    """Runs queued again for the reaper to run (those of every agent reaped in one pass)."""


_REAP = """
WITH lost AS (
    SELECT a.id,
           CASE WHEN {silent} THEN 'stopped sending heartbeats'
                ELSE 'is no longer connected (its process is gone)' END AS why
    FROM pipectl.agents a
    WHERE a.stopped_at IS NULL AND a.lost_at IS NULL AND a.id <> $1 AND ({condition})
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE pipectl.agents a SET lost_at = now() FROM lost WHERE a.id = lost.id
    RETURNING a.id, a.name, lost.why
), failed AS (
    UPDATE pipectl.runs r
    SET status = 'failed', finished_at = now(), started_at = coalesce(r.started_at, now()),
        error = 'agent lost: ' || m.name || ' ' || m.why
    FROM marked m
    WHERE r.agent_id = m.id AND r.status IN ('queued', 'running')
    RETURNING m.id AS agent_id, r.id, r.step, r.request_id, r.attempt
), retried AS (
    -- A run of the lost agent's own making (a tick, its retry, a run after its upstream)
    -- would otherwise wait for the next tick: a lost day for a daily step. It is queued
    -- again as a retry owned by the reaper (who runs it), unless the step has run since.
    -- Runs of requests are not: the request itself goes back to the queue.
    INSERT INTO pipectl.runs (step, trigger, agent_id, parent_run_id, attempt)
    SELECT DISTINCT ON (f.step) f.step, 'retry', $1, f.id, f.attempt + 1
    FROM failed f
    WHERE f.request_id IS NULL AND f.step = ANY($2::text[])
      AND NOT EXISTS (SELECT 1 FROM pipectl.runs later
                      WHERE later.step = f.step AND later.id > f.id)
    ORDER BY f.step, f.id DESC
    RETURNING id, step, attempt
), released AS (
    UPDATE pipectl.requests q SET claimed_by = NULL, claimed_at = NULL
    FROM marked m
    WHERE q.claimed_by = m.id AND q.done_at IS NULL
    RETURNING m.id AS agent_id
)
SELECT m.id, m.name, m.why,
       (SELECT count(*) FROM failed f WHERE f.agent_id = m.id) AS failed_runs,
       (SELECT count(*) FROM released x WHERE x.agent_id = m.id) AS released_requests,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(id, step, attempt)), '[]')
          FROM retried) AS retries
FROM marked m
"""


async def reap_lost_agents(
    db: DB, reaper: UUID, lost_after: int, steps: Sequence[str]
) -> list[LostAgent]:
    """Declare lost the agents silent for `lost_after` heartbeats, and those whose sessions
    are all gone (see LIVENESS_NAMESPACE): fail their unfinished runs, queue again those of
    their own making (for steps in `steps`, the reaper's: it runs them), and make their
    unfinished requests claimable again. Two survivors
    never both reap one peer."""
    silent = f"a.last_seen < now() - make_interval(secs => a.heartbeat_seconds * {lost_after:d})"
    sql = _REAP.format(condition=f"({silent}) OR ({_SESSIONS_GONE})", silent=f"({silent})")
    return await _report(db, reaper, await db.fetch(sql, reaper, list(steps)))


async def reap_departed_agents(db: DB, reaper: UUID, steps: Sequence[str]) -> list[LostAgent]:
    """Declare lost only the agents whose sessions are all gone (a process killed or crashed
    a moment ago): at start-up, before this agent may trust heartbeat ages."""
    sql = _REAP.format(condition=_SESSIONS_GONE, silent="false")
    return await _report(db, reaper, await db.fetch(sql, reaper, list(steps)))


async def _report(db: DB, reaper: UUID, rows: list[asyncpg.Record]) -> list[LostAgent]:
    lost = [
        LostAgent(
            r["id"],
            r["name"],
            r["why"],
            r["failed_runs"],
            r["released_requests"],
            tuple(Retry(*retry) for retry in r["retries"]),
        )
        for r in rows
    ]
    for agent in lost:
        retried = ", retried: " + ", ".join(r.step for r in agent.retries)
        await db.execute(
            "INSERT INTO pipectl.events (kind, subject, message, detail)"
            " VALUES ('agent.lost', $1, $2, $3)",
            agent.name,
            f"agent {agent.name} lost ({agent.why}): {agent.failed_runs} run(s) marked "
            f"failed, {agent.released_requests} request(s) released"
            + (retried if agent.retries else ""),
            {"agent_id": str(agent.agent_id), "reaper": str(reaper)},
        )
    return lost
