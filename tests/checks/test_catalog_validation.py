"""One validation against the catalog, for the agent's start and `pipectl config check`: every
enabled step's relation and every enabled check's tables and columns, all problems at once,
each on the line of the file that set it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from pipectl.checks.validation import validate_catalog, validate_steps
from pipectl.cli import main
from pipectl.config import ConfigError, load_config

BODY = """
[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"

[[steps]]
name = "plain_as_matview"
kind = "matview"
relation = "public.plain_summary"

[[steps]]
name = "gone"
kind = "view"
relation = "public.no_such_summary"

[[steps]]
name = "table_as_view"
kind = "view"
relation = "public.rule_performance"

[[steps]]
name = "gone_but_disabled"
kind = "view"
relation = "public.no_such_summary"
enabled = false

[[checks]]
name = "rules_fresh"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "1h"
error_after = "2h"

[[checks]]
name = "typo"
kind = "volume"
table = "public.rule_performance"
column = "created"

[[checks]]
name = "typo_but_disabled"
kind = "volume"
table = "public.rule_performanc"
column = "created_at"
enabled = false
"""


def write(tmp_path: Path, dsn: str, body: str) -> Path:
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\nconnect_timeout = "5s"\n{body}')
    return path


@pytest.fixture
async def plain_view(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("CREATE VIEW public.plain_summary AS SELECT 1 AS one")
    finally:
        await conn.close()


def line(path: Path, text: str) -> int:
    """The first line of the file holding `text`."""
    return next(n for n, row in enumerate(path.read_text().splitlines(), 1) if text in row)


def expected(path: Path) -> list[str]:
    table_as_view = line(path, 'relation = "public.rule_performance"')
    typo = line(path, 'column = "created"')
    return [
        f"{path}:{line(path, 'public.plain_summary')}: steps.plain_as_matview.relation:"
        ' public.plain_summary is not a materialized view (use kind = "view" for a plain view)',
        f"{path}:{line(path, 'public.no_such_summary')}: steps.gone.relation:"
        " public.no_such_summary does not exist in the database",
        f"{path}:{table_as_view}: steps.table_as_view.relation: public.rule_performance is not"
        " a view",
        f"{path}:{typo}: checks.typo.column: column 'created' does not exist in"
        " public.rule_performance; did you mean 'created_at'?",
    ]


@pytest.mark.usefixtures("plain_view")
async def test_steps_and_checks_are_validated_together_on_their_lines(
    database: str, tmp_path: Path
) -> None:
    path = write(tmp_path, database, BODY)
    loaded = load_config(path, environ={})
    conn = await asyncpg.connect(database)
    try:
        with pytest.raises(ConfigError) as caught:
            await validate_catalog(conn, loaded)
        assert [str(p) for p in caught.value.problems] == expected(path)
        with pytest.raises(ConfigError) as steps_only:
            await validate_steps(conn, loaded)
        assert [str(p) for p in steps_only.value.problems] == expected(path)[:3]
        fixed = write(tmp_path, database, BODY.split('[[steps]]\nname = "plain_as_matview"')[0])
        engine = await validate_catalog(conn, load_config(fixed, environ={}))
        assert await engine.problems(conn) == []
    finally:
        await conn.close()


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("plain_view")
async def test_config_check_validates_against_a_reachable_database(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, database, BODY)
    code, out, err = await cli(capsys, "config", "check", "--config", str(path))
    assert (code, out, err.splitlines()) == (2, "", expected(path))

    code, out, _ = await cli(capsys, "config", "check", "--offline", "--config", str(path))
    assert code == 0
    assert out.strip() == f"{path}: ok (5 steps, 3 checks); catalog not checked (--offline)"

    good = write(tmp_path, database, BODY.split('[[steps]]\nname = "plain_as_matview"')[0])
    code, out, _ = await cli(capsys, "config", "check", "--config", str(good))
    assert code == 0
    assert out.strip() == f"{good}: ok (1 steps, 0 checks); catalog checked on {database}"


async def test_an_unreachable_database_is_a_note_not_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "postgresql://nobody:secret@127.0.0.1:1/apes", BODY)
    code, out, err = await cli(capsys, "config", "check", "--config", str(path))
    assert (code, err) == (0, "")
    assert out.startswith(
        f"{path}: ok (5 steps, 3 checks); catalog not checked: cannot connect to"
        " postgresql://nobody:****@127.0.0.1:1/apes"
    )


VARCHAR_FRESHNESS = """
[[checks]]
name = "sessions_fresh"
kind = "freshness"
table = "public.improvement_sessions"
column = "session_id"
warn_after = "1h"
error_after = "2h"

[[steps]]
name = "tick"
kind = "sql"
sql = "SELECT 1"
cron = "0 3 * * *"
"""


async def test_config_check_refuses_exactly_what_the_agent_refuses(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A freshness column that is varchar: `config check` and the agent's start report the
    same problem, on the same line (one validation, checks/validation.py)."""
    from pipectl.agent.service import Agent

    path = write(tmp_path, database, VARCHAR_FRESHNESS)
    where = f"{path}:{line(path, 'session_id')}"
    problem = (
        f"{where}: checks.sessions_fresh.column: column public.improvement_sessions.session_id"
        " is character varying; expected a timestamp"
    )
    code, out, err = await cli(capsys, "config", "check", "--config", str(path))
    assert (code, out, err.splitlines()) == (2, "", [problem])

    agent = Agent(load_config(path, environ={}), name="validating")
    with pytest.raises(ConfigError) as refused:
        await agent.start()
    assert [str(p) for p in refused.value.problems] == [problem]


WINDOWED_UNIQUE = """
[[checks]]
name = "new_prompts_unique"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1h"
rule = { type = "unique", columns = ["prompt_id", "rule_id"] }
"""


async def test_config_check_warns_when_no_index_serves_a_windowed_key(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config is valid (exit 0), but each new key would be looked up by reading the whole
    table: `config check` says so, naming the check, the column and the index to create."""
    path = write(tmp_path, database, WINDOWED_UNIQUE)
    code, out, err = await cli(capsys, "config", "check", "--config", str(path))
    lines = out.splitlines()
    assert (code, err, len(lines)) == (0, "", 2)
    assert lines[0].startswith(f"{path}: ok (0 steps, 1 checks); catalog checked on ")
    assert lines[1] == (
        "warning: checks.new_prompts_unique.rule.columns[0]: public.rule_performance.prompt_id"
        " has no index, so this probe reads the whole table; consider CREATE INDEX ON"
        ' "public"."rule_performance" ("prompt_id", "created_at"), which makes it an index'
        " lookup per new key"
    )

    conn = await asyncpg.connect(database)
    try:
        await conn.execute("CREATE INDEX ON public.rule_performance (prompt_id)")
    finally:
        await conn.close()
    code, out, err = await cli(capsys, "config", "check", "--config", str(path))
    assert (code, err, len(out.splitlines())) == (0, "", 1)
