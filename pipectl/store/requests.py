"""Requests: operator intent as rows, claimed by exactly one agent, finished with an outcome."""

from __future__ import annotations

from collections.abc import Collection
from uuid import UUID

import asyncpg

from pipectl.model import Outcome, Request, RequestKind
from pipectl.request_args import RequestArgs, check_args
from pipectl.store.base import DB

_COLUMNS = """id, kind, target, args, reason, requested_by, created_at, claimed_by, claimed_at,
              done_at, outcome, detail, traceparent"""


def _request(row: asyncpg.Record) -> Request:
    data = dict(row)
    data["kind"] = RequestKind(data["kind"])
    data["outcome"] = Outcome(data["outcome"]) if data["outcome"] else None
    return Request(**data)


async def create_request(
    db: DB,
    kind: RequestKind,
    target: str,
    reason: str = "",
    args: RequestArgs | None = None,
    traceparent: str | None = None,
) -> Request:
    """Insert (PostgreSQL stamps who and when, audits it and wakes the agents). `args` is
    the kind's model (its defaults when None); a model of another kind raises ArgsError.
    `traceparent` is the W3C trace context of the span filing it (pipectl.telemetry)."""
    checked = check_args(kind, args)
    row = await db.fetchrow(
        "INSERT INTO pipectl.requests (kind, target, reason, args, traceparent)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
        str(kind),
        target,
        reason,
        checked.to_json(),
        traceparent,
    )
    assert row is not None
    return _request(row)


async def claim_requests(
    db: DB, agent_id: UUID, limit: int = 20, executing: Collection[int] = ()
) -> list[Request]:
    """Claim the oldest open requests; concurrent agents never claim the same row.

    Requests for one target run in the order they were filed: one waits until every
    earlier request for its target is done (a pause then a resume, taken by two agents at
    once, would otherwise end in either state). Requests this agent claimed but is not
    executing (`executing` lists those it is) are taken again: a claim whose reply was lost
    with the connection would otherwise stay claimed by a live agent, and never run.

    An agent that peers declared lost claims nothing under that identity: its requests were
    handed back, and one it is still executing must not start a second time before it
    notices and rejoins under a new id."""
    rows = await db.fetch(
        f"""
        UPDATE pipectl.requests q
        SET claimed_by = $1, claimed_at = now(), attempts = attempts + 1
        WHERE q.id IN (
            SELECT id FROM pipectl.requests r
            WHERE done_at IS NULL
              AND (claimed_at IS NULL OR claimed_by = $1)
              AND NOT id = ANY($3::bigint[])
              AND NOT EXISTS (
                  SELECT 1 FROM pipectl.agents a WHERE a.id = $1 AND a.lost_at IS NOT NULL
              )
              AND NOT EXISTS (
                  SELECT 1 FROM pipectl.requests e
                  WHERE e.done_at IS NULL AND e.target = r.target AND e.id < r.id
              )
            ORDER BY id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        RETURNING {_COLUMNS}
        """,
        agent_id,
        limit,
        list(executing),
    )
    return sorted((_request(r) for r in rows), key=lambda r: r.id)


async def finish_request(
    db: DB, request_id: int, outcome: Outcome, detail: str, claimed_by: UUID | None = None
) -> bool:
    """Record the outcome, once. With `claimed_by`, only while that agent still holds the
    claim: an agent declared lost must not overwrite what its successor does."""
    done = await db.fetchval(
        "UPDATE pipectl.requests SET done_at = now(), outcome = $2, detail = $3"
        " WHERE id = $1 AND done_at IS NULL AND ($4::uuid IS NULL OR claimed_by = $4)"
        " RETURNING id",
        request_id,
        str(outcome),
        detail,
        claimed_by,
    )
    return done is not None


async def release_request(db: DB, request_id: int, claimed_by: UUID) -> bool:
    """Hand a claimed request back (stopped before it did anything): another agent takes it.
    Only the agent holding the claim can release it."""
    released = await db.fetchval(
        "UPDATE pipectl.requests SET claimed_by = NULL, claimed_at = NULL"
        " WHERE id = $1 AND done_at IS NULL AND claimed_by = $2 RETURNING id",
        request_id,
        claimed_by,
    )
    return released is not None


async def release_claims(db: DB, agent_id: UUID) -> tuple[int, int]:
    """Settle every unfinished request a stopping agent still holds (its work was cancelled
    past the shutdown deadline), as RequestHandler._cancelled would have: one that made no
    run goes back to the queue for the next agent; a rerun that made runs is recorded as
    cancelled, since executing it again would repeat the runs that completed. Returns
    (handed back, cancelled)."""
    rows = await db.fetch(
        """
        WITH held AS (
            SELECT q.id, EXISTS (SELECT 1 FROM pipectl.runs r WHERE r.request_id = q.id)
                   AS made_runs
            FROM pipectl.requests q
            WHERE q.claimed_by = $1 AND q.done_at IS NULL
            FOR UPDATE
        ), released AS (
            UPDATE pipectl.requests q SET claimed_by = NULL, claimed_at = NULL
            FROM held WHERE q.id = held.id AND NOT held.made_runs
            RETURNING 'released' AS what
        ), cancelled AS (
            UPDATE pipectl.requests q
            SET done_at = now(), outcome = 'cancelled',
                detail = 'agent stopped while executing the request'
            FROM held WHERE q.id = held.id AND held.made_runs
            RETURNING 'cancelled' AS what
        )
        SELECT what FROM released UNION ALL SELECT what FROM cancelled
        """,
        agent_id,
    )
    released = sum(1 for r in rows if r["what"] == "released")
    return released, len(rows) - released


async def request_has_runs(db: DB, request_id: int) -> bool:
    """Whether executing a request has created any run (a rerun that did so cannot simply
    be handed to another agent: its runs would be made twice)."""
    found: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pipectl.runs WHERE request_id = $1)", request_id
    )
    return found


async def get_request(db: DB, request_id: int) -> Request | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM pipectl.requests WHERE id = $1", request_id)
    return _request(row) if row else None


async def list_requests(db: DB, limit: int = 100, open_only: bool = False) -> list[Request]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM pipectl.requests"
        " WHERE NOT $2 OR done_at IS NULL ORDER BY id DESC LIMIT $1",
        limit,
        open_only,
    )
    return [_request(r) for r in rows]


async def request_reasons(db: DB, request_ids: Collection[int]) -> dict[int, str]:
    """The reason each request was filed with, by id (for runs a request caused)."""
    if not request_ids:
        return {}
    rows = await db.fetch(
        "SELECT id, reason FROM pipectl.requests WHERE id = ANY($1::bigint[])",
        sorted(set(request_ids)),
    )
    return {row["id"]: row["reason"] for row in rows}
