"""Quality row checks that read the same rows share one scan (CheckEngine.run_many), with
exactly the answers each would give alone; so do whole-table unique keys of one column (one
more column of the scan, in slices of the key's hash when there is one such key). A shared
probe that fails falls back to one probe each, unless it ran out of time."""

from __future__ import annotations

import random
from datetime import timedelta

import asyncpg
import pytest

from pipectl.checks import CheckEngine, quality
from pipectl.model import CheckResult, CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback
from tests.helpers import make_config

WINDOWED = 'table = "public.user_feedback"\ntime_column = "created_at"\nwindow = "24h"\n'
# Unique keys of one column over the whole table: a text key with NULLs, an integer one, a
# timestamptz one, and the primary key (guaranteed by its index).
WHOLE_TABLE_KEYS = "\n".join(
    f'[[checks]]\nname = "{name}"\nkind = "quality"\ntable = "public.user_feedback"\n'
    f'rule = {{ type = "unique", columns = ["{column}"] }}\n'
    for name, column in {
        "one_feedback_per_session": "session_id",
        "one_feedback_per_rating": "user_rating",
        "one_feedback_per_instant": "created_at",
        "one_row_per_id": "id",
    }.items()
)
SHARED = f"""
[[checks]]
name = "ratings_present"
kind = "quality"
{WINDOWED}rule = {{ type = "not_null", column = "user_rating" }}
as_share = true
warn_over = 0.2

[[checks]]
name = "ratings_in_range"
kind = "quality"
{WINDOWED}rule = {{ type = "range", column = "user_rating", min = 2, max = 4 }}

[[checks]]
name = "applied_rules_shape"
kind = "quality"
{WINDOWED}rule = {{ type = "json_keys", column = "applied_rules", key = "rule_id" }}

[[checks]]
name = "one_feedback_per_session_today"
kind = "quality"
{WINDOWED}rule = {{ type = "unique", columns = ["session_id"] }}

[[checks]]
name = "one_feedback_per_rating_today"
kind = "quality"
{WINDOWED}rule = {{ type = "unique", columns = ["user_rating"] }}

{WHOLE_TABLE_KEYS}
[[checks]]
name = "ratings_present_ever"
kind = "quality"
table = "public.user_feedback"
rule = {{ type = "not_null", column = "user_rating" }}

[[checks]]
name = "ratings_custom"
kind = "quality"
table = "public.user_feedback"
[checks.rule]
type = "custom"
sql = "SELECT count(*) FROM public.user_feedback WHERE user_rating = 1"
"""


def engine(database: str) -> CheckEngine:
    return CheckEngine(make_config(database, None, SHARED))


def answer(result: CheckResult) -> tuple[object, ...]:
    baseline = {k: v for k, v in result.baseline.items() if k != "probe_shared_by"}
    return (result.status, result.value, result.message, baseline, result.samples)


async def add_history(conn: asyncpg.Connection) -> None:
    rng = random.Random(5)
    times = [NOW - timedelta(minutes=rng.randint(1, 60 * 48)) for _ in range(300)]
    shapes = [[{"rule_id": "a"}], [], [{"rule_name": "no id"}], {"rule_id": "a"}]
    await add_feedback(
        conn,
        times,
        ratings=[rng.choice([None, 1, 2, 3, 4, 5]) for _ in times],
        applied_rules=[rng.choice(shapes) for _ in times],
    )
    await conn.execute(
        "UPDATE public.user_feedback SET session_id = CASE WHEN id % 7 = 0 THEN NULL"
        " ELSE 's' || (id % 90) END"
    )


async def test_a_shared_probe_answers_exactly_as_each_check_alone(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_history(conn)
    names = [c.name for c in engine(database).config.checks]
    alone = {name: await engine(database).run(name, conn, redis=None, now=NOW) for name in names}
    together = await engine(database).run_many(names, conn, redis=None, now=NOW)
    assert list(together) == names
    for name in names:
        assert answer(together[name]) == answer(alone[name]), name
    assert all(r.status != CheckStatus.ERROR for r in together.values())
    shared = {name: r.baseline.get("probe_shared_by") for name, r in together.items()}
    # One scan for the three windowed row checks, one for the whole table's row check and
    # keys of one column; windowed keys and custom SQL run alone.
    assert shared == {
        "ratings_present": 3,
        "ratings_in_range": 3,
        "applied_rules_shape": 3,
        "one_feedback_per_session_today": None,
        "one_feedback_per_rating_today": None,
        "one_feedback_per_session": 5,
        "one_feedback_per_rating": 5,
        "one_feedback_per_instant": 5,
        "one_row_per_id": 5,
        "ratings_present_ever": 5,
        "ratings_custom": None,
    }
    # The primary key guarantees its key inside the shared scan as alone.
    assert together["one_row_per_id"].baseline["guaranteed_by"] == "user_feedback_pkey"


@pytest.mark.parametrize(
    ("names", "sliced"),
    [
        # One key to count: the scan runs in slices of its hash, which add up exactly (a text
        # key hashed by its type's function, NULL keys among them).
        (["one_feedback_per_session", "ratings_present_ever", "one_row_per_id"], True),
        # A timestamptz key, hashed through hash_record_extended.
        (["one_feedback_per_instant", "ratings_present_ever"], True),
        # Two keys: a slice of one key's hash would split the other's duplicates; one pass.
        (["one_feedback_per_session", "one_feedback_per_rating", "ratings_present_ever"], False),
    ],
)
async def test_whole_table_keys_share_the_scan_in_slices_of_one_key(
    conn: asyncpg.Connection, database: str, names: list[str], sliced: bool
) -> None:
    await add_history(conn)
    checks = engine(database)
    together = await checks.run_many(names, conn, redis=None, now=NOW)
    for name in names:
        alone = await engine(database).run(name, conn, redis=None, now=NOW)
        assert answer(together[name]) == answer(alone), name
    # The answers, counted here another way: rows beyond the first of each key.
    expected = await conn.fetchrow(
        "SELECT count(*) AS rows,"
        " count(*) FILTER (WHERE session_id IS NOT NULL)"
        "  - (SELECT count(*) FROM (SELECT DISTINCT session_id FROM public.user_feedback"
        "     WHERE session_id IS NOT NULL) AS k) AS sessions,"
        " count(*) FILTER (WHERE user_rating IS NULL) AS missing"
        " FROM public.user_feedback"
    )
    if "one_feedback_per_session" in names:
        session = together["one_feedback_per_session"]
        assert (session.value, session.baseline["rows_checked"]) == (
            expected["sessions"],
            expected["rows"],
        )
        assert session.value > 0
    if "one_feedback_per_instant" in names:
        instants = await conn.fetchval(
            "SELECT count(created_at) - count(DISTINCT created_at) FROM public.user_feedback"
        )
        assert together["one_feedback_per_instant"].value == instants > 0
    assert together["ratings_present_ever"].value == expected["missing"]
    guaranteed = frozenset({"one_row_per_id"} & set(names))
    members = [checks.config.check(name) for name in names]
    sql = quality.fused_query(members, NOW, guaranteed).sql  # type: ignore[arg-type]
    assert ("UNION ALL" in sql) == sliced


async def test_the_shared_scan_reads_the_table_once(
    conn: asyncpg.Connection, database: str
) -> None:
    await add_history(conn)
    await conn.execute("SET enable_indexscan = off; SET enable_bitmapscan = off")
    names = ["ratings_present", "ratings_in_range", "applied_rules_shape"]
    checks = engine(database)
    await checks.validate(conn, names)

    async def scans() -> int:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await conn.fetchval(
            "SELECT seq_scan FROM pg_stat_user_tables"
            " WHERE relid = 'public.user_feedback'::regclass"
        )
        return value

    async def flushed_scans() -> int:
        # Statistics reach the shared counters when the session reports them (at most every
        # second on PostgreSQL 15+, at transaction end before): poll until they settle.
        last, same = -1, 0
        while same < 3:
            await conn.execute("SELECT pg_sleep(0.4)")
            now = await scans()
            same = same + 1 if now == last else 0
            last = now
        return last

    before = await flushed_scans()
    await checks.run_many(names, conn, redis=None, now=NOW)
    assert await flushed_scans() - before == 1


async def test_a_failing_shared_probe_is_retried_check_by_check(
    conn: asyncpg.Connection, database: str
) -> None:
    """A column renamed after validation breaks the shared probe; run one by one, only the
    check that names it reports the error."""
    await add_history(conn)
    names = ["ratings_present", "applied_rules_shape"]
    checks = engine(database)
    await checks.validate(conn, names)
    await conn.execute(
        "ALTER TABLE public.user_feedback RENAME COLUMN applied_rules TO rules_applied"
    )
    results = await checks.run_many(names, conn, redis=None, now=NOW)
    assert results["ratings_present"].status != CheckStatus.ERROR
    assert results["applied_rules_shape"].status == CheckStatus.ERROR
    assert "applied_rules" in results["applied_rules_shape"].message


async def test_a_shared_probe_past_its_timeout_is_an_error_for_each_check(
    conn: asyncpg.Connection, database: str
) -> None:
    """Blocked by another session's lock until its timeout: every check it answers reports
    the cancellation (no retry one by one, which would wait as long again for each)."""
    short = SHARED.replace("as_share = true\n", 'as_share = true\ntimeout = "300ms"\n')
    short = short.replace('key = "rule_id" }\n', 'key = "rule_id" }\ntimeout = "300ms"\n')
    checks = CheckEngine(make_config(database, None, short))
    names = ["ratings_present", "applied_rules_shape"]
    await checks.validate(conn, names)
    blocker = await asyncpg.connect(database)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE public.user_feedback IN ACCESS EXCLUSIVE MODE")
            results = await checks.run_many(names, conn, redis=None, now=NOW)
    finally:
        await blocker.close()
    for name in names:
        assert results[name].status == CheckStatus.ERROR
        assert results[name].message == (
            "probe cancelled: the probe shared by 2 checks ran longer than its timeout (300ms)"
        )


async def test_without_parallel_workers_the_key_is_counted_in_one_pass(
    conn: asyncpg.Connection, database: str
) -> None:
    """Slices run one after the other without parallel workers (the agent's probes that count
    their own reads run so), each scanning the whole table: then one pass, same answers."""
    await add_history(conn)
    names = ["one_feedback_per_session", "ratings_present_ever"]
    assert await quality.slices_allowed(conn) == quality.SLICES
    sliced = await engine(database).run_many(names, conn, redis=None, now=NOW)
    await conn.execute("SET max_parallel_workers_per_gather = 0")
    assert await quality.slices_allowed(conn) == 1
    one_pass = await engine(database).run_many(names, conn, redis=None, now=NOW)
    alone = await engine(database).run("one_feedback_per_session", conn, redis=None, now=NOW)
    for name in names:
        assert answer(one_pass[name]) == answer(sliced[name]), name
    assert answer(alone) == answer(sliced["one_feedback_per_session"])
    members = [engine(database).config.check(name) for name in names]
    assert "UNION ALL" not in quality.fused_query(members, NOW, slices=quality.Slices(1)).sql  # type: ignore[arg-type]
