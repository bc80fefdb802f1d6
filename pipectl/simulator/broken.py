"""The `broken_input` fault: rule_performance keeps the rows of a few rules only.

The rows of the other rules from the summary's window (the last 31 days) move to a table of
the simulator's own, `public.pipectl_demo_set_aside` (same columns), in one transaction, and
the live writer drops new rows of those rules while the fault lasts; clearing the fault moves
the rows back (with their ids) in one transaction. A simulator that stopped with rows set
aside puts them back when the fault is next cleared, or at its next start.
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)

SET_ASIDE = "public.pipectl_demo_set_aside"


async def kept_rules(conn: asyncpg.Connection, keep: int) -> frozenset[str]:
    """The first `keep` rules (by rule_id) with rows in the window: those the fault spares."""
    kept = await conn.fetchval(
        """
        SELECT coalesce(array_agg(rule_id ORDER BY rule_id), '{}') FROM (
            SELECT DISTINCT rule_id FROM public.rule_performance
            WHERE created_at >= (now() AT TIME ZONE 'UTC') - interval '31 days'
            ORDER BY rule_id LIMIT $1
        ) k
        """,
        keep,
    )
    return frozenset(kept)


async def break_input(conn: asyncpg.Connection, kept: frozenset[str]) -> None:
    """Set aside the recent rows of every rule but `kept`."""
    async with conn.transaction():
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SET_ASIDE}"
            " (LIKE public.rule_performance INCLUDING DEFAULTS)"
        )
        moved = await conn.execute(
            f"""
            WITH moved AS (
                DELETE FROM public.rule_performance
                WHERE created_at >= (now() AT TIME ZONE 'UTC') - interval '31 days'
                  AND NOT rule_id = ANY($1::text[])
                RETURNING *
            )
            INSERT INTO {SET_ASIDE} SELECT * FROM moved
            """,
            sorted(kept),
        )
    log.warning(
        "broken_input: %s rule_performance rows set aside; kept rules %s", moved, sorted(kept)
    )


async def repair_input(conn: asyncpg.Connection) -> int:
    """Put every set-aside row back; the number of rows moved."""
    if await conn.fetchval("SELECT to_regclass($1)", SET_ASIDE) is None:
        return 0
    async with conn.transaction():
        tag = await conn.execute(
            f"""
            WITH moved AS (DELETE FROM {SET_ASIDE} RETURNING *)
            INSERT INTO public.rule_performance SELECT * FROM moved
            """
        )
    moved = int(tag.split()[-1])
    if moved:
        log.warning("broken_input: %d rule_performance rows put back", moved)
    return moved
