"""The one-shot verbs' contract for scripts: JSON shapes and exit codes, run in-process through
`pipectl.cli.main` against a real database (and a real agent for the write verbs)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl.cli import main
from tests.agent.conftest import running_agent, steps_toml
from tests.console.seed import AGENT_ID, CHECK_TOML

FAILING_STEP = """
[[steps]]
name = "broken_rollup"
kind = "sql"
sql = "SELECT 1 / 0"
retries = 0
"""


@pytest.fixture
def config_file(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{database}"\n' + steps_toml() + CHECK_TOML + FAILING_STEP)
    return path


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run `pipectl ARGS` in a thread (it runs its own event loop); returns the exit code,
    stdout (parsed when JSON) and stderr."""
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except ValueError:
        return code, out, err


async def add_state(db: asyncpg.Connection, check_status: str) -> None:
    """One live agent, one step that succeeded, one check with the given status."""
    await db.execute(
        "INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds)"
        " VALUES ($1, 'a1', 'h', 1, 'v', 3600)",
        AGENT_ID,
    )
    await db.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s1', 'sql')")
    await db.execute(
        "INSERT INTO pipectl.runs (step, trigger, status, started_at, finished_at, rows, agent_id)"
        " VALUES ('s1', 'manual', 'succeeded', now(), now(), 3, $1)",
        AGENT_ID,
    )
    await db.execute(
        "INSERT INTO pipectl.checks (name, kind, status, last_value) VALUES ('c1', 'volume', $1,"
        " 42)",
        check_status,
    )


@pytest.mark.parametrize(("check_status", "code"), [("ok", 0), ("warn", 1), ("fail", 2)])
async def test_status_json_and_exit_code_by_worst_state(
    capsys: pytest.CaptureFixture[str],
    config_file: Path,
    database: str,
    check_status: str,
    code: int,
) -> None:
    db = await asyncpg.connect(database)
    try:
        await add_state(db, check_status)
    finally:
        await db.close()
    exit_code, data, _ = await cli(capsys, "status", "--json", "--config", str(config_file))
    assert exit_code == code
    assert data["status"] == check_status
    assert data["steps"] == [data["steps"][0]] and data["steps"][0]["name"] == "s1"
    assert data["steps"][0]["status"] == "ok"
    assert (
        data["checks"][0] | {"name": "c1", "status": check_status, "value": 42.0}
        == (data["checks"][0])
    )
    exit_code, text, _ = await cli(capsys, "status", "--config", str(config_file))
    assert exit_code == code
    assert "\x1b[" not in text, "no colour codes when not a terminal"
    assert "s1" in text and "c1" in text


async def test_status_when_the_database_is_unreachable_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "down.toml"
    path.write_text('[database]\ndsn = "postgresql://postgres@127.0.0.1:1/x"\n')
    exit_code, _, err = await cli(capsys, "status", "--json", "--config", str(path))
    assert exit_code == 3
    assert "cannot connect" in err and "Traceback" not in err


async def test_write_verbs_wait_for_the_agent_and_exit_by_outcome(
    capsys: pytest.CaptureFixture[str], config_file: Path, database: str
) -> None:
    body = steps_toml() + CHECK_TOML + FAILING_STEP
    conn = await asyncpg.connect(database)
    try:
        async with running_agent(database, body):
            await conn.execute(
                "INSERT INTO pipectl.checks (name, kind) VALUES ('feedback_fresh', 'freshness')"
            )
            config = ("--config", str(config_file))
            code, data, _ = await cli(
                capsys,
                "rerun", "rule_effectiveness_summary", "--downstream", "--reason", "stale",
                "--wait", "--json", *config,
            )  # fmt: skip
            assert code == 0
            assert data["outcome"] == "succeeded" and data["state"] == "succeeded"
            assert data["args"] == {"downstream": True} and data["reason"] == "stale"

            code, data, _ = await cli(capsys, "rerun", "broken_rollup", "--wait", "--json", *config)
            assert code == 2
            assert data["outcome"] == "failed" and "DivisionByZeroError [22012]" in data["detail"]

            code, _, err = await cli(capsys, "rerun", "nope", "--wait", *config)
            assert code == 2 and "unknown step 'nope'" in err

            code, data, _ = await cli(
                capsys, "pause", "user_satisfaction_summary", "--reason", "r", "--wait", "--json",
                *config,
            )  # fmt: skip
            assert code == 0 and data["outcome"] == "succeeded"
            paused = await conn.fetchval(
                "SELECT paused FROM pipectl.steps WHERE name = 'user_satisfaction_summary'"
            )
            assert paused is True
            code, _, _ = await cli(capsys, "resume", "user_satisfaction_summary", "--wait", *config)
            assert code == 0
            paused = await conn.fetchval(
                "SELECT paused FROM pipectl.steps WHERE name = 'user_satisfaction_summary'"
            )
            assert paused is False

            code, data, _ = await cli(
                capsys, "silence", "feedback_fresh", "--for", "2h", "--reason", "INC-1",
                "--wait", "--json", *config,
            )  # fmt: skip
            assert code == 0 and data["args"] == {"seconds": 7200.0}
            row = await conn.fetchrow(
                "SELECT silenced_until, silence_reason FROM pipectl.checks"
                " WHERE name = 'feedback_fresh'"
            )
            filed = await conn.fetchval(
                "SELECT created_at FROM pipectl.requests WHERE kind = 'silence'"
            )
            assert row["silenced_until"] - filed == timedelta(hours=2)
            assert row["silence_reason"] == "INC-1"

            code, history, _ = await cli(
                capsys, "history", "rule_effectiveness_summary", "--limit", "5", "--json", *config
            )
            assert code == 0 and len(history) == 1
            run = history[0]
            assert {"step", "status", "trigger", "started_at", "finished_at", "agent", "error"} <= (
                set(run)
            )
            assert run["step"] == "rule_effectiveness_summary" and run["trigger"] == "manual"
            assert run["agent"] == "test-agent" and run["error"] is None
            code, history, _ = await cli(capsys, "history", "--json", *config)
            assert {r["step"] for r in history} == {
                "rule_effectiveness_summary",
                "user_satisfaction_summary",
                "broken_rollup",
            }
            assert next(r for r in history if r["step"] == "broken_rollup")["error"]
    finally:
        await conn.close()


async def test_rerun_wait_times_out_without_an_agent(
    capsys: pytest.CaptureFixture[str], config_file: Path, database: str
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s1', 'sql')")
    finally:
        await conn.close()
    code, data, _ = await cli(
        capsys, "rerun", "s1", "--wait", "--timeout", "0.5", "--json", "--config", str(config_file)
    )
    assert code == 3 and data["timed_out"] is True and data["state"] == "queued"


def test_no_verb_opens_the_console_with_the_config_and_read_only_flag(
    monkeypatch: pytest.MonkeyPatch, config_file: Path
) -> None:
    """`pipectl` runs the console App (its run() stubbed here: a terminal UI cannot run under
    pytest); a bad config is a message and exit 2, before Textual is even imported."""
    from pipectl.console.app import PipectlApp

    opened: list[PipectlApp] = []
    monkeypatch.setattr(PipectlApp, "run", lambda self: opened.append(self))
    assert main(["--read-only", "--config", str(config_file)]) == 0
    assert opened[0].forced_read_only and opened[0].config.database.dsn
    assert main(["--config", str(config_file)]) == 0
    assert not opened[1].forced_read_only


def test_no_verb_with_a_bad_config_is_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[database]\ndsnn = 'x'\n")
    assert main(["--config", str(path)]) == 2
    assert "dsnn" in capsys.readouterr().err
