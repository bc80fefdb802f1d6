"""`pipectl audit STEP`: a step's published content against a full recompute of its defining
query, both ways with EXCEPT ALL, floats to 9 significant digits; the verb's verdicts, JSON and
exit codes (0 equal, 1 different, 2 could not audit), and what it needs as an operator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl.audit import Column, comparison_sql
from pipectl.cli import main
from pipectl.identifiers import Relation
from pipectl.store import incremental
from tests.helpers import make_config

STEP = "rule_effectiveness_summary"

STEPS = f"""
[[steps]]
name = "{STEP}"
kind = "matview"
relation = "public.{STEP}"
every = "1h"

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

[[steps]]
name = "never_refreshed"
kind = "matview"
relation = "public.never_refreshed"
every = "1h"

[[steps]]
name = "not_a_matview"
kind = "matview"
relation = "public.rule_performance"
every = "1h"
"""


INCREMENTAL = (Path(__file__).parent / "incremental_apes.toml").read_text()


async def run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dsn: str, *args: str
) -> tuple[int, Any, str]:
    """`pipectl audit ARGS` in a thread against `dsn`: exit code, stdout (parsed when JSON),
    stderr."""
    config = tmp_path / "pipectl.toml"
    steps = INCREMENTAL if args and args[0] == "--incremental" else STEPS
    args = args[1:] if args and args[0] == "--incremental" else args
    config.write_text(f'[database]\ndsn = "{dsn}"\n' + steps)
    code = await asyncio.to_thread(main, ["--config", str(config), "audit", *args])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except ValueError:
        return code, out, err


async def add_rows(conn: asyncpg.Connection, rule: str, count: int, score: float) -> None:
    """`count` applications of `rule` an hour ago (the session's clock, as the summary's
    window reads it)."""
    await conn.execute(
        """
        INSERT INTO public.rule_performance
            (rule_id, rule_name, prompt_type, improvement_score, confidence_level,
             execution_time_ms, created_at)
        SELECT $1::text, 'Rule ' || $1::text, (ARRAY['code', 'chat'])[1 + g % 2],
               $3 + g * 0.001, 0.5, 100 + g, localtimestamp - interval '1 hour'
        FROM generate_series(1, $2) AS g
        """,
        rule,
        count,
        score,
    )


async def refreshed(conn: asyncpg.Connection) -> None:
    """Refresh the summary and record it as pipectl's last successful run of the step."""
    await conn.execute(f"REFRESH MATERIALIZED VIEW public.{STEP}")
    await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ($1, 'matview')", STEP)
    await conn.execute(
        "INSERT INTO pipectl.runs (step, trigger, status, started_at, finished_at)"
        " VALUES ($1, 'manual', 'succeeded', now(), now())",
        STEP,
    )


@pytest.fixture
async def db(database: str) -> Any:
    conn = await asyncpg.connect(database, server_settings={"TimeZone": "UTC"})
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_fresh_matview_is_equal_and_rows_arrived_since_are_staleness(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for index, rule in enumerate(("r0", "r1", "r2", "r3")):
        await add_rows(db, rule, 10 + index, 0.1 * index)
    await refreshed(db)

    code, out, err = await run(capsys, tmp_path, database, STEP, "--json")
    assert code == 0, err
    assert out["equal"] is True
    assert (out["summary_rows"], out["recompute_rows"], out["differing_rows"]) == (4, 4, 0)
    assert out["kind"] == "matview"
    assert out["published_at"] is not None
    assert set(out["rounded_columns"]) == {
        "avg_improvement",
        "score_stddev",
        "min_improvement",
        "max_improvement",
        "avg_confidence",
        "avg_execution_time",
    }

    code, text, _ = await run(capsys, tmp_path, database, STEP)
    assert code == 0
    assert text.splitlines()[0] == (
        f"{STEP}: equal: 4 rows, the same as a full recompute of its defining query"
        " (floats to 9 significant digits)"
    )
    assert "pipectl last refreshed it at" in text

    # Rows that arrive after the refresh: one group changed, one new.
    await add_rows(db, "r0", 3, 0.9)
    await add_rows(db, "r_new", 5, 0.4)
    code, out, _ = await run(capsys, tmp_path, database, STEP, "--json")
    assert code == 1
    assert out["equal"] is False
    assert (out["only_in_summary"], out["only_in_recompute"]) == (1, 2)
    assert out["differing_rows"] == 3
    assert [r["rule_id"] for r in out["examples_only_in_summary"]] == ["r0"]
    recomputed = {r["rule_id"]: r for r in out["examples_only_in_recompute"]}
    assert recomputed["r_new"]["usage_count"] == 5
    assert recomputed["r0"]["usage_count"] == 13
    assert "staleness, not a wrong summary" in out["explanation"]

    code, text, _ = await run(capsys, tmp_path, database, STEP)
    lines = text.splitlines()
    assert code == 1
    assert lines[0] == (
        f"{STEP}: differs: 1 row only in the summary, 2 rows only in the recompute"
        " (summary 4 rows, recompute 5 rows)"
    )
    assert lines[1] == "only in the summary (1):"
    assert lines[2].startswith("  rule_id=r0, rule_name=Rule r0, usage_count=10,")
    assert lines[3] == "only in the recompute (2):"
    assert "rerun the step and audit again right after" in text

    await db.execute(f"REFRESH MATERIALIZED VIEW public.{STEP}")
    code, _, _ = await run(capsys, tmp_path, database, STEP)
    assert code == 0


async def test_floats_are_compared_to_nine_significant_digits_and_duplicates_count(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        """
        CREATE TABLE public.audit_sides (k text, a float8, b numeric, c real, j json);
        INSERT INTO public.audit_sides VALUES
            ('zero', 0, 0, 0, '{"x": 1}'), ('nan', 'NaN', 'NaN', 'NaN', '[]'),
            ('inf', 'Infinity', 'Infinity', '-Infinity', 'null'), ('null', NULL, NULL, NULL, NULL),
            ('tiny', 1.234567891e-300, 1.234567891e-30, 1.5e-30, '1'),
            ('huge', -1.234567891e200, 123456789012345678901234.5, 3.4e38, '"s"'),
            ('plain', 0.123456789012, 2.5, 0.1, '{"b": [1, 2]}'),
            ('twice', 0.5, 1, 1, '{}'), ('twice', 0.5, 1, 1, '{}');
        """
    )
    columns = [
        Column("k", "text"),
        Column("a", "double precision"),
        Column("b", "numeric"),
        Column("c", "real"),
        Column("j", "json"),
    ]
    relation = Relation("public", "audit_sides")

    async def compare(recompute: str) -> tuple[int, int, list[Any]]:
        row = await db.fetchrow(comparison_sql(relation, recompute, columns))
        assert row is not None
        examples = json.loads(row["examples_summary"])
        return row["only_in_summary"], row["only_in_recompute"], examples

    # The same values computed another way (last bits differ) and json spelled otherwise.
    same = (
        "SELECT k, a * (1 + 1e-13) AS a, b * (1 + 1e-15) AS b, c, j::jsonb::json AS j"
        " FROM public.audit_sides"
    )
    assert (await compare(same))[:2] == (0, 0)
    # A difference in the 7th significant digit is one.
    drift = (
        "SELECT k, CASE WHEN k = 'plain' THEN a * 1.000001 ELSE a END AS a, b, c, j"
        " FROM public.audit_sides"
    )
    only_summary, only_recompute, examples = await compare(drift)
    assert (only_summary, only_recompute) == (1, 1)
    assert examples[0]["k"] == "plain"
    assert float(examples[0]["a"]) == pytest.approx(0.123456789)
    # Values a few ulps apart on either side of a rounding boundary (or of the zero
    # threshold) round to neighbours: they are the same value, not a difference...
    await db.execute(
        "INSERT INTO public.audit_sides VALUES ('edge', 1e-12, 0.1234567885, 9.9999999995, '2'),"
        " ('edge', 5, 7, 1, '3')"
    )
    straddle = (
        "SELECT k, CASE WHEN k = 'edge' THEN a * (1 - 1e-15) ELSE a END AS a,"
        " CASE WHEN k = 'edge' THEN b * (1 - 1e-15) ELSE b END AS b,"
        " c, j::jsonb::json AS j FROM public.audit_sides"
    )
    assert (await compare(straddle))[:2] == (0, 0)
    # ...while a real difference beside them still is one, shown as the summary has it.
    # (b * 1.001 changes the rows whose b is neither 0, NaN, infinite, NULL nor below 1e-12.)
    straddle_and_drift = straddle.replace("ELSE b END", "ELSE b * 1.001 END")
    only_summary, only_recompute, examples = await compare(straddle_and_drift)
    assert (only_summary, only_recompute) == (4, 4)
    assert [e["k"] for e in examples] == ["huge", "plain", "twice"]
    wrong_edge = straddle.replace("b * (1 - 1e-15)", "b * (1 - 1e-7)")
    only_summary, only_recompute, examples = await compare(wrong_edge)
    assert (only_summary, only_recompute) == (2, 2)
    assert [(e["k"], float(e["b"])) for e in examples] == [("edge", 0.123456789), ("edge", 7)]
    await db.execute("DELETE FROM public.audit_sides WHERE k = 'edge'")
    # EXCEPT ALL: a row the summary has twice and the recompute once is a difference.
    once = "SELECT DISTINCT k, a, b, c, j::jsonb AS j FROM public.audit_sides"
    assert (await compare(once))[:2] == (1, 0)


async def test_what_cannot_be_audited_is_refused_with_the_reason(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(capsys, tmp_path, database, "rule_efectiveness_summary")
    assert code == 2
    assert f"unknown step 'rule_efectiveness_summary'; did you mean '{STEP}'?" in err

    code, _, err = await run(capsys, tmp_path, database, "rollup")
    assert code == 2
    assert "step rollup is an sql step: it has no defining query to recompute" in err

    code, _, err = await run(capsys, tmp_path, database, "not_a_matview")
    assert code == 2
    assert "public.rule_performance is not a materialized view" in err

    await db.execute(
        "CREATE MATERIALIZED VIEW public.never_refreshed AS SELECT 1 AS x WITH NO DATA"
    )
    code, _, err = await run(capsys, tmp_path, database, "never_refreshed")
    assert code == 2
    assert "public.never_refreshed cannot be read yet" in err
    assert "refresh it once (pipectl rerun never_refreshed)" in err

    # A recompute that outlives the statement_timeout is cancelled and said so.
    await db.execute(
        "CREATE MATERIALIZED VIEW public.slow_summary AS SELECT 1 AS x FROM pg_sleep(0.3)"
    )
    code, _, err = await run(capsys, tmp_path, database, "slow_summary", "--timeout", "20ms")
    assert code == 2
    assert "the audit of slow_summary ran longer than its statement_timeout (20ms)" in err
    assert "Traceback" not in err


async def test_an_incremental_summary_is_compared_at_its_reference_time(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for index, rule in enumerate(("r0", "r1", "r2")):
        await add_rows(db, rule, 20 + index, 0.2 * index)
    step = make_config(database, None, INCREMENTAL).step(STEP)
    async with db.transaction():
        await incremental.install(db, step, triggers=True)
    await add_rows(db, "r3", 7, 0.5)
    async with db.transaction():
        done = await incremental.refresh(db, step)

    code, out, err = await run(capsys, tmp_path, database, "--incremental", STEP, "--json")
    assert code == 0, err
    assert out["kind"] == "incremental"
    assert (out["summary_rows"], out["differing_rows"], out["newer_source_rows"]) == (4, 0, 0)
    assert out["reference_at"] == out["published_at"] == done.reference_time.isoformat()

    # A wrong summary: one group's count off by one. Nothing arrived, so it is not staleness.
    await db.execute(f"UPDATE public.{STEP} SET usage_count = usage_count + 1 WHERE rule_id = 'r1'")
    code, text, _ = await run(capsys, tmp_path, database, "--incremental", STEP)
    lines = text.splitlines()
    assert code == 1
    assert lines[0] == (
        f"{STEP}: differs: 1 row only in the summary, 1 row only in the recompute"
        " (summary 4 rows, recompute 4 rows)"
    )
    assert lines[2].startswith("  rule_id=r1, rule_name=Rule r1, usage_count=22,")
    assert lines[4].startswith("  rule_id=r1, rule_name=Rule r1, usage_count=21,")
    assert "arrived" not in text

    # The next refresh puts it right; rows dated after its reference time are counted apart.
    async with db.transaction():
        await incremental.refresh(db, step)
    code, _, _ = await run(capsys, tmp_path, database, "--incremental", STEP)
    assert code == 0
    await db.execute(
        "INSERT INTO public.rule_performance (rule_id, rule_name, improvement_score, created_at)"
        " SELECT 'r0', 'Rule r0', 0.5, (now() + interval '1 minute') AT TIME ZONE 'UTC'"
        " FROM generate_series(1, 2)"
    )
    code, out, _ = await run(capsys, tmp_path, database, "--incremental", STEP, "--json")
    assert code == 1
    assert (out["only_in_summary"], out["only_in_recompute"], out["newer_source_rows"]) == (
        1,
        1,
        2,
    )
    assert "2 rows of its source are at or after that time" in out["explanation"]


async def test_example_rows_are_shown_as_literal_text(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await db.execute(f"REFRESH MATERIALIZED VIEW public.{STEP}")
    hostile = "Rule \x1b]0;owned\x07 [bold]x[/bold]\u202e"
    await db.execute(
        "INSERT INTO public.rule_performance (rule_id, rule_name, improvement_score, created_at)"
        " VALUES ('r9', $1, 0.5, localtimestamp - interval '1 minute')",
        hostile,
    )
    code, text, _ = await run(capsys, tmp_path, database, STEP)
    assert code == 1
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "rule_name=Rule \\x1b]0;owned\\x07 [bold]x[/bold]\\u202e," in text
    code, out, _ = await run(capsys, tmp_path, database, STEP, "--json")
    assert out["examples_only_in_recompute"][0]["rule_name"] == hostile


async def test_state_basis_compares_like_with_like_while_rows_arrive(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--state`: what the next refresh would publish now against a recompute in the same
    snapshot; rows that arrived since the refresh make the published table differ, not it."""
    await add_rows(db, "r0", 5, 0.1)
    step = make_config(database, None, INCREMENTAL).step(STEP)
    async with db.transaction():
        await incremental.install(db, step, triggers=True)
    async with db.transaction():
        await incremental.refresh(db, step)
    await add_rows(db, "r1", 4, 0.4)
    code, out, _ = await run(capsys, tmp_path, database, "--incremental", STEP, "--json")
    assert (code, out["basis"], out["only_in_recompute"]) == (1, "published", 1)
    code, out, err = await run(
        capsys, tmp_path, database, "--incremental", STEP, "--state", "--json"
    )
    assert code == 0, err
    assert (out["basis"], out["summary_rows"], out["differing_rows"]) == ("state", 2, 0)
    assert "read in one snapshot" in out["explanation"]
