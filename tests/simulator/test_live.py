"""The live run: every feed and Redis get traffic, and the run stops when asked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import redis

from pipectl.simulator import PROMPT_MARKERS, SAMPLE_PROMPTS, ApesSimulator
from pipectl.simulator.rhythm import FEED_NAMES
from tests.helpers import wait_for
from tests.simulator.support import (
    counts,
    hit_ratio,
    keyspace,
    rows_since,
    running,
    set_far_time_zone,
    utc_wall,
)


async def test_live_run_writes_every_feed_and_real_cache_traffic(
    database: str, redis_url: str, redis_client: redis.Redis
) -> None:
    await set_far_time_zone(database)
    sim = ApesSimulator(database, redis_url, seed=11, rate=100, rhythm=False)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        before = await counts(conn)
        redis_before = keyspace(redis_client)
        started = datetime.now(UTC)
        async with running(sim) as task:

            async def every_feed_written() -> bool:
                now = await counts(conn)
                updated = await conn.fetchval(
                    "SELECT count(*) FROM rule_combinations WHERE sample_size > 1"
                )
                closed = await conn.fetchval(
                    "SELECT count(*) FROM improvement_sessions WHERE status = 'completed'"
                )
                return all(now[t] > before[t] for t in FEED_NAMES) and updated > 0 and closed > 0

            await wait_for(every_feed_written, timeout=60)
            await wait_for(lambda: _async(sim.stats().cache.gets > 2000), timeout=60)
            # Enough sessions that the level shares below are not down to chance.
            await wait_for(lambda: _async(sum(sim.stats().cache_levels.values()) >= 40), 60)
            redis_after = keyspace(redis_client)
            assert not task.done()
        stopped = datetime.now(UTC)
        assert task.done() and task.exception() is None
        levels = dict(
            await conn.fetch(
                "SELECT cache_hit_level, count(*) FROM prompt_improvement_sessions GROUP BY 1"
            )
        )
        bounds = await conn.fetchrow(
            "SELECT min(created_at) AS first, max(created_at) AS last FROM rule_performance"
        )
        prompts = await conn.fetch(
            "SELECT original_prompt AS text FROM user_feedback"
            " UNION SELECT original_prompt FROM prompt_improvement_sessions"
            " UNION SELECT original_prompt FROM improvement_sessions"
        )
        improved = await conn.fetch(
            "SELECT improved_prompt AS text FROM user_feedback"
            " UNION SELECT enhanced_prompt FROM prompt_improvement_sessions"
            " UNION SELECT final_prompt FROM improvement_sessions WHERE final_prompt IS NOT NULL"
        )
        completed = await conn.fetchval(
            "SELECT count(*) FROM improvement_sessions WHERE status = 'completed'"
            " AND final_prompt IS NOT NULL AND completed_at >= started_at"
        )
        # Nothing is written once run() has returned.
        after_stop = await counts(conn)
        await asyncio.sleep(1.0)
        assert await counts(conn) == after_stop
    finally:
        await conn.close()
    ratio = hit_ratio(redis_before, redis_after)
    assert 0.8 <= ratio <= 0.97, ratio
    stats = sim.stats()
    assert stats.cache.sets > 0 and stats.cache.hits / stats.cache.gets > 0.8
    # MISS is ~8 % of sessions: a short run under load may record none, which is not a defect.
    assert set(levels) <= {"L1", "L2", "L3", "MISS"}
    assert levels.get("L2", 0) > levels.get("MISS", 0)
    assert levels == stats.cache_levels  # the recorded levels are the ones the lookups saw
    # Naive UTC wall-clock values although the database's TimeZone is UTC+14.
    assert utc_wall(started) <= bounds["first"] and bounds["last"] <= utc_wall(stopped)
    assert completed > 0
    # Every prompt written is one of SAMPLE_PROMPTS, and improved ones still carry a marker.
    assert {row["text"] for row in prompts} <= set(SAMPLE_PROMPTS)
    assert all(any(m in row["text"] for m in PROMPT_MARKERS) for row in improved)
    assert (
        stats.rows["rule_performance"]
        == after_stop["rule_performance"] - before["rule_performance"]
    )


async def test_live_rates_follow_the_rate_knob(database: str) -> None:
    """rate=1 is realistic: at a peak hour ~480 rule applications an hour; tests scale it."""
    sim = ApesSimulator(database, None, seed=5, rate=200, rhythm=False)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        async with running(sim):
            await wait_for(lambda: _async(sim.stats().ticks >= 2), timeout=30)
            start = datetime.now(UTC)
            await asyncio.sleep(2.0)
            end = datetime.now(UTC)
            applications = await rows_since(conn, "rule_performance", start, end)
            feedback = await rows_since(conn, "user_feedback", start, end)
    finally:
        await conn.close()
    per_hour_at_rate_1 = applications / (end - start).total_seconds() * 3600 / 200
    assert 300 <= per_hour_at_rate_1 <= 700, per_hour_at_rate_1
    assert 0.05 < feedback / applications < 0.3


async def _async(value: bool) -> bool:
    return value


def test_sample_prompts_carry_distinct_markers() -> None:
    assert len(SAMPLE_PROMPTS) >= 30
    assert len(set(PROMPT_MARKERS)) == len(PROMPT_MARKERS) == len(SAMPLE_PROMPTS)
    for text, marker in zip(SAMPLE_PROMPTS, PROMPT_MARKERS, strict=True):
        assert marker in text
        # A marker names exactly one prompt, so a hit anywhere else is that prompt's text.
        assert [t for t in SAMPLE_PROMPTS if marker.lower() in t.lower()] == [text]
