"""Issue 15's CLI papercuts: a mistyped verb gets a suggestion, `pause` needs a reason, piped
output is never cut, `history` says who and why, and filing a request says whether an agent
is alive to take it. Run in-process through `pipectl.cli.main` against a real database."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.console.seed import AGENT_ID
from tests.test_cli_ops import cli

LONG_ERROR = (
    "could not obtain lock on relation rule_effectiveness_summary because another session "
    "(pid 4242, application nightly_export) held it for longer than the lock_timeout of the "
    "step, which is twelve seconds; the run will be retried at the next tick"
)
LONG_STEP = "rule_effectiveness_summary_rebuilt_every_night_for_the_quarterly_report_of_the_team"


@pytest.fixture
def config_file(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{database}"\n')
    return path


async def test_a_mistyped_verb_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli(capsys, "stauts")
    assert code == 2
    assert "invalid choice: 'stauts' (did you mean 'status'?)" in err
    code, _, err = await cli(capsys, "fault", "injetc", "stall")
    assert code == 2 and "(did you mean 'inject'?)" in err
    code, _, err = await cli(capsys, "zzzz")
    assert code == 2 and "did you mean" not in err and "choose from 'status'" in err


async def test_pause_requires_a_reason(
    capsys: pytest.CaptureFixture[str], config_file: Path, database: str
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s1', 'sql')")
        config = ("--config", str(config_file))
        code, _, err = await cli(capsys, "pause", "s1", *config)
        assert code == 2 and "the following arguments are required: --reason" in err
        code, _, err = await cli(capsys, "pause", "s1", "--reason", "  ", *config)
        assert code == 2 and "an empty reason" in err
        assert await conn.fetchval("SELECT count(*) FROM pipectl.requests") == 0
        code, out, _ = await cli(capsys, "pause", "s1", "--reason", "INC-9 upstream", *config)
        assert code == 0 and "filed: pause s1" in out
        code, _, _ = await cli(capsys, "resume", "s1", *config)  # resuming needs no reason
        assert code == 0
        reasons = await conn.fetch("SELECT kind, reason FROM pipectl.requests ORDER BY id")
        assert [tuple(r) for r in reasons] == [("pause", "INC-9 upstream"), ("resume", "")]
    finally:
        await conn.close()


async def test_piped_status_and_history_keep_every_word(
    capsys: pytest.CaptureFixture[str], config_file: Path, database: str
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ($1, 'sql')", LONG_STEP)
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, started_at, finished_at, error)"
            " VALUES ($1, 'schedule', 'failed', now(), now(), $2)",
            LONG_STEP,
            LONG_ERROR,
        )
    finally:
        await conn.close()
    for verb in ("status", "history"):
        code, out, _ = await cli(capsys, verb, "--config", str(config_file))
        assert code in (0, 2)
        lines = out.splitlines()
        # Whole, on one line each: nothing cut with an ellipsis, nothing folded.
        assert any(LONG_STEP in line and LONG_ERROR in line for line in lines), out
        assert "…" not in out and "\x1b[" not in out


async def test_history_text_says_who_asked_and_why(
    capsys: pytest.CaptureFixture[str], config_file: Path, database: str
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s1', 'sql')")
        request_id = await conn.fetchval(
            "INSERT INTO pipectl.requests (kind, target, reason, requested_by)"
            " VALUES ('rerun', 's1', 'numbers look stale for the Monday report', 'alice')"
            " RETURNING id"
        )
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, started_at, finished_at,"
            " requested_by, request_id) VALUES ('s1', 'manual', 'succeeded', now(), now(),"
            " 'alice', $1)",
            request_id,
        )
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, started_at, finished_at)"
            " VALUES ('s1', 'schedule', 'succeeded', now(), now())"
        )
    finally:
        await conn.close()
    config = ("--config", str(config_file))
    code, out, _ = await cli(capsys, "history", *config)
    assert code == 0
    header, *rows = out.splitlines()
    (manual,) = [row for row in rows if "manual" in row]
    (scheduled,) = [row for row in rows if "schedule" in row]
    assert "by" in header.split() and "reason" in header.split()
    assert "alice" in manual and "numbers look stale for the Monday report" in manual
    assert "alice" not in scheduled
    code, data, _ = await cli(capsys, "history", "--json", *config)
    assert [(r["requested_by"], r["reason"]) for r in data] == [
        (None, None),
        ("alice", "numbers look stale for the Monday report"),
    ]


async def test_a_request_says_whether_an_agent_is_alive_to_take_it(
    capsys: pytest.CaptureFixture[str], config_file: Path, database: str
) -> None:
    conn = await asyncpg.connect(database)
    config = ("--config", str(config_file))
    try:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s1', 'sql')")
        code, out, _ = await cli(capsys, "rerun", "s1", *config)
        assert code == 0 and "queued; no agent alive" in out and "at once" not in out
        code, data, _ = await cli(capsys, "rerun", "s1", "--json", *config)
        assert code == 0 and data["agents_alive"] == 0 and data["state"] == "queued"
        # An agent that stopped is not alive either.
        await conn.execute(
            "INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds,"
            " stopped_at) VALUES ($1, 'gone', 'h', 1, 'v', 3600, now())",
            AGENT_ID,
        )
        code, out, _ = await cli(capsys, "rerun", "s1", *config)
        assert "queued; no agent alive" in out
        await conn.execute("UPDATE pipectl.agents SET stopped_at = NULL")
        code, out, _ = await cli(capsys, "rerun", "s1", *config)
        assert code == 0 and "an agent picks it up at once" in out
    finally:
        await conn.close()
