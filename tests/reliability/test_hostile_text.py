"""Issue 13 §1 on the command line and in the logs: text from the database is data. The hostile
corpus (hostile_text.py) in every field; every verb that prints runs in text mode, plain and on
a colour terminal: no traceback, no raw control character on stdout or stderr (our SGR styling
aside), no forged line, and each entry visible as literal text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from pipectl.cli import main
from pipectl.identifiers import quote_ident
from pipectl.logs import setup_logging
from tests.reliability.conftest import as_user
from tests.reliability.hostile_text import (
    BY_KEY,
    CORPUS,
    HOSTILE_NAME,
    HOSTILE_NAME_NEEDLE,
    OUTCOME,
    OUTCOME_NEEDLES,
    forged_lines,
    raw_controls,
    seed_hostile,
)

ALL_NEEDLES = [h.needle for h in CORPUS]
# Several fields hold 1 MiB each: what is printed stays small.
MAX_OUTPUT = 200_000

# Reachable through the config file too (TOML escapes), where NUL is possible: the database
# refuses NUL in text and jsonb.
CONFIG_ONLY = ("nul", "nul\x00byte", "nul\\x00byte")


def toml_string(text: str) -> str:
    """A TOML basic string holding `text` exactly: the controls TOML refuses raw as escapes,
    anything else (C1, bidi, emoji) as it is."""
    escaped = re.sub(r'[\x00-\x1f\x7f"\\]', lambda m: f"\\u{ord(m.group()):04x}", text)
    return f'"{escaped}"'


def quality_checks() -> str:
    """One check per entry whose custom rule calls a function someone else wrote, which raises
    the entry as its error message (SQLSTATE 42000, a class pipectl quotes)."""
    return "".join(
        f"""
[[checks]]
name = "q_{h.key}"
kind = "quality"
table = "public.rule_performance"
time_column = "created_at"
window = "1d"
rule = {{ type = "custom", sql = "SELECT public.hostile_violations({index})" }}
"""
        for index, h in enumerate(CORPUS)
    )


def described_steps() -> str:
    """Config values are shown by `config show`: a step per entry, described by it."""
    entries = [(h.key, h.raw) for h in CORPUS if h.key != "huge"] + [CONFIG_ONLY[:2]]
    return "".join(
        f"""
[[steps]]
name = "d_{key}"
kind = "sql"
sql = "SELECT 1"
description = {toml_string(raw)}
"""
        for key, raw in entries
    )


@pytest.fixture
async def hostile_database(database: str) -> str:
    conn = await asyncpg.connect(database)
    try:
        await seed_hostile(conn, datetime.now(UTC))
        await conn.execute("CREATE TABLE public.hostile_corpus (id int PRIMARY KEY, t text)")
        await conn.executemany(
            "INSERT INTO public.hostile_corpus VALUES ($1, $2)",
            [(index, h.raw) for index, h in enumerate(CORPUS)],
        )
        await conn.execute(
            """
            CREATE FUNCTION public.hostile_violations(k int) RETURNS bigint
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING ERRCODE = '42000',
                    MESSAGE = (SELECT t FROM public.hostile_corpus WHERE id = k);
            END $$
            """
        )
    finally:
        await conn.close()
    return database


@pytest.fixture
def config_file(tmp_path: Path, hostile_database: str) -> Path:
    # The folder's name is markup too: `config check` prints the path.
    folder = tmp_path / "[bold]cfg [red]dir"
    folder.mkdir()
    path = folder / "pipectl.toml"
    path.write_text(
        f'[database]\ndsn = "{hostile_database}"\n' + quality_checks() + described_steps()
    )
    return path


@pytest.fixture(params=["plain", "colour"])
def terminal(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Piped output, and a colour terminal (where our own styling is SGR sequences). Wide
    enough that Rich does not wrap a cell, so each entry reads on one line."""
    monkeypatch.setenv("COLUMNS", "400")
    if request.param == "colour":
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("TERM", "xterm-256color")
    return str(request.param)


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    for stream in (out, err):
        assert raw_controls(stream) == [], (args, raw_controls(stream)[:5])
        assert forged_lines(stream) == [], args
        assert len(stream) < MAX_OUTPUT, (args, len(stream))
    return code, out, err


def assert_visible(text: str, needles: list[str]) -> None:
    missing = [needle for needle in needles if needle not in text]
    assert missing == [], f"not shown as literal text: {missing}"


async def test_status_history_and_errors(
    capsys: pytest.CaptureFixture[str], config_file: Path, terminal: str
) -> None:
    config = ("--config", str(config_file))
    code, out, err = await cli(capsys, "status", *config)
    assert code == 2 and out, err
    # Notes (paused reasons, errors), check messages, agent names.
    assert_visible(out, [*ALL_NEEDLES, HOSTILE_NAME_NEEDLE, "[/] stray"])
    assert ":warning: :skull:" in out, "emoji codes are printed as typed"
    tables = out[out.index("Steps") :]  # after the incidents, which quote them too
    for entry in CORPUS:
        # Each paused step's reason and each failing step's error, on its own row.
        rows = [line for line in tables.splitlines() if f"_{entry.key} " in line]
        assert len(rows) >= 2 and all(entry.needle in row for row in rows[:2]), entry.key

    code, out, _ = await cli(capsys, "history", "--limit", "100", *config)
    assert code == 0
    assert_visible(out, [*ALL_NEEDLES, HOSTILE_NAME_NEEDLE])

    code, out, _ = await cli(capsys, "history", "p_osc_title", *config)
    assert code == 0 and BY_KEY["osc_title"].needle in out

    # An error that quotes names from the database: the known steps are listed.
    code, out, err = await cli(capsys, "history", "no_such_step", *config)
    assert code == 2 and "unknown step 'no_such_step'" in err
    assert HOSTILE_NAME_NEEDLE in err


async def test_check_and_config(
    capsys: pytest.CaptureFixture[str], config_file: Path, terminal: str
) -> None:
    config = ("--config", str(config_file))
    code, out, _ = await cli(capsys, "check", *config)
    assert code == 2, out
    # The function's message is the probe's error: its first line as Python splits lines
    # (checks/engine.py; a CR or NEL ends it there), quoted literally.
    first_lines = {"c1": "c1 \\x9b31m csi", "carriage_return": "progress 10%"}
    assert_visible(out, [first_lines.get(h.key, h.needle) for h in CORPUS])

    code, out, _ = await cli(capsys, "config", "show", *config)
    assert code == 0
    needles = [h.needle for h in CORPUS if h.key != "huge"] + [CONFIG_ONLY[2]]
    assert_visible(out, [*needles, "[bold]cfg [red]dir"])

    code, out, _ = await cli(capsys, "config", "check", *config)
    assert code == 0 and "[bold]cfg [red]dir" in out


async def test_requests_as_a_hostile_login(
    capsys: pytest.CaptureFixture[str],
    config_file: Path,
    hostile_database: str,
    terminal: str,
    tmp_path: Path,
) -> None:
    """`rerun` says who filed it (the database's session_user, whatever the role is called)
    and, with --wait, the outcome's detail that the agent wrote."""
    role = f"pipectl_t_{uuid.uuid4().hex[:8]}[/]\x1b]0;t\x07\u202e"
    admin = await asyncpg.connect(hostile_database)
    try:
        await admin.execute(f"CREATE ROLE {quote_ident(role)} LOGIN IN ROLE pipectl_operator")
        operator = tmp_path / "operator.toml"
        operator.write_text(
            f'[database]\ndsn = "{as_user(hostile_database, quote(role, safe=""))}"\n'
        )
        code, out, _ = await cli(capsys, "rerun", "p_bold", "--config", str(operator))
        assert code == 0
        assert f"{role[:18]}[/]\\x1b]0;t\\x07\\u202e" in out, out

        first = await admin.fetchval("SELECT max(id) FROM pipectl.requests")
        waiting = asyncio.create_task(
            asyncio.to_thread(
                main, ["rerun", "p_bold", "--wait", "--timeout", "60", "--config", str(operator)]
            )
        )
        request_id = None
        while request_id is None:
            await asyncio.sleep(0.05)
            request_id = await admin.fetchval(
                "SELECT id FROM pipectl.requests WHERE id > $1", first
            )
        await admin.execute(
            "UPDATE pipectl.requests SET claimed_at = now(), done_at = now(),"
            " outcome = 'failed', detail = $2 WHERE id = $1",
            request_id,
            OUTCOME,
        )
        assert await waiting == 2
        out, err = capsys.readouterr()
        for stream in (out, err):
            assert raw_controls(stream) == [] and forged_lines(stream) == []
        assert_visible(out, list(OUTCOME_NEEDLES))
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")
        await admin.close()


def test_text_logs_quote_and_json_logs_keep_the_corpus() -> None:
    """A text log has one line per record: a request target with a newline cannot forge one,
    an escape sequence cannot reach the terminal, a traceback is indented under its record.
    JSON logs carry the text exactly (JSON escapes it)."""
    log = logging.getLogger("pipectl.agent.requests")
    for fmt in ("text", "json"):
        stream = io.StringIO()
        setup_logging("info", fmt, stream)  # type: ignore[arg-type]
        for entry in CORPUS:
            log.info("request %s for %s done", 7, entry.raw, extra={"target": entry.raw})
        try:
            raise RuntimeError(BY_KEY["newline"].raw + BY_KEY["osc_title"].raw)
        except RuntimeError:
            log.exception("step %s failed", HOSTILE_NAME)
        output = stream.getvalue()
        lines = output.splitlines()
        if fmt == "json":
            records = [json.loads(line) for line in lines]
            assert [r["target"] for r in records[: len(CORPUS)]] == [h.raw for h in CORPUS]
            assert HOSTILE_NAME in records[-1]["msg"] and "forged" in records[-1]["exc"]
            continue
        assert raw_controls(output) == []
        # A record starts at the first column; the traceback's lines (the exception's message
        # with its newline among them) are indented under it.
        records = [line for line in lines if not line.startswith(" ")]
        assert not any(line.startswith("12:00:00 INFO") for line in records)
        assert len(records) == len(CORPUS) + 1, "one line per record, tracebacks indented"
        for entry, line in zip(CORPUS, records, strict=False):
            # In the message and in the `target=` extra; a 1 MiB value is cut in both.
            assert line.count(entry.needle) == 2, (entry.key, line[:200])
            assert len(line) < 50_000
        assert HOSTILE_NAME_NEEDLE in records[-1]
    logging.getLogger().handlers.clear()
