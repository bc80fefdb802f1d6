"""schema: the first run records the shape; a change is reported until it has held a while."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.model import CheckResult, CheckStatus
from tests.checks.conftest import NOW
from tests.helpers import make_config

SCHEMA = """
[[checks]]
name = "shape"
kind = "schema"
tables = ["public.rule_metadata", "public.user_feedback"]
on_change = "fail"
accept_after = "1d"
"""


async def step(checks: CheckEngine, conn: asyncpg.Connection, at: datetime) -> CheckResult:
    result = await checks.run("shape", conn, redis=None, now=at)
    await store.record_result(conn, result, hysteresis=1, agent_id=None)
    return result


async def test_changes_are_reported_until_accepted(conn: asyncpg.Connection, database: str) -> None:
    checks = CheckEngine(make_config(database, None, SCHEMA))
    await store.publish_checks(conn, checks.definitions(), None)
    first = await step(checks, conn, NOW)
    assert first.status == CheckStatus.OK
    assert first.message.startswith("recorded the shape: 2 tables, ")
    assert first.baseline["accepted"]["public.rule_metadata"]["rule_id"] == "character varying(50)"
    same = await step(checks, conn, NOW + timedelta(minutes=15))
    assert (same.status, same.value) == (CheckStatus.OK, 0)
    assert same.message.startswith("unchanged")

    await conn.execute(
        "ALTER TABLE public.rule_metadata ADD COLUMN owner text, DROP COLUMN priority,"
        " ALTER COLUMN rule_id TYPE varchar(80)"
    )
    changed = await step(checks, conn, NOW + timedelta(minutes=30))
    assert changed.status == CheckStatus.FAIL
    assert changed.value == 3
    assert changed.message.startswith(
        "public.rule_metadata: added owner text; removed priority; "
        "retyped rule_id character varying(50) -> character varying(80)"
    )
    still = await step(checks, conn, NOW + timedelta(hours=12))
    assert still.status == CheckStatus.FAIL  # the same change, still new
    accepted = await step(checks, conn, NOW + timedelta(days=1, minutes=31))
    assert accepted.status == CheckStatus.OK
    assert accepted.message.startswith("accepted the changed shape after 1d")
    settled = await step(checks, conn, NOW + timedelta(days=1, hours=1))
    assert settled.message.startswith("unchanged")


async def test_a_change_that_goes_back_is_forgotten_and_a_dropped_table_is_named(
    conn: asyncpg.Connection, database: str
) -> None:
    checks = CheckEngine(make_config(database, None, SCHEMA))
    await store.publish_checks(conn, checks.definitions(), None)
    await step(checks, conn, NOW)
    await conn.execute("ALTER TABLE public.user_feedback ADD COLUMN extra int")
    assert (await step(checks, conn, NOW + timedelta(minutes=1))).status == CheckStatus.FAIL
    await conn.execute("ALTER TABLE public.user_feedback DROP COLUMN extra")
    assert (await step(checks, conn, NOW + timedelta(minutes=2))).status == CheckStatus.OK
    await conn.execute("DROP TABLE public.rule_metadata")
    gone = await step(checks, conn, NOW + timedelta(minutes=3))
    assert gone.status == CheckStatus.FAIL
    assert gone.message.startswith("public.rule_metadata: table missing")
