"""Names from config are checked against the catalog, named in errors, and never executed."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from pipectl.checks import CheckEngine
from pipectl.config import ConfigError
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.helpers import make_config

WRONG = """
[[checks]]
name = "no_table"
kind = "freshness"
table = "public.rule_performanc"
column = "created_at"
warn_after = "1m"
error_after = "2m"

[[checks]]
name = "no_column"
kind = "volume"
table = "public.rule_performance"
column = "created"

[[checks]]
name = "not_a_time"
kind = "freshness"
table = "public.rule_performance"
column = "rule_id"
warn_after = "1m"
error_after = "2m"

[[checks]]
name = "p95_of_text"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "p95"
column = "rule_name"

[[checks]]
name = "half_a_rating"
kind = "metric"
table = "public.user_feedback"
time_column = "created_at"
aggregate = "count"
where = [{ column = "user_rating", op = "=", value = 2.5 }]

[[checks]]
name = "bad_reference"
kind = "quality"
table = "public.rule_performance"
rule = { type = "references", column = "rule_id", ref_table = "public.rules", ref_column = "id" }

[[checks]]
name = "stats_of_a_view"
kind = "cache"
source = "postgres"
tables = ["public.rule_metadata", "public.rule_effectiveness_summary", "public.nope"]

[[checks]]
name = "disabled_and_wrong"
kind = "volume"
table = "public.nothing_here"
column = "created_at"
enabled = false
"""


async def test_every_wrong_name_is_reported_at_once_naming_its_check(
    conn: asyncpg.Connection, database: str
) -> None:
    engine = CheckEngine(make_config(database, None, WRONG), config_file="pipectl.toml")
    with pytest.raises(ConfigError) as caught:
        await engine.validate(conn)
    assert [str(p) for p in caught.value.problems] == [
        "pipectl.toml: checks.no_table.table: public.rule_performanc does not exist"
        " (or is not visible)",
        "pipectl.toml: checks.no_column.column: column 'created' does not exist in"
        " public.rule_performance; did you mean 'created_at'?",
        "pipectl.toml: checks.not_a_time.column: column public.rule_performance.rule_id is"
        " character varying; expected a timestamp",
        "pipectl.toml: checks.p95_of_text.column: column public.rule_performance.rule_name is"
        " character varying; expected a number for p95",
        "pipectl.toml: checks.half_a_rating.where[0].value: column 'user_rating' is integer:"
        " use a whole number",
        "pipectl.toml: checks.bad_reference.rule.ref_table: public.rules does not exist"
        " (or is not visible)",
        "pipectl.toml: checks.stats_of_a_view.tables[2]: public.nope does not exist"
        " (or is not visible)",
    ]
    # the materialized summary has buffer statistics; a named check is validated on request
    with pytest.raises(ConfigError, match=r"checks\.disabled_and_wrong\.table"):
        await engine.validate(conn, ["disabled_and_wrong"])


async def test_running_an_invalid_check_is_an_error_result_not_an_exception(
    conn: asyncpg.Connection, database: str
) -> None:
    engine = CheckEngine(make_config(database, None, WRONG))
    result = await engine.run("no_column", conn, redis=None, now=NOW)
    assert result.status == CheckStatus.ERROR
    assert result.message.startswith("checks.no_column.column: column 'created' does not exist")
    with pytest.raises(KeyError, match="unknown check 'nope'"):
        await engine.run("nope", conn, redis=None, now=NOW)


HOSTILE = """
[[checks]]
name = "hostile_table"
kind = "freshness"
table = 'public."rule_performance; DROP TABLE public.rule_metadata; --"'
column = "created_at"
warn_after = "1m"
error_after = "2m"

[[checks]]
name = "hostile_column"
kind = "volume"
table = "public.rule_performance"
column = '"created_at) FROM x; DROP TABLE public.rule_metadata; --"'
"""


async def test_hostile_identifiers_are_rejected_by_the_catalog(
    conn: asyncpg.Connection, database: str
) -> None:
    engine = CheckEngine(make_config(database, None, HOSTILE))
    with pytest.raises(ConfigError) as caught:
        await engine.validate(conn)
    assert [p.path for p in caught.value.problems] == [
        "checks.hostile_table.table",
        "checks.hostile_column.column",
    ]
    for name in ("hostile_table", "hostile_column"):
        result = await engine.run(name, conn, redis=None, now=NOW)
        assert result.status == CheckStatus.ERROR
    assert await conn.fetchval("SELECT to_regclass('public.rule_metadata') IS NOT NULL")


async def test_hostile_names_that_exist_are_quoted_never_executed(
    conn: asyncpg.Connection, database: str
) -> None:
    await conn.execute(
        'CREATE TABLE public."x; DROP TABLE public.rule_metadata; --"'
        ' ("t"" OR 1=1; DROP TABLE public.user_feedback; --" timestamptz)'
    )
    await conn.execute(
        'INSERT INTO public."x; DROP TABLE public.rule_metadata; --" VALUES ($1)',
        NOW - timedelta(minutes=1),
    )
    body = """
    [[checks]]
    name = "odd_names"
    kind = "freshness"
    table = 'public."x; DROP TABLE public.rule_metadata; --"'
    column = '"t"" OR 1=1; DROP TABLE public.user_feedback; --"'
    warn_after = "5m"
    error_after = "10m"
    """
    engine = CheckEngine(make_config(database, None, body))
    await engine.validate(conn)
    result = await engine.run("odd_names", conn, redis=None, now=NOW)
    assert (result.status, result.value) == (CheckStatus.OK, 60.0)
    for table in ("public.rule_metadata", "public.user_feedback"):
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
