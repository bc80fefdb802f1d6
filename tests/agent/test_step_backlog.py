"""A step whose tick has not finished when the next one comes is not queued again: the ticks
coalesce into the run in flight, as a check's do (test_check_backlog.py). Before, every tick
claimed a run row and waited (here for the one connection of the runs' pool); once the wait
ended the backlog drained as refreshes of the same step moments apart."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from pipectl.agent.service import Agent
from tests.agent.conftest import past_clock, running_agent, tick
from tests.helpers import wait_for

HELD = 4243

BODY = f"""
[agent]
heartbeat = "1s"
max_parallel_runs = 1

[[steps]]
name = "slow"
kind = "sql"
sql = "SELECT pg_advisory_xact_lock_shared({HELD})"
every = "2s"
misfire_grace = "1h"
statement_timeout = "1h"
lock_timeout = "1h"
retries = 0
"""


def _skipped(agent: Agent) -> float:
    value = agent.runtime.metrics.registry.get_sample_value(
        "pipectl_step_ticks_skipped_total", {"step": "slow"}
    )
    return value or 0.0


async def _runs(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch("SELECT status FROM pipectl.runs WHERE step = 'slow' ORDER BY id")
    return [r["status"] for r in rows]


async def _run_waits(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%pg_advisory_xact_lock_shared%' AND pid <> pg_backend_pid()"
        )
    )


async def _true(value: bool) -> bool:
    return value


async def test_ticks_of_a_step_whose_run_waits_coalesce_into_the_run_in_flight(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = await asyncpg.connect(database)
    try:
        await db.execute("SELECT pg_advisory_lock($1)", HELD)
        clock = past_clock()
        async with running_agent(database, BODY, clock=clock) as agent:
            await clock.advance(2.0)
            await wait_for(lambda: _run_waits(db), timeout=20)
            # The first tick's run waits (it holds the runs' one connection); the three
            # ticks after it find it in flight and are skipped: no run row each.
            with caplog.at_level(logging.WARNING, logger="pipectl.agent.steps"):
                for ticks in range(1, 4):
                    await clock.advance(2.0)
                    await wait_for(lambda n=ticks: _true(_skipped(agent) >= n), timeout=20)
            assert _skipped(agent) == 3
            assert await _runs(db) == ["running"]
            await db.execute("SELECT pg_advisory_unlock($1)", HELD)
            await wait_for(lambda: _done(db), timeout=30)
            await asyncio.wait_for(agent.runtime.work.settled(), 30)
            # One refresh for the four ticks, and the next tick runs as usual.
            assert await _runs(db) == ["succeeded"]
            await tick(clock, 2.0, agent)
            await wait_for(lambda: _done(db, 2), timeout=30)
            assert await _runs(db) == ["succeeded", "succeeded"]
            assert _skipped(agent) == 3
        skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skips) == 1, "said once, not at every tick"
        assert skips[0].startswith("step slow: tick ")
        assert "the previous tick has not finished yet" in skips[0]
    finally:
        await db.close()


async def _done(db: asyncpg.Connection, count: int = 1) -> bool:
    runs = await _runs(db)
    return len(runs) == count and all(status == "succeeded" for status in runs)
