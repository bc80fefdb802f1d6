"""A step's shown state is its latest decisive run: a skipped tick never hides a success,
whether the success finished before or after the skip (issue 14 §2). `status`, the console's
overview and `store.state_runs` (the agents' metrics) read it the same way."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl import store
from pipectl.cli import main

T0 = datetime(2026, 12, 3, 12, 15, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def db(database: str) -> Any:
    conn = await asyncpg.connect(database)
    await conn.execute(
        "INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds)"
        " VALUES (gen_random_uuid(), 'a1', 'h', 1, 'v', 3600)"
    )
    await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s', 'sql')")
    try:
        yield conn
    finally:
        await conn.close()


async def run(
    db: asyncpg.Connection,
    status: str,
    queued: float,
    finished: float | None,
    trigger: str = "schedule",
) -> int:
    run_id: int = await db.fetchval(
        "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at, finished_at,"
        " scheduled_for)"
        " VALUES ('s', $1, $2, $3::timestamptz, $3, $4,"
        "         CASE WHEN $1 = 'schedule' THEN $3::timestamptz END)"
        " RETURNING id",
        trigger,
        status,
        at(queued),
        at(finished) if finished is not None else None,
    )
    return run_id


async def state(db: asyncpg.Connection) -> tuple[str, int | None]:
    snapshot = await store.status_snapshot(db)
    (step,) = snapshot.steps
    runs = await store.state_runs(db, ["s"])
    assert (runs["s"].id if "s" in runs else None) == (
        step.state_run.id if step.state_run else None
    ), "status and the agents' metrics read the same run"
    return step.state, step.state_run.id if step.state_run else None


async def test_a_tick_skipped_while_a_manual_run_held_the_step_does_not_hide_its_success(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported incident: the manual run started 12:14:58 and succeeded at 12:15:03;
    the 12:15:00 tick found it running and was skipped (queued after the manual run)."""
    manual = await run(db, "succeeded", -2, 3, trigger="manual")
    await run(db, "skipped", 0, 0.1)
    assert await state(db) == ("ok", manual)

    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    code = await asyncio.to_thread(main, ["status", "--json", "--config", str(config)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["status"] == "ok"
    assert out["steps"][0]["status"] == "ok"
    assert out["steps"][0]["state_run_id"] == manual
    assert out["steps"][0]["last_run"]["status"] == "skipped", "the newest run is still shown"


async def test_a_skip_after_a_success_or_a_failure_changes_nothing(
    db: asyncpg.Connection,
) -> None:
    ok = await run(db, "succeeded", 0, 1)
    await run(db, "skipped", 60, 60)
    assert await state(db) == ("ok", ok)
    failed = await run(db, "failed", 120, 121)
    await run(db, "skipped", 180, 180)
    assert await state(db) == ("failed", failed), "a skip does not hide a failure either"


async def test_the_latest_decisive_run_is_the_latest_to_finish(db: asyncpg.Connection) -> None:
    """A long run queued first and finished last decides over a short one queued later."""
    ok = await run(db, "succeeded", 0, 30, trigger="manual")
    await run(db, "failed", 5, 6)
    assert await state(db) == ("ok", ok)


async def test_an_unfinished_run_shows_running_and_only_skips_show_skipped(
    db: asyncpg.Connection,
) -> None:
    skipped = await run(db, "skipped", 0, 0)
    assert await state(db) == ("skipped", skipped), "no decisive run yet: the skip is all"
    await run(db, "succeeded", 10, 11)
    running = await run(db, "running", 20, None, trigger="manual")
    await run(db, "skipped", 21, 21)
    assert await state(db) == ("running", running)
    latest = await store.latest_unfinished(db, ["s", "other"])
    assert {name: r.id for name, r in latest.items()} == {"s": running}


async def test_a_step_that_never_ran_has_no_state_run(db: asyncpg.Connection) -> None:
    assert await store.state_runs(db, ["s"]) == {}
    snapshot = await store.status_snapshot(db)
    assert snapshot.steps[0].state == "never"


async def test_with_a_real_agent_a_tick_that_found_the_step_running_does_not_hide_its_end(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another session runs the step (holds its lock, its run row is 'running'); the agent's
    tick finds the lock taken and is skipped; then that run succeeds: status says ok."""
    from pipectl.agent.runner import LOCK_NAMESPACE
    from tests.agent.conftest import past_clock, running_agent, tick
    from tests.helpers import wait_for

    # A long heartbeat: the agent stays alive for `status` however slow the machine.
    body = '[agent]\nheartbeat = "1m"\n[[steps]]\nname = "s"\nkind = "sql"\nsql = "SELECT 1"\n'
    body += 'every = "1m"\n'
    holder = await asyncpg.connect(database)
    db = await asyncpg.connect(database)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1, hashtext('s'))", LOCK_NAMESPACE)
        manual = await db.fetchval(
            "INSERT INTO pipectl.runs (step, trigger, status, started_at, requested_by)"
            " VALUES ('s', 'manual', 'running', now(), 'alice') RETURNING id"
        )
        clock = past_clock()
        async with running_agent(database, body, clock=clock) as agent:

            async def skipped() -> bool:
                found = await db.fetchval(
                    "SELECT count(*) FROM pipectl.runs WHERE step = 's' AND status = 'skipped'"
                )
                if not found:
                    await tick(clock, 60, agent)
                return bool(found)

            await wait_for(skipped, timeout=30)
            assert await state(db) == ("running", manual), "the manual run is still running"
            await db.execute(
                "UPDATE pipectl.runs SET status = 'succeeded', finished_at = clock_timestamp()"
                " WHERE id = $1",
                manual,
            )
            await holder.execute("ROLLBACK")
            assert await state(db) == ("ok", manual)
            newest = (await store.status_snapshot(db)).steps[0].last_run
            assert newest is not None and newest.status == "skipped"
            await store.heartbeat(db, agent.agent_id)
            config = tmp_path / "pipectl.toml"
            config.write_text(f'[database]\ndsn = "{database}"\n')
            code = await asyncio.to_thread(main, ["status", "--json", "--config", str(config)])
            out = json.loads(capsys.readouterr().out)
            assert (code, out["status"], out["steps"][0]["status"]) == (0, "ok", "ok")
    finally:
        await holder.close()
        await db.close()


async def shown_everywhere(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str, str, str]:
    """Step `s` as `pipectl status --json`, its table, the console's Overview row and the
    incidents show it (the incident member's status; "-" when it is no incident); its detail
    screen's state is asserted to be the same."""
    from pipectl.console.screens.overview import step_row
    from pipectl.incidents import assess
    from pipectl.store.console import step_detail
    from pipectl.store.lineage import published_lineage

    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    await asyncio.to_thread(main, ["status", "--json", "--config", str(config)])
    as_json = json.loads(capsys.readouterr().out)["steps"][0]["status"]
    await asyncio.to_thread(main, ["status", "--config", str(config)])
    table = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(" s "))
    snapshot = await store.status_snapshot(db)
    (step,) = snapshot.steps
    console = str(step_row(step, snapshot.taken_at).cells[1])
    lineage = await published_lineage(db)
    members = [
        m.status
        for incident in assess(lineage, snapshot.steps, (), snapshot.taken_at).incidents()
        for m in incident.members
        if m.name == "s"
    ]
    detail = await step_detail(db, "s")
    assert detail is not None
    assert detail.shown == step.state, "the step's detail screen says the same"
    return as_json, table.split()[2], console.split()[1], members[0] if members else "-"


@pytest.mark.parametrize("trigger", ["retry", "manual"])
async def test_status_console_and_incidents_agree_on_a_step_failing_between_attempts(
    db: asyncpg.Connection,
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    trigger: str,
) -> None:
    """A failed attempt, then the next one queued (the agent's retry, or an operator's rerun,
    attempt 1 again): red everywhere, "failing", never "running"."""
    failed = await run(db, "failed", 0, 1)
    await db.execute("UPDATE pipectl.runs SET error = 'boom' WHERE id = $1", failed)
    await db.execute(
        "INSERT INTO pipectl.runs (step, trigger, status, queued_at, attempt)"
        " VALUES ('s', $1, 'queued', $2, $3)",
        trigger,
        at(30),
        2 if trigger == "retry" else 1,
    )
    assert await shown_everywhere(db, database, tmp_path, capsys) == ("failing",) * 4
    config = tmp_path / "pipectl.toml"
    await asyncio.to_thread(main, ["status", "--config", str(config)])
    attempt = 2 if trigger == "retry" else 1
    assert f"attempt {attempt} queued; last attempt failed: boom" in capsys.readouterr().out
    await db.execute(
        "UPDATE pipectl.runs SET status = 'succeeded', started_at = $1, finished_at = $1"
        " WHERE status = 'queued'",
        at(31),
    )
    assert await shown_everywhere(db, database, tmp_path, capsys) == ("ok", "ok", "ok", "-")


async def test_status_console_and_incidents_agree_on_a_held_and_a_paused_step(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await run(db, "held", 0, 1)
    assert await shown_everywhere(db, database, tmp_path, capsys) == ("held",) * 4
    await run(db, "failed", 10, 11)
    await run(db, "running", 20, None, trigger="retry")
    await db.execute("UPDATE pipectl.steps SET paused = true, paused_by = 'alice'")
    assert await shown_everywhere(db, database, tmp_path, capsys) == ("paused",) * 4
