"""A check whose tick has not finished when the next one comes is not queued again: the
ticks coalesce into the run in flight. Before, every tick queued a run for a connection of
the checks' pool; an agent behind (slow probes on a loaded machine) built a backlog that
delayed every check for as long as it lasted (the Redis hit ratio went unmeasured for 47 s
during a miss storm) and then drained as runs moments apart, each judging a second or two."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from pipectl.agent.service import Agent
from tests.agent.conftest import past_clock, running_agent, tick
from tests.helpers import wait_for

HELD_PROBE = """
CREATE FUNCTION public.held_probe() RETURNS bigint LANGUAGE sql AS
$$ SELECT 0::bigint FROM (SELECT pg_advisory_xact_lock_shared(4242)) AS held $$
"""

BODY = """
[agent]
heartbeat = "1s"
max_parallel_checks = 1

[[checks]]
name = "held"
kind = "quality"
table = "public.user_feedback"
rule = { type = "custom", sql = "SELECT public.held_probe()" }
every = "24h"  # run by hand below: it holds the one connection of the checks' pool

[[checks]]
name = "redis_hit_ratio"
kind = "cache"
source = "redis"
every = "2s"
"""


def _skipped(agent: Agent, check: str) -> float:
    value = agent.runtime.metrics.registry.get_sample_value(
        "pipectl_check_ticks_skipped_total", {"check": check}
    )
    return value or 0.0


async def _results(db: asyncpg.Connection, check: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT status, message FROM pipectl.check_results WHERE check_name = $1"
        " ORDER BY observed_at",
        check,
    )


async def _probe_waits(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%public.held_probe()%' AND pid <> pg_backend_pid()"
        )
    )


async def test_ticks_of_a_check_that_is_behind_coalesce_into_the_run_in_flight(
    database: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = await asyncpg.connect(database)
    try:
        await db.execute(HELD_PROBE)
        await db.execute("SELECT pg_advisory_lock(4242)")
        clock = past_clock()
        async with running_agent(database, BODY, clock=clock, redis_url=redis_url) as agent:
            held = asyncio.create_task(agent.run_checks(["held"], "manual"))
            try:
                await wait_for(lambda: _probe_waits(db), timeout=20)
                # The first tick waits for the connection; the three after it find it in
                # flight and are skipped, however long the agent stays behind.
                with caplog.at_level(logging.WARNING, logger="pipectl.agent.checking"):
                    for ticks in range(4):
                        await clock.advance(2.0)
                        await wait_for(
                            lambda n=ticks: _done(_skipped(agent, "redis_hit_ratio") >= n),
                            timeout=20,
                        )
                assert _skipped(agent, "redis_hit_ratio") == 3
                assert await _results(db, "redis_hit_ratio") == []
                await db.execute("SELECT pg_advisory_unlock(4242)")
                await asyncio.wait_for(held, 30)
                await asyncio.wait_for(agent.runtime.work.settled(), 30)
            finally:
                held.cancel()
            # One run for the four ticks it was behind (the first reading of the counters)...
            first = await _results(db, "redis_hit_ratio")
            assert [r["status"] for r in first] == ["nodata"]
            assert "first reading" in first[0]["message"]
            # ...and the next tick runs as usual, on an interval that starts at that run.
            await tick(clock, 2.0, agent)
            assert len(await _results(db, "redis_hit_ratio")) == 2
            assert _skipped(agent, "redis_hit_ratio") == 3
        skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skips) == 1, "said once, not at every tick"
        assert "check redis_hit_ratio: tick" in skips[0]
        assert "the previous tick has not finished yet" in skips[0]
    finally:
        await db.close()


async def _done(value: bool) -> bool:
    return value
