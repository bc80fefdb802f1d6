"""volume: spikes and drops are flagged, tiny changes are not; history is seeded once."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import asyncpg

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.checks.volume import VolumeCheck, query, seed_query
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_rule_performance, naive_utc
from tests.checks.explain import assert_uses_index, fill_rule_performance
from tests.helpers import make_config

VOLUME = """
[[checks]]
name = "arrivals"
kind = "volume"
table = "public.rule_performance"
column = "created_at"
window = "1h"
anomaly = {{ seasonality = "hour_of_day", min_abs_change = {abs}, min_rel_change = {rel} }}
"""


def engine(database: str, min_abs: float = 0, min_rel: float = 0) -> CheckEngine:
    return CheckEngine(make_config(database, None, VOLUME.format(abs=min_abs, rel=min_rel)))


def expected_rows(hour: int) -> int:
    """A daily rhythm: quiet nights, busy days."""
    return 40 if 8 <= hour < 20 else 10


async def four_weeks_of_rhythm(conn: asyncpg.Connection) -> None:
    """Rows for every hour of the 28 days before NOW's window, with a little noise."""
    rng = random.Random(7)
    times: list[datetime] = []
    for k in range(1, 28 * 24 + 1):
        end = NOW - timedelta(hours=k)
        count = expected_rows(end.hour - 1 if end.minute == 0 else end.hour) + rng.randint(-2, 2)
        times += [end - timedelta(minutes=1 + i * 50 / count) for i in range(count)]
    await add_rule_performance(conn, times)


async def this_hour(conn: asyncpg.Connection, rows: int) -> None:
    """Make the window under test, (NOW - 1h, NOW], hold exactly `rows` rows."""
    await conn.execute(
        "DELETE FROM public.rule_performance WHERE created_at > $1",
        naive_utc(NOW - timedelta(hours=1)),
    )
    await add_rule_performance(conn, [NOW - timedelta(seconds=30 + i) for i in range(rows)])


async def run_and_record(checks: CheckEngine, conn: asyncpg.Connection, trigger: str = "schedule"):  # type: ignore[no-untyped-def]
    await store.publish_checks(conn, checks.definitions(), None)
    result = await checks.run("arrivals", conn, redis=None, now=NOW, trigger=trigger)  # type: ignore[arg-type]
    await store.record_result(conn, result, hysteresis=1, agent_id=None, trigger=trigger)
    return result


async def test_a_normal_hour_passes_and_history_is_seeded_once(
    conn: asyncpg.Connection, database: str
) -> None:
    await four_weeks_of_rhythm(conn)
    await this_hour(conn, 40)  # NOW is noon: a busy hour
    checks = engine(database)
    first = await run_and_record(checks, conn)
    assert first.status == CheckStatus.OK, first.message
    assert first.value == 40
    seeds = [s for s in first.samples if s.source == "seed"]
    assert len(seeds) == 28 * 24  # every earlier hour of the 28-day history
    assert first.baseline["seeded"] == len(seeds) and first.baseline["points"] == 28
    assert 38 <= first.baseline["center"] <= 42  # busy hours hold 40 +- 2 rows
    assert first.expected_low is not None and first.expected_high is not None
    assert first.expected_low < 40 < first.expected_high
    stored = await conn.fetchval(
        "SELECT count(*) FROM pipectl.samples WHERE series = 'arrivals' AND source = 'seed'"
    )
    assert stored == len(seeds)
    again = await run_and_record(checks, conn)
    assert [s.source for s in again.samples] == ["live"]  # no second seeding
    assert "seeded" not in again.baseline and again.baseline["points"] == 28


async def test_a_spike_and_a_drop_are_flagged(conn: asyncpg.Connection, database: str) -> None:
    await four_weeks_of_rhythm(conn)
    checks = engine(database)
    await this_hour(conn, 130)
    spike = await run_and_record(checks, conn)
    assert spike.status == CheckStatus.WARN
    assert "unusually high" in spike.message
    assert spike.anomaly_score is not None and spike.anomaly_score > 3.5
    assert [s.anomaly for s in spike.samples if s.source == "live"] == [True]
    await this_hour(conn, 3)
    drop = await run_and_record(checks, conn)
    assert drop.status == CheckStatus.WARN and "unusually low" in drop.message
    assert drop.anomaly_score is not None and drop.anomaly_score < -3.5


async def test_a_tiny_change_stays_quiet(conn: asyncpg.Connection, database: str) -> None:
    await four_weeks_of_rhythm(conn)
    await this_hour(conn, 49)  # statistically odd (noise is +-2), but only 9 rows more
    odd = await engine(database).run("arrivals", conn, redis=None, now=NOW)
    assert odd.status == CheckStatus.WARN  # without materiality floors it would alert
    quiet = await engine(database, min_abs=20, min_rel=0.3).run(
        "arrivals", conn, redis=None, now=NOW
    )
    assert quiet.status == CheckStatus.OK, quiet.message
    assert quiet.expected_high == quiet.baseline["center"] + 20  # the floor widens the band


async def test_without_history_the_check_is_learning(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_rule_performance(conn, [NOW - timedelta(minutes=m) for m in range(1, 200, 7)])
    result = await engine(database).run("arrivals", conn, redis=None, now=NOW)
    assert result.status == CheckStatus.NODATA
    assert result.value == 9
    assert "learning: 0 of 14 comparable points" in result.message


async def test_an_empty_table_is_nodata(conn: asyncpg.Connection, database: str) -> None:
    result = await engine(database).run("arrivals", conn, redis=None, now=NOW)
    assert (result.status, result.value, result.samples) == (CheckStatus.NODATA, None, ())
    assert result.message == "public.rule_performance has no rows"


async def test_manual_runs_are_stored_but_never_teach_the_baseline(
    conn: asyncpg.Connection, database: str
) -> None:
    await four_weeks_of_rhythm(conn)
    await this_hour(conn, 40)
    checks = engine(database)
    await run_and_record(checks, conn)  # seeds
    manual = await run_and_record(checks, conn, trigger="manual")
    assert [s.source for s in manual.samples] == ["manual"]
    baseline = await store.read_windows(conn, "arrivals", [(NOW - timedelta(days=1), NOW)])
    assert all(s.source in ("live", "seed") for s in baseline)


async def test_volume_probe_and_seeding_read_the_index_not_the_table(
    conn: asyncpg.Connection, database: str
) -> None:
    """A year of rows, one every 10 minutes: the hour and the 28 days seeded both use the index."""
    await fill_rule_performance(conn, NOW, days=365, every_minutes=10)
    check = engine(database).config.check("arrivals")
    assert isinstance(check, VolumeCheck)
    for probe in (query(check, NOW), seed_query(check, NOW)):
        await assert_uses_index(
            conn, probe, "public.rule_performance", "idx_rule_performance_created_at"
        )
