"""What the week-long screens read instead of raw history (migration 0005): the hourly sample
rollup kept by triggers, the cache history read from it, and cache dips recorded as events."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipectl import store
from pipectl.checks.cache import published_floors
from pipectl.db import connect
from pipectl.model import CheckResult, CheckStatus, Sample
from pipectl.store.console import cache_history, timeline
from tests.helpers import make_config

START = datetime(2025, 3, 1, 0, 0, tzinfo=UTC)
ROLLUP_DRIFT = """
SELECT count(*) FROM (
    SELECT series, date_trunc('hour', ts, 'UTC') AS hour, count(*) AS n, sum(value) AS total
    FROM pipectl.samples GROUP BY 1, 2
) raw FULL JOIN pipectl.samples_hourly h USING (series, hour)
WHERE raw.n IS DISTINCT FROM h.n OR abs(raw.total - h.total) > 1e-9 OR h.total IS NULL
"""


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(make_config(database))
    yield connection
    await connection.close()


async def test_the_hourly_rollup_follows_inserts_upserts_and_deletes(
    conn: asyncpg.Connection,
) -> None:
    rng = random.Random(7)
    points = [
        Sample(f"s{i % 3}", START + timedelta(minutes=7 * i), rng.random()) for i in range(600)
    ]
    await store.add_samples(conn, points)
    assert await conn.fetchval(ROLLUP_DRIFT) == 0
    assert await conn.fetchval("SELECT sum(n) FROM pipectl.samples_hourly") == 600
    # The same instants stored again with new values (the upsert path), and one batch insert.
    await store.add_samples(conn, [Sample(p.series, p.ts, p.value * 2) for p in points[:200]])
    await conn.execute(
        "INSERT INTO pipectl.samples (series, ts, value)"
        " SELECT 's9', $1::timestamptz + g * interval '1 minute', g FROM generate_series(1, 500) g",
        START,
    )
    assert await conn.fetchval(ROLLUP_DRIFT) == 0
    # Retention deletes in batches; emptied hours leave the rollup.
    await conn.execute("DELETE FROM pipectl.samples WHERE ts < $1", START + timedelta(hours=30))
    assert await conn.fetchval(ROLLUP_DRIFT) == 0
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pipectl.samples_hourly WHERE hour < $1",
            START + timedelta(hours=30),
        )
        == 0
    )


async def test_hourly_buckets_match_the_raw_samples(conn: asyncpg.Connection) -> None:
    """A week in 2-hour buckets read from the rollup (with partial hours at both ends from raw
    samples) gives the means and counts of the raw samples, bucket by bucket."""
    await conn.execute(
        "INSERT INTO pipectl.checks (name, kind, target, definition)"
        " VALUES ('app_hits', 'cache', 'app', '{\"source\": \"app\"}')"
    )
    rng = random.Random(11)
    points = [
        Sample("app_hits", START + timedelta(minutes=5 * i, seconds=13), 0.6 + 0.4 * rng.random())
        for i in range(12 * 24 * 8)
    ]
    await store.add_samples(conn, points)
    # A level series too: the latest result names the levels whose series the screen reads.
    await store.add_samples(conn, [Sample("app_hits:L1", p.ts, p.value / 2) for p in points])
    await conn.execute(
        "INSERT INTO pipectl.check_results (check_name, status, value, baseline, observed_at)"
        " VALUES ('app_hits', 'ok', 0.9, $1, $2)",
        {"levels": {"L1": {"hits": 5, "lookups": 10}}},
        START + timedelta(days=8),
    )
    since = START + timedelta(days=1, minutes=23)
    until = since + timedelta(days=7)
    bucket = timedelta(hours=2)
    (series,) = await cache_history(conn, since, until, bucket, published_floors)
    expected: dict[datetime, list[float]] = {}
    origin = since.replace(minute=0)
    for p in points:
        if since <= p.ts < until:
            start = origin + bucket * ((p.ts - origin) // bucket)
            expected.setdefault(max(start, since), []).append(p.value)
    assert [pt.at for pt in series.points] == sorted(expected)
    for point in series.points:
        values = expected[point.at]
        assert point.ratio == pytest.approx(sum(values) / len(values))
        (level,) = point.levels
        assert level.lookups == len(values)
        assert level.hits / level.lookups == pytest.approx(sum(values) / len(values) / 2)


def _cache_result(at: datetime, value: float | None) -> CheckResult:
    status = CheckStatus.ERROR if value is None else CheckStatus.OK
    return CheckResult("app_hits", status, value, "", at, expected_low=0.8)


async def test_cache_dips_and_recoveries_are_recorded_as_events(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pipectl.checks (name, kind, target, definition)"
        " VALUES ('app_hits', 'cache', 'app', '{\"source\": \"app\"}')"
    )
    # An error between two low readings is not a second dip: the last value is what counts.
    values = [0.9, 0.7, 0.6, None, 0.65, 0.85, 0.95, 0.5]
    for minute, value in enumerate(values):
        result = _cache_result(START + timedelta(minutes=minute), value)
        await store.record_result(conn, result, hysteresis=1, agent_id=None)
    entries = await timeline(conn, START, START + timedelta(hours=1))
    crossings = [(e.kind, e.at, e.status, e.message) for e in entries if e.category == "cache"]
    assert crossings == [
        ("cache.dip", START + timedelta(minutes=7), "warn", "50.0% (target 80.0%)"),
        ("cache.recovered", START + timedelta(minutes=5), "ok", "85.0% (target 80.0%)"),
        ("cache.dip", START + timedelta(minutes=1), "warn", "70.0% (target 80.0%)"),
    ]
