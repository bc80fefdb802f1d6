"""Agents table: registration, heartbeats, and declaring silent peers lost."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from pipectl.model import Agent
from pipectl.store.base import DB


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
    await db.execute(
        """
        INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        agent_id,
        name,
        host,
        pid,
        version,
        heartbeat_seconds,
    )
    await db.execute(
        "INSERT INTO pipectl.events (kind, subject, message, detail)"
        " VALUES ('agent.started', $1, $2, $3)",
        name,
        f"agent {name} started on {host} (pid {pid}, version {version})",
        {"agent_id": str(agent_id)},
    )


async def heartbeat(db: DB, agent_id: UUID, status_line: str | None = None) -> bool:
    """Refresh last_seen; False when peers already declared this agent lost."""
    lost = await db.fetchval(
        """
        UPDATE pipectl.agents SET last_seen = now(), status_line = coalesce($2, status_line)
        WHERE id = $1 RETURNING lost_at IS NOT NULL
        """,
        agent_id,
        status_line,
    )
    return lost is False


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
class LostAgent:
    agent_id: UUID
    name: str
    failed_runs: int
    released_requests: int


_REAP = """
WITH lost AS (
    SELECT id FROM pipectl.agents
    WHERE stopped_at IS NULL AND lost_at IS NULL AND id <> $1 AND ({condition})
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE pipectl.agents a SET lost_at = now() FROM lost WHERE a.id = lost.id
    RETURNING a.id, a.name
), failed AS (
    UPDATE pipectl.runs r
    SET status = 'failed', finished_at = now(), started_at = coalesce(r.started_at, now()),
        error = 'agent lost: ' || m.name || ' ' || $3
    FROM marked m
    WHERE r.agent_id = m.id AND r.status IN ('queued', 'running')
    RETURNING m.id AS agent_id
), released AS (
    UPDATE pipectl.requests q SET claimed_by = NULL, claimed_at = NULL
    FROM marked m
    WHERE q.claimed_by = m.id AND q.done_at IS NULL
    RETURNING m.id AS agent_id
)
SELECT m.id, m.name,
       (SELECT count(*) FROM failed f WHERE f.agent_id = m.id) AS failed_runs,
       (SELECT count(*) FROM released x WHERE x.agent_id = m.id) AS released_requests
FROM marked m
"""


async def reap_lost_agents(db: DB, reaper: UUID, lost_after: int) -> list[LostAgent]:
    """Declare agents silent for `lost_after` heartbeats lost: fail their unfinished runs and
    make their unfinished requests claimable again. Two survivors never both reap one peer."""
    sql = _REAP.format(
        condition="last_seen < now() - make_interval(secs => heartbeat_seconds * $2)"
    )
    rows = await db.fetch(sql, reaper, float(lost_after), "stopped sending heartbeats")
    return await _report(db, reaper, rows)


async def reap_dead_predecessors(db: DB, reaper: UUID, agent_ids: list[UUID]) -> list[LostAgent]:
    """Agents of this host whose process is gone (killed, crashed) are lost right away,
    without waiting for their heartbeats to time out. The caller names them by id after
    checking their pids: an agent registering meanwhile is never among them."""
    sql = _REAP.format(condition="id = ANY($2::uuid[])")
    rows = await db.fetch(sql, reaper, agent_ids, "is no longer running on this host")
    return await _report(db, reaper, rows)


async def _report(db: DB, reaper: UUID, rows: list[asyncpg.Record]) -> list[LostAgent]:
    lost = [LostAgent(r["id"], r["name"], r["failed_runs"], r["released_requests"]) for r in rows]
    for agent in lost:
        await db.execute(
            "INSERT INTO pipectl.events (kind, subject, message, detail)"
            " VALUES ('agent.lost', $1, $2, $3)",
            agent.name,
            f"agent {agent.name} lost: {agent.failed_runs} run(s) marked failed, "
            f"{agent.released_requests} request(s) released",
            {"agent_id": str(agent.agent_id), "reaper": str(reaper)},
        )
    return lost
