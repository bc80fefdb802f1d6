"""A `sql` step cannot leave the transaction the agent runs it in: COMMIT, ROLLBACK, BEGIN and
friends, and changes of the run's timeouts, are refused when the config is read, wherever
they hide among look-alikes (comments, literals, dollar-quoted bodies, identifiers). What no
text check can see, a procedure or DO block that commits, fails inside the run instead."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipectl.cli import main
from pipectl.config import ConfigError, parse_config_text
from pipectl.sqlscan import SqlScanError, statements, step_sql_escapes

REFUSED: list[tuple[str, str, int]] = [
    ("COMMIT", "COMMIT", 1),
    ("commit work", "COMMIT", 1),
    ("INSERT INTO t VALUES (1);\nCOMMIT;\nSELECT pg_sleep(6)", "COMMIT", 2),
    ("SELECT 1;COMMIT", "COMMIT", 1),
    ("/* setup */ CoMmIt AND CHAIN", "COMMIT", 1),
    ("-- done\n\tEND", "END", 2),
    ("end transaction", "END", 1),
    ("ROLLBACK", "ROLLBACK", 1),
    ("rollback to savepoint a", "ROLLBACK", 1),
    ("ABORT", "ABORT", 1),
    ("BEGIN; SELECT 1", "BEGIN", 1),
    ("start transaction isolation level serializable", "START TRANSACTION", 1),
    ("SAVEPOINT a", "SAVEPOINT", 1),
    ("RELEASE SAVEPOINT a", "RELEASE", 1),
    ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION", 1),
    ("COMMIT PREPARED 'x'", "COMMIT", 1),
    ("SELECT 'it''s'; COMMIT", "COMMIT", 1),
    ("SELECT E'\\''; COMMIT", "COMMIT", 1),
    ("SELECT $$;$$; COMMIT", "COMMIT", 1),
    ("SELECT /* /* nested */ ; */ 1; COMMIT", "COMMIT", 1),
    ("SELECT (1); COMMIT", "COMMIT", 1),
    ("SET statement_timeout = 0; SELECT pg_sleep(6)", "SET statement_timeout", 1),
    ("SET LOCAL lock_timeout TO 0", "SET lock_timeout", 1),
    ('set session "Statement_Timeout" = 0', "SET statement_timeout", 1),
    ("RESET ALL", "RESET ALL", 1),
    ("reset statement_timeout", "RESET statement_timeout", 1),
    (
        "SELECT pg_catalog.set_config('statement_timeout', '0', true)",
        "set_config('statement_timeout', ...)",
        1,
    ),
]

ACCEPTED = [
    "INSERT INTO public.commit_log SELECT 1",
    'SELECT "commit", "end" FROM public.t',
    "SELECT 'COMMIT; ROLLBACK' -- COMMIT",
    "SELECT 1 /* ; COMMIT; */",
    "SELECT $$ ; COMMIT; $$, $fn$ ; ROLLBACK; $fn$",
    "SELECT E'\\'; COMMIT'",
    "SELECT U&'\\0041; COMMIT'",
    "SELECT x'0f', b'01', n'; commit'",
    "SELECT rollback_count, end_time FROM public.t ORDER BY commit_ts",
    "SELECT a$commit FROM t",
    "DO $$BEGIN PERFORM 1; END$$",
    "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;"
    " SELECT f()",
    "SELECT CASE WHEN true THEN 1 END",
    "SET search_path = public; SET LOCAL work_mem = '64MB'",
    "UPDATE public.jobs SET status = 'done' WHERE status = 'end'",
    "SELECT set_config('application_name', 'x', true)",
    "REFRESH MATERIALIZED VIEW public.rule_effectiveness_summary",
]


@pytest.mark.parametrize(("sql", "what", "line"), REFUSED)
def test_transaction_control_and_limit_changes_are_found(sql: str, what: str, line: int) -> None:
    (escape,) = step_sql_escapes(sql)
    assert (escape.what, escape.line) == (what, line)


@pytest.mark.parametrize("sql", ACCEPTED)
def test_look_alikes_are_not_statements(sql: str) -> None:
    assert step_sql_escapes(sql) == []


def test_a_routine_body_in_begin_atomic_is_one_statement() -> None:
    sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC SELECT 1; SELECT 2; END;\nEND"
    found = [[t.text for t in s][:2] for s in statements(sql)]
    assert found == [["create", "function"], ["end"]]
    assert [str(e) for e in step_sql_escapes(sql)] == [
        "line 3 of the SQL: END would end the run's transaction early: what follows would run"
        " without statement_timeout and outside the step lock"
    ]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 'open", "a string literal opened on line 1 is never closed"),
        ("SELECT 1;\n/* open", "a /* comment opened on line 2 is never closed"),
        ("SELECT $x$ body", "a $x$ quoted body opened on line 1 is never closed"),
        ('SELECT "open', "a quoted identifier opened on line 1 is never closed"),
    ],
)
def test_text_that_cannot_be_read_is_said_so(sql: str, message: str) -> None:
    with pytest.raises(SqlScanError, match=re.escape(message)):
        step_sql_escapes(sql)


SQL_PIECES = st.sampled_from(
    [
        "COMMIT",
        "begin",
        "end",
        ";",
        "'",
        "''",
        '"',
        "$$",
        "$x$",
        "$1",
        "--",
        "\n",
        "/*",
        "*/",
        "E'",
        "\\",
        "U&",
        "(",
        ")",
        "create function",
        "BEGIN ATOMIC",
        "case",
        " ",
        "set",
        "statement_timeout",
        "set_config(",
        "ééé",
        "commit_log",
        "1.5e3",
    ]
)


@given(st.lists(st.one_of(SQL_PIECES, st.text(max_size=3)), max_size=30))
def test_any_text_is_read_or_refused_with_a_reason(pieces: list[str]) -> None:
    problem = ""
    try:
        step_sql_escapes("".join(pieces))
    except SqlScanError as exc:
        problem = str(exc)
    assert problem == "" or problem.endswith("is never closed")


CONFIG = '''
[[steps]]
name = "nightly_rollup"
kind = "sql"
sql = """
INSERT INTO public.rollup SELECT 1; -- the work
COMMIT;
SELECT pg_sleep(6)
"""
'''


def test_the_config_refuses_it_with_file_line_and_why() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(CONFIG, "pipectl.toml", environ={})
    assert [str(p) for p in caught.value.problems] == [
        "pipectl.toml:5: steps.nightly_rollup.sql: line 2 of the SQL: COMMIT would end the run's"
        " transaction early: what follows would run without statement_timeout and outside the"
        " step lock"
    ]


def test_config_check_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipectl.toml"
    path.write_text(CONFIG)
    assert main(["config", "check", "--config", str(path)]) == 2
    assert (
        f"{path}:5: steps.nightly_rollup.sql: line 2 of the SQL: COMMIT" in capsys.readouterr().err
    )


async def test_what_no_text_check_sees_fails_inside_the_run(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A procedure or DO block that commits: PostgreSQL refuses it inside the run's
    transaction, so the run fails (and the sleep after it never runs)."""
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "CREATE PROCEDURE public.commits() LANGUAGE plpgsql AS $$BEGIN COMMIT; END$$"
        )
    finally:
        await conn.close()
    path = tmp_path / "pipectl.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [database]
            dsn = "{database}"
            [defaults]
            statement_timeout = "2s"
            retries = 0
            [agent]
            metrics_address = "127.0.0.1:0"
            [[steps]]
            name = "calls_a_committing_procedure"
            kind = "sql"
            sql = "CALL public.commits(); SELECT pg_sleep(6)"
            [[steps]]
            name = "commits_in_a_do_block"
            kind = "sql"
            sql = "DO $$BEGIN COMMIT; END$$; SELECT pg_sleep(6)"
            """
        )
    )
    assert await asyncio.to_thread(main, ["agent", "--once", "--config", str(path)]) == 2
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT step, status, error FROM pipectl.runs ORDER BY step")
    finally:
        await conn.close()
    assert [(r["step"], r["status"]) for r in rows] == [
        ("calls_a_committing_procedure", "failed"),
        ("commits_in_a_do_block", "failed"),
    ]
    for row in rows:
        assert row["error"].startswith("InvalidTransactionTerminationError [2D000]")
