"""The APES preset: every check in config.example.toml validates and runs without `error`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import asyncpg
import redis.asyncio

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.config import load_config
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback, add_rule_performance, add_sessions


async def test_every_preset_check_runs_without_error(
    conn: asyncpg.Connection, database: str, redis_url: str, repo_root: Path
) -> None:
    config = load_config(
        repo_root / "config.example.toml",
        environ={"PIPECTL_DATABASE_URL": database, "PIPECTL_REDIS_URL": redis_url},
    ).config
    times = [NOW - timedelta(minutes=5 * i) for i in range(200)]
    await add_rule_performance(conn, times)
    await add_feedback(conn, times[:50], ratings=[4, 5, 2, None, 3] * 10)
    await add_sessions(conn, times[:60], ["L1", "L2", "L3", "MISS"] * 15)

    engine = CheckEngine(config)
    await engine.validate(conn)
    await store.publish_checks(conn, engine.definitions(), None)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        results = {
            check.name: await engine.run(check.name, conn, redis=client, now=NOW)
            for check in config.checks
        }
    finally:
        await client.aclose()
    errors = {n: r.message for n, r in results.items() if r.status == CheckStatus.ERROR}
    assert errors == {}
    for result in results.values():
        await store.record_result(conn, result, hysteresis=2, agent_id=None, trigger="schedule")
    assert results["rule_performance_freshness"].status == CheckStatus.OK
    assert results["improvement_score_in_range"].value == 0
    assert results["user_rating_present"].value == 0.2  # 10 of the 50 ratings are null
    assert results["negative_feedback_share"].value == 0.25  # 10 of 40 rated are <= 2
    assert results["app_cache_hit_ratio"].status == CheckStatus.NODATA  # 3 requests in 15m
    assert results["apes_schema"].message.startswith("recorded the shape: 7 tables")
    stored = await conn.fetchval("SELECT count(*) FROM pipectl.check_results")
    assert stored == len(config.checks)
