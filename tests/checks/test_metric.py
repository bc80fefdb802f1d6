"""metric: aggregates over a window, filters bound as parameters, bounds and baseline."""

from __future__ import annotations

import random
from datetime import timedelta

import asyncpg
import pytest

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback, add_rule_performance
from tests.helpers import make_config

METRICS = """
[[checks]]
name = "avg_score"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "avg"
column = "improvement_score"
window = "1h"
bounds = { warn_below = 0.4, fail_below = 0.2 }

[[checks]]
name = "p95_exec"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "p95"
column = "execution_time_ms"
window = "1h"
bounds = { warn_above = 500, fail_above = 2000 }

[[checks]]
name = "p95_exec_sampled"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "p95"
column = "execution_time_ms"
window = "1h"
min_rows = 50
bounds = { warn_above = 500, fail_above = 2000 }

[[checks]]
name = "negative_share"
kind = "metric"
table = "public.user_feedback"
time_column = "created_at"
aggregate = "share"
share_of = [{ column = "user_rating", op = "<=", value = 2 }]
where = [{ column = "user_rating", op = "not_null" }]
window = "6h"
bounds = { warn_above = 0.25, fail_above = 0.4 }

[[checks]]
name = "chosen_rules"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "count"
where = [{ column = "rule_id", op = "in", value = ["clarity_rule", "structure_rule"] }]
window = "1h"

[[checks]]
name = "score_trend"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "avg"
column = "improvement_score"
window = "1h"
anomaly = { seasonality = "none", direction = "down", min_abs_change = 0.05 }

[[checks]]
name = "score_trend_sampled"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "avg"
column = "improvement_score"
window = "1h"
min_rows = 6
anomaly = { seasonality = "none", direction = "down", min_abs_change = 0.05 }
"""


def engine(database: str) -> CheckEngine:
    return CheckEngine(make_config(database, None, METRICS))


def recent(n: int) -> list:  # type: ignore[type-arg]
    return [NOW - timedelta(minutes=1 + i * 50 / n) for i in range(n)]


async def test_average_with_bounds_counts_only_the_window(
    conn: asyncpg.Connection, database: str
) -> None:
    checks = engine(database)
    await add_rule_performance(conn, recent(4), scores=[0.2, 0.4, 0.6, 0.8])
    await add_rule_performance(conn, [NOW - timedelta(hours=3)], scores=[0.0])  # outside
    ok = await checks.run("avg_score", conn, redis=None, now=NOW)
    assert ok.status == CheckStatus.OK
    assert ok.value == pytest.approx(0.5)
    assert ok.baseline["rows"] == 4
    assert ok.message == "avg(improvement_score) = 0.5 over the last 1h (4 rows)"
    assert ok.threshold == {"warn_below": 0.4, "fail_below": 0.2}
    assert (ok.expected_low, ok.expected_high) == (0.4, None)
    await add_rule_performance(conn, recent(4), scores=[0.0] * 4)
    low = await checks.run("avg_score", conn, redis=None, now=NOW)
    assert low.status == CheckStatus.WARN and low.value == pytest.approx(0.25)
    assert "below the warn limit 0.4" in low.message


async def test_p95_matches_postgres_percentile(conn: asyncpg.Connection, database: str) -> None:
    await add_rule_performance(conn, recent(100), exec_ms=list(range(1, 101)))
    result = await engine(database).run("p95_exec", conn, redis=None, now=NOW)
    assert result.value == pytest.approx(95.05)  # linear interpolation, as percentile_cont
    assert result.status == CheckStatus.OK
    await add_rule_performance(conn, recent(100), exec_ms=[3000] * 100)
    slow = await engine(database).run("p95_exec", conn, redis=None, now=NOW)
    assert slow.status == CheckStatus.FAIL and slow.value == 3000


async def test_a_window_with_fewer_than_min_rows_is_nodata_not_a_verdict(
    conn: asyncpg.Connection, database: str
) -> None:
    checks = engine(database)
    await add_rule_performance(conn, recent(49), exec_ms=[3000] * 49)
    few = await checks.run("p95_exec_sampled", conn, redis=None, now=NOW)
    assert (few.status, few.value, few.samples) == (CheckStatus.NODATA, None, ())
    assert few.message == (
        "p95(execution_time_ms): only 49 rows in the last 1h, too few to judge (min_rows 50)"
    )
    assert few.threshold == {"min_rows": 50}
    assert few.baseline == {"rows": 49}
    unlimited = await checks.run("p95_exec", conn, redis=None, now=NOW)
    assert unlimited.status == CheckStatus.FAIL  # the same rows, judged without min_rows
    await add_rule_performance(conn, recent(1), exec_ms=[3000])
    enough = await checks.run("p95_exec_sampled", conn, redis=None, now=NOW)
    assert (enough.status, enough.value) == (CheckStatus.FAIL, 3000)
    assert enough.baseline["rows"] == 50


async def test_share_with_filters_is_exact(conn: asyncpg.Connection, database: str) -> None:
    ratings = [1, 2, 3, 4, 5, None, None, 2, 4, 5]  # 3 negative of 8 rated
    await add_feedback(conn, recent(10), ratings=ratings)
    result = await engine(database).run("negative_share", conn, redis=None, now=NOW)
    assert result.value == pytest.approx(3 / 8)
    assert result.status == CheckStatus.WARN
    assert result.baseline["rows"] == 8


async def test_in_filter_takes_a_list(conn: asyncpg.Connection, database: str) -> None:
    ids = ["clarity_rule", "structure_rule", "context_rule", "clarity_rule"]
    await add_rule_performance(conn, recent(4), rule_ids=ids)
    result = await engine(database).run("chosen_rules", conn, redis=None, now=NOW)
    assert result.value == 3


async def test_an_empty_window_is_nodata(conn: asyncpg.Connection, database: str) -> None:
    await add_rule_performance(conn, [NOW - timedelta(hours=5)])
    checks = engine(database)
    for name in ("avg_score", "p95_exec", "negative_share"):
        result = await checks.run(name, conn, redis=None, now=NOW)
        assert (result.status, result.value, result.samples) == (CheckStatus.NODATA, None, ())
        assert "no rows in the last" in result.message
    counted = await checks.run("chosen_rules", conn, redis=None, now=NOW)
    assert (counted.status, counted.value) == (CheckStatus.OK, 0)


async def test_a_falling_average_is_flagged_against_seeded_history(
    conn: asyncpg.Connection, database: str
) -> None:
    rng = random.Random(3)
    times, scores = [], []
    for hour in range(1, 24 * 5):
        for i in range(6):
            times.append(NOW - timedelta(hours=hour, minutes=5 + i * 8))
            scores.append(round(0.7 + rng.uniform(-0.03, 0.03), 3))
    await add_rule_performance(conn, times, scores=scores)
    await add_rule_performance(conn, recent(6), scores=[0.72, 0.69, 0.71, 0.7, 0.68, 0.7])
    checks = engine(database)
    await store.publish_checks(conn, checks.definitions(), None)
    normal = await checks.run("score_trend", conn, redis=None, now=NOW)
    assert normal.status == CheckStatus.OK, normal.message
    assert normal.baseline["seeded"] == 24 * 5 - 1
    await store.record_result(conn, normal, hysteresis=1, agent_id=None)
    await add_rule_performance(conn, recent(18), scores=[0.3] * 18)
    later = NOW + timedelta(seconds=1)
    fallen = await checks.run("score_trend", conn, redis=None, now=later)
    assert fallen.status == CheckStatus.WARN and "unusually low" in fallen.message
    assert fallen.expected_low is not None and fallen.value is not None
    assert fallen.value < fallen.expected_low


async def test_earlier_windows_with_fewer_than_min_rows_teach_the_baseline_nothing(
    conn: asyncpg.Connection, database: str
) -> None:
    times, scores = [], []
    for hour in range(1, 24 * 5):
        rows = 6 if hour % 2 == 0 else 3  # every other hour too few to judge
        for i in range(rows):
            times.append(NOW - timedelta(hours=hour, minutes=5 + i * 8))
            scores.append(0.7 if rows == 6 else 0.1)
    await add_rule_performance(conn, times, scores=scores)
    await add_rule_performance(conn, recent(6), scores=[0.7] * 6)
    checks = engine(database)
    await store.publish_checks(conn, checks.definitions(), None)
    sampled = await checks.run("score_trend_sampled", conn, redis=None, now=NOW)
    assert sampled.baseline["seeded"] == len(range(2, 24 * 5, 2))
    assert sampled.status == CheckStatus.OK, sampled.message
    everything = await checks.run("score_trend", conn, redis=None, now=NOW)
    assert everything.baseline["seeded"] == 24 * 5 - 1
