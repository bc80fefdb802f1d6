"""freshness: a stalled feed goes warn then fail; empty is nodata; time zones; summary refresh."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from pipectl.checks import CheckEngine
from pipectl.checks.freshness import FreshnessCheck, query
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback, add_rule_performance, add_sessions
from tests.checks.explain import assert_uses_index, fill_rule_performance
from tests.helpers import make_config

FRESHNESS = """
[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"

[[checks]]
name = "feed"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "15m"
error_after = "1h"

[[checks]]
name = "empty_feed"
kind = "freshness"
table = "public.improvement_sessions"
column = "started_at"
warn_after = "15m"
error_after = "1h"

[[checks]]
name = "empty_is_failure"
kind = "freshness"
table = "public.improvement_sessions"
column = "started_at"
warn_after = "15m"
error_after = "1h"
on_empty = "fail"

[[checks]]
name = "summary"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
step = "rule_effectiveness_summary"
warn_after = "15m"
error_after = "1h"

[[checks]]
name = "requests"
kind = "freshness"
table = "public.prompt_improvement_sessions"
column = "created_at"
warn_after = "10m"
error_after = "30m"

[[checks]]
name = "berlin_clock"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
timezone = "Europe/Berlin"
warn_after = "15m"
error_after = "1h"
"""


def engine(database: str) -> CheckEngine:
    return CheckEngine(make_config(database, None, FRESHNESS))


async def test_a_stalled_feed_goes_warn_then_fail(conn: asyncpg.Connection, database: str) -> None:
    checks = engine(database)
    await add_rule_performance(conn, [NOW - timedelta(minutes=m) for m in (300, 120, 5)])
    fresh = await checks.run("feed", conn, redis=None, now=NOW)
    assert (fresh.status, fresh.value) == (CheckStatus.OK, 300.0)
    # no rows arrive any more; time moves on
    stale = await checks.run("feed", conn, redis=None, now=NOW + timedelta(minutes=15))
    assert (stale.status, stale.value) == (CheckStatus.WARN, 20 * 60.0)
    assert "newest public.rule_performance.created_at 20m old" in stale.message
    dead = await checks.run("feed", conn, redis=None, now=NOW + timedelta(hours=1))
    assert (dead.status, dead.value) == (CheckStatus.FAIL, 65 * 60.0)
    assert dead.threshold == {"warn_after_s": 900.0, "error_after_s": 3600.0}
    assert [(s.series, s.value, s.source) for s in dead.samples] == [("feed", 3900.0, "live")]


async def test_an_empty_table_is_nodata_or_fail_never_an_exception(
    conn: asyncpg.Connection, database: str
) -> None:
    checks = engine(database)
    empty = await checks.run("empty_feed", conn, redis=None, now=NOW)
    assert (empty.status, empty.value) == (CheckStatus.NODATA, None)
    assert empty.message == "public.improvement_sessions has no rows"
    assert empty.samples == ()
    failed = await checks.run("empty_is_failure", conn, redis=None, now=NOW)
    assert failed.status == CheckStatus.FAIL


async def test_timestamptz_is_taken_as_is(conn: asyncpg.Connection, database: str) -> None:
    await add_sessions(conn, [NOW - timedelta(minutes=12)], ["L1"])
    result = await engine(database).run("requests", conn, redis=None, now=NOW)
    assert (result.status, result.value) == (CheckStatus.WARN, 12 * 60.0)


async def test_timestamp_without_zone_is_read_in_the_configured_zone(
    conn: asyncpg.Connection, database: str
) -> None:
    """Berlin wall clock 13:55 in June is 11:55 UTC: five minutes old, not two hours ahead."""
    await conn.execute(
        "INSERT INTO public.user_feedback (original_prompt, improved_prompt, applied_rules,"
        " created_at) VALUES ('p', 'q', '[]', '2025-06-04 13:55:00')"
    )
    result = await engine(database).run("berlin_clock", conn, redis=None, now=NOW)
    assert (result.status, result.value) == (CheckStatus.OK, 300.0)
    assert result.baseline["newest"] == "2025-06-04T11:55:00+00:00"


async def test_a_future_timestamp_is_not_a_negative_age(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_feedback(conn, [NOW + timedelta(hours=3)])
    result = await engine(database).run("berlin_clock", conn, redis=None, now=NOW)
    assert result.value == 0.0 and result.status == CheckStatus.OK
    assert "in the future" in result.message


async def test_summary_freshness_takes_the_worse_of_data_and_refresh(
    conn: asyncpg.Connection, database: str
) -> None:
    checks = engine(database)
    await add_rule_performance(conn, [NOW - timedelta(minutes=2)])
    never = await checks.run("summary", conn, redis=None, now=NOW)
    assert never.status == CheckStatus.NODATA
    assert "step rule_effectiveness_summary has not succeeded yet" in never.message

    async def refreshed(minutes_ago: int, status: str = "succeeded") -> None:
        at = NOW - timedelta(minutes=minutes_ago)
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, started_at, finished_at)"
            " VALUES ('rule_effectiveness_summary', 'manual', $1, $2, $2)",
            status,
            at,
        )

    await refreshed(90)
    await refreshed(1, status="failed")  # a failed refresh does not count
    stale = await checks.run("summary", conn, redis=None, now=NOW)
    assert (stale.status, stale.value) == (CheckStatus.FAIL, 90 * 60.0)
    assert stale.message.startswith("last refresh of rule_effectiveness_summary 1.5h old")
    assert "newest public.rule_performance.created_at 2m old" in stale.message
    await refreshed(3)
    ok = await checks.run("summary", conn, redis=None, now=NOW)
    assert (ok.status, ok.value) == (CheckStatus.OK, 180.0)  # worse of 2m (data) and 3m


async def test_a_plain_view_step_has_no_refresh_to_watch(
    conn: asyncpg.Connection, database: str
) -> None:
    body = FRESHNESS.replace('kind = "matview"', 'kind = "view"')
    await add_rule_performance(conn, [NOW - timedelta(minutes=2)])
    result = await CheckEngine(make_config(database, None, body)).run(
        "summary", conn, redis=None, now=NOW
    )
    assert (result.status, result.value) == (CheckStatus.OK, 120.0)
    assert "refresh" not in result.message


async def test_freshness_reads_the_index_not_the_table(
    conn: asyncpg.Connection, database: str
) -> None:
    await fill_rule_performance(conn, NOW)
    check = engine(database).config.check("summary")
    assert isinstance(check, FreshnessCheck)
    await assert_uses_index(
        conn,
        query(check, "rule_effectiveness_summary"),
        "public.rule_performance",
        "idx_rule_performance_created_at",
    )
