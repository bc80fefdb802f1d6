"""version: a change of alembic_version is a deploy, recorded as an event holding the old and
new version and every check's status just before it; `pipectl history --events` shows it."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.checks.version import VersionCheck, evaluate
from pipectl.cli import main
from pipectl.model import CheckStatus
from tests.checks.conftest import NOW
from tests.helpers import make_config

CHECKS = """
[[checks]]
name = "schema_version"
kind = "version"
notice_for = "10m"
hysteresis = 1

[[checks]]
name = "feedback_fresh"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
warn_after = "1h"
error_after = "2h"
"""


def test_defaults_watch_apes_alembic_version() -> None:
    check = VersionCheck.model_validate({"name": "v", "kind": "version"})
    assert (str(check.table), check.column, check.on_deploy) == (
        "public.alembic_version",
        "version_num",
        "warn",
    )
    first = evaluate(check, ["a1"], None, NOW)
    assert (first.status, first.message) == (CheckStatus.OK, "schema version a1 (first reading)")
    assert evaluate(check, [], None, NOW).status == CheckStatus.NODATA


async def test_a_deploy_is_an_event_with_the_checks_before_it(
    conn: asyncpg.Connection,
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = CheckEngine(make_config(database, None, CHECKS))
    await engine.validate(conn)
    await store.publish_checks(conn, engine.definitions(), None)
    at = NOW

    async def run(name: str) -> CheckStatus:
        nonlocal at
        at += timedelta(seconds=1)
        result = await engine.run(name, conn, redis=None, now=at)
        stored = await store.record_result(conn, result, hysteresis=1, agent_id=None)
        return stored.status

    assert await run("schema_version") == CheckStatus.NODATA  # empty table
    await conn.execute("INSERT INTO public.alembic_version VALUES ('3f2a9c1d7b4e')")
    assert await run("schema_version") == CheckStatus.OK
    assert await run("feedback_fresh") == CheckStatus.NODATA  # no feedback yet

    await conn.execute("UPDATE public.alembic_version SET version_num = 'b00b1e5'")
    at += timedelta(minutes=1)
    assert await run("schema_version") == CheckStatus.WARN
    events = [e for e in await store.recent_events(conn) if e.kind == "deploy"]
    assert len(events) == 1
    deploy = events[0]
    assert deploy.subject == "schema_version"
    assert deploy.message == "deployed: schema version 3f2a9c1d7b4e -> b00b1e5"
    assert (deploy.detail["from"], deploy.detail["to"]) == (["3f2a9c1d7b4e"], ["b00b1e5"])
    assert deploy.detail["checks_before"]["feedback_fresh"]["status"] == "nodata"
    assert "schema_version" not in deploy.detail["checks_before"]

    at += timedelta(minutes=5)  # still within notice_for: seen, not yet forgotten
    assert await run("schema_version") == CheckStatus.WARN
    at += timedelta(minutes=6)
    assert await run("schema_version") == CheckStatus.OK
    assert len([e for e in await store.recent_events(conn) if e.kind == "deploy"]) == 1

    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n' + CHECKS)
    code = await asyncio.to_thread(main, ["history", "--events", "--json", "-c", str(config)])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [e["kind"] for e in listed if e["kind"] == "deploy"] == ["deploy"]
    code = await asyncio.to_thread(main, ["history", "--events", "-c", str(config)])
    shown = capsys.readouterr().out
    assert code == 0
    assert "deployed: schema version 3f2a9c1d7b4e -> b00b1e5" in shown
    assert "checks before it and now" in shown and "feedback_fresh" in shown
