"""Helpers for simulator tests: a running simulator, row counts, Redis counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import redis

from pipectl.simulator import ApesSimulator
from pipectl.simulator.rhythm import FEED_NAMES

INSERT_ONLY = ("rule_performance", "user_feedback", "prompt_improvement_sessions")
TIME_COLUMN = {
    "rule_performance": "created_at",
    "user_feedback": "created_at",
    "prompt_improvement_sessions": "created_at",
    "improvement_sessions": "started_at",
    "discovered_patterns": "discovered_at",
    "rule_combinations": "updated_at",
}


@asynccontextmanager
async def running(sim: ApesSimulator) -> AsyncIterator[asyncio.Task[None]]:
    """Run the simulator in the background; stop it (and wait for it) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def utc_wall(moment: datetime) -> datetime:
    """The naive UTC value that `timestamp` columns hold for `moment`."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def since(table: str, moment: datetime) -> datetime:
    """The bound to compare `table`'s time column with (timestamptz columns take aware)."""
    return moment if table == "prompt_improvement_sessions" else utc_wall(moment)


async def rows_since(
    conn: asyncpg.Connection, table: str, start: datetime, end: datetime | None = None
) -> int:
    column = TIME_COLUMN[table]
    sql = f"SELECT count(*) FROM public.{table} WHERE {column} >= $1"
    args: list[object] = [since(table, start)]
    if end is not None:
        sql += f" AND {column} < $2"
        args.append(since(table, end))
    return int(await conn.fetchval(sql, *args))


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        table: int(await conn.fetchval(f"SELECT count(*) FROM public.{table}"))
        for table in FEED_NAMES
    }


def keyspace(client: redis.Redis) -> tuple[int, int]:
    """Server-wide (keyspace_hits, keyspace_misses)."""
    info = client.info("stats")
    return int(info["keyspace_hits"]), int(info["keyspace_misses"])


def hit_ratio(before: tuple[int, int], after: tuple[int, int]) -> float:
    hits = after[0] - before[0]
    misses = after[1] - before[1]
    assert hits + misses > 0, "no GETs reached Redis"
    return hits / (hits + misses)


async def set_far_time_zone(dsn: str) -> None:
    """Give the database a TimeZone far from UTC: the simulator must not depend on it."""
    conn = await asyncpg.connect(dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Pacific/Kiritimati'")
    finally:
        await conn.close()
