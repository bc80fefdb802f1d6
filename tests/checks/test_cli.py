"""`pipectl check`: exit codes, JSON shape, human table, unknown names, read-only roles."""

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
        stored = await conn.fetch(
            "SELECT check_name, status, trigger FROM pipectl.check_results ORDER BY id"
        )
    finally:
        await conn.close()
    # The two probes ran at the same time: either may be recorded first.
    assert sorted(tuple(r) for r in stored[-2:]) == [
        ("fresh_rules", "fail", "cli"),
        ("rule_ids_known", "ok", "cli"),
    ]


def test_an_unknown_name_lists_the_valid_ones(database: str, tmp_path: Path) -> None:
    done = pipectl(write_config(tmp_path, database), "fresh_rule")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "pipectl: unknown check 'fresh_rule'; valid names: fresh_rules, rule_ids_known"
    )


def test_a_wrong_column_is_a_config_error_naming_the_check(database: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, database)
    path.write_text(path.read_text().replace('column = "created_at"', 'column = "created"'))
    done = pipectl(path)
    assert done.returncode == 2
    assert f"{path}: checks.fresh_rules.column: column 'created' does not exist" in done.stderr


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


async def test_a_role_that_may_publish_but_not_record_is_told_once(
    database: str, pg_server: PgServer, tmp_path: Path
) -> None:
    """Both probes finish and are refused at recording; the note comes once, the report
    whole, and nothing is half-written."""
    async with viewer_role(database, pg_server, "INSERT, UPDATE ON pipectl.checks") as (
        as_role,
        admin,
    ):
        await add_row(database, 1)
        done = pipectl(write_config(tmp_path, as_role), "--json")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("may not record results") == 1, done.stderr
        assert [c["status"] for c in json.loads(done.stdout)["checks"]] == ["ok", "ok"]
        assert await admin.fetchval("SELECT count(*) FROM pipectl.checks") == 2
        assert await admin.fetchval("SELECT count(*) FROM pipectl.check_results") == 0
