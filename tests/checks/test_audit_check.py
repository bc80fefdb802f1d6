"""audit: the agent's scheduled `pipectl audit` — value the rows that differ, fail when any
does, the audit's evidence in the result; an incremental step's state, writes since its
refresh (no false alarm), a matview or a step that cannot be audited (refused), and a recompute
cut short by the check's timeout."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from pipectl.audit import audit_step
from pipectl.checks import CheckEngine
from pipectl.checks.audit import AuditCheck
from pipectl.config import Config, ConfigError
from pipectl.model import CheckStatus
from pipectl.store import incremental
from tests.checks.conftest import NOW
from tests.helpers import make_config, make_loaded
from tests.test_audit import STEP, add_rows

INCREMENTAL = (Path(__file__).parents[1] / "incremental_apes.toml").read_text()

CHECKS = f"""
[[steps]]
name = "rollup"
kind = "sql"
sql = "SELECT 1"
every = "1h"

[[checks]]
name = "summary_audit"
kind = "audit"
step = "{STEP}"
hysteresis = 1

"""

SLOW = f"""
[[checks]]
name = "slow_audit"
kind = "audit"
step = "{STEP}"
timeout = "20ms"
"""

MATVIEW = f"""
[[steps]]
name = "{STEP}"
kind = "matview"
relation = "public.{STEP}"
every = "1h"
"""


def test_an_audit_runs_hourly_with_room_for_a_full_recompute() -> None:
    check = AuditCheck.model_validate({"name": "a", "kind": "audit", "step": "s"})
    assert check.every is not None and check.every.total_seconds() == 3600
    assert check.timeout is not None and check.timeout.total_seconds() == 120
    assert check.watches() == ((), ("s",))


async def _installed(conn: asyncpg.Connection, config: Config) -> None:
    step = config.step(STEP)
    async with conn.transaction():
        await incremental.install(conn, step, triggers=True)
    async with conn.transaction():
        await incremental.refresh(conn, step)


async def test_an_incremental_state_is_ok_until_it_is_wrong(
    conn: asyncpg.Connection, database: str
) -> None:
    await conn.execute("SET TimeZone = 'UTC'")
    await add_rows(conn, "r0", 5, 0.1)
    await add_rows(conn, "r1", 6, 0.3)
    config = make_config(database, None, INCREMENTAL + CHECKS)
    await _installed(conn, config)
    engine = CheckEngine(config)
    engine.record_own_reads = True  # as the agent runs it
    await engine.validate(conn, ["summary_audit"])

    ok = await engine.run("summary_audit", conn, redis=None, now=NOW)
    assert (ok.status, ok.value) == (CheckStatus.OK, 0.0), ok.message
    assert ok.message.startswith("equal: 2 rows, the same as a full recompute")
    assert (ok.baseline["kind"], ok.baseline["basis"]) == ("incremental", "state")
    assert [s.value for s in ok.samples] == [0.0]

    # The state loses r0's bucket: what the next refresh would publish misses r0.
    state = incremental.state_table_name(STEP)
    await conn.execute(f"DELETE FROM pipectl_incremental.{state} WHERE _k0 = 'r0'")
    wrong = await engine.run("summary_audit", conn, redis=None, now=NOW)
    assert (wrong.status, wrong.value) == (CheckStatus.FAIL, 1.0)
    assert wrong.message.startswith(
        "differs: 0 rows only in the summary, 1 row only in the recompute"
    )
    assert [r["rule_id"] for r in wrong.baseline["examples_only_in_recompute"]] == ["r0"]
    assert wrong.baseline["examples_only_in_recompute"][0]["usage_count"] == 5


async def test_writes_since_the_refresh_do_not_make_the_audit_cry_wolf(
    conn: asyncpg.Connection, database: str
) -> None:
    """A live source: rows arrive, change and go between the refresh and the audit. The
    published table differs from a recompute now (that is not a wrong summary); the state
    the next refresh publishes from does not."""
    await conn.execute("SET TimeZone = 'UTC'")
    await add_rows(conn, "r0", 5, 0.1)
    await add_rows(conn, "r1", 6, 0.3)
    config = make_config(database, None, INCREMENTAL + CHECKS)
    await _installed(conn, config)
    await add_rows(conn, "r2", 3, 0.7)  # an hour ago: behind the re-read point, logged
    await conn.execute(
        "INSERT INTO public.rule_performance (rule_id, rule_name, improvement_score, created_at)"
        " SELECT 'r0', 'Rule r0', 0.9, now() AT TIME ZONE 'UTC' FROM generate_series(1, 4)"
    )
    await conn.execute(
        "UPDATE public.rule_performance SET improvement_score = 0.05 WHERE rule_id = 'r1'"
    )
    await conn.execute(
        "DELETE FROM public.rule_performance WHERE ctid IN"
        " (SELECT ctid FROM public.rule_performance WHERE rule_id = 'r0' LIMIT 2)"
    )
    engine = CheckEngine(config)
    engine.record_own_reads = True
    result = await engine.run("summary_audit", conn, redis=None, now=NOW)
    assert (result.status, result.value) == (CheckStatus.OK, 0.0), result.message
    # The published table, audited as `pipectl audit` does by default, differs.
    async with conn.transaction():
        published = await audit_step(conn, config.step(STEP), basis="published")
    assert not published.equal


async def test_a_matview_step_is_refused_for_a_scheduled_audit(database: str) -> None:
    loaded = make_loaded(database, None, MATVIEW + CHECKS)
    engine = CheckEngine(loaded.config)
    conn = await asyncpg.connect(database)
    try:
        with pytest.raises(ConfigError) as raised:
            await engine.validate(conn, ["summary_audit"])
    finally:
        await conn.close()
    [problem] = raised.value.problems
    assert problem.path == "checks.summary_audit.step"
    assert problem.message.startswith(
        f"step {STEP} is a matview step: a scheduled audit needs an incremental step"
    )


async def test_a_step_without_a_defining_query_is_a_config_problem(database: str) -> None:
    loaded = make_loaded(
        database,
        None,
        MATVIEW + CHECKS + '[[checks]]\nname = "rollup_audit"\nkind = "audit"\nstep = "rollup"\n',
    )
    engine = CheckEngine(loaded.config)
    conn = await asyncpg.connect(database)
    try:
        with pytest.raises(ConfigError) as raised:
            await engine.validate(conn, ["rollup_audit"])
    finally:
        await conn.close()
    assert [(p.path, p.message) for p in raised.value.problems] == [
        (
            "checks.rollup_audit.step",
            "step rollup is an sql step: it has no defining query to recompute;"
            " audit works on matview and incremental steps",
        )
    ]
    with pytest.raises(ConfigError, match="unknown step 'nope'"):
        make_config(database, None, '[[checks]]\nname = "a"\nkind = "audit"\nstep = "nope"\n')


async def test_a_recompute_past_the_checks_timeout_is_an_error_result(
    conn: asyncpg.Connection, database: str
) -> None:
    await conn.execute("SET TimeZone = 'UTC'")
    await add_rows(conn, "r0", 5, 0.1)
    config = make_config(database, None, INCREMENTAL + CHECKS + SLOW)
    await _installed(conn, config)
    engine = CheckEngine(config)
    engine.record_own_reads = True  # the probe's transaction must stay usable after the cancel
    state = incremental.state_table_name(STEP)
    blocker = await asyncpg.connect(database)
    try:
        # The audit waits for this lock until its statement_timeout (20 ms) cancels it.
        async with blocker.transaction():
            await blocker.execute(f"LOCK TABLE pipectl_incremental.{state}")
            result = await engine.run("slow_audit", conn, redis=None, now=NOW)
    finally:
        await blocker.close()
    assert result.status == CheckStatus.ERROR
    assert result.message.startswith(
        f"the audit of {STEP} ran longer than its statement_timeout (20ms)"
    )
    # The connection is fine afterwards.
    assert await conn.fetchval("SELECT 1") == 1
