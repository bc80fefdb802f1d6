"""quality: every rule type counts violating rows exactly; messages never quote row content."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import pytest

from pipectl.checks import CheckEngine
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback, add_rule_performance, add_sessions, naive_utc
from tests.helpers import make_config

SECRET = "SECRET-PROMPT-7f3a"

QUALITY = """
[[checks]]
name = "exec_in_range"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "24h"
rule = { type = "range", column = "execution_time_ms", min = 0, max = 10000 }

[[checks]]
name = "ratings_present"
kind = "quality"
table = "public.user_feedback"
time_column = "created_at"
window = "24h"
rule = { type = "not_null", column = "user_rating" }
as_share = true
warn_over = 0.2
fail_over = 0.5

[[checks]]
name = "one_feedback_per_session"
kind = "quality"
table = "public.user_feedback"
rule = { type = "unique", columns = ["session_id"] }

[[checks]]
name = "levels_known"
kind = "quality"
table = "public.prompt_improvement_sessions"
time_column = "created_at"
window = "24h"
rule = { type = "accepted", column = "cache_hit_level", values = ["L1", "L2", "L3", "MISS"] }

[[checks]]
name = "rule_ids_known"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "24h"
fail_over = 1
[checks.rule]
type = "references"
column = "rule_id"
ref_table = "public.rule_metadata"
ref_column = "rule_id"

[[checks]]
name = "applied_rules_shape"
kind = "quality"
table = "public.user_feedback"
time_column = "created_at"
window = "24h"
rule = { type = "json_keys", column = "applied_rules", key = "rule_id" }

[[checks]]
name = "ones_are_suspicious"
kind = "quality"
table = "public.user_feedback"
rule = { type = "custom", sql = "SELECT count(*) FROM public.user_feedback WHERE user_rating = 1;" }
warn_over = 1

[[checks]]
name = "prompts_are_numbers"
kind = "quality"
table = "public.user_feedback"
[checks.rule]
type = "custom"
sql = "SELECT count(*) FROM public.user_feedback WHERE original_prompt::int > 0"
"""


def engine(database: str) -> CheckEngine:
    return CheckEngine(make_config(database, None, QUALITY))


def recent(n: int) -> list:  # type: ignore[type-arg]
    return [NOW - timedelta(minutes=1 + i) for i in range(n)]


async def run(database: str, conn: asyncpg.Connection, name: str):  # type: ignore[no-untyped-def]
    return await engine(database).run(name, conn, redis=None, now=NOW)


async def test_out_of_range_values_are_counted_exactly(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_rule_performance(conn, recent(6), exec_ms=[-5, 20000, None, 100, 10000, 0])
    await add_rule_performance(conn, [NOW - timedelta(days=3)], exec_ms=[-1])  # outside window
    result = await run(database, conn, "exec_in_range")
    assert (result.status, result.value) == (CheckStatus.WARN, 2)
    assert result.baseline == {"rows_checked": 6, "violations": 2, "dimension": "accuracy"}
    assert result.message == (
        "2 of 6 rows: execution_time_ms outside 0..10000 in the last 1d (over the warn limit 0)"
    )


async def test_null_ratings_are_counted_exactly_as_a_share(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_feedback(conn, recent(10), ratings=[None, 4, None, 5, 3, None, 1, 2, 4, 5])
    result = await run(database, conn, "ratings_present")
    assert result.value == pytest.approx(0.3)
    assert result.status == CheckStatus.WARN
    assert result.baseline["rows_checked"] == 10 and result.baseline["violations"] == 3
    assert result.message.startswith("30.00% (3 of 10 rows): user_rating is null")


async def test_duplicates_beyond_the_first_are_counted_and_nulls_ignored(
    conn: asyncpg.Connection, database: str
) -> None:
    sessions = ["a", "a", "a", "b", "b", "c", None, None]
    await conn.executemany(
        "INSERT INTO public.user_feedback (original_prompt, improved_prompt, applied_rules,"
        " session_id) VALUES ('p', 'q', '[]', $1)",
        [(s,) for s in sessions],
    )
    result = await run(database, conn, "one_feedback_per_session")
    assert (result.value, result.baseline["rows_checked"]) == (3, 8)


async def test_values_outside_the_accepted_list_are_counted(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_sessions(conn, recent(6), ["L1", "L4", "l1", None, "MISS", "SECRET-7f"])
    result = await run(database, conn, "levels_known")
    assert (result.value, result.baseline["rows_checked"]) == (3, 6)
    shown = result.message + json.dumps(result.baseline) + json.dumps(result.threshold)
    assert "SECRET" not in shown and "L4" not in shown


async def test_unknown_references_are_counted(conn: asyncpg.Connection, database: str) -> None:
    ids = ["clarity_rule", "ghost_rule", "context_rule", "ghost_rule", "other_ghost"]
    await add_rule_performance(conn, recent(5), rule_ids=ids)
    result = await run(database, conn, "rule_ids_known")
    assert (result.status, result.value) == (CheckStatus.FAIL, 3)
    assert result.message.startswith("3 of 5 rows: rule_id missing from public.rule_metadata")


async def test_json_elements_without_the_key_and_non_arrays_are_counted(
    conn: asyncpg.Connection, database: str
) -> None:
    documents = [
        [{"rule_id": "clarity_rule", "rule_name": "Clarity"}],  # fine
        [],  # fine: nothing applied
        [{"rule_id": "a"}, {"rule_name": "no id"}],  # one element without the key
        {"rule_id": "clarity_rule"},  # an object, not an array (upstream's ->> bug shape)
        [1],  # an element that is not an object
        None,  # JSON null is not an array
        "clarity_rule",  # a string
    ]
    await add_feedback(conn, recent(len(documents)), applied_rules=documents)
    result = await run(database, conn, "applied_rules_shape")
    assert (result.value, result.baseline["rows_checked"]) == (5, 7)
    assert result.baseline["dimension"] == "consistency"


async def test_custom_sql_counts_and_a_failing_one_is_an_error_without_row_values(
    conn: asyncpg.Connection, database: str
) -> None:
    await conn.execute(
        "INSERT INTO public.user_feedback (original_prompt, improved_prompt, applied_rules,"
        " user_rating, created_at) VALUES ($1, 'q', '[]', 1, $2), ('p', 'q', '[]', 1, $2),"
        " ('p', 'q', '[]', 4, $2)",
        SECRET,
        naive_utc(NOW),
    )
    counted = await run(database, conn, "ones_are_suspicious")
    assert (counted.status, counted.value) == (CheckStatus.WARN, 2)
    assert counted.baseline["rows_checked"] == 3
    broken = await run(database, conn, "prompts_are_numbers")
    assert broken.status == CheckStatus.ERROR
    assert "InvalidTextRepresentationError (SQLSTATE 22P02)" in broken.message
    assert SECRET not in broken.message


async def test_empty_tables_are_nodata(conn: asyncpg.Connection, database: str) -> None:
    checks = engine(database)
    for check in checks.config.checks:
        if check.name == "prompts_are_numbers":
            continue
        result = await checks.run(check.name, conn, redis=None, now=NOW)
        assert (result.status, result.value) == (CheckStatus.NODATA, None), check.name
        assert result.message.startswith("no rows to check in")
