"""Set-up and history: idempotent, rhythmic, naive-UTC and never in the future."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipectl.simulator import RULES, ApesSimulator, SimulatorError
from tests.simulator.support import counts, set_far_time_zone, utc_wall

MONDAY_NOON = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
FUTURE_ROWS = """
WITH utc AS (SELECT now() AT TIME ZONE 'UTC' AS now)
SELECT (SELECT count(*) FROM rule_performance, utc WHERE created_at > utc.now)
     + (SELECT count(*) FROM user_feedback, utc WHERE created_at > utc.now)
     + (SELECT count(*) FROM improvement_sessions, utc
        WHERE started_at > utc.now OR completed_at > utc.now)
     + (SELECT count(*) FROM discovered_patterns, utc
        WHERE discovered_at > utc.now OR validated_at > utc.now)
     + (SELECT count(*) FROM rule_combinations, utc
        WHERE created_at > utc.now OR updated_at > utc.now)
     + (SELECT count(*) FROM prompt_improvement_sessions WHERE created_at > now())
"""


async def test_setup_is_idempotent_and_keeps_upstream_rules(database: str) -> None:
    sim = ApesSimulator(database, None, seed=1)
    await sim.setup()
    conn = await asyncpg.connect(database)
    try:
        first = await conn.fetch("SELECT rule_id, rule_name FROM rule_metadata ORDER BY rule_id")
        await conn.execute(
            "UPDATE rule_metadata SET rule_description = 'edited' WHERE rule_id = 'clarity_rule'"
        )
        await ApesSimulator(database, None).setup()
        second = await conn.fetch("SELECT rule_id, rule_name FROM rule_metadata ORDER BY rule_id")
        edited = await conn.fetchval(
            "SELECT rule_description FROM rule_metadata WHERE rule_id = 'clarity_rule'"
        )
    finally:
        await conn.close()
    assert first == second
    assert 12 <= len(first) <= 20
    ids = {row["rule_id"] for row in first}
    assert {"clarity_rule", "specificity_rule", "structure_rule", "context_rule"} <= ids
    assert ids == {rule.rule_id for rule in RULES}
    assert edited == "edited"  # existing rows are left alone


async def test_setup_loads_the_schema_into_an_empty_database(empty_database: str) -> None:
    await ApesSimulator(empty_database, None).setup()
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM rule_metadata") == len(RULES)
        assert await conn.fetchval("SELECT count(*) FROM rule_performance") == 0
        await conn.execute("DROP TABLE discovered_patterns")
    finally:
        await conn.close()
    with pytest.raises(SimulatorError, match="discovered_patterns missing"):
        await ApesSimulator(empty_database, None).setup()


async def test_backfill_follows_the_daily_and_weekly_rhythm(database: str) -> None:
    progress: list[tuple[int, int]] = []
    sim = ApesSimulator(database, None, seed=7)
    report = await sim.backfill(
        3, now=MONDAY_NOON, progress=lambda done, total: progress.append((done, total))
    )
    conn = await asyncpg.connect(database)
    try:
        hourly = {
            (row["day"], row["hour"]): row["n"]
            for row in await conn.fetch(
                "SELECT created_at::date AS day, extract(hour FROM created_at)::int AS hour,"
                " count(*) AS n FROM rule_performance GROUP BY 1, 2"
            )
        }
        written = await counts(conn)
        bounds = await conn.fetchrow(
            "SELECT min(created_at) AS first, max(created_at) AS last FROM rule_performance"
        )
        kinds = {
            row["column_name"]: row["data_type"]
            for row in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'rule_performance' AND column_name LIKE '%_at'"
            )
        }
        statuses = dict(
            await conn.fetch("SELECT status, count(*) FROM improvement_sessions GROUP BY 1")
        )
        ratings = await conn.fetchrow(
            "SELECT avg(user_rating) AS mean, count(*) FILTER (WHERE user_rating IS NULL)"
            "::float / count(*) AS nulls FROM user_feedback"
        )
    finally:
        await conn.close()

    def day(d: int) -> datetime:
        return (MONDAY_NOON + timedelta(days=d)).date()  # type: ignore[return-value]

    friday, saturday, sunday, monday = day(-3), day(-2), day(-1), day(0)
    busy = sum(hourly.get((friday, h), 0) for h in range(13, 17))
    assert busy > 4 * 300  # 13:00-17:00 on a weekday: 300-600 an hour
    assert hourly[(monday, 3)] < 100  # about 50 at night
    assert hourly[(friday, 14)] > 4 * hourly[(monday, 3)]
    for weekend in (saturday, sunday):
        quiet = sum(hourly.get((weekend, h), 0) for h in range(13, 17))
        assert quiet < 0.75 * busy
    assert report.rows["rule_performance"] == written["rule_performance"]
    assert report.total_rows == sum(written.values())
    assert 0.08 < written["user_feedback"] / written["rule_performance"] < 0.25
    assert written["rule_combinations"] > 0 and written["discovered_patterns"] > 0
    assert statuses.get("completed", 0) > statuses.get("abandoned", 0) > 0
    assert ratings["mean"] > 3.5 and 0.02 < ratings["nulls"] < 0.15
    # Naive UTC wall-clock values, within [now - 3 days, now).
    assert set(kinds.values()) == {"timestamp without time zone"}
    assert utc_wall(MONDAY_NOON - timedelta(days=3)) <= bounds["first"]
    assert bounds["last"] < utc_wall(MONDAY_NOON)
    # Progress: from 0 to the total, never backwards.
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(progress))


async def test_backfill_is_idempotent_and_never_in_the_future(database: str) -> None:
    await set_far_time_zone(database)
    sim = ApesSimulator(database, None, seed=3, rate=0.5)
    first = await sim.backfill(2)
    conn = await asyncpg.connect(database)
    try:
        before = await counts(conn)
        second = await ApesSimulator(database, None).backfill(2)
        after = await counts(conn)
        future = await conn.fetchval(FUTURE_ROWS)
        latest = await conn.fetchval("SELECT max(created_at) FROM rule_performance")
    finally:
        await conn.close()
    assert not first.skipped and first.total_rows > 1000
    assert second.skipped and second.total_rows == 0
    assert before == after
    assert future == 0
    # Written as UTC wall-clock time whatever the server's TimeZone: the latest row is recent.
    assert utc_wall(datetime.now(UTC)) - latest < timedelta(minutes=30)
