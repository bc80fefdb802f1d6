"""audit: the agent's scheduled `pipectl audit` — value the rows that differ, fail when any
does, the audit's evidence in the result; an incremental step, a stale matview, a step that
cannot be audited, and a recompute cut short by the check's timeout."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from pipectl.checks import CheckEngine
from pipectl.checks.audit import AuditCheck
from pipectl.config import ConfigError
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

[[steps]]
name = "slow_summary"
kind = "matview"
relation = "public.slow_summary"
every = "1h"

[[checks]]
name = "summary_audit"
kind = "audit"
step = "{STEP}"
hysteresis = 1

[[checks]]
name = "slow_audit"
kind = "audit"
step = "slow_summary"
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


async def test_an_incremental_summary_is_ok_until_it_is_wrong(
    conn: asyncpg.Connection, database: str
) -> None:
    await conn.execute("SET TimeZone = 'UTC'")
    await add_rows(conn, "r0", 5, 0.1)
    await add_rows(conn, "r1", 6, 0.3)
    config = make_config(database, None, INCREMENTAL + CHECKS)
    step = config.step(STEP)
    async with conn.transaction():
        await incremental.install(conn, step, triggers=True)
    async with conn.transaction():
        await incremental.refresh(conn, step)
    engine = CheckEngine(config)
    engine.record_own_reads = True  # as the agent runs it
    await engine.validate(conn, ["summary_audit"])

    ok = await engine.run("summary_audit", conn, redis=None, now=NOW)
    assert (ok.status, ok.value) == (CheckStatus.OK, 0.0), ok.message
    assert ok.message.startswith("equal: 2 rows, the same as a full recompute")
    assert ok.baseline["kind"] == "incremental"
    assert ok.baseline["reference_at"] == ok.baseline["published_at"]
    assert [s.value for s in ok.samples] == [0.0]

    await conn.execute(f"DELETE FROM public.{STEP} WHERE rule_id = 'r0'")
    wrong = await engine.run("summary_audit", conn, redis=None, now=NOW)
    assert (wrong.status, wrong.value) == (CheckStatus.FAIL, 1.0)
    assert wrong.message.startswith(
        "differs: 0 rows only in the summary, 1 row only in the recompute"
    )
    assert [r["rule_id"] for r in wrong.baseline["examples_only_in_recompute"]] == ["r0"]
    assert wrong.baseline["examples_only_in_recompute"][0]["usage_count"] == 5


async def test_a_stale_matview_fails_and_says_it_is_staleness(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_rows(conn, "r0", 5, 0.1)
    await conn.execute(f"REFRESH MATERIALIZED VIEW public.{STEP}")
    engine = CheckEngine(make_config(database, None, MATVIEW + CHECKS))
    assert (await engine.run("summary_audit", conn, redis=None, now=NOW)).status == "ok"
    await add_rows(conn, "r0", 2, 0.1)
    stale = await engine.run("summary_audit", conn, redis=None, now=NOW)
    assert (stale.status, stale.value) == (CheckStatus.FAIL, 2.0)
    assert "a matview differs from a recompute by what arrived since its refresh" in (stale.message)


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
    await conn.execute(
        "CREATE MATERIALIZED VIEW public.slow_summary AS SELECT 1 AS x FROM pg_sleep(0.3)"
    )
    engine = CheckEngine(make_config(database, None, MATVIEW + CHECKS))
    engine.record_own_reads = True  # the probe's transaction must stay usable after the cancel
    result = await engine.run("slow_audit", conn, redis=None, now=NOW)
    assert result.status == CheckStatus.ERROR
    assert result.message.startswith(
        "the audit of slow_summary ran longer than its statement_timeout (20ms)"
    )
    # The connection is fine afterwards.
    assert await conn.fetchval("SELECT 1") == 1
