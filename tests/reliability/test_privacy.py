"""Prompts and feedback are user data: pipectl keeps aggregates and counts, never row content.

The demo runs for a minute with data faults injected (NULLs, out-of-range values, a spike)
and every check is run once more on them. Then every text, varchar, array, json and jsonb
column of the pipectl schema, the agent's log and the printed status are searched for any
sample prompt and for the marker word each prompt carries (the simulator's prompts are made
up, and each marker occurs nowhere else): nothing is found. Errors quote no row values."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipectl.embedded import EmbeddedPostgres
from pipectl.model import RequestKind
from pipectl.simulator import PROMPT_MARKERS, SAMPLE_PROMPTS
from tests.agent.conftest import REPO, running_agent
from tests.reliability.support import connected, file_request, schema_text_hits, wait_request_done

NEEDLES = [*PROMPT_MARKERS, *SAMPLE_PROMPTS]


def _wait_line(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                return line
        assert process.poll() is None, path.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not printed within {timeout}s")


def _start_demo(state: Path, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as stdout:
        return subprocess.Popen(
            [sys.executable, "-m", "pipectl", "demo", "--headless", "--duration", "60",
             "--backfill-days", "2", "--seed", "11", "--state-dir", str(state), "--json"],
            cwd=REPO, stdout=stdout, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.slow
async def test_the_demo_stores_and_logs_no_prompt_text(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    out = tmp_path / "demo.out"
    demo = _start_demo(state, out)
    try:
        line = await asyncio.to_thread(_wait_line, out, "PIPECTL_DATABASE_URL=", demo, 180)
        dsn = line.split("PIPECTL_DATABASE_URL=", 1)[1].split()[0]
        env = {**os.environ, "PIPECTL_DATABASE_URL": dsn}
        for fault in (["nulls"], ["out_of_range"], ["spike", "--table", "user_feedback"]):
            injected = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "pipectl", "fault", "inject", *fault, "--for", "40s"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert injected.returncode == 0, injected.stderr
        await asyncio.sleep(25)
        # Every check once more while the faulty rows are there (quality runs each minute).
        async with connected(dsn) as conn:
            await conn.execute("INSERT INTO pipectl.requests (kind, target) VALUES ('check', '*')")
        assert await asyncio.to_thread(demo.wait, 240) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    printed = out.read_text(errors="replace")
    log = (state / "agent.log").read_text(errors="replace")
    assert "fault started: nulls" in log, "the faults must have reached the simulator"
    server = EmbeddedPostgres(state / "postgres")
    server.start()
    try:
        apes = server.dsn("apes")
        async with connected(apes) as conn:
            written = await conn.fetchval(
                "SELECT count(*) FROM user_feedback WHERE original_prompt = ANY($1)",
                list(SAMPLE_PROMPTS),
            )
            checked = await conn.fetchrow(
                "SELECT outcome, detail FROM pipectl.requests WHERE kind = 'check'"
            )
            runs = await conn.fetchval(
                "SELECT count(*) FROM pipectl.runs WHERE status = 'succeeded'"
            )
        assert written > 0, "the demo must have written prompts for the search to mean anything"
        assert checked["outcome"] == "succeeded", "every check ran on the faulty data"
        assert checked["detail"].startswith("26 checks ran: ")
        assert runs > 0
        assert await schema_text_hits(apes, NEEDLES) == []
    finally:
        server.stop()
    assert not [n for n in NEEDLES if n.lower() in log.lower()], "a prompt reached the log"
    assert not [n for n in NEEDLES if n.lower() in printed.lower()], "a prompt was printed"


async def test_errors_quote_no_row_values(database: str) -> None:
    """A step failing on a row's value records and logs what failed, not the value."""
    secret = PROMPT_MARKERS[0]
    async with connected(database) as conn:
        await conn.execute(
            "INSERT INTO user_feedback (original_prompt, improved_prompt, applied_rules)"
            " VALUES ($1, $1, '[]'), ($1, $1, '[]')",
            f"Please help {secret}",
        )
        await conn.execute("CREATE TABLE public.copies (prompt text UNIQUE)")
    body = """
[[steps]]
name = "cast_prompt"
kind = "sql"
sql = "SELECT original_prompt::int FROM user_feedback"

[[steps]]
name = "copy_prompts"
kind = "sql"
sql = "INSERT INTO public.copies SELECT original_prompt FROM user_feedback"

[[steps]]
name = "raise_prompt"
kind = "sql"
sql = "DO $$BEGIN RAISE EXCEPTION 'bad row: %', (SELECT original_prompt FROM user_feedback LIMIT 1); END$$"
"""  # noqa: E501
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    logging.getLogger().addHandler(handler)
    try:
        async with running_agent(database, body):
            for step in ("cast_prompt", "copy_prompts", "raise_prompt"):
                request = await file_request(database, RequestKind.RERUN, step)
                assert await wait_request_done(database, request.id) == "failed"
    finally:
        logging.getLogger().removeHandler(handler)
    async with connected(database) as conn:
        errors = dict(await conn.fetch("SELECT step, error FROM pipectl.runs"))
        details = [r["detail"] for r in await conn.fetch("SELECT detail FROM pipectl.requests")]
    assert errors == {
        "cast_prompt": "InvalidTextRepresentationError [22P02]",
        "copy_prompts": "UniqueViolationError [23505]: duplicate key value violates unique"
        ' constraint "copies_prompt_key"',
        "raise_prompt": "RaiseError [P0001]",
    }
    assert await schema_text_hits(database, [secret]) == []
    assert not [d for d in details if secret in (d or "")]
    assert not [r for r in records if secret in r]
