"""Hostile names and values from config and the command line: refused with a located
message, or quoted / bound; proven by a canary table that a `; DROP TABLE canary` would
drop (same oid, same row afterwards) and by the server's statement log, where the text only
ever appears as a bound parameter or inside a quoted identifier."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipectl.embedded import EmbeddedPostgres
from tests.agent.conftest import REPO
from tests.reliability.support import FRESHNESS_CHECK, connected

pytestmark = pytest.mark.slow

DROP = "DROP TABLE public.canary"
HOSTILE = [
    f"x'; {DROP}; --",
    f'x"; {DROP}; --',
    f"x/* */; {DROP}",
    f"ünïcødé ☃ $$; {DROP}; $$",
    f"\u202eevil; {DROP}",
    "y" * 250 + f"; {DROP}",
    f"tab\t; {DROP}",
]


async def _arm(server: EmbeddedPostgres) -> int:
    """The canary, and every statement logged from now on; returns the canary's oid."""
    async with connected(server.dsn()) as conn:
        await conn.execute(
            "CREATE TABLE public.canary (alive text); INSERT INTO canary VALUES ('yes')"
        )
        await conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        await conn.execute("SELECT pg_reload_conf()")
        oid: int = await conn.fetchval("SELECT 'public.canary'::regclass::oid")
    return oid


async def _canary_intact(server: EmbeddedPostgres, oid: int) -> None:
    async with connected(server.dsn()) as conn:
        assert await conn.fetchval("SELECT to_regclass('public.canary')::oid") == oid
        assert await conn.fetch("SELECT alive FROM public.canary") == [("yes",)]


_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d ", re.MULTILINE)
_QUOTED_IDENT = re.compile(r'"(?:[^"]|"")*"')
_PARAMETERS = re.compile(r"DETAIL:\s+parameters:", re.IGNORECASE)


def _statement_log_proof(server: EmbeddedPostgres) -> int:
    """Every logged statement that carries the hostile text carries it as a bound
    parameter or a quoted identifier, never as SQL. Returns how many entries carried it."""
    text = server.log_path.read_text(errors="replace")
    entries = [e for e in _ENTRY.split(text) if "DROP TABLE public.canary" in e]
    for entry in entries:
        if _PARAMETERS.search(entry):
            continue  # sent as a bound value
        statement = entry
        if "STATEMENT:" in statement:  # an error report quoting the statement it failed on
            statement = statement.split("STATEMENT:", 1)[1]
        elif "ERROR:" in statement:
            continue
        naked = _QUOTED_IDENT.sub('""', statement)
        assert "DROP TABLE" not in naked, f"hostile text reached SQL as code:\n{entry}"
    return len(entries)


def _pipectl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipectl", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


STEP = """
[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"
"""

CHECK = FRESHNESS_CHECK


async def test_hostile_names_on_the_command_line_execute_nothing(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    oid = await _arm(own_postgres)
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{own_postgres.dsn()}"\n' + STEP + CHECK)
    once = await asyncio.to_thread(_pipectl, config, "agent", "--once")
    assert once.returncode == 0, once.stderr
    verbs = [["rerun", n] for n in HOSTILE] + [["silence", n, "--for", "1h"] for n in HOSTILE]
    name = HOSTILE[0]
    verbs += [
        ["pause", name, "--reason", "r"],
        ["resume", name],
        ["history", name],
        ["unsilence", name],
    ]
    for verb in verbs:
        done = await asyncio.to_thread(_pipectl, config, *verb)
        assert done.returncode == 2, (verb, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("pipectl: unknown ") or "too long" in done.stderr
    for reason in HOSTILE:
        filed = await asyncio.to_thread(
            _pipectl, config, "rerun", "rule_effectiveness_summary", "--reason", reason, "--json"
        )
        assert filed.returncode == 0, filed.stderr
    too_long = await asyncio.to_thread(
        _pipectl, config, "rerun", "rule_effectiveness_summary", "--reason", "x" * 2001
    )
    assert too_long.returncode == 2
    assert "argument --reason: too long (2001 characters; at most 2000)" in too_long.stderr
    raw = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipectl", "--config", str(config), "rerun", b"\xff\xfe; DROP"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert raw.returncode == 2
    assert "argument step: not valid UTF-8 text" in raw.stderr
    async with connected(own_postgres.dsn()) as conn:
        reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM pipectl.requests")]
    assert sorted(reasons) == sorted(HOSTILE), "reasons are stored verbatim, as data"
    await _canary_intact(own_postgres, oid)
    assert _statement_log_proof(own_postgres) >= len(HOSTILE)


BAD_RELATIONS = [
    (f"public.x; {DROP}", "unexpected '; DROP TABLE public.canary'"),
    ("public.x -- comment", "unexpected"),
    ("public.x /* c */", "unexpected"),
    ("public.ünïcødé", "is not a table name"),
    ("public." + "a" * 64, "longer than 63"),
    ('public."' + "é" * 40 + '"', "longer than 63 bytes"),
    ('public."unterminated', "unterminated quoted identifier"),
]


def test_hostile_relation_names_in_config_are_refused_with_their_line(tmp_path: Path) -> None:
    for relation, reason in BAD_RELATIONS:
        config = tmp_path / "bad.toml"
        escaped = relation.replace("\\", "\\\\").replace('"', '\\"')
        config.write_text(STEP.replace('"public.rule_effectiveness_summary"', f'"{escaped}"'))
        done = _pipectl(config, "config", "check")
        assert done.returncode == 2, (relation, done.stdout)
        assert done.stderr.startswith(f"{config}:5: steps.rule_effectiveness_summary.relation: ")
        assert reason in done.stderr, (relation, done.stderr)
        assert "Traceback" not in done.stderr


async def test_hostile_but_quoted_names_and_values_are_used_safely(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A summary whose name is an injection attempt refreshes fine (quoted), a filter value
    that is one is sent as a parameter: the canary lives, the statement log agrees."""
    oid = await _arm(own_postgres)
    evil = f'x"; {DROP}; --'
    quoted = '"' + evil.replace('"', '""') + '"'
    async with connected(own_postgres.dsn()) as conn:
        await conn.execute(
            f"CREATE MATERIALIZED VIEW public.{quoted} AS SELECT rule_id, count(*) AS n"
            " FROM rule_performance GROUP BY rule_id;"
            f"CREATE UNIQUE INDEX ON public.{quoted} (rule_id)"
        )
    relation = ("public." + quoted).replace("\\", "\\\\").replace('"', '\\"')
    value = f"x'; {DROP}; --".replace('"', '\\"')
    config = tmp_path / "pipectl.toml"
    config.write_text(
        f'[database]\ndsn = "{own_postgres.dsn()}"\n'
        f'[[steps]]\nname = "evil"\nkind = "matview"\nrelation = "{relation}"\n'
        f"""
[[checks]]
name = "evil_filter"
kind = "metric"
table = "public.rule_performance"
time_column = "created_at"
aggregate = "count"
where = [{{ column = "rule_id", op = "=", value = "{value}" }}]
"""
    )
    check = await asyncio.to_thread(_pipectl, config, "config", "check")
    assert check.returncode == 0, check.stderr
    once = await asyncio.to_thread(_pipectl, config, "agent", "--once")
    assert once.returncode == 0, once.stderr
    async with connected(own_postgres.dsn()) as conn:
        run = await conn.fetchrow("SELECT status, rows FROM pipectl.runs WHERE step = 'evil'")
        result = await conn.fetchrow(
            "SELECT status, value FROM pipectl.check_results WHERE check_name = 'evil_filter'"
        )
        expected = await conn.fetchval(f"SELECT count(*) FROM public.{quoted}")
    assert run["status"] == "succeeded" and run["rows"] == expected
    assert result["value"] == 0
    await _canary_intact(own_postgres, oid)
    assert _statement_log_proof(own_postgres) >= 2
