"""The engine around the kinds: timeouts, read-only probes, definitions, layering."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta

import asyncpg
import pytest

from pipectl.checks import CheckEngine
from pipectl.checks.registry import KINDS
from pipectl.config import CHECK_KINDS
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_rule_performance
from tests.helpers import make_config

BODY = """
[check_defaults]
every = "2m"

[[checks]]
name = "slow"
kind = "quality"
table = "public.rule_performance"
timeout = "200ms"
rule = { type = "custom", sql = "SELECT count(*) FROM pg_sleep(5)" }

[[checks]]
name = "sneaky"
kind = "quality"
table = "public.rule_performance"
rule = { type = "custom", sql = "SELECT public.wipe_rules()" }

[[checks]]
name = "arrivals"
kind = "volume"
table = "public.rule_performance"
column = "created_at"
every = "5m"
description = "rows per hour"
"""


def engine(database: str) -> CheckEngine:
    return CheckEngine(make_config(database, None, BODY))


async def test_a_probe_over_its_timeout_is_an_error_and_the_connection_lives_on(
    conn: asyncpg.Connection, database: str
) -> None:
    result = await engine(database).run("slow", conn, redis=None, now=NOW)
    assert result.status == CheckStatus.ERROR
    assert result.message == "probe cancelled: it ran longer than its timeout (200ms)"
    assert result.duration_ms is not None and result.duration_ms < 5000
    assert await conn.fetchval("SELECT 1") == 1
    assert await conn.fetchval("SHOW statement_timeout") == "0"  # SET LOCAL ended with it


async def test_probes_cannot_write(conn: asyncpg.Connection, database: str) -> None:
    await conn.execute(
        "CREATE FUNCTION public.wipe_rules() RETURNS bigint LANGUAGE sql"
        " AS 'DELETE FROM public.rule_metadata; SELECT 0::bigint'"
    )
    result = await engine(database).run("sneaky", conn, redis=None, now=NOW)
    assert result.status == CheckStatus.ERROR
    assert "read-only transaction" in result.message
    assert await conn.fetchval("SELECT count(*) FROM public.rule_metadata") == 4


async def test_results_carry_timing_and_the_source_of_their_samples(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_rule_performance(conn, [NOW - timedelta(minutes=3)])
    checks = engine(database)
    scheduled = await checks.run("arrivals", conn, redis=None, now=NOW)
    by_hand = await checks.run("arrivals", conn, redis=None, now=NOW, trigger="cli")
    assert scheduled.duration_ms is not None and scheduled.duration_ms > 0
    assert scheduled.observed_at == NOW
    assert next(s.source for s in scheduled.samples if s.series == "arrivals") == "live"
    assert next(s.source for s in by_hand.samples if s.series == "arrivals") == "manual"
    with pytest.raises(ValueError, match="timezone-aware"):
        await checks.run("arrivals", conn, redis=None, now=datetime(2025, 1, 1))  # noqa: DTZ001


def test_definitions_show_target_sql_schedule_and_config(database: str) -> None:
    found = {d.name: d for d in engine(database).definitions()}
    arrivals = found["arrivals"]
    assert (arrivals.kind, arrivals.target, arrivals.schedule) == (
        "volume",
        "public.rule_performance.created_at",
        "every 5m",
    )
    assert arrivals.description == "rows per hour"
    assert arrivals.sql is not None
    assert 'FROM "public"."rule_performance" WHERE "created_at" > $1' in arrivals.sql
    assert arrivals.definition["window"] == "1h"
    assert arrivals.definition["anomaly"]["seasonality"] == "hour_and_daytype"
    assert found["slow"].schedule == "every 2m"  # check_defaults.every


def test_every_config_kind_has_a_module() -> None:
    assert set(KINDS) == set(CHECK_KINDS)


def test_the_engine_imports_neither_textual_nor_the_agent_nor_the_console() -> None:
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "textual" or name.startswith(
                    ("pipectl.agent", "pipectl.console")
                ):
                    raise ImportError(f"checks must not import {name}")
                return None

        sys.meta_path.insert(0, Refuse())
        import pipectl.checks
        for module in pkgutil.walk_packages(pipectl.checks.__path__, "pipectl.checks."):
            importlib.import_module(module.name)
        import pipectl.cli.check_cmd
        print("clean")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "clean", done.stderr


async def test_a_column_retyped_after_start_up_is_read_again(
    conn: asyncpg.Connection, database: str
) -> None:
    body = """
    [[checks]]
    name = "requests"
    kind = "volume"
    table = "public.prompt_improvement_sessions"
    column = "created_at"
    """
    checks = CheckEngine(make_config(database, None, body))
    await checks.validate(conn)
    await conn.execute(
        "ALTER TABLE public.prompt_improvement_sessions"
        " ALTER COLUMN created_at TYPE timestamp USING created_at AT TIME ZONE 'UTC'"
    )
    await conn.execute(
        "INSERT INTO public.prompt_improvement_sessions (original_prompt, enhanced_prompt,"
        " applied_rules, response_time_ms, created_at) VALUES ('p', 'q', '[]', 5, $1)",
        (NOW - timedelta(minutes=5)).replace(tzinfo=None),
    )
    stale = await checks.run("requests", conn, redis=None, now=NOW)
    assert stale.status == CheckStatus.ERROR
    assert stale.message.endswith("the catalog is read again on the next run")
    fresh = await checks.run("requests", conn, redis=None, now=NOW)
    assert fresh.status != CheckStatus.ERROR and fresh.value == 1
