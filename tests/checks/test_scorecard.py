"""The scorecard: four dimensions per table from the checks' stored results and samples."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from pipectl import store
from pipectl.checks import CheckEngine, scorecard
from pipectl.model import Sample
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback
from tests.helpers import make_config

BODY = """
[[checks]]
name = "feedback_fresh"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
warn_after = "15m"
error_after = "1h"

[[checks]]
name = "ratings_present"
kind = "quality"
table = "public.user_feedback"
rule = { type = "not_null", column = "user_rating" }
warn_over = 5

[[checks]]
name = "ratings_in_range"
kind = "quality"
table = "public.user_feedback"
rule = { type = "range", column = "user_rating", min = 2, max = 5 }
warn_over = 5

[[checks]]
name = "rules_shaped"
kind = "quality"
table = "public.user_feedback"
rule = { type = "json_keys", column = "applied_rules", key = "rule_id" }
warn_over = 5

[[checks]]
name = "rules_counted_as_accuracy"
kind = "quality"
table = "public.rule_performance"
rule = { type = "not_null", column = "improvement_score", dimension = "accuracy" }
"""


async def test_scorecard_from_stored_results_and_freshness_samples(
    conn: asyncpg.Connection, database: str
) -> None:
    config = make_config(database, None, BODY)
    checks = CheckEngine(config)
    await store.publish_checks(conn, checks.definitions(), None)
    rules = [[{"rule_id": "a"}]] * 9 + [[{"rule_name": "no id"}]]
    ratings = [None, None, 1, 4, 4, 4, 5, 5, 3, 2]
    await add_feedback(
        conn, [NOW - timedelta(minutes=5)] * 10, ratings=ratings, applied_rules=rules
    )
    for name in ("ratings_present", "ratings_in_range", "rules_shaped"):
        result = await checks.run(name, conn, redis=None, now=NOW)
        await store.record_result(conn, result, hysteresis=1, agent_id=None)
    # freshness observed every 10 minutes over the day: 3 of 4 within the 15-minute SLA
    ages = [60.0, 120.0, 2000.0, 300.0]
    await store.add_samples(
        conn,
        [
            Sample("feedback_fresh", NOW - timedelta(minutes=10 * i), age)
            for i, age in enumerate(ages)
        ],
    )
    fresh = await checks.run("feedback_fresh", conn, redis=None, now=NOW + timedelta(minutes=1))
    rows = await scorecard.compute(conn, config, now=NOW + timedelta(minutes=1), fresh=[fresh])
    assert [r.table for r in rows] == ["public.user_feedback"]
    row = rows[0]
    assert row.ratio("completeness") == pytest.approx(0.8)  # 2 of 10 ratings missing
    assert row.ratio("accuracy") == pytest.approx(0.9)  # one rating of 1; nulls are completeness
    assert row.ratio("consistency") == pytest.approx(0.9)
    assert row.ratio("timeliness") == pytest.approx(
        4 / 5
    )  # the fresh result's 6 minutes counts too
    assert row.as_json() == {
        "table": "public.user_feedback",
        "completeness": pytest.approx(0.8),
        "accuracy": pytest.approx(0.9),
        "consistency": pytest.approx(0.9),
        "timeliness": pytest.approx(0.8),
        "target": 0.999,
        "below_target": ["completeness", "accuracy", "consistency", "timeliness"],
    }


def test_rules_fall_under_their_dimension_and_unmeasured_ones_stay_empty() -> None:
    config = make_config(None, None, BODY)
    rows = scorecard.score(
        config,
        quality={"rules_counted_as_accuracy": (1000, 1), "ratings_present": (10, 0)},
        freshness={},
    )
    by_table = {r.table: r for r in rows}
    perf = by_table["public.rule_performance"]
    assert perf.ratio("accuracy") == pytest.approx(0.999) and perf.ratio("completeness") is None
    assert perf.below_target() == []
    feedback = by_table["public.user_feedback"]
    assert feedback.ratio("completeness") == 1.0 and feedback.ratio("timeliness") is None
