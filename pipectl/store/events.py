"""Events: the audit trail and the incident timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipectl.model import Event
from pipectl.store.base import DB


async def add_event(
    db: DB,
    kind: str,
    subject: str,
    message: str,
    detail: dict[str, Any] | None = None,
    actor: str | None = None,
) -> None:
    """Record one event; `actor` defaults to the database user (session_user)."""
    await db.execute(
        "INSERT INTO pipectl.events (kind, subject, message, detail, actor)"
        " VALUES ($1, $2, $3, $4, coalesce($5, session_user))",
        kind,
        subject,
        message,
        detail or {},
        actor,
    )


async def recent_events(
    db: DB, since: datetime | None = None, subject: str | None = None, limit: int = 200
) -> list[Event]:
    rows = await db.fetch(
        """
        SELECT id, at, kind, subject, actor, message, detail FROM pipectl.events
        WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::text IS NULL OR subject = $2)
        ORDER BY at DESC, id DESC LIMIT $3
        """,
        since,
        subject,
        limit,
    )
    return [Event(**dict(r)) for r in rows]
