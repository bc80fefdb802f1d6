"""Requests: operator intent as rows, claimed by exactly one agent, finished with an outcome."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from pipectl.model import Outcome, Request, RequestKind
from pipectl.store.base import DB

_COLUMNS = """id, kind, target, args, reason, requested_by, created_at, claimed_by, claimed_at,
              done_at, outcome, detail"""


def _request(row: asyncpg.Record) -> Request:
    data = dict(row)
    data["kind"] = RequestKind(data["kind"])
    data["outcome"] = Outcome(data["outcome"]) if data["outcome"] else None
    return Request(**data)


async def create_request(
    db: DB, kind: RequestKind, target: str, reason: str = "", args: dict[str, Any] | None = None
) -> Request:
    """Insert (PostgreSQL stamps who and when, audits it and wakes the agents)."""
    row = await db.fetchrow(
        f"INSERT INTO pipectl.requests (kind, target, reason, args) VALUES ($1, $2, $3, $4)"
        f" RETURNING {_COLUMNS}",
        str(kind),
        target,
        reason,
        args or {},
    )
    assert row is not None
    return _request(row)


async def claim_requests(db: DB, agent_id: UUID, limit: int = 20) -> list[Request]:
    """Claim the oldest open requests; concurrent agents never claim the same row."""
    rows = await db.fetch(
        f"""
        UPDATE pipectl.requests q
        SET claimed_by = $1, claimed_at = now(), attempts = attempts + 1
        WHERE q.id IN (
            SELECT id FROM pipectl.requests
            WHERE done_at IS NULL AND claimed_at IS NULL
            ORDER BY id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        RETURNING {_COLUMNS}
        """,
        agent_id,
        limit,
    )
    return sorted((_request(r) for r in rows), key=lambda r: r.id)


async def finish_request(db: DB, request_id: int, outcome: Outcome, detail: str) -> bool:
    done = await db.fetchval(
        "UPDATE pipectl.requests SET done_at = now(), outcome = $2, detail = $3"
        " WHERE id = $1 AND done_at IS NULL RETURNING id",
        request_id,
        str(outcome),
        detail,
    )
    return done is not None


async def release_request(db: DB, request_id: int) -> None:
    """Hand a claimed request back (shutdown before it started): another agent takes it."""
    await db.execute(
        "UPDATE pipectl.requests SET claimed_by = NULL, claimed_at = NULL"
        " WHERE id = $1 AND done_at IS NULL",
        request_id,
    )


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
