"""quality: every rule type counts violating rows exactly; messages never quote row content."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import pytest

from pipectl.checks import CheckEngine, quality
from pipectl.checks.base import Context
from pipectl.checks.catalog import Catalog
from pipectl.checks.quality import QualityCheck
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


UNIQUE_SHAPES = """
[[checks]]
name = "one_rule_per_prompt"
kind = "quality"
table = "public.rule_performance"
rule = { type = "unique", columns = ["prompt_id", "rule_id"] }

[[checks]]
name = "new_rule_per_prompt"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1h"
rule = { type = "unique", columns = ["prompt_id", "rule_id"] }

[[checks]]
name = "new_prompt_ids"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1h"
rule = { type = "unique", columns = ["prompt_id"] }

[[checks]]
name = "sessions_unique"
kind = "quality"
table = "public.improvement_sessions"
rule = { type = "unique", columns = ["session_id", "user_id"] }

[[checks]]
name = "new_sessions_unique"
kind = "quality"
table = "public.improvement_sessions"
time_column = "started_at"
window = "1h"
rule = { type = "unique", columns = ["session_id"] }
"""

A, B, C = (f"00000000-0000-0000-0000-00000000000{i}" for i in (1, 2, 3))


async def add_prompts(
    conn: asyncpg.Connection, rows: list[tuple[str | None, str, timedelta]]
) -> None:
    """Rule applications (prompt_id, rule_id, age before NOW); rule_id is NOT NULL upstream,
    so a NULL key part is a NULL prompt_id."""
    await conn.executemany(
        "INSERT INTO public.rule_performance (rule_id, rule_name, prompt_id, created_at)"
        " VALUES ($2, 'rule', $1::uuid, $3)",
        [(p, r, naive_utc(NOW - age)) for p, r, age in rows],
    )


async def run_shape(database: str, conn: asyncpg.Connection, name: str):  # type: ignore[no-untyped-def]
    found = CheckEngine(make_config(database, None, UNIQUE_SHAPES))
    return await found.run(name, conn, redis=None, now=NOW)


async def test_composite_keys_count_rows_beyond_the_first_and_ignore_null_parts(
    conn: asyncpg.Connection, database: str
) -> None:
    old, new = timedelta(days=3), timedelta(minutes=5)
    await add_prompts(
        conn,
        [
            *[(A, "x", old), (A, "x", new), (A, "x", new), (A, "y", new), (B, "x", old)],
            *[(None, "x", new), (None, "x", old)],
        ],
    )
    result = await run_shape(database, conn, "one_rule_per_prompt")
    assert (result.value, result.baseline["rows_checked"]) == (2, 7)
    assert "guaranteed" not in result.message


async def test_a_windowed_key_is_checked_against_every_earlier_row(
    conn: asyncpg.Connection, database: str
) -> None:
    old, new = timedelta(days=3), timedelta(minutes=5)
    # In the window: (A, x) twice, also held by an old row: both new rows are duplicates;
    # (B, x) once, also old: a duplicate; (C, x) twice, new only: one beyond the first;
    # (A, y) once, new: fine; a NULL prompt_id matching an old NULL: never a key.
    await add_prompts(
        conn,
        [
            *[(A, "x", old), (B, "x", old), (None, "x", old)],
            *[(A, "x", new), (A, "x", new), (B, "x", new), (C, "x", new), (C, "x", new)],
            *[(A, "y", new), (None, "x", new)],
        ],
    )
    composite = await run_shape(database, conn, "new_rule_per_prompt")
    assert (composite.value, composite.baseline["rows_checked"]) == (4, 7)
    # One column: A (3 new rows, an old one) 3, B 1, C 1 beyond the first.
    single = await run_shape(database, conn, "new_prompt_ids")
    assert (single.value, single.baseline["rows_checked"]) == (5, 7)


async def test_the_window_alone_decides_nothing_when_old_rows_are_unique(
    conn: asyncpg.Connection, database: str
) -> None:
    old, new = timedelta(days=3), timedelta(minutes=5)
    await add_prompts(conn, [(A, "x", old), (A, "x", old), (B, "x", new), (C, "x", new)])
    result = await run_shape(database, conn, "new_rule_per_prompt")
    assert (result.status, result.value, result.baseline["rows_checked"]) == (
        CheckStatus.OK,
        0,
        2,
    )


async def test_a_key_covered_by_a_unique_index_is_guaranteed_without_grouping(
    conn: asyncpg.Connection, database: str
) -> None:
    await conn.executemany(
        "INSERT INTO public.improvement_sessions (session_id, user_id, original_prompt,"
        " started_at) VALUES ($1, 'u', 'p', $2)",
        [(f"s{i}", naive_utc(NOW - timedelta(minutes=i))) for i in range(1, 4)]
        + [("s-old", naive_utc(NOW - timedelta(days=2)))],
    )
    result = await run_shape(database, conn, "sessions_unique")
    assert (result.status, result.value, result.baseline["rows_checked"]) == (
        CheckStatus.OK,
        0,
        4,
    )
    index = "improvement_sessions_session_id_key"
    assert result.baseline["guaranteed_by"] == index
    assert (
        result.message
        == f"0 of 4 rows: duplicate (session_id, user_id) (guaranteed by unique index {index})"
    )
    windowed = await run_shape(database, conn, "new_sessions_unique")
    assert (windowed.value, windowed.baseline["rows_checked"]) == (0, 3)
    assert windowed.baseline["guaranteed_by"] == index

    # Without the index nothing is guaranteed: the probe groups again and finds the copy. A
    # unique index with a column outside the key guarantees nothing about the key either.
    await conn.execute(f"ALTER TABLE public.improvement_sessions DROP CONSTRAINT {index}")
    await conn.execute(
        "CREATE UNIQUE INDEX sessions_wider ON public.improvement_sessions"
        " (session_id, original_prompt)"
    )
    await conn.execute(
        "INSERT INTO public.improvement_sessions (session_id, user_id, original_prompt,"
        " started_at) VALUES ('s1', 'u', 'another prompt', $1)",
        naive_utc(NOW - timedelta(days=3)),
    )
    result = await run_shape(database, conn, "sessions_unique")
    assert (result.value, result.baseline["rows_checked"]) == (1, 5)
    assert "guaranteed_by" not in result.baseline
    windowed = await run_shape(database, conn, "new_sessions_unique")
    assert (windowed.value, windowed.baseline["rows_checked"]) == (1, 3)


D, E, F = (f"00000000-0000-0000-0000-00000000000{i}" for i in (4, 5, 6))


@pytest.mark.parametrize(
    "index",
    [None, "(prompt_id)", "(prompt_id, created_at)", "(rule_id, prompt_id)", "(created_at)"],
)
async def test_a_windowed_key_counts_the_same_whatever_the_index(
    conn: asyncpg.Connection, database: str, index: str | None
) -> None:
    """The window is (NOW - 1h, NOW]. Every way a new row can duplicate a key, counted
    exactly by the per-key lookups (an index led by a key column) and by the one hashed pass
    (none): a row at the window's lower edge is earlier, one at its upper edge is new, a row
    after the window or without a time holds the key too."""
    if index is not None:
        await conn.execute(f"CREATE INDEX ON public.rule_performance {index}")
    hour = timedelta(hours=1)
    await conn.executemany(
        "INSERT INTO public.rule_performance (rule_id, rule_name, prompt_id, created_at)"
        " VALUES ($2, 'rule', $1::uuid, $3)",
        [
            (p, r, None if at is None else naive_utc(at))
            for p, r, at in [
                (A, "x", NOW - hour),  # exactly at the lower edge: an earlier row
                (A, "x", NOW - timedelta(minutes=5)),  # an old key arriving again: 1
                (B, "x", NOW - timedelta(minutes=10)),  # twice at the same time: 1
                (B, "x", NOW - timedelta(minutes=10)),
                (C, "x", NOW),  # at the upper edge (new), and once after the window: 1
                (C, "x", NOW + timedelta(minutes=5)),
                (D, "x", NOW - timedelta(minutes=20)),  # and once without a time: 1
                (D, "x", None),
                (E, "x", NOW - timedelta(minutes=30)),  # new once; E's old row has rule y
                (E, "y", NOW - timedelta(days=2)),
                (F, "x", NOW - timedelta(days=2)),  # old duplicates: not the window's
                (F, "x", NOW - timedelta(days=3)),
                (None, "x", NOW - timedelta(minutes=1)),  # a NULL key part: never a key
                (None, "x", NOW - timedelta(minutes=1)),
                (None, "x", NOW - timedelta(days=1)),
            ]
        ],
    )
    await conn.execute("ANALYZE public.rule_performance")
    composite = await run_shape(database, conn, "new_rule_per_prompt")
    assert (composite.value, composite.baseline["rows_checked"]) == (4, 8)
    # One column: E's new row now shares its key with the old (E, y) as well.
    single = await run_shape(database, conn, "new_prompt_ids")
    assert (single.value, single.baseline["rows_checked"]) == (5, 8)


async def test_a_windowed_key_is_looked_up_per_key_only_through_an_index(
    conn: asyncpg.Connection, database: str
) -> None:
    """The plan is chosen when the probe runs: per-key lookups need an index led by the key's
    first column that holds every row (no partial index); else one semi-join over the table
    (APES's index on rule_id, the second column, is no way to look a prompt's rows up)."""
    config = make_config(database, None, UNIQUE_SHAPES)
    check = config.check("new_rule_per_prompt")
    assert isinstance(check, QualityCheck)
    per_key = quality.query(check, NOW, per_key=True).sql
    hashed = quality.query(check, NOW, per_key=False).sql
    assert per_key.count("EXISTS") == 3 and hashed.count("EXISTS") == 1

    async def chosen() -> bool:
        context = Context(check, config, conn, NOW, "manual", Catalog(), timedelta(seconds=10))
        return await quality.lookup_index(context)

    assert not await chosen()
    await conn.execute(
        "CREATE INDEX partial ON public.rule_performance (prompt_id) WHERE rule_id = 'x'"
    )
    await conn.execute("CREATE INDEX by_time ON public.rule_performance (created_at, prompt_id)")
    assert not await chosen()
    await conn.execute("CREATE INDEX by_rule ON public.rule_performance (rule_id, created_at)")
    assert not await chosen()
    await conn.execute("CREATE INDEX by_key ON public.rule_performance (prompt_id, created_at)")
    assert await chosen()


async def test_a_windowed_key_without_an_index_is_a_warning(
    conn: asyncpg.Connection, database: str
) -> None:
    found = CheckEngine(make_config(database, None, UNIQUE_SHAPES))
    await found.validate(conn)
    advice = (
        'consider CREATE INDEX ON "public"."rule_performance" ("prompt_id", "created_at"),'
        " which makes it an index lookup per new key"
    )
    assert found.warnings == [
        "checks.new_rule_per_prompt.rule.columns[0]: public.rule_performance.prompt_id has no"
        f" index, so this probe reads the whole table; {advice}",
        "checks.new_prompt_ids.rule.columns[0]: public.rule_performance.prompt_id has no"
        f" index, so this probe reads the whole table; {advice}",
    ]
    await conn.execute("CREATE INDEX ON public.rule_performance (prompt_id)")
    indexed = CheckEngine(make_config(database, None, UNIQUE_SHAPES))
    await indexed.validate(conn)
    assert indexed.warnings == []
