"""`pipectl simulate`: the APES simulator against a database the user names, with messages
(never tracebacks) for a dead server or a database without the APES schema, faults from the
start, and a clean stop on Ctrl+C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import wait_for
from tests.test_cli_ops import cli

REPO = Path(__file__).resolve().parents[1]


async def test_a_dead_server_is_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli(capsys, "simulate", "--dsn", "postgresql://postgres@127.0.0.1:1/x")
    assert code == 3
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/x" in err
    assert "connection refused" in err and "Traceback" not in err


async def test_no_database_named_is_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPECTL_DATABASE_URL", raising=False)
    code, _, err = await cli(capsys, "simulate")
    assert code == 2 and "--dsn URL or $PIPECTL_DATABASE_URL" in err


async def test_a_database_without_the_apes_schema_is_refused_with_the_way_out(
    capsys: pytest.CaptureFixture[str], empty_database: str
) -> None:
    code, _, err = await cli(capsys, "simulate", "--dsn", empty_database, "--duration", "1")
    assert code == 2
    assert "has no APES tables" in err and "--create-schema" in err and "Traceback" not in err
    conn = await asyncpg.connect(empty_database)
    try:  # nothing was created
        assert await conn.fetchval("SELECT to_regclass('public.rule_performance')") is None
    finally:
        await conn.close()


async def test_bad_faults_are_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = ("--dsn", "postgresql://postgres@127.0.0.1:1/x")
    for fault, said in (
        ("nope", "unknown fault 'nope'"),
        ("spike:factor=x", "factor: expected a number"),
        ("stall:table", "expected key=value"),
        ("lock@-5m", "argument --fault"),
    ):
        code, _, err = await cli(capsys, "simulate", *dsn, "--fault", fault)
        assert code == 2 and said in err, (fault, err)


def _ctrl_c_default() -> None:
    """A shell without job control starts children with SIGINT ignored: give it back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        preexec_fn=_ctrl_c_default,
    )


async def test_simulate_backfills_writes_live_with_a_fault_and_stops_on_ctrl_c(
    empty_database: str,
) -> None:
    argv = [
        sys.executable, "-m", "pipectl", "simulate", "--dsn", empty_database,
        "--create-schema", "--backfill", "1", "--speed", "100", "--steady", "--seed", "3",
        "--fault", "stall:table=user_feedback",
    ]  # fmt: skip
    process = await asyncio.to_thread(_start, argv)
    conn = await asyncpg.connect(empty_database)
    try:

        async def history() -> int:
            if not await conn.fetchval("SELECT to_regclass('public.rule_performance') IS NOT NULL"):
                return 0
            old = await conn.fetchval(
                "SELECT count(*) FROM rule_performance"
                " WHERE created_at < (now() AT TIME ZONE 'UTC') - interval '2 hours'"
            )
            return int(await conn.fetchval("SELECT count(*) FROM rule_performance")) if old else 0

        loaded = await wait_for(history, timeout=180)

        async def live_rows() -> bool:
            return int(await conn.fetchval("SELECT count(*) FROM rule_performance")) > loaded

        await wait_for(live_rows, timeout=120)
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        await conn.close()
    assert process.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert "history: " in err and "rows of 1 day in" in err
    assert "at 100x, steadily at the weekday peak; no cache traffic" in err
    assert "fault stall (table=user_feedback) until stopped" in err
    summary = err.split("stopped after")[-1]
    assert "rule_performance" in summary
    assert "user_feedback" not in summary  # stalled from the first live tick
