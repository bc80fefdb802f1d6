"""Retention: history older than its configured age goes, anything unfinished stays."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from pipectl import store
from pipectl.model import RequestKind


async def test_prune_deletes_old_history_only(db: asyncpg.Connection) -> None:
    agent = await db.fetchval(
        "INSERT INTO pipectl.agents (id, name, host, pid, version) VALUES"
        " (gen_random_uuid(), 'a', 'h', 1, 'x') RETURNING id"
    )
    await db.execute(
        """
        INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at, finished_at)
        VALUES ('s', 'schedule', 'succeeded', now() - interval '40 days',
                now() - interval '40 days', now() - interval '40 days'),
               ('s', 'schedule', 'running', now() - interval '40 days',
                now() - interval '40 days', NULL),
               ('s', 'schedule', 'succeeded', now() - interval '1 day',
                now() - interval '1 day', now() - interval '1 day');
        INSERT INTO pipectl.check_results (check_name, status, observed_at)
        VALUES ('c', 'ok', now() - interval '40 days'), ('c', 'ok', now());
        INSERT INTO pipectl.samples (series, ts, value)
        VALUES ('x', now() - interval '100 days', 1), ('x', now(), 2);
        """
    )
    old = await store.create_request(db, RequestKind.RERUN, "s")
    await store.finish_request(db, old.id, "succeeded", "done")  # type: ignore[arg-type]
    await db.execute(
        "UPDATE pipectl.requests SET created_at = now() - interval '40 days' WHERE id = $1", old.id
    )
    open_request = await store.create_request(db, RequestKind.RERUN, "s")
    await db.execute(
        "UPDATE pipectl.requests SET created_at = now() - interval '40 days' WHERE id = $1",
        open_request.id,
    )
    deleted = await store.prune(
        db,
        {
            "runs": timedelta(days=30),
            "results": timedelta(days=30),
            "samples": timedelta(days=90),
            "requests": timedelta(days=30),
        },
    )
    assert deleted == {"runs": 1, "results": 1, "samples": 1, "requests": 1}
    statuses = sorted(r["status"] for r in await db.fetch("SELECT status FROM pipectl.runs"))
    assert statuses == ["running", "succeeded"], "unfinished runs are never pruned"
    remaining = [r["id"] for r in await db.fetch("SELECT id FROM pipectl.requests")]
    assert remaining == [open_request.id], "an open request is never pruned"
    assert agent is not None
