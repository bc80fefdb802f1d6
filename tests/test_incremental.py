"""Incremental summaries: the config refuses what cannot be kept incrementally; the published
summary has the materialized view's columns and types and equals its query; a seeded random
history of inserts, late commits, updates, deletes and a moving window keeps the summary equal
to the defining query after every refresh (both directions, EXCEPT ALL, 9 digits)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console

from pipectl.audit import comparison_sql, example_text, summary_columns
from pipectl.cli import demo
from pipectl.config import ConfigError, StepConfig
from pipectl.incremental import defining_query
from pipectl.presets import apes_incremental_steps_text
from pipectl.store import incremental as store
from tests.helpers import make_config

APES_STEPS = (Path(__file__).parent / "incremental_apes.toml").read_text(encoding="utf-8")
SUMMARIES = ("rule_effectiveness_summary", "user_satisfaction_summary")


def _step(body: str) -> StepConfig:
    return make_config(None, None, body).steps[0]


def _refused(body: str) -> str:
    with pytest.raises(ConfigError) as refused:
        make_config(None, None, body)
    return str(refused.value)


STEP_HEAD = """
[[steps]]
name = "s"
kind = "incremental"
relation = "public.s"
[steps.incremental]
source = "public.t"
time_column = "t"
window = "1d"
keys = [{ name = "k", column = "k" }]
"""


@pytest.mark.parametrize(
    ("aggregate", "reason"),
    [
        ('{ name = "p", fn = "percentile_cont", column = "x" }', "a percentile needs every"),
        ('{ name = "p", fn = "sql", column = "x" }', "arbitrary SQL cannot be merged"),
        ('{ name = "p", fn = "median", column = "x" }', "cannot be maintained incrementally"),
        ('{ name = "p", fn = "stdev", column = "x" }', "unknown aggregate 'stdev'"),
        ('{ name = "p", fn = "avg" }', "avg needs 'column'"),
        ('{ name = "p", fn = "count_if" }', "count_if needs 'where'"),
        ('{ name = "p", fn = "count", element_key = "a" }', "only for count_distinct"),
        (
            '{ name = "p", fn = "count_if", where = { column = "x", op = ">=" } }',
            "'>=' needs a 'value'",
        ),
    ],
)
def test_config_refuses_what_cannot_be_kept_incrementally(aggregate: str, reason: str) -> None:
    message = _refused(STEP_HEAD + f"aggregates = [{aggregate}]\n")
    assert reason in message
    assert "test.toml:" in message  # located: file and line


def test_config_refuses_a_key_finer_than_the_bucket_and_a_missing_table() -> None:
    body = STEP_HEAD.replace('keys = [{ name = "k", column = "k" }]', "")
    body += 'bucket = "day"\nkeys = [{ name = "h", truncate = "hour" }]\n'
    body += 'aggregates = [{ name = "n", fn = "count" }]\n'
    assert "finer than bucket" in _refused(body)
    head = STEP_HEAD.split("[steps.incremental]")[0]
    assert "needs [steps.incremental]" in _refused(head)


# --- against the database ------------------------------------------------------------------


async def _differences(
    conn: asyncpg.Connection, step: StepConfig, reference: datetime, expected: str | None = None
) -> list[str]:
    """Rows of the published summary not in the defining query at `reference` (or in
    `expected`, a query of the same columns), and the other way round, compared as
    `pipectl audit` compares them."""
    assert step.relation is not None
    columns = await summary_columns(conn, step.relation)
    recompute = expected or defining_query(step)
    found = await conn.fetchrow(comparison_sql(step.relation, recompute, columns), reference)
    assert found is not None
    if not found["only_in_summary"] and not found["only_in_recompute"]:
        return []
    names = [c.name for c in columns]
    return [
        f"published only ({found['only_in_summary']}): {example_text(row, names)}"
        for row in json.loads(found["examples_summary"])
    ] + [
        f"recomputed only ({found['only_in_recompute']}): {example_text(row, names)}"
        for row in json.loads(found["examples_recompute"])
    ]


async def _refresh(conn: asyncpg.Connection, step: StepConfig, at: datetime) -> store.Refreshed:
    async with conn.transaction():
        return await store.refresh(conn, step, reference=at)


async def _load_history(conn: asyncpg.Connection, now: datetime) -> None:
    """A few days of both APES sources, some rows beyond the windows, odd applied_rules."""
    rng = random.Random(7)
    await conn.executemany(
        "INSERT INTO rule_performance (rule_id, rule_name, prompt_type, improvement_score,"
        " confidence_level, execution_time_ms, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (
                f"r{i % 7}",
                f"rule {i % 7}",
                rng.choice(["a", "b", "c", None]),
                rng.choice([rng.random(), None]),
                rng.random(),
                rng.choice([rng.randint(1, 500), None]),
                (now - timedelta(days=rng.uniform(-0.1, 33))).replace(tzinfo=None),
            )
            for i in range(600)
        ],
    )
    shapes = ['[{"rule_id": "r1"}, {"rule_id": "r2"}]', '{"rule_id": "r3"}', "[]", '[{"x": 1}]']
    await conn.executemany(
        "INSERT INTO user_feedback (original_prompt, improved_prompt, user_rating,"
        " applied_rules, created_at) VALUES ('o', 'i', $1, $2::jsonb, $3)",
        [
            (
                rng.choice([1, 2, 3, 4, 5, None]),
                rng.choice(shapes),
                (now - timedelta(days=rng.uniform(-0.1, 95))).replace(tzinfo=None),
            )
            for _ in range(400)
        ],
    )


async def test_published_summaries_have_the_matviews_columns_types_and_content(
    database: str,
) -> None:
    steps = make_config(database, None, APES_STEPS).steps
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        now = await conn.fetchval("SELECT now()")
        await _load_history(conn, now)
        for step in steps:
            relation = str(step.relation)
            assert step.relation is not None
            matview = await summary_columns(conn, step.relation)
            # The matview's own query, at a reference time of our choosing.
            viewdef = await conn.fetchval("SELECT pg_get_viewdef($1::regclass)", relation)
            assert viewdef.count("now()") == 1
            matview_query = viewdef.rstrip().rstrip(";").replace("now()", "$1::timestamptz")
            async with conn.transaction():
                await store.install(conn, step, triggers=True)
            assert await summary_columns(conn, step.relation) == matview
            assert (
                await conn.fetchval(
                    "SELECT relkind FROM pg_class WHERE oid = $1::regclass", relation
                )
                == b"r"
            )
            at = now - timedelta(minutes=3)
            done = await _refresh(conn, step, at)
            assert done.full
            assert done.rows_read >= done.rows_arrived > 0
            assert await store.published_at(conn, step) == at
            assert await _differences(conn, step, at) == []
            assert await _differences(conn, step, at, matview_query) == []
            again = await _refresh(conn, step, at + timedelta(minutes=1))
            assert not again.full
            assert again.rows_read < done.rows_read
            assert await _differences(conn, step, at + timedelta(minutes=1)) == []
    finally:
        await conn.close()


# One step per shape the engine has: every aggregate, hour and day keys, a timestamp and a
# timestamptz time column, a jsonb element set and a plain column set.
PROPERTY_STEPS = """
[[steps]]
name = "by_key"
kind = "incremental"
relation = "public.by_key"
[steps.incremental]
source = "public.facts"
time_column = "t"
window = "6h"
bucket = "hour"
overlap = "10m"
keys = [{ name = "k", column = "k" }, { name = "g", column = "g" }]
aggregates = [
    { name = "n", fn = "count" },
    { name = "n_x", fn = "count", column = "x" },
    { name = "sum_x", fn = "sum", column = "x" },
    { name = "sum_i", fn = "sum", column = "i" },
    { name = "avg_x", fn = "avg", column = "x" },
    { name = "avg_i", fn = "avg", column = "i" },
    { name = "avg_i_float", fn = "avg", column = "i", cast = "float8" },
    { name = "sd", fn = "stddev", column = "x" },
    { name = "sd_pop", fn = "stddev_pop", column = "x" },
    { name = "var", fn = "variance", column = "i" },
    { name = "var_pop", fn = "var_pop", column = "x" },
    { name = "min_x", fn = "min", column = "x" },
    { name = "max_i", fn = "max", column = "i" },
    { name = "min_t", fn = "min", column = "t" },
    { name = "high", fn = "count_if", where = { column = "x", op = ">", value = 0.5 } },
    { name = "no_i", fn = "count_if", where = { column = "i", op = "is_null" } },
    { name = "cats", fn = "count_distinct", column = "cat" },
    { name = "cat_set", fn = "array_distinct", column = "cat" },
    { name = "tag_count", fn = "count_distinct", column = "tags", element_key = "id" },
    { name = "tag_set", fn = "array_distinct", column = "tags", element_key = "id" },
]

[[steps]]
name = "by_day"
kind = "incremental"
relation = "public.by_day"
[steps.incremental]
source = "public.facts"
time_column = "t"
window = "2d"
bucket = "hour"
overlap = "10m"
keys = [{ name = "day", truncate = "day" }]
aggregates = [
    { name = "n", fn = "count" },
    { name = "avg_x", fn = "avg", column = "x" },
    { name = "tag_set", fn = "array_distinct", column = "tags", element_key = "id" },
]

[[steps]]
name = "tz_daily"
kind = "incremental"
relation = "public.tz_daily"
[steps.incremental]
source = "public.tz_facts"
time_column = "at"
window = "3d"
bucket = "day"
overlap = "10m"
keys = [{ name = "day", truncate = "day" }, { name = "k", column = "k" }]
aggregates = [
    { name = "n", fn = "count" },
    { name = "sd", fn = "stddev_samp", column = "x" },
    { name = "max_x", fn = "max", column = "x" },
]
"""

FACTS = """
CREATE TABLE public.facts (id serial PRIMARY KEY, t timestamp, k text, g int, x float8,
                           i int, cat varchar(10), tags jsonb);
CREATE TABLE public.tz_facts (id serial PRIMARY KEY, at timestamptz, k text, x float8);
CREATE VIEW public.by_key AS SELECT 1 AS placeholder;
CREATE VIEW public.by_day AS SELECT 1 AS placeholder;
CREATE VIEW public.tz_daily AS SELECT 1 AS placeholder;
"""


def _fact(rng: random.Random, at: datetime) -> tuple[object, ...]:
    tags = rng.choice(['[{"id": "a"}, {"id": "b"}]', '[{"id": "c"}]', "[]", '{"id": "z"}', "[1]"])
    return (
        at.replace(tzinfo=None),
        rng.choice(["p", "q", "r", None]),
        rng.choice([1, 2]),
        rng.choice([round(rng.random(), 3), rng.random(), None]),
        rng.choice([rng.randint(-50, 50), None]),
        rng.choice(["u", "v", "w", None]),
        tags,
    )


def _by_key() -> StepConfig:
    """The property test's `by_key` step (hour buckets over a 6 h window of `facts`)."""
    config = make_config("postgresql://unused/db", None, PROPERTY_STEPS)
    return next(s for s in config.steps if s.name == "by_key")


@pytest.fixture(name="conn")
async def facts_connection(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection, its TimeZone UTC, to a fresh database with the empty `facts` table."""
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        await conn.execute(FACTS)
        yield conn
    finally:
        await conn.close()


async def _insert(conn: asyncpg.Connection, rows: list[tuple[object, ...]]) -> None:
    await conn.executemany(
        "INSERT INTO facts (t, k, g, x, i, cat, tags) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        rows,
    )
    await conn.executemany(
        "INSERT INTO tz_facts (at, k, x) VALUES ($1, $2, $3)",
        [(r[0].replace(tzinfo=UTC), r[1], r[3]) for r in rows],  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_history_keeps_the_summary_equal_to_its_defining_query(
    database: str, seed: int
) -> None:
    rng = random.Random(seed)
    steps = make_config(database, None, PROPERTY_STEPS).steps
    conn = await asyncpg.connect(database)
    try:
        # A zone with an offset: day buckets of the timestamptz source are its days.
        await conn.execute("SET TimeZone = 'Asia/Kolkata'")
        await conn.execute(FACTS)
        ref = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)
        await _insert(
            conn, [_fact(rng, ref - timedelta(hours=rng.uniform(-1, 80))) for _ in range(300)]
        )
        for step in steps:
            async with conn.transaction():
                await store.install(conn, step, triggers=True)
        checked = 0
        for round_ in range(14):
            action = rng.random()
            if (
                action < 0.35
            ):  # new rows, some late (behind the watermark, in and beyond the overlap)
                await _insert(
                    conn,
                    [
                        _fact(rng, ref - timedelta(minutes=rng.choice([1, 8, 30, 200, 2000])))
                        for _ in range(rng.randint(1, 30))
                    ],
                )
            elif action < 0.55:  # updates: time and values
                await conn.execute(
                    "UPDATE facts SET t = t - make_interval(mins => $1), x = random() "
                    "WHERE id % 7 = $2",
                    rng.randint(-90, 600),
                    rng.randint(0, 6),
                )
                await conn.execute(
                    "UPDATE tz_facts SET at = at + make_interval(mins => $1), x = x * 2 "
                    "WHERE id % 5 = $2",
                    rng.randint(-600, 90),
                    rng.randint(0, 4),
                )
            elif action < 0.7:  # deletes, old and recent
                await conn.execute("DELETE FROM facts WHERE id % 11 = $1", rng.randint(0, 10))
                await conn.execute("DELETE FROM tz_facts WHERE id % 13 = $1", rng.randint(0, 12))
            elif action < 0.75:
                await conn.execute("TRUNCATE tz_facts")
            if round_ == 7:  # the agent's timezone changes: day buckets are cut anew
                await conn.execute("SET TimeZone = 'America/New_York'")
            # The reference time moves on: buckets leave the window, the edge moves.
            ref += timedelta(minutes=rng.choice([0, 3, 17, 61, 240]), seconds=rng.choice([0, 25]))
            for step in steps:
                await _refresh(conn, step, ref)
                assert await store.published_at(conn, step) == ref
                problems = await _differences(conn, step, ref)
                assert problems == [], f"round {round_}, step {step.name}: {problems[:5]}"
                checked += 1
        assert checked == 14 * len(steps)
        assert await conn.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations") == 0
    finally:
        await conn.close()


async def test_without_triggers_a_refresh_says_changes_behind_the_watermark_are_not_seen(
    database: str,
) -> None:
    step = make_config(database, None, PROPERTY_STEPS).steps[1]
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(FACTS)
        async with conn.transaction():
            report = await store.install(conn, step, triggers=False)
        assert any("no invalidation triggers on public.facts" in line for line in report)
        done = await _refresh(conn, step, datetime(2026, 3, 1, tzinfo=UTC))
        assert done.warnings
        assert "--triggers" in done.warnings[0]
        assert "warnings" in done.detail()
    finally:
        await conn.close()


async def test_a_changed_definition_asks_for_a_reinstall(database: str) -> None:
    step = make_config(database, None, PROPERTY_STEPS).steps[1]
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(FACTS)
        async with conn.transaction():
            await store.install(conn, step, triggers=True)
        changed = make_config(
            database,
            None,
            PROPERTY_STEPS.replace(
                'window = "2d"\nbucket = "hour"', 'window = "2d"\nbucket = "day"'
            ),
        ).steps[1]
        with pytest.raises(store.IncrementalError, match="definition changed"):
            await _refresh(conn, changed, datetime(2026, 3, 1, tzinfo=UTC))
        plain = make_config(database, None, PROPERTY_STEPS).steps[0]
        with pytest.raises(store.IncrementalError, match="not installed"):
            await _refresh(conn, plain, datetime(2026, 3, 1, tzinfo=UTC))
        assert re.search(r"\$1::timestamptz", defining_query(step))
    finally:
        await conn.close()


def test_the_presets_commented_incremental_steps_are_the_tested_ones() -> None:
    preset = (Path(__file__).parents[1] / "config.example.toml").read_text(encoding="utf-8")
    steps = make_config(None, None, apes_incremental_steps_text(preset)).steps
    tested = make_config(None, None, APES_STEPS).steps
    assert [(s.name, s.kind, s.relation, s.incremental) for s in steps] == [
        (s.name, s.kind, s.relation, s.incremental) for s in tested
    ]
    assert all(s.gates is not None for s in steps)


def _pipectl(args: list[str], dsn: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipectl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIPECTL_DATABASE_URL": dsn},
        timeout=120,
        check=False,
    )


async def test_db_incremental_installs_and_reverts_to_the_materialized_views(
    database: str, tmp_path: Path
) -> None:
    config = tmp_path / "pipectl.toml"
    config.write_text(APES_STEPS, encoding="utf-8")
    names = list(SUMMARIES)
    refused = _pipectl(["db", "incremental", "nope"], database, config)
    assert refused.returncode == 2
    assert "no step 'nope' in the config" in refused.stderr
    plain = _pipectl(["db", "incremental", *names], database, config)
    assert plain.returncode == 0, plain.stderr
    assert "dropped materialized view public.rule_effectiveness_summary" in plain.stdout
    assert "warning: no invalidation triggers on public.rule_performance" in plain.stderr
    again = _pipectl(["db", "incremental", *names, "--triggers"], database, config)
    assert again.returncode == 0, again.stderr
    assert "invalidation triggers on public.user_feedback" in again.stdout
    conn = await asyncpg.connect(database)
    try:
        kinds = await conn.fetch(
            "SELECT relname, relkind FROM pg_class WHERE relname = ANY($1) ORDER BY 1", names
        )
        assert [k["relkind"] for k in kinds] == [b"r", b"r"]
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pipectl_invalidate_%'"
            )
            == 8
        )
        reverted = _pipectl(["db", "incremental", *names, "--revert"], database, config)
        assert reverted.returncode == 0, reverted.stderr
        assert "Traceback" not in reverted.stderr
        back = _pipectl(["db", "apes", "--materialized"], database, config)
        assert back.returncode == 0, back.stderr
        kinds = await conn.fetch(
            "SELECT relname, relkind FROM pg_class WHERE relname = ANY($1) ORDER BY 1", names
        )
        assert [k["relkind"] for k in kinds] == [b"m", b"m"]
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pipectl_invalidate_%'"
        )
        assert not await conn.fetchval("SELECT count(*) FROM pipectl.incremental_steps")
    finally:
        await conn.close()


async def test_config_check_warns_of_a_missing_install_and_missing_triggers(
    database: str,
) -> None:
    from pipectl.checks.validation import validate_catalog
    from tests.helpers import make_loaded

    loaded = make_loaded(database, None, PROPERTY_STEPS)
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(FACTS)
        by_key, by_day, _ = loaded.config.steps
        async with conn.transaction():
            await store.install(conn, by_key, triggers=False)
            await store.install(conn, by_day, triggers=False)
        await conn.execute("DROP VIEW public.tz_daily; CREATE TABLE public.tz_daily (x int)")
        warnings = (await validate_catalog(conn, loaded)).warnings
        assert any("step by_key: no invalidation triggers on public.facts" in w for w in warnings)
        assert any("step tz_daily: not installed as an incremental summary" in w for w in warnings)
        async with conn.transaction():
            await store.install_triggers(conn, by_key)
        warnings = (await validate_catalog(conn, loaded)).warnings
        assert not any("public.facts" in w for w in warnings)
    finally:
        await conn.close()


def test_lineage_runs_from_the_source_through_the_step_to_the_summary() -> None:
    from pipectl.agent.lineage import facts
    from pipectl.lineage import CatalogRelation, Lineage, Node

    steps, checks = facts(make_config(None, None, APES_STEPS))
    lineage = Lineage.build(
        [
            CatalogRelation("public.rule_performance", "table"),
            CatalogRelation("public.rule_effectiveness_summary", "table"),
        ],
        steps,
        checks,
    )
    step = Node("step", "rule_effectiveness_summary")
    assert lineage.upstream(step) == (Node("relation", "public.rule_performance"),)
    assert Node("relation", "public.rule_effectiveness_summary") in lineage.downstream(step)


async def test_writes_behind_the_watermark_go_on_while_a_refresh_is_open(
    database: str,
) -> None:
    step = make_config(database, None, PROPERTY_STEPS).steps[1]
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    conn = await asyncpg.connect(database)
    writer = await asyncpg.connect(database)
    try:
        await conn.execute(FACTS)
        await _insert(conn, [_fact(random.Random(3), at - timedelta(hours=h)) for h in range(9)])
        async with conn.transaction():
            await store.install(conn, step, triggers=True)
        await _refresh(conn, step, at)
        async with conn.transaction():
            await store.refresh(conn, step, reference=at + timedelta(minutes=1))
            # Still open: an application write behind the watermark must not wait for it.
            await writer.execute("SET lock_timeout = '20s'")
            await writer.execute(
                "UPDATE facts SET x = 0.25 WHERE t < $1",
                (at - timedelta(hours=3)).replace(tzinfo=None),
            )
            await writer.execute(
                "DELETE FROM facts WHERE t < $1", (at - timedelta(hours=6)).replace(tzinfo=None)
            )
        assert await conn.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations")
        await _refresh(conn, step, at + timedelta(minutes=2))
        assert await _differences(conn, step, at + timedelta(minutes=2)) == []
    finally:
        await writer.close()
        await conn.close()


async def test_a_refresh_reads_what_arrived_and_the_overlap_not_the_rest_of_the_hour(
    conn: asyncpg.Connection,
) -> None:
    """The part of a bucket read before the last re-read point is sealed: the next refresh
    reads only from there (what arrived plus the overlap), and its bucket's state rows are
    merged back into one per group."""
    rng = random.Random(5)
    step = _by_key()
    hour = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ref = hour + timedelta(minutes=30)
    # 40 rows early in the hour, 10 within the overlap (10 minutes) before ref.
    early = [_fact(rng, hour + timedelta(minutes=rng.uniform(0, 19))) for _ in range(40)]
    recent = [_fact(rng, hour + timedelta(minutes=rng.uniform(21, 29))) for _ in range(10)]
    # And 5 at 06:10, outside the window (6 h) until the clock goes back below.
    old = [_fact(rng, hour - timedelta(hours=5, minutes=50)) for _ in range(5)]
    await _insert(conn, early + recent + old)
    async with conn.transaction():
        await store.install(conn, step, triggers=True)
    assert (await _refresh(conn, step, ref)).full
    arrived = [_fact(rng, ref + timedelta(minutes=rng.uniform(1, 9))) for _ in range(7)]
    await _insert(conn, arrived)
    again = await _refresh(conn, step, ref + timedelta(minutes=10))
    assert not again.full
    # From ref - overlap (12:20): the 10 recent rows and the 7 that arrived; the window's
    # edge bucket (06:40-07:00) holds no rows. The whole hour would be 57.
    assert (again.rows_read, again.rows_arrived) == (17, 7)
    assert await _differences(conn, step, ref + timedelta(minutes=10)) == []
    state = await conn.fetchval(
        "SELECT state_table FROM pipectl.incremental_steps WHERE step = $1", step.name
    )
    per_group = await conn.fetchval(
        f"SELECT max(n) FROM (SELECT count(*) AS n FROM pipectl_incremental.{state}"
        " GROUP BY _bucket, _open, _k0, _k1) AS g"
    )
    assert per_group == 1
    # The clock goes back an hour: buckets already dropped from the window are needed
    # again, so the state is rebuilt.
    back = await _refresh(conn, step, ref - timedelta(hours=1))
    assert back.full
    assert await _differences(conn, step, ref - timedelta(hours=1)) == []


async def test_a_rebuild_leaves_the_state_tables_analyzed(conn: asyncpg.Connection) -> None:
    """The first refresh (a rebuild) writes every state row: it analyzes both state tables
    in its transaction, so the next refreshes' DELETEs are planned on statistics, not on
    the guess that scans the minute states whole; an ordinary refresh leaves them be."""
    rng = random.Random(9)
    step = _by_key()
    ref = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    await _insert(
        conn, [_fact(rng, ref - timedelta(minutes=rng.uniform(1, 300))) for _ in range(200)]
    )
    async with conn.transaction():
        await store.install(conn, step, triggers=True)
    state = await conn.fetchval(
        "SELECT state_table FROM pipectl.incremental_steps WHERE step = $1", step.name
    )
    tables = [state, store.minutes_table_name(state)]

    async def tuples() -> list[float]:
        found = await conn.fetch(
            "SELECT relname, reltuples FROM pg_class"
            " WHERE relnamespace = 'pipectl_incremental'::regnamespace AND relname = ANY($1)",
            tables,
        )
        return [r["reltuples"] for r in sorted(found, key=lambda r: tables.index(r["relname"]))]

    assert await tuples() == [-1, -1]  # never analyzed
    assert (await _refresh(conn, step, ref)).full
    counted = [await conn.fetchval(f"SELECT count(*) FROM pipectl_incremental.{t}") for t in tables]
    assert await tuples() == counted
    await _insert(conn, [_fact(rng, ref + timedelta(minutes=2))])
    assert not (await _refresh(conn, step, ref + timedelta(minutes=5))).full
    assert await tuples() == counted


async def test_float_variances_stay_exact_to_nine_digits_far_from_zero(
    conn: asyncpg.Connection,
) -> None:
    """float8 partials: a variance of values around 10,000 with a spread of about 1. A sum
    of squares in float8 would lose about 8 of its digits to cancellation; per-bucket M2
    merged with the deviations of the bucket means (Chan) keeps it equal to PostgreSQL's own
    stddev, to 9 significant digits, across buckets and refreshes."""
    rng = random.Random(11)
    step = _by_key()
    ref = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)

    def far(at: datetime) -> tuple[object, ...]:
        row = list(_fact(rng, at))
        row[3] = 10_000 + rng.gauss(0, 1)  # x
        return tuple(row)

    await _insert(conn, [far(ref - timedelta(minutes=rng.uniform(1, 300))) for _ in range(400)])
    async with conn.transaction():
        await store.install(conn, step, triggers=True)
    await _refresh(conn, step, ref)
    await _insert(conn, [far(ref + timedelta(minutes=rng.uniform(0, 9))) for _ in range(100)])
    later = ref + timedelta(minutes=10)
    await _refresh(conn, step, later)
    assert await _differences(conn, step, later) == []
    spread = await conn.fetchval("SELECT max(sd) FROM public.by_key")
    assert 0.5 < spread < 2  # the comparison above was about a real spread, not zero


async def test_the_windows_partial_bucket_comes_from_minute_states(
    conn: asyncpg.Connection,
) -> None:
    """The window's oldest (partial) bucket is published from minute states kept since its
    rows arrived, plus the raw rows of less than a minute before the first whole minute:
    a refresh with nothing new reads only those and the overlap. Updates, deletes and late
    inserts there (behind the watermark, through the invalidation log) and the edge moving
    across minutes, hours and past the changed rows keep the summary equal to its query."""
    rng = random.Random(11)
    step = _by_key()
    ref = datetime(2026, 3, 1, 12, 7, 30, tzinfo=UTC)
    # 20 rows a minute over the window (6 h) and an hour before it.
    await _insert(
        conn, [_fact(rng, ref - timedelta(minutes=m / 20)) for m in range(0, 7 * 60 * 20)]
    )
    async with conn.transaction():
        await store.install(conn, step, triggers=True)
    assert (await _refresh(conn, step, ref)).full
    assert await _differences(conn, step, ref) == []
    # 12 min 15 s later, nothing new: the window starts at 06:19:45; 06:19:45-06:20:00
    # is read raw (15 s: 5 rows), the rest of the edge hour from minute states; the
    # overlap is read again (the 10 min up to the last reference time: 201 rows, the
    # one at that time counted as arrived).
    later = ref + timedelta(minutes=12, seconds=15)
    quiet = await _refresh(conn, step, later)
    assert not quiet.full
    assert (quiet.rows_read, quiet.rows_arrived) == (5 + 201, 1)
    assert await _differences(conn, step, later) == []
    # Behind the watermark, in the edge hour and elsewhere: an update (values and a
    # time moved across the hour), a delete, a late insert.
    edge_hour = datetime(2026, 3, 1, 6, 30, tzinfo=UTC).replace(tzinfo=None)  # a timestamp
    await conn.execute(
        "UPDATE facts SET x = 7.5, cat = 'new', t = t + interval '40 minutes' "
        "WHERE t >= $1 AND t < $2",
        edge_hour,
        edge_hour + timedelta(minutes=2),
    )
    await conn.execute(
        "DELETE FROM facts WHERE t >= $1 AND t < $2",
        edge_hour + timedelta(minutes=10),
        edge_hour + timedelta(minutes=12),
    )
    late = (edge_hour + timedelta(minutes=20, seconds=10)).replace(tzinfo=UTC)
    await _insert(conn, [_fact(rng, late) for _ in range(3)])
    for step_by in (timedelta(0), timedelta(seconds=50), timedelta(minutes=9, seconds=7)):
        later += step_by
        done = await _refresh(conn, step, later)
        assert not done.full
        assert await _differences(conn, step, later) == [], later
    # The edge moves past the changed rows, into the next hour, and on by whole minutes.
    for step_by in (timedelta(minutes=25), timedelta(hours=1, minutes=3), timedelta(minutes=1)):
        later += step_by
        await _refresh(conn, step, later)
        assert await _differences(conn, step, later) == [], later
    assert await conn.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations") == 0


async def test_the_demo_reinstalls_a_summary_kept_in_an_older_state_format(
    database: str,
) -> None:
    """`pipectl demo --incremental` on a state dir of an earlier pipectl: a summary installed
    with another signature (definition or state format) is installed again, not left for
    every refresh to fail with "definition changed"; a current one is left as it is."""
    out = Console(file=io.StringIO(), width=200)
    conn = await asyncpg.connect(database)
    try:
        await demo._summaries(conn, True, out)
        steps = demo.incremental_steps()
        for step in steps:
            async with conn.transaction():
                await store.refresh(conn, step)
            assert await store.installed(conn, step) is store.Installed.AS_DEFINED
        await conn.execute(
            "UPDATE pipectl.incremental_steps SET signature = 'older' WHERE step = $1",
            steps[0].name,
        )
        assert await store.installed(conn, steps[0]) is store.Installed.OUTDATED
        out.file = io.StringIO()
        await demo._summaries(conn, True, out)
        said = out.file.getvalue()
        assert f"{steps[0].relation}: an incremental summary" in said
        assert "installed again" in said
        assert str(steps[1].relation) not in said
        for step in steps:
            assert await store.installed(conn, step) is store.Installed.AS_DEFINED
        async with conn.transaction():
            await store.refresh(conn, steps[0])
        # Without --incremental the materialized views come back.
        out.file = io.StringIO()
        await demo._summaries(conn, False, out)
        said = out.file.getvalue()
        assert all(f"{s.relation}: back to a materialized view" in said for s in steps)
        assert [await store.installed(conn, s) for s in steps] == [store.Installed.NO] * 2
        kinds = await conn.fetch(
            "SELECT relkind::text FROM pg_class WHERE oid = ANY($1::regclass[])",
            [str(s.relation) for s in steps],
        )
        assert [k["relkind"] for k in kinds] == ["m", "m"]
    finally:
        await conn.close()
