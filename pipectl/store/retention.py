"""Retention: history older than the configured ages is deleted, in bounded batches."""

from __future__ import annotations

from datetime import timedelta

from pipectl.store.base import DB

# Deleting in batches keeps each statement short and its locks brief on a busy database.
_BATCH = 5000

_TARGETS = {
    "runs": ("pipectl.runs", "id", "queued_at", "AND status NOT IN ('queued', 'running')"),
    "results": ("pipectl.check_results", "id", "observed_at", ""),
    "samples": ("pipectl.samples", "ctid", "ts", ""),
    "events": ("pipectl.events", "id", "at", ""),
    "requests": ("pipectl.requests", "id", "created_at", "AND done_at IS NOT NULL"),
    "agents": (
        "pipectl.agents",
        "id",
        "last_seen",
        "AND (stopped_at IS NOT NULL OR lost_at IS NOT NULL)",
    ),
}


async def prune(db: DB, ages: dict[str, timedelta], max_batches: int = 100) -> dict[str, int]:
    """Delete rows older than `ages[kind]` for each kind given; returns counts deleted."""
    deleted: dict[str, int] = {}
    for kind, age in ages.items():
        table, key, column, extra = _TARGETS[kind]
        total = 0
        for _ in range(max_batches):
            # Table and column names come from the constant map above, never from input.
            status = await db.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
                f" WHERE {column} < now() - $1::interval {extra} LIMIT {_BATCH})",
                age,
            )
            count = int(status.split()[-1])
            total += count
            if count < _BATCH:
                break
        deleted[kind] = total
    return deleted
