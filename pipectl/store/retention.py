"""Retention: history older than the configured ages is deleted, in bounded batches.

The deleting is done by pipectl.prune(), a function that runs as the schema's owner: no
pipectl role may DELETE from the audit trail, and prune() keeps at least 7 days of events and
requests whatever age it is given."""

from __future__ import annotations

from datetime import timedelta

from pipectl.store.base import DB

# Deleting in batches keeps each statement short and its locks brief on a busy database.
_BATCH = 5000

KINDS = ("runs", "results", "samples", "events", "requests", "agents")


async def prune(db: DB, ages: dict[str, timedelta], max_batches: int = 100) -> dict[str, int]:
    """Delete rows older than `ages[kind]` for each kind given; returns counts deleted."""
    deleted: dict[str, int] = {}
    for kind, age in ages.items():
        if kind not in KINDS:
            raise ValueError(f"unknown retention kind {kind!r} (one of {', '.join(KINDS)})")
        total = 0
        for _ in range(max_batches):
            count: int = await db.fetchval("SELECT pipectl.prune($1, $2, $3)", kind, age, _BATCH)
            total += count
            if count < _BATCH:
                break
        deleted[kind] = total
    return deleted
