"""Incremental windowed checks (checks/incremental.py): the agent's ticks read only new rows,
and their results equal a full read of the window at every tick."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipectl.checks import CheckEngine
from pipectl.checks.incremental import percentile_cont
from pipectl.config import ConfigError
from pipectl.model import CheckResult
from tests.checks.conftest import NOW
from tests.checks.data import naive_utc
from tests.helpers import make_config

BODY = """
[check_defaults]
every = "1m"

[[checks]]
name = "exec_in_range"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1h"
rule = { type = "range", column = "execution_time_ms", min = 0, max = 1000 }

[[checks]]
name = "confidence_present"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1h"
rule = { type = "not_null", column = "confidence_level" }
as_share = true
warn_over = 0.05
fail_over = 0.25

[[checks]]
name = "rule_ids_known"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1h"
rule = { type = "references", column = "rule_id", ref_table = "public.rule_metadata", \
ref_column = "rule_id" }
as_share = true
fail_over = 0.05

[[checks]]
name = "applied_rules_have_rule_id"
kind = "quality"
table = "public.user_feedback"
time_column = "created_at"
window = "30m"
rule = { type = "json_keys", column = "applied_rules", key = "rule_id" }

[[checks]]
name = "cache_level_valid"
kind = "quality"
table = "public.prompt_improvement_sessions"
time_column = "created_at"
window = "30m"
rule = { type = "accepted", column = "cache_hit_level", values = ["L1", "L2", "L3", "MISS"] }

[[checks]]
name = "avg_score"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "avg"
column = "improvement_score"
window = "1h"
bounds = { warn_below = 0.5 }

[[checks]]
name = "avg_exec"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "avg"
column = "execution_time_ms"
where = [{ column = "improvement_score", op = ">", value = 0.2 }]
window = "45m"

[[checks]]
name = "sum_exec"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "sum"
column = "execution_time_ms"
window = "30m"

[[checks]]
name = "min_exec"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "min"
column = "execution_time_ms"
window = "1h"

[[checks]]
name = "max_exec"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "max"
column = "execution_time_ms"
window = "20m"
bounds = { warn_above = 3000 }

[[checks]]
name = "confidences"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "count"
column = "confidence_level"
where = [{ column = "rule_id", op = "!=", value = "ghost_rule" }]
window = "30m"

[[checks]]
name = "exec_p95"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "p95"
column = "execution_time_ms"
where = [{ column = "rule_id", op = "in", value = ["clarity_rule", "ghost_rule"] }]
window = "1h"
min_rows = 20
bounds = { warn_above = 900 }

[[checks]]
name = "negative_share"
kind = "metric"
table = "public.user_feedback"
time_column = "created_at"
aggregate = "share"
share_of = [{ column = "user_rating", op = "<=", value = 2 }]
where = [{ column = "user_rating", op = "not_null" }]
window = "30m"
bounds = { warn_above = 0.3 }

[[checks]]
name = "latency_p50"
kind = "metric"
table = "public.prompt_improvement_sessions"
time_column = "created_at"
aggregate = "p50"
column = "response_time_ms"
window = "30m"

[[checks]]
name = "app_hits"
kind = "cache"
source = "app"
table = "public.prompt_improvement_sessions"
column = "cache_hit_level"
time_column = "created_at"
window = "15m"

[[checks]]
name = "arrivals"
kind = "volume"
table = "public.rule_performance"
column = "created_at"
window = "1h"
bounds = { warn_above = 100000 }
"""

RULES = ["clarity_rule", "specificity_rule", "ghost_rule", "clarity_rule"]


def _rows(rng: random.Random, low: datetime, high: datetime, n: int) -> list[datetime]:
    span = (high - low).total_seconds()
    return [low + timedelta(seconds=rng.uniform(0, span)) for _ in range(n)]


async def _write(conn: asyncpg.Connection, rng: random.Random, times: list[datetime]) -> None:
    """Rows of the three tables at `times`, some breaking each rule."""
    n = len(times)
    await conn.execute(
        """
        INSERT INTO public.rule_performance
            (rule_id, rule_name, improvement_score, confidence_level, execution_time_ms,
             created_at)
        SELECT r, 'rule', s, c, e, t
        FROM unnest($1::text[], $2::float8[], $3::float8[], $4::int[], $5::timestamp[])
            AS u(r, s, c, e, t)
        """,
        [rng.choice(RULES) for _ in range(n)],
        [rng.random() if rng.random() > 0.05 else None for _ in range(n)],
        [rng.random() if rng.random() > 0.1 else None for _ in range(n)],
        [rng.choice([rng.randint(1, 900), rng.randint(1, 1500), None]) for _ in range(n)],
        [naive_utc(t) for t in times],
    )
    good = '[{"rule_id": "a"}]'
    await conn.execute(
        """
        INSERT INTO public.user_feedback (original_prompt, improved_prompt, user_rating,
            applied_rules, created_at)
        SELECT 'p', 'q', r, a::jsonb, t FROM unnest($1::int[], $2::text[], $3::timestamp[])
            AS u(r, a, t)
        """,
        [rng.choice([1, 2, 3, 4, 5, None]) for _ in range(n)],
        [rng.choice([good, good, '[{"x": 1}]', "{}"]) for _ in range(n)],
        [naive_utc(t) for t in times],
    )
    await conn.execute(
        """
        INSERT INTO public.prompt_improvement_sessions (original_prompt, enhanced_prompt,
            applied_rules, response_time_ms, cache_hit_level, created_at)
        SELECT 'p', 'q', '[]'::jsonb, r, l, t
        FROM unnest($1::int[], $2::text[], $3::timestamptz[]) AS u(r, l, t)
        """,
        [rng.randint(20, 400) for _ in range(n)],
        [rng.choice(["L1", "L2", "MISS", "L9", None]) for _ in range(n)],
        times,
    )


def _comparable(result: CheckResult) -> dict[str, object]:
    baseline = {k: v for k, v in result.baseline.items() if k != "probe_shared_by"}
    return {
        "status": result.status,
        "message": result.message,
        "baseline": baseline,
        "threshold": result.threshold,
        "expected": (result.expected_low, result.expected_high),
    }


async def _flush_stats(conn: asyncpg.Connection) -> None:
    """This session's statistics into the shared ones (flushed once it goes idle)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")


async def test_incremental_ticks_equal_a_full_read_at_every_tick(
    conn: asyncpg.Connection, database: str
) -> None:
    config = make_config(database, None, BODY)
    incremental, whole = CheckEngine(config), CheckEngine(config)
    incremental.enable_incremental()
    assert incremental.incremental is not None
    names = [c.name for c in config.checks]
    rng = random.Random(16)
    # Read incrementally only through an index leading with the time column (without one,
    # the new rows are a scan of the whole table): give the timestamptz table one.
    await conn.execute("CREATE INDEX ON public.prompt_improvement_sessions (created_at)")
    await _write(conn, rng, _rows(rng, NOW - timedelta(hours=2), NOW, 900))
    seen_statuses: set[str] = set()

    async def tick(now: datetime) -> None:
        found = await incremental.run_many(names, conn, redis=None, trigger="schedule", now=now)
        truth = await whole.run_many(names, conn, redis=None, trigger="cli", now=now)
        for name in names:
            a, b = found[name], truth[name]
            assert _comparable(a) == _comparable(b), name
            if b.value is None:
                assert a.value is None, name
            else:
                assert a.value is not None, name
                assert math.isclose(a.value, b.value, rel_tol=1e-12), (name, a.value, b.value)
            seen_statuses.add(f"{name}:{b.status}")

    now = NOW + timedelta(seconds=0.25)
    await tick(now)  # the first tick reads the longest window whole
    assert incremental.incremental.full_reads == 3  # one per table
    for step, late in [(61.37, 4.0), (60.0, 9.5), (299.9, 0.0), (1000.123, 7.0), (2400, 2.0)]:
        # New rows since the last tick, and a late commit stamped before it (within the
        # overlap): a transaction that took `late` seconds to commit.
        await _write(conn, rng, _rows(rng, now, now + timedelta(seconds=step), 120))
        if late:
            await _write(conn, rng, [now - timedelta(seconds=late)] * 3)
        now += timedelta(seconds=step)
        await tick(now)
    assert incremental.incremental.full_reads == 3, "no full read after the first"

    # A later insert into the referenced table changes the references rule's answer at once.
    await conn.execute(
        "INSERT INTO public.rule_metadata (rule_id, rule_name, rule_category)"
        " VALUES ('ghost_rule', 'Ghost', 'test')"
    )
    now += timedelta(seconds=60)
    await tick(now)

    # Rows changed behind the watermark: the statistics show it, the next tick reads whole.
    await conn.execute(
        "UPDATE public.rule_performance SET execution_time_ms = 5000, confidence_level = NULL"
        " WHERE created_at < $1",
        naive_utc(now - timedelta(minutes=10)),
    )
    await _flush_stats(conn)
    now += timedelta(seconds=60)
    await tick(now)
    assert incremental.incremental.full_reads == 4
    # The window moved past every row written before the first tick.
    now += timedelta(hours=2)
    await tick(now)
    assert {s.split(":")[1] for s in seen_statuses} >= {"ok", "warn", "fail", "nodata"}


async def test_a_second_tick_reads_only_the_new_rows(
    conn: asyncpg.Connection, database: str
) -> None:
    config = make_config(database, None, BODY)
    incremental, whole = CheckEngine(config), CheckEngine(config)
    incremental.enable_incremental()
    names = ["exec_in_range", "confidence_present", "rule_ids_known", "avg_score", "exec_p95"]
    first = NOW + timedelta(seconds=0.5)
    rng = random.Random(4)
    await _write(
        conn, rng, _rows(rng, first - timedelta(minutes=50), first - timedelta(minutes=1), 3000)
    )
    await conn.execute("ANALYZE public.rule_performance")

    async def rows_read() -> int:
        await _flush_stats(conn)
        found = await conn.fetchval(
            "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
            " WHERE relid = 'public.rule_performance'::regclass"
        )
        return int(found)

    start = await rows_read()
    await incremental.run_many(names, conn, redis=None, trigger="schedule", now=first)
    after_first = await rows_read()
    assert after_first - start >= 3000  # the first tick reads the window whole

    second = first + timedelta(seconds=60)
    await _write(conn, rng, _rows(rng, first + timedelta(seconds=1), second, 50))
    before = await rows_read()
    incremental.record_own_reads = True  # as the agent does
    found = await incremental.run_many(names, conn, redis=None, trigger="schedule", now=second)
    read = await rows_read() - before
    # The buffer-cache check leaves these reads out: they are recorded as pipectl's own.
    own = await conn.fetchval(
        "SELECT count(*) FROM pipectl.own_reads"
        " WHERE relation = 'public.rule_performance' AND what LIKE 'check %'"
    )
    assert own >= 1
    # The 50 new rows, plus the few the planner fetches to find the index's actual end
    # (a bound beyond the statistics' histogram: get_actual_variable_range).
    assert 50 <= read <= 80, f"the second tick read {read} rows of rule_performance"

    before = await rows_read()
    truth = await whole.run_many(names, conn, redis=None, trigger="cli", now=second)
    assert await rows_read() - before >= 3050  # a full read, for comparison
    assert {n: _comparable(r) for n, r in found.items()} == {
        n: _comparable(r) for n, r in truth.items()
    }


async def test_opted_out_checks_and_other_triggers_read_whole(database: str) -> None:
    body = BODY.replace('window = "20m"', 'window = "20m"\nincremental = false')
    config = make_config(database, None, body)
    engine = CheckEngine(config)
    engine.enable_incremental()
    assert engine.incremental is not None
    assert not engine.incremental.covers(config.check("max_exec"))
    assert engine.incremental.covers(config.check("min_exec"))
    off = make_config(
        database, None, "[check_defaults]\nincremental = false\n" + BODY.split("\n", 3)[3]
    )
    engine = CheckEngine(off)
    engine.enable_incremental()
    assert engine.incremental is not None
    assert not any(engine.incremental.covers(c) for c in off.checks)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            'kind = "quality"\ntable = "public.t"\ntime_column = "t"\nwindow = "1h"\n'
            'rule = { type = "unique", columns = ["a"] }',
            "'incremental' applies to windowed row rules",
        ),
        (
            'kind = "quality"\ntable = "public.t"\nrule = { type = "not_null", column = "a" }',
            "'incremental' applies to windowed row rules",
        ),
        (
            'kind = "metric"\ntable = "public.t"\ntime_column = "t"\naggregate = "stddev"\n'
            'column = "a"',
            "'incremental' does not apply to aggregate 'stddev'",
        ),
        (
            'kind = "volume"\ntable = "public.t"\ncolumn = "t"\nincremental = "yes"',
            "expected true or false",
        ),
    ],
)
def test_incremental_where_it_cannot_apply_is_refused(check: str, message: str) -> None:
    extra = "" if "incremental =" in check else "\nincremental = true"
    with pytest.raises(ConfigError) as raised:
        make_config(None, None, f'[[checks]]\nname = "x"\n{check}{extra}\n')
    assert message in str(raised.value)


def test_overlap_and_resync_are_bounded() -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(None, None, '[check_defaults]\nincremental_overlap = "2h"\n')
    assert "incremental_overlap" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        make_config(None, None, '[check_defaults]\nincremental_resync = "0s"\n')
    assert "incremental_resync" in str(raised.value)


def test_percentile_cont_is_postgresql_s() -> None:
    values = [5.0, 1.0, 1.0, 3.0, 10.0, 7.5]
    bag = Counter(values)
    ordered = sorted(values)
    for fraction in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0):
        position = fraction * (len(ordered) - 1)
        lo, hi = math.floor(position), math.ceil(position)
        expected = ordered[lo] + (position - lo) * (ordered[hi] - ordered[lo])
        assert percentile_cont(bag, fraction) == expected
    assert datetime.now(UTC) > NOW


async def test_a_check_whose_sql_fails_leaves_its_table_to_full_reads(
    conn: asyncpg.Connection, database: str
) -> None:
    """A column dropped under one check fails the table's shared read once; then every
    check of the table reads its window whole, and only the broken one reports an error."""
    config = make_config(database, None, BODY)
    engine = CheckEngine(config)
    engine.enable_incremental()
    assert engine.incremental is not None
    rng = random.Random(7)
    await _write(conn, rng, _rows(rng, NOW - timedelta(hours=1), NOW, 200))
    found = await engine.run("avg_score", conn, redis=None, trigger="schedule", now=NOW)
    assert found.status != "error"
    await conn.execute("ALTER TABLE public.rule_performance DROP COLUMN execution_time_ms CASCADE")
    later = NOW + timedelta(minutes=1)
    failed = await engine.run("avg_score", conn, redis=None, trigger="schedule", now=later)
    assert failed.status == "error"
    assert engine.incremental.broken
    again = await engine.run("avg_score", conn, redis=None, trigger="schedule", now=later)
    truth = await CheckEngine(config).run("avg_score", conn, redis=None, trigger="cli", now=later)
    assert _comparable(again) == _comparable(truth)
    broken = await engine.run("min_exec", conn, redis=None, trigger="schedule", now=later)
    assert broken.status == "error"
    assert "execution_time_ms" in broken.message
