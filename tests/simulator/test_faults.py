"""Each fault does what it says, and stops doing it when cleared or expired."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis

from pipectl.simulator import ApesSimulator, FaultError, UnknownFaultError
from pipectl.simulator.rhythm import FEED_NAMES, FEEDS
from tests.helpers import wait_for
from tests.simulator.support import (
    INSERT_ONLY,
    hit_ratio,
    keyspace,
    rows_since,
    running,
)

REFRESH = "REFRESH MATERIALIZED VIEW CONCURRENTLY public.rule_effectiveness_summary"

OUT_OF_RANGE_SQL = {
    "rule_performance.execution_time_ms": "SELECT count(*) FROM rule_performance"
    " WHERE execution_time_ms < 0 OR execution_time_ms > 600000",
    "rule_performance.rule_id": "SELECT count(*) FROM rule_performance p"
    " WHERE NOT EXISTS (SELECT 1 FROM rule_metadata m WHERE m.rule_id = p.rule_id)",
    "prompt_improvement_sessions.response_time_ms": "SELECT count(*)"
    " FROM prompt_improvement_sessions WHERE response_time_ms NOT BETWEEN 1 AND 29999",
    "prompt_improvement_sessions.cache_hit_level": "SELECT count(*)"
    " FROM prompt_improvement_sessions WHERE cache_hit_level NOT IN ('L1', 'L2', 'L3', 'MISS')",
    "user_feedback.applied_rules": "SELECT count(*) FROM user_feedback WHERE EXISTS"
    " (SELECT 1 FROM jsonb_array_elements(applied_rules) e WHERE NOT e ? 'rule_id')",
    "discovered_patterns.effectiveness_score": "SELECT count(*) FROM discovered_patterns"
    " WHERE effectiveness_score < 0 OR effectiveness_score > 1",
}
NULLABLE = {
    "rule_performance": ("prompt_type", "prompt_category", "confidence_level"),
    "user_feedback": ("user_rating", "session_id"),
    "prompt_improvement_sessions": ("cache_hit_level", "agent_type"),
    "discovered_patterns": ("effectiveness_score", "support_count"),
    "improvement_sessions": ("user_id",),
}


async def _ticks(sim: ApesSimulator, more: int) -> None:
    """Wait until the writer has completed `more` further ticks."""
    target = sim.stats().ticks + more

    async def reached() -> bool:
        return sim.stats().ticks >= target

    await wait_for(reached, timeout=30)


async def _rate(
    conn: asyncpg.Connection, start: datetime, end: datetime, tables: tuple[str, ...] = INSERT_ONLY
) -> float:
    """Rows per second of `tables` within [start, end)."""
    total = 0
    for table in tables:
        total += await rows_since(conn, table, start, end)
    return total / (end - start).total_seconds()


async def test_fault_names_and_parameters_are_checked(database: str) -> None:
    sim = ApesSimulator(database, None)
    with pytest.raises(UnknownFaultError, match="valid faults: stall, spike, drop"):
        await sim.inject("meltdown")
    with pytest.raises(FaultError, match="table must be one of"):
        await sim.inject("stall", table="nope")
    with pytest.raises(FaultError, match="does not take factor"):
        await sim.inject("stall", factor=2)
    with pytest.raises(FaultError, match="out of range"):
        await sim.inject("drop", factor=3)
    with pytest.raises(FaultError, match="positive"):
        await sim.inject("spike", duration=timedelta(0))
    with pytest.raises(UnknownFaultError):
        await sim.clear("meltdown")
    assert sim.active_faults() == {}


async def test_stall_stops_one_feed_while_the_others_go_on(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipectl.simulator")
    sim = ApesSimulator(database, None, seed=2, rate=200, rhythm=False)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        async with running(sim):
            await _ticks(sim, 2)
            stalled_at = datetime.now(UTC)
            await sim.inject("stall")  # user_feedback by default
            assert sim.active_faults() == {"stall": None}

            async def others_written() -> bool:
                return await rows_since(conn, "rule_performance", stalled_at) > 40

            await wait_for(others_written, timeout=30)
            assert await rows_since(conn, "prompt_improvement_sessions", stalled_at) > 5
            assert await rows_since(conn, "user_feedback", stalled_at) == 0

            cleared_at = datetime.now(UTC)
            await sim.clear("stall")
            assert sim.active_faults() == {}

            async def feedback_back() -> bool:
                return await rows_since(conn, "user_feedback", cleared_at) > 0

            await wait_for(feedback_back, timeout=30)

            await sim.inject("stall", table="all")
            await _ticks(sim, 1)  # a tick under way at the injection may finish its writes
            all_at = datetime.now(UTC)
            await _ticks(sim, 3)
            for table in FEED_NAMES:
                assert await rows_since(conn, table, all_at) == 0, table
            await sim.clear()
    finally:
        await conn.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("fault started: stall(table=user_feedback)" in m for m in messages)
    assert any("fault stopped (cleared): stall" in m for m in messages)


async def test_spike_and_drop_change_the_rate(database: str) -> None:
    rate = 200
    sim = ApesSimulator(database, None, seed=4, rate=rate, rhythm=False)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        async with running(sim):
            await _ticks(sim, 2)
            t0 = datetime.now(UTC)
            await _ticks(sim, 3)
            t1 = datetime.now(UTC)
            await sim.inject("spike")
            await _ticks(sim, 2)
            t2 = datetime.now(UTC)
            await sim.clear("spike")
            await sim.inject("drop")
            await _ticks(sim, 2)
            t3 = datetime.now(UTC)
            await sim.clear("drop")
            await sim.inject("spike", factor=10, table="user_feedback")
            await _ticks(sim, 3)
            t4 = datetime.now(UTC)
            normal = await _rate(conn, t0, t1)
            spiked = await _rate(conn, t1, t2)
            dropped = await _rate(conn, t2, t3)
            feedback = await _rate(conn, t3, t4, ("user_feedback",))
            applications = await _rate(conn, t3, t4, ("rule_performance",))
    finally:
        await conn.close()

    def expected(*tables: str) -> float:
        """Rows per second the published peak rates give at this rate."""
        return sum(FEEDS[t].peak_per_hour for t in tables) * rate / 3600

    assert 0.6 * expected(*INSERT_ONLY) < normal < 1.5 * expected(*INSERT_ONLY), normal
    assert spiked > 5 * expected(*INSERT_ONLY), (normal, spiked)
    assert dropped < 0.3 * expected(*INSERT_ONLY), (normal, dropped)
    assert feedback > 5 * expected("user_feedback"), feedback
    assert applications < 1.5 * expected("rule_performance"), applications


async def test_out_of_range_values_appear_and_are_counted_exactly(database: str) -> None:
    sim = ApesSimulator(database, None, seed=8, rate=150, rhythm=False)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        async with running(sim):
            await _ticks(sim, 3)
            assert sim.stats().out_of_range == {}
            await sim.inject("out_of_range", share=0.5)

            async def every_kind() -> bool:
                seen = sim.stats().out_of_range
                return all(seen.get(key, 0) > 0 for key in list(OUT_OF_RANGE_SQL)[:5])

            await wait_for(every_kind, timeout=30)
            await sim.clear("out_of_range")
            await _ticks(sim, 2)
        expected = sim.stats().out_of_range
        found = {key: int(await conn.fetchval(sql)) for key, sql in OUT_OF_RANGE_SQL.items()}
    finally:
        await conn.close()
    assert found == {key: expected.get(key, 0) for key in OUT_OF_RANGE_SQL}
    assert sum(found.values()) > 10


async def test_nulls_appear_and_are_counted_exactly(database: str) -> None:
    sim = ApesSimulator(database, None, seed=9, rate=150, rhythm=False)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        async with running(sim):
            await _ticks(sim, 4)
            before = sim.stats().nulls
            assert set(before) <= {"user_feedback.user_rating"}  # some ratings are always NULL
            await sim.inject("nulls")

            async def nulls_written() -> bool:
                return sim.stats().nulls.get("rule_performance.confidence_level", 0) > 20

            await wait_for(nulls_written, timeout=30)
            await sim.clear("nulls")
        expected = sim.stats().nulls
        found = {}
        for table, columns in NULLABLE.items():
            for column in columns:
                found[f"{table}.{column}"] = int(
                    await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} IS NULL")
                )
        ratings = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE user_rating IS NULL) AS nulls, count(*) AS total"
            " FROM user_feedback"
        )
    finally:
        await conn.close()
    assert found == {key: expected.get(key, 0) for key in found}
    assert found["rule_performance.prompt_type"] > 0
    assert found["prompt_improvement_sessions.cache_hit_level"] > 0
    assert found["user_feedback.user_rating"] > before.get("user_feedback.user_rating", 0)
    assert ratings["nulls"] < ratings["total"]


async def test_cache_miss_storm(database: str, redis_url: str, redis_client: redis.Redis) -> None:
    sim = ApesSimulator(database, redis_url, seed=10, rate=60, rhythm=False)
    await sim.setup()
    # More requests (each one a real lookup), without more background cache traffic.
    await sim.inject("spike", table="prompt_improvement_sessions", factor=8)
    conn = await asyncpg.connect(database)
    try:
        async with running(sim):
            await _ticks(sim, 2)
            t0, k0 = datetime.now(UTC), keyspace(redis_client)
            await _ticks(sim, 4)
            t1, k1 = datetime.now(UTC), keyspace(redis_client)
            await sim.inject("cache_miss_storm")
            await _ticks(sim, 1)
            t2, k2 = datetime.now(UTC), keyspace(redis_client)
            await _ticks(sim, 4)
            t3, k3 = datetime.now(UTC), keyspace(redis_client)
            await sim.clear("cache_miss_storm")
            normal = await _levels(conn, t0, t1)
            storm = await _levels(conn, t2, t3)
    finally:
        await conn.close()
    assert hit_ratio(k0, k1) > 0.75
    assert hit_ratio(k2, k3) < 0.3
    assert normal.get("MISS", 0) / sum(normal.values()) < 0.3, normal
    assert storm.get("MISS", 0) / sum(storm.values()) > 0.6, storm
    assert max(storm, key=lambda level: storm[level]) == "MISS"


async def _levels(conn: asyncpg.Connection, start: datetime, end: datetime) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT cache_hit_level, count(*) FROM prompt_improvement_sessions"
        " WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
        start,
        end,
    )
    return {row[0]: row[1] for row in rows}


async def test_lock_blocks_a_concurrent_refresh_until_cleared(database: str) -> None:
    sim = ApesSimulator(database, None)
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("SET lock_timeout = '200ms'")
        await conn.execute(REFRESH)  # works before the fault
        await sim.inject("lock")
        assert "lock" in sim.active_faults()
        with pytest.raises(asyncpg.LockNotAvailableError):
            await conn.execute(REFRESH)
        # Readers are not blocked.
        await conn.fetchval("SELECT count(*) FROM public.rule_effectiveness_summary")
        # The other summary is free.
        await conn.execute(
            "REFRESH MATERIALIZED VIEW CONCURRENTLY public.user_satisfaction_summary"
        )
        await sim.clear("lock")
        await conn.execute(REFRESH)

        await sim.inject("lock", relation="public.user_satisfaction_summary")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await conn.execute(
                "REFRESH MATERIALIZED VIEW CONCURRENTLY public.user_satisfaction_summary"
            )
        await sim.close()
        await conn.execute(
            "REFRESH MATERIALIZED VIEW CONCURRENTLY public.user_satisfaction_summary"
        )

        # A plain table gets LOCK TABLE ... IN EXCLUSIVE MODE.
        await conn.execute("CREATE TABLE public.daily_rollup (day date PRIMARY KEY)")
        await sim.inject("lock", relation="public.daily_rollup")
        with pytest.raises(asyncpg.LockNotAvailableError):
            async with conn.transaction():
                await conn.execute("LOCK TABLE public.daily_rollup IN SHARE ROW EXCLUSIVE MODE")
        await conn.fetchval("SELECT count(*) FROM public.daily_rollup")
        await sim.clear()
        async with conn.transaction():
            await conn.execute("LOCK TABLE public.daily_rollup IN SHARE ROW EXCLUSIVE MODE")

        await conn.execute("CREATE VIEW public.plain_summary AS SELECT 1 AS one")
        with pytest.raises(FaultError, match="not a table or materialized view"):
            await sim.inject("lock", relation="public.plain_summary")
        with pytest.raises(FaultError, match="does not exist"):
            await sim.inject("lock", relation="public.no_such_summary")
        assert sim.active_faults() == {}
    finally:
        await conn.close()


async def test_faults_expire_by_themselves(database: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipectl.simulator")
    sim = ApesSimulator(database, None)
    await sim.inject("lock", duration=timedelta(seconds=0.5))
    await sim.inject("nulls", duration=timedelta(seconds=0.5))
    await sim.inject("stall", table="rule_performance")
    expires = sim.active_faults()
    assert expires["stall"] is None
    assert expires["lock"] is not None and expires["lock"] > datetime.now(UTC)
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await conn.execute(REFRESH)

        async def refreshed() -> bool:
            try:
                await conn.execute(REFRESH)
            except asyncpg.LockNotAvailableError:
                return False
            return True

        await wait_for(refreshed, timeout=30)
        await wait_for(lambda: _is(set(sim.active_faults()) == {"stall"}), timeout=30)
    finally:
        await conn.close()
        await sim.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "fault stopped (expired): lock" in messages
    assert "fault stopped (expired): nulls" in messages
    assert sim.active_faults() == {}
    await asyncio.sleep(0)


async def _is(value: bool) -> bool:
    return value


async def test_broken_input_sets_rows_aside_and_puts_them_back(database: str) -> None:
    sim = ApesSimulator(database, None, seed=5)
    await sim.setup()
    await sim.backfill(1)
    conn = await asyncpg.connect(database)
    rules = "SELECT count(DISTINCT rule_id) FROM rule_performance"
    try:
        before = await conn.fetchval("SELECT count(*) FROM rule_performance")
        assert await conn.fetchval(rules) > 6
        await sim.inject("broken_input", keep=2)
        assert await conn.fetchval(rules) == 2
        async with running(sim):
            await _ticks(sim, 3)  # the writer runs, but only for the rules kept
            assert await conn.fetchval(rules) == 2
            await sim.clear("broken_input")
            assert "broken_input" not in sim.active_faults()
            assert await conn.fetchval(rules) > 6
        after = await conn.fetchval("SELECT count(*) FROM rule_performance")
        assert after >= before  # every row set aside is back (and the live ones stay)
        assert await conn.fetchval("SELECT count(*) FROM public.pipectl_demo_set_aside") == 0
    finally:
        await sim.close()
        await conn.close()
