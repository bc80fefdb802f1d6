"""Quality row checks that read the same rows share one scan (CheckEngine.run_many), with
exactly the answers each would give alone; so do whole-table unique keys of one column (one
more column of the scan, in slices of the key's hash when there is one such key). A shared
probe that fails falls back to one probe each, unless it ran out of time. A volume check of a
table scanned whole rides that scan: its two counts are columns of it."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pipectl.checks import CheckEngine, quality
from pipectl.model import CheckResult, CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_feedback
from tests.helpers import make_config, wait_for

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
name = "feedback_volume"
kind = "volume"
table = "public.user_feedback"
column = "created_at"
window = "36h"

[[checks]]
name = "feedback_volume_new_york"
kind = "volume"
table = "public.user_feedback"
column = "created_at"
window = "36h"
timezone = "America/New_York"

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


class Recording(asyncpg.Connection):  # type: ignore[misc]
    """A connection that remembers the text of every query it fetched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetched: list[str] = []

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        self.fetched.append(query)
        return list(await super().fetch(query, *args, **kwargs))


async def run_recorded(
    database: str, checks: CheckEngine, names: list[str]
) -> tuple[dict[str, CheckResult], list[str]]:
    """`checks.run_many(names)` on a connection of its own, and the SQL it fetched."""
    recording = await asyncpg.connect(database, connection_class=Recording)
    try:
        found = await checks.run_many(names, recording, redis=None, now=NOW)
    finally:
        await recording.close()
    return found, recording.fetched


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
    # One scan for the three windowed row checks, one for the whole table's row check, keys
    # of one column and the volume counted in that timezone; windowed keys, custom SQL and
    # the volume of another timezone (its window's bounds read otherwise) run alone.
    assert shared == {
        "ratings_present": 3,
        "ratings_in_range": 3,
        "applied_rules_shape": 3,
        "one_feedback_per_session_today": None,
        "one_feedback_per_rating_today": None,
        "one_feedback_per_session": 6,
        "one_feedback_per_rating": 6,
        "one_feedback_per_instant": 6,
        "one_row_per_id": 6,
        "ratings_present_ever": 6,
        "feedback_volume": 6,
        "feedback_volume_new_york": None,
        "ratings_custom": None,
    }
    # The primary key guarantees its key inside the shared scan as alone.
    assert together["one_row_per_id"].baseline["guaranteed_by"] == "user_feedback_pkey"


@pytest.mark.parametrize(
    ("names", "sliced"),
    [
        # One key to count: the scan runs in slices of its hash, which add up exactly (a
        # varchar key, NULL keys among them; the primary key only counted; the volume's
        # counts too).
        (
            [
                "one_feedback_per_session",
                "ratings_present_ever",
                "one_row_per_id",
                "feedback_volume",
            ],
            True,
        ),
        # A timestamptz key: no hash function called directly for it, so one pass.
        (["one_feedback_per_instant", "ratings_present_ever"], False),
        # Two keys: a slice of one key's hash would split the other's duplicates; one pass.
        (["one_feedback_per_session", "one_feedback_per_rating", "ratings_present_ever"], False),
    ],
)
async def test_whole_table_keys_share_the_scan_in_slices_of_one_key(
    conn: asyncpg.Connection, database: str, names: list[str], sliced: bool
) -> None:
    await add_history(conn)
    together, fetched = await run_recorded(database, engine(database), names)
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
    scans = [q for q in fetched if "count(DISTINCT" in q]
    assert len(scans) == 1
    assert ("UNION ALL" in scans[0]) == sliced


async def test_without_parallel_workers_the_key_is_counted_in_one_pass(
    conn: asyncpg.Connection, database: str
) -> None:
    """Slices run one after the other without parallel workers (the agent's probes that count
    their own reads run so), each scanning the whole table: then one pass, same answers."""
    await add_history(conn)
    names = ["one_feedback_per_session", "ratings_present_ever"]
    sliced, fetched = await run_recorded(database, engine(database), names)
    assert "UNION ALL" in next(q for q in fetched if "count(DISTINCT" in q)
    await conn.execute("SET max_parallel_workers_per_gather = 0")
    one_pass = await engine(database).run_many(names, conn, redis=None, now=NOW)
    alone = await engine(database).run("one_feedback_per_session", conn, redis=None, now=NOW)
    for name in names:
        assert answer(one_pass[name]) == answer(sliced[name]), name
    assert answer(alone) == answer(sliced["one_feedback_per_session"])


@pytest.mark.parametrize("own_reads", [False, True])
async def test_the_scan_that_runs_is_sliced_only_with_parallel_workers(
    conn: asyncpg.Connection, database: str, own_reads: bool
) -> None:
    """`pipectl check` slices the scan; the agent, whose probes count their own reads and so
    run without parallel workers, counts the key in one pass."""
    await add_history(conn)
    checks = engine(database)
    checks.record_own_reads = own_reads
    names = ["one_feedback_per_session", "ratings_present_ever"]
    results, fetched = await run_recorded(database, checks, names)
    assert all(r.status != CheckStatus.ERROR for r in results.values())
    scans = [q for q in fetched if "count(DISTINCT" in q]
    assert len(scans) == 1
    assert ("UNION ALL" in scans[0]) == (not own_reads)


async def test_a_key_that_runs_past_the_timeout_leaves_the_other_checks_their_scan(
    conn: asyncpg.Connection, database: str
) -> None:
    """The shared scan cancelled while it counts distinct keys (here: cancelled while it
    waits for a lock, as statement_timeout would): the key reports the cancellation, the row
    check of the same table is answered by a scan without the key."""
    await add_history(conn)
    checks = engine(database)
    names = ["one_feedback_per_session", "ratings_present_ever", "feedback_volume"]
    await checks.validate(conn, names)
    blocker = await asyncpg.connect(database)
    # Watched from a connection of its own: inside the blocker's transaction, pg_stat_activity
    # would show the snapshot of its first read until the transaction ends.
    watcher = await asyncpg.connect(database)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE public.user_feedback IN ACCESS EXCLUSIVE MODE")
        running = asyncio.ensure_future(checks.run_many(names, conn, redis=None, now=NOW))
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%count(DISTINCT%'"
        )
        pid = await wait_for(lambda: watcher.fetchval(waiting), timeout=20)
        await watcher.execute("SELECT pg_cancel_backend($1)", pid)
        await locked.commit()
        results = await running
    finally:
        await blocker.close()
        await watcher.close()
    key, rows = results["one_feedback_per_session"], results["ratings_present_ever"]
    assert key.status == CheckStatus.ERROR
    assert key.message.startswith("probe cancelled: counting the key's distinct values")
    assert rows.status != CheckStatus.ERROR
    missing = await conn.fetchval(
        "SELECT count(*) FROM public.user_feedback WHERE user_rating IS NULL"
    )
    assert (rows.value, rows.baseline["probe_shared_by"]) == (missing, 3)
    volume = results["feedback_volume"]  # rides the scan without the key
    assert volume.status != CheckStatus.ERROR
    assert volume.baseline["probe_shared_by"] == 3


async def test_a_volume_check_rides_the_scan_of_its_table_and_probes_alone_without_one(
    conn: asyncpg.Connection, database: str
) -> None:
    """The volume's unit is the whole-table scan's (run side by side, `pipectl check` and the
    agent put them on one connection); its answers are the ones its own probe gives, an empty
    table included. Without a whole-table scan of its table in the config, it is alone."""
    checks = engine(database)
    units = checks.probe_units(["feedback_volume", "ratings_present_ever", "ratings_present"])
    assert units == [["feedback_volume", "ratings_present_ever"], ["ratings_present"]]
    assert checks.fusion_key("feedback_volume_new_york") is None
    only_volume = "[[checks]]" + SHARED.split("[[checks]]")[-3]
    assert 'name = "feedback_volume"' in only_volume
    assert (
        CheckEngine(make_config(database, None, only_volume)).fusion_key("feedback_volume") is None
    )

    names = ["ratings_present_ever", "feedback_volume"]
    for fill in (False, True):  # an empty table (nodata either way), then rows
        if fill:
            await add_history(conn)
        together, fetched = await run_recorded(database, engine(database), names)
        alone = await engine(database).run("feedback_volume", conn, redis=None, now=NOW)
        assert answer(together["feedback_volume"]) == answer(alone)
        assert together["feedback_volume"].baseline["probe_shared_by"] == 2
        # One scan; no probe of its own (its count through the index, max() for emptiness).
        assert len([q for q in fetched if "rows_checked" in q]) == 1
        assert not [q for q in fetched if "AS empty" in q]
    assert alone.status != CheckStatus.ERROR
    in_window = await conn.fetchval(
        "SELECT count(*) FROM public.user_feedback WHERE created_at > $1 AND created_at <= $2",
        (NOW - timedelta(hours=36)).replace(tzinfo=None),  # a timestamp column, in UTC
        NOW.replace(tzinfo=None),
    )
    assert together["feedback_volume"].value == in_window > 0


async def test_a_volume_check_the_window_cache_answers_stays_off_the_scan(
    conn: asyncpg.Connection, database: str
) -> None:
    """On the agent's schedule, a volume check its partial aggregates answer reads only new
    rows: it does not join the whole-table scan (which would read every row for it)."""
    await add_history(conn)
    checks = engine(database)
    checks.enable_incremental()
    assert checks.incremental is not None and checks.incremental.covers(
        checks.config.check("feedback_volume")
    )
    names = ["ratings_present_ever", "one_row_per_id", "feedback_volume"]
    scheduled = await checks.run_many(names, conn, redis=None, trigger="schedule", now=NOW)
    assert "probe_shared_by" not in scheduled["feedback_volume"].baseline
    assert scheduled["ratings_present_ever"].baseline["probe_shared_by"] == 2
    manual = await checks.run_many(names, conn, redis=None, trigger="manual", now=NOW)
    assert manual["feedback_volume"].baseline["probe_shared_by"] == 3
    assert manual["feedback_volume"].value == scheduled["feedback_volume"].value


KEYED = """
[[checks]]
name = "one_row_per_key"
kind = "quality"
table = "public.keyed"
rule = { type = "unique", columns = ["k"] }

[[checks]]
name = "n_present"
kind = "quality"
table = "public.keyed"
rule = { type = "not_null", column = "n" }

[[checks]]
name = "one_row_per_n"
kind = "quality"
table = "public.keyed"
rule = { type = "unique", columns = ["n"] }
"""


@pytest.mark.parametrize(("key", "cast"), [("k", "::uuid"), ("n", "::int4")])
async def test_a_key_with_a_histogram_is_sliced_by_value_and_counted_exactly(
    conn: asyncpg.Connection, database: str, key: str, cast: str
) -> None:
    """With statistics, a uuid or integer key is split at its histogram's median (a
    comparison per row, not a hash); NULL keys fall in the first slice and every duplicate in
    one slice, so the answers are exact. Without statistics, by hash, same answers."""
    await conn.execute(
        "CREATE TABLE public.keyed (k uuid, n int);"
        " INSERT INTO public.keyed SELECT CASE WHEN g % 50 = 0 THEN NULL ELSE gen_random_uuid()"
        " END, CASE WHEN g % 40 = 0 THEN NULL ELSE g % 3000 END FROM generate_series(1, 6000) g;"
        " INSERT INTO public.keyed SELECT k, n FROM public.keyed WHERE n % 7 = 0;"
    )
    checks = CheckEngine(make_config(database, None, KEYED))
    names = ["one_row_per_key" if key == "k" else "one_row_per_n", "n_present"]
    expected = await conn.fetchval(f"SELECT count({key}) - count(DISTINCT {key}) FROM public.keyed")
    assert expected > 0
    for analyzed in (False, True):
        if analyzed:
            await conn.execute("ANALYZE public.keyed")
        found, fetched = await run_recorded(database, checks, names)
        alone = await CheckEngine(make_config(database, None, KEYED)).run(
            names[0], conn, redis=None, now=NOW
        )
        assert found[names[0]].value == alone.value == expected
        missing = await conn.fetchval("SELECT count(*) FROM public.keyed WHERE n IS NULL")
        assert found["n_present"].value == missing > 0
        scan = next(q for q in fetched if "count(DISTINCT" in q)
        assert "UNION ALL" in scan
        assert (">= '" in scan) == analyzed, scan
        assert (cast in scan) == analyzed
        assert ("extended(" in scan) != analyzed  # uuid_hash_extended, hashint4extended


@pytest.mark.parametrize(
    ("histogram", "key_type", "bounds"),
    [
        ("{1,5,9,12}", "int4", ("9",)),
        ("{-3,0}", "int8", ("0",)),
        ("{7}", "int4", ()),  # one value cannot split two slices
        (None, "uuid", ()),
        ("{1,2,3}", "text", ()),  # text: by hash (collation)
        ("{1,x'; DROP TABLE t; --}", "int4", ()),  # not a number: by hash
        ("{00000000-0000-0000-0000-000000000001,zz}", "uuid", ()),
    ],
)
def test_histogram_bounds_become_literals_only_once_parsed(
    histogram: str | None, key_type: str, bounds: tuple[str, ...]
) -> None:
    assert quality._bounds(histogram, key_type, 2) == bounds
