"""`pipectl check`: exit codes, JSON shape, human table, unknown names, read-only roles; it
publishes nothing and records only what a live agent publishes as it ran it; one check on a
missing table is that check's error, never the end of the report."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.agent.conftest import past_clock, running_agent
from tests.conftest import PgServer

CONFIG = """
[database]
dsn = "{dsn}"

[[checks]]
name = "fresh_rules"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "{warn}"
error_after = "{error}"

[[checks]]
name = "rule_ids_known"
kind = "quality"
table = "public.rule_performance"
[checks.rule]
type = "references"
column = "rule_id"
ref_table = "public.rule_metadata"
ref_column = "rule_id"
"""


MAIN = "import sys; from pipectl.cli import main; sys.exit(main(sys.argv[1:]))"


def pipectl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MAIN, "--config", str(config), "check", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def write_config(tmp_path: Path, dsn: str, warn: str = "10m", error: str = "1h") -> Path:
    path = tmp_path / "pipectl.toml"
    path.write_text(CONFIG.format(dsn=dsn, warn=warn, error=error))
    return path


def agent_body(warn: str = "10m", error: str = "1h") -> str:
    """The checks of CONFIG, for an in-process agent (which adds its own [database])."""
    return CONFIG.format(dsn="", warn=warn, error=error).split('dsn = ""', 1)[1]


async def add_row(dsn: str, minutes_old: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO public.rule_performance (rule_id, rule_name, created_at)"
            " VALUES ('clarity_rule', 'Clarity',"
            " (now() AT TIME ZONE 'UTC') - $1 * interval '1 minute')",
            minutes_old,
        )
    finally:
        await conn.close()


async def test_exit_codes_follow_the_worst_status_and_json_is_stable(
    database: str, tmp_path: Path
) -> None:
    await add_row(database, 2)
    ok = pipectl(write_config(tmp_path, database), "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert set(report) == {"checks", "scorecard"}
    assert [c["name"] for c in report["checks"]] == ["fresh_rules", "rule_ids_known"]
    first = report["checks"][0]
    assert list(first) == [
        "name",
        "kind",
        "status",
        "value",
        "expected_low",
        "expected_high",
        "message",
        "threshold",
        "observed_at",
    ]
    assert (first["kind"], first["status"]) == ("freshness", "ok")
    assert 100 <= first["value"] <= 200
    assert first["threshold"] == {"warn_after_s": 600.0, "error_after_s": 3600.0}
    assert report["scorecard"] == [
        {
            "table": "public.rule_performance",
            "completeness": None,
            "accuracy": None,
            "consistency": 1.0,
            "timeliness": 1.0,
            "target": 0.999,
            "below_target": [],
        }
    ]
    warn = pipectl(write_config(tmp_path, database, warn="1m"), "--json", "fresh_rules")
    assert warn.returncode == 1
    assert [c["status"] for c in json.loads(warn.stdout)["checks"]] == ["warn"]
    fail = pipectl(write_config(tmp_path, database, warn="10s", error="1m"))
    assert fail.returncode == 2
    assert "fresh_rules" in fail.stdout and "fail" in fail.stdout
    assert "data quality scorecard (target 99.9%)" in fail.stdout

    conn = await asyncpg.connect(database)
    try:
        # No agent publishes these checks: the verb neither publishes nor records them.
        assert await conn.fetchval("SELECT count(*) FROM pipectl.checks") == 0
        assert await conn.fetchval("SELECT count(*) FROM pipectl.check_results") == 0
    finally:
        await conn.close()
    assert (
        "no live agent publishes fresh_rules, rule_ids_known with this definition;"
        " their results are shown, not recorded" in fail.stderr
    )


async def test_results_are_recorded_only_for_what_a_live_agent_publishes_as_run(
    database: str, tmp_path: Path
) -> None:
    await add_row(database, 2)
    async with running_agent(database, agent_body(), serve=False, clock=past_clock()):
        same = pipectl(write_config(tmp_path, database), "--json")
        assert same.returncode == 0, same.stderr
        assert "not recorded" not in same.stderr
        other = pipectl(write_config(tmp_path, database, warn="10s", error="1m"), "--json")
        assert other.returncode == 2
        assert (
            "no live agent publishes fresh_rules with this definition;"
            " its result is shown, not recorded" in other.stderr
        )
        conn = await asyncpg.connect(database)
        try:
            stored = await conn.fetch(
                "SELECT check_name, status, trigger FROM pipectl.check_results ORDER BY id"
            )
            published = await conn.fetchval(
                "SELECT definition->>'warn_after' FROM pipectl.checks WHERE name = 'fresh_rules'"
            )
        finally:
            await conn.close()
    # The first run recorded both (their probes ran at the same time: either may come first);
    # the second only the check whose definition the agent publishes as run.
    assert sorted(tuple(r) for r in stored[:2]) == [
        ("fresh_rules", "ok", "cli"),
        ("rule_ids_known", "ok", "cli"),
    ]
    assert [tuple(r) for r in stored[2:]] == [("rule_ids_known", "ok", "cli")]
    assert published == "10m", "the verb changed nothing the agent published"


async def test_a_missing_table_is_that_checks_error_and_the_others_still_run(
    database: str, tmp_path: Path
) -> None:
    await add_row(database, 2)
    path = write_config(tmp_path, database)
    text = path.read_text().replace(
        'name = "rule_ids_known"\nkind = "quality"\ntable = "public.rule_performance"',
        'name = "rule_ids_known"\nkind = "quality"\ntable = "public.discovered_patternz"',
    )
    assert "discovered_patternz" in text
    path.write_text(text)
    done = pipectl(path, "--json")
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["fresh_rules"]["status"] == "ok"
    assert by_name["rule_ids_known"]["status"] == "error"
    line = text.splitlines().index('table = "public.discovered_patternz"') + 1
    assert by_name["rule_ids_known"]["message"] == (
        f"{path}:{line}: checks.rule_ids_known.table:"
        " public.discovered_patternz does not exist (or is not visible)"
    )
    table = pipectl(path)
    assert table.returncode == 2
    assert "discovered_patternz does not exist" in table.stdout.replace("\n", " ")


def test_an_unknown_name_lists_the_valid_ones(database: str, tmp_path: Path) -> None:
    done = pipectl(write_config(tmp_path, database), "fresh_rule")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "pipectl: unknown check 'fresh_rule'; valid names: fresh_rules, rule_ids_known"
    )


def test_a_wrong_column_is_an_error_naming_the_check_and_its_line(
    database: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path, database)
    path.write_text(path.read_text().replace('column = "created_at"', 'column = "created"'))
    line = path.read_text().splitlines().index('column = "created"') + 1
    done = pipectl(path, "--json")
    assert done.returncode == 2
    (checked,) = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "fresh_rules"]
    assert checked["status"] == "error"
    assert checked["message"].startswith(
        f"{path}:{line}: checks.fresh_rules.column: column 'created' does not exist"
    )


@asynccontextmanager
async def viewer_role(
    database: str, pg_server: PgServer, *grants: str
) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A login role in pipectl_viewer (plus `grants`, each "PRIVILEGES ON object"): its DSN,
    and an admin connection to the same database; both dropped afterwards."""
    role = f"pipectl_t_viewer_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE pipectl_viewer')
        await admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        for grant in grants:
            await admin.execute(f'GRANT {grant} TO "{role}"')
        parts = urlsplit(database)
        yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}")), admin
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.close()
        server = await asyncpg.connect(pg_server.dsn)
        try:
            await server.execute(f'DROP ROLE "{role}"')
        finally:
            await server.close()


async def test_a_read_only_role_gets_the_report_without_recording(
    database: str, pg_server: PgServer, tmp_path: Path
) -> None:
    async with viewer_role(database, pg_server) as (as_viewer, admin):
        await add_row(database, 1)
        done = pipectl(write_config(tmp_path, as_viewer), "--json")
        assert done.returncode == 0, done.stderr
        assert "results are shown, not recorded" in done.stderr
        assert [c["status"] for c in json.loads(done.stdout)["checks"]] == ["ok", "ok"]
        assert await admin.fetchval("SELECT count(*) FROM pipectl.check_results") == 0


async def test_a_role_that_may_not_record_is_told_once(
    database: str, pg_server: PgServer, tmp_path: Path
) -> None:
    """An agent publishes both checks; both probes finish and are refused at recording: the
    note comes once, the report whole, and nothing is half-written."""
    async with (
        running_agent(database, agent_body(), serve=False, clock=past_clock()),
        viewer_role(database, pg_server) as (as_role, admin),
    ):
        await add_row(database, 1)
        done = pipectl(write_config(tmp_path, as_role), "--json")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("may not record results") == 1, done.stderr
        assert "no live agent publishes" not in done.stderr
        assert [c["status"] for c in json.loads(done.stdout)["checks"]] == ["ok", "ok"]
        assert await admin.fetchval("SELECT count(*) FROM pipectl.check_results") == 0
