"""pipectl.store.console against the seeded incident: exact figures, not just shapes."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from pipectl.checks.cache import published_floors
from pipectl.db import connect
from pipectl.store.console import (
    cache_checks,
    cache_history,
    cache_latest,
    can_file_requests,
    check_trends,
    duration_stats,
    requests_with_agents,
    step_detail,
    timeline,
)
from tests.console.seed import NOW
from tests.helpers import make_config


@pytest.fixture
async def conn(incident: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(make_config(incident))
    yield connection
    await connection.close()


def percentile_cont(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def test_duration_stats_are_percentiles_of_successful_runs(
    conn: asyncpg.Connection,
) -> None:
    rows = await conn.fetch(
        "SELECT extract(epoch FROM finished_at - started_at)::float8 AS s FROM pipectl.runs"
        " WHERE step = 'session_cleanup' AND status = 'succeeded'"
    )
    seconds = [r["s"] for r in rows]
    stats = await duration_stats(conn, ["session_cleanup", "nope"])
    assert stats["session_cleanup"].samples == 22
    assert stats["session_cleanup"].p50 == pytest.approx(statistics.median(seconds))
    assert stats["session_cleanup"].p95 == pytest.approx(percentile_cont(seconds, 0.95))
    assert stats["nope"].samples == 0 and stats["nope"].p50 is None
    limited = await duration_stats(conn, ["session_cleanup"], sample=5)
    assert limited["session_cleanup"].samples == 5


async def test_step_detail(conn: asyncpg.Connection) -> None:
    detail = await step_detail(conn, "user_satisfaction_summary", limit=10)
    assert detail is not None
    assert len(detail.runs) == 10 and detail.runs[0].queued_at > detail.runs[-1].queued_at
    assert detail.last_failure is None
    assert detail.graph["rule_combinations_rollup"] == ("user_satisfaction_summary",)
    assert await step_detail(conn, "nope") is None


async def test_check_trends_oldest_first(conn: asyncpg.Connection) -> None:
    trends = await check_trends(conn, ["redis_hit_ratio", "user_rating_present"], points=5)
    values = await conn.fetch(
        "SELECT value FROM pipectl.check_results WHERE check_name = 'redis_hit_ratio'"
        " ORDER BY observed_at DESC LIMIT 5"
    )
    assert trends["redis_hit_ratio"] == tuple(reversed([r["value"] for r in values]))
    assert trends["user_rating_present"] == ()


async def test_cache_levels_and_floors(conn: asyncpg.Connection) -> None:
    infos = {c.name: c for c in await cache_checks(conn, published_floors)}
    assert infos["postgres_buffer_hit_ratio"].warn_below == 0.95
    assert infos["redis_hit_ratio"].source == "redis"
    assert published_floors("app", {"warn_below": 0.9}) == (0.9, 0.5)
    latest = {s.check: s for s in await cache_latest(conn, published_floors)}
    app_cache = latest["app_cache_hit_ratio"].latest
    assert app_cache is not None
    assert [lv.level for lv in app_cache.levels] == ["L1", "L2", "L3"]
    assert app_cache.levels[1].lookups == 100
    history = await cache_history(
        conn, NOW - timedelta(hours=1), NOW, timedelta(minutes=10), published_floors
    )
    app_series = next(s for s in history if s.check == "app_cache_hit_ratio")
    assert len(app_series.points) == 6
    first = app_series.points[0]
    # Per level, from the `<check>:<level>` sample series: ten samples in each bucket.
    assert [lv.level for lv in first.levels] == ["L1", "L2", "L3"]
    assert first.levels[1].lookups == 10
    assert 0.8 < first.levels[1].hits / first.levels[1].lookups < 0.9
    assert first.ratio is not None and 0.8 < first.ratio < 0.9


async def test_cache_levels_that_are_not_numbers_lose_only_the_breakdown(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pipectl.check_results (check_name, status, value, baseline, observed_at)"
        " VALUES ('app_cache_hit_ratio', 'ok', 0.9, $1, $2)",
        {"levels": {"L1": {"hits": "many", "lookups": 10}}},
        NOW - timedelta(seconds=5),
    )
    latest = {s.check: s.latest for s in await cache_latest(conn, published_floors)}
    point = latest["app_cache_hit_ratio"]
    assert point is not None and point.ratio == 0.9
    assert point.levels[0].hits == 0.0 and point.levels[0].lookups == 10
    # History reads the sample series, which a malformed result baseline does not touch.
    history = await cache_history(
        conn, NOW - timedelta(hours=1), NOW, timedelta(minutes=10), published_floors
    )
    app_series = next(s for s in history if s.check == "app_cache_hit_ratio")
    assert len(app_series.points) == 6 and all(p.levels for p in app_series.points)


async def test_timeline_merges_in_time_order(conn: asyncpg.Connection) -> None:
    entries = await timeline(conn, NOW - timedelta(hours=3), NOW, limit=1000)
    times = [e.at for e in entries]
    assert times == sorted(times, reverse=True)
    categories = {e.category for e in entries}
    assert categories == {"run", "check", "request", "step", "agent", "cache"}
    dips = [e for e in entries if e.kind == "cache.dip"]
    recoveries = [e for e in entries if e.kind == "cache.recovered"]
    assert [d.subject for d in dips] == ["app_cache_hit_ratio"] * 2
    assert len(recoveries) == 1 and recoveries[0].at < dips[0].at
    assert "(target 80.0%)" in dips[0].message
    failed = next(e for e in entries if e.kind == "run" and e.status == "failed")
    assert "statement timeout" in failed.message
    short = await timeline(conn, NOW - timedelta(hours=3), NOW, limit=7)
    assert short == entries[:7]


async def test_requests_with_agent_names_and_privilege(conn: asyncpg.Connection) -> None:
    rows = await requests_with_agents(conn)
    assert [r.request.id for r in rows] == [3, 2, 1]
    assert [r.agent for r in rows] == [None, "apes-db-1", "apes-db-1"]
    assert await can_file_requests(conn)
