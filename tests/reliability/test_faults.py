"""Fault scenarios: each breaks something under a running agent, then runs the same audit
(tests/reliability/audit.py): nothing left running, every request done exactly once,
summaries equal to their definitions, the agent alive and working again."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from pipectl.embedded import EmbeddedPostgres, EmbeddedValkey
from pipectl.model import RequestKind
from pipectl.request_args import RerunArgs
from tests.agent.conftest import AgentProcess, running_agent
from tests.helpers import wait_for
from tests.reliability.audit import audit_alive, audit_final
from tests.reliability.conftest import SUMMARIES
from tests.reliability.support import (
    SLOW_SUMMARY_STEP,
    STEPS,
    SUMMARY_STEPS,
    connected,
    create_slow_summary,
    fetchval,
    file_request,
    wait_request_done,
    wait_run_status,
)

pytestmark = pytest.mark.slow

IN_PROCESS = '[agent]\nheartbeat = "500ms"\n'


def _json_log(process: AgentProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]


def _no_tracebacks(process: AgentProcess) -> None:
    """Expected failures (an outage, a timeout) are messages, never logged tracebacks."""
    logged = [entry for entry in _json_log(process) if "exc" in entry]
    assert not logged, [entry["msg"] for entry in logged]


async def test_postgres_restarted_during_a_refresh(own_postgres: EmbeddedPostgres) -> None:
    dsn = own_postgres.dsn()
    await create_slow_summary(dsn, seconds=3)
    async with running_agent(dsn, IN_PROCESS + SUMMARY_STEPS + SLOW_SUMMARY_STEP) as agent:
        request = await file_request(dsn, RequestKind.RERUN, "slow_summary")
        interrupted = await wait_run_status(dsn, "slow_summary", "running")
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(2)
        assert not agent.stopping.is_set()
        own_postgres.start()
        back = datetime.now(UTC)
        assert await wait_request_done(dsn, request.id) == "succeeded"
        await audit_alive(dsn, back, steps=STEPS)
    report = await audit_final(dsn, SUMMARIES)
    assert report.outcomes == {"succeeded": 1}
    async with connected(dsn) as conn:
        runs = await conn.fetch(
            "SELECT id, status, trigger, error FROM pipectl.runs WHERE step = 'slow_summary'"
            " ORDER BY id"
        )
    assert runs[0]["id"] == interrupted
    assert runs[0]["status"] == "failed"
    assert "(transient, will retry)" in runs[0]["error"]
    assert [r["trigger"] for r in runs[1:]] == ["retry"] * (len(runs) - 1)
    assert runs[-1]["status"] == "succeeded"


async def test_postgres_unreachable_for_60_seconds(
    own_postgres: EmbeddedPostgres, agent_processes: Callable[..., AgentProcess]
) -> None:
    """One real minute without a database: the process keeps running, reconnects, records
    what was interrupted and carries on; no traceback in its log."""
    dsn = own_postgres.dsn()
    await create_slow_summary(dsn, seconds=2)
    process = agent_processes(dsn, SUMMARY_STEPS + SLOW_SUMMARY_STEP)
    await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    request = await file_request(dsn, RequestKind.RERUN, "slow_summary")
    await wait_run_status(dsn, "slow_summary", "running")
    await asyncio.to_thread(own_postgres.stop)
    for _ in range(12):
        await asyncio.sleep(5)
        assert process.proc.poll() is None, "the agent must outlive the outage"
    own_postgres.start()
    back = datetime.now(UTC)
    assert await wait_request_done(dsn, request.id, timeout=60) == "succeeded"
    await audit_alive(dsn, back, steps=STEPS)
    lost = await fetchval(dsn, "SELECT count(*) FROM pipectl.agents WHERE lost_at IS NOT NULL")
    assert lost == 0, "an agent alone must not be declared lost after an outage"
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0
    await audit_final(dsn, SUMMARIES)
    messages = [str(entry["msg"]) for entry in _json_log(process)]
    assert any("database unreachable" in m for m in messages)
    assert any("database reachable again" in m for m in messages)
    _no_tracebacks(process)


async def test_redis_stopped_and_started(
    database: str, own_valkey: EmbeddedValkey, tmp_path: object
) -> None:
    body = (
        IN_PROCESS
        + f'[redis]\nurl = "{own_valkey.url}"\ntimeout = "500ms"\n'
        + SUMMARY_STEPS
        + """
[[checks]]
name = "redis_hit_ratio"
kind = "cache"
source = "redis"
every = "1s"
min_requests = 0
"""
    )

    async def latest_result() -> str | None:
        value: str | None = await fetchval(
            database,
            "SELECT status || ': ' || message FROM pipectl.check_results"
            " WHERE check_name = 'redis_hit_ratio' ORDER BY id DESC LIMIT 1",
        )
        return value

    async def result_after(mark: int, error: bool) -> bool:
        status = await fetchval(
            database,
            "SELECT status FROM pipectl.check_results WHERE check_name = 'redis_hit_ratio'"
            " AND id > $1 ORDER BY id DESC LIMIT 1",
            mark,
        )
        return status is not None and (status == "error") == error

    async def mark() -> int:
        value = await fetchval(database, "SELECT coalesce(max(id), 0) FROM pipectl.check_results")
        return int(value or 0)

    async with running_agent(database, body) as agent:
        await wait_for(latest_result, timeout=20)
        await asyncio.to_thread(own_valkey.stop)
        down = await mark()
        await wait_for(lambda: result_after(down, error=True), timeout=20)
        message = await latest_result()
        assert message is not None and message.startswith("error: Redis unreachable: ")
        own_valkey.start()
        back_at = datetime.now(UTC)
        back = await mark()
        await wait_for(lambda: result_after(back, error=False), timeout=20)
        await audit_alive(database, back_at, steps=STEPS)
        assert not agent.stopping.is_set()
    await audit_final(database, SUMMARIES)


async def test_refresh_past_its_timeout(own_postgres: EmbeddedPostgres) -> None:
    dsn = own_postgres.dsn()
    await create_slow_summary(dsn, seconds=5)
    body = IN_PROCESS + SUMMARY_STEPS + SLOW_SUMMARY_STEP + 'statement_timeout = "300ms"\n'
    before = await fetchval(dsn, "SELECT count(*) FROM public.slow_summary")
    async with running_agent(dsn, body):
        request = await file_request(dsn, RequestKind.RERUN, "slow_summary")
        assert await wait_request_done(dsn, request.id) == "failed"
        await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    await audit_final(dsn, SUMMARIES)
    async with connected(dsn) as conn:
        runs = await conn.fetch("SELECT * FROM pipectl.runs WHERE step = 'slow_summary'")
        after = await conn.fetchval("SELECT count(*) FROM public.slow_summary")
    assert [(r["status"], r["error"]) for r in runs] == [
        ("failed", "cancelled by statement_timeout (300ms)")
    ], "a timeout is recorded once and not retried"
    assert after == before, "the cancelled refresh left the summary as it was"


async def test_refresh_blocked_by_another_sessions_lock(own_postgres: EmbeddedPostgres) -> None:
    """A session holds the summary's lock past every retry: each attempt fails with
    lock_timeout, the request fails; once the lock goes, a rerun succeeds."""
    import asyncpg

    dsn = own_postgres.dsn()
    # Hourly: no scheduled run competes with the request's runs for the step's lock.
    body = IN_PROCESS + SUMMARY_STEPS.replace('every = "1s"', 'every = "1h"').replace(
        'every = "1h"\n', 'every = "1h"\nlock_timeout = "200ms"\n', 1
    ).replace('retry_backoff_max = "1s"', 'retry_backoff_max = "300ms"')
    blocker = await asyncpg.connect(dsn)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY rule_effectiveness_summary")
        async with running_agent(dsn, body):
            request = await file_request(dsn, RequestKind.RERUN, "rule_effectiveness_summary")
            assert await wait_request_done(dsn, request.id, timeout=60) == "failed"
            await blocker.execute("ROLLBACK")
            released = datetime.now(UTC)
            again = await file_request(
                dsn, RequestKind.RERUN, "rule_effectiveness_summary", RerunArgs(downstream=True)
            )
            assert await wait_request_done(dsn, again.id) == "succeeded"
            await audit_alive(dsn, released, steps=STEPS)
    finally:
        await blocker.close()
    await audit_final(dsn, SUMMARIES)
    async with connected(dsn) as conn:
        attempts = await conn.fetch(
            "SELECT attempt, status, error FROM pipectl.runs WHERE request_id = $1 ORDER BY id",
            request.id,
        )
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4], "three retries, then give up"
    assert all(a["status"] == "failed" for a in attempts)
    assert all("lock not available within lock_timeout (200ms)" in a["error"] for a in attempts)


SLEEPY = """
[[steps]]
name = "sleepy"
kind = "sql"
sql = "SELECT pg_sleep(30)"
"""


async def test_sigterm_during_a_run(
    own_postgres: EmbeddedPostgres, agent_processes: Callable[..., AgentProcess]
) -> None:
    dsn = own_postgres.dsn()
    process = agent_processes(dsn, SUMMARY_STEPS + SLEEPY)
    request = await file_request(dsn, RequestKind.RERUN, "sleepy")
    await wait_run_status(dsn, "sleepy", "running")
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0
    _no_tracebacks(process)
    assert await wait_request_done(dsn, request.id) == "cancelled"
    # The next agent starts cleanly and takes up the schedule.
    successor = agent_processes(dsn, SUMMARY_STEPS + SLEEPY)
    await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    successor.signal(signal.SIGTERM)
    assert successor.wait(15) == 0
    await audit_final(dsn, SUMMARIES)
    run = await fetchval(
        dsn, "SELECT status || ': ' || error FROM pipectl.runs WHERE step = 'sleepy'"
    )
    assert run == "cancelled: cancelled: agent shutting down"


async def test_sigkill_during_a_run_the_next_agent_fails_the_orphan(
    own_postgres: EmbeddedPostgres, agent_processes: Callable[..., AgentProcess]
) -> None:
    dsn = own_postgres.dsn()
    body = SUMMARY_STEPS + SLEEPY.replace("pg_sleep(30)", "pg_sleep(2)")
    process = agent_processes(dsn, body)
    request = await file_request(dsn, RequestKind.RERUN, "sleepy")
    orphan = await wait_run_status(dsn, "sleepy", "running")
    process.kill()
    successor = agent_processes(dsn, body)
    # The successor declares its dead predecessor lost at start, fails the orphan run and
    # executes the request it had claimed.
    assert await wait_request_done(dsn, request.id, timeout=60) == "succeeded"
    await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    successor.signal(signal.SIGTERM)
    assert successor.wait(15) == 0
    await audit_final(dsn, SUMMARIES)
    error = await fetchval(dsn, "SELECT error FROM pipectl.runs WHERE id = $1", orphan)
    assert error.startswith("agent lost: ")
    assert error.endswith("is no longer connected (its process is gone)")


async def test_two_agents_the_one_holding_work_killed(
    own_postgres: EmbeddedPostgres, agent_processes: Callable[..., AgentProcess]
) -> None:
    """The survivor declares the killed peer lost once its sessions are gone and it missed a
    heartbeat and a half (its liveness lock went with its connections: no PID is looked
    at), fails its run, takes its request and runs it: the step's lock is free by then
    because the server aborts the dead client's statement (client_connection_check_interval)."""
    dsn = own_postgres.dsn()
    body = SUMMARY_STEPS + SLEEPY.replace("pg_sleep(30)", "pg_sleep(20)")
    first = agent_processes(dsn, body, name="agent-a")
    second = agent_processes(dsn, body, name="agent-b")
    await wait_for(
        lambda: fetchval(
            dsn,
            "SELECT count(*) = 2 FROM pipectl.agents WHERE stopped_at IS NULL AND lost_at IS NULL",
        ),
        timeout=30,
    )
    request = await file_request(dsn, RequestKind.RERUN, "sleepy")
    orphan = await wait_run_status(dsn, "sleepy", "running")
    holder = await fetchval(
        dsn,
        "SELECT a.name FROM pipectl.runs r JOIN pipectl.agents a ON a.id = r.agent_id"
        " WHERE r.id = $1",
        orphan,
    )
    killed, survivor = (first, second) if holder == "agent-a" else (second, first)
    killed.kill()
    takeover = await wait_run_status(dsn, "sleepy", "running", timeout=30, after=orphan)
    async with connected(dsn) as conn:
        lost = await conn.fetchrow(
            "SELECT a.name, a.heartbeat_seconds,"
            " extract(epoch FROM a.lost_at - a.last_seen)::float8 AS silent_for,"
            " extract(epoch FROM r.started_at - a.lost_at)::float8 AS restarted_after,"
            " b.name AS taken_by"
            " FROM pipectl.agents a, pipectl.runs r JOIN pipectl.agents b ON b.id = r.agent_id"
            " WHERE a.lost_at IS NOT NULL AND r.id = $1",
            takeover,
        )
        declared = await conn.fetchval(
            "SELECT count(*) FROM pipectl.agents WHERE lost_at IS NOT NULL"
        )
    # Only the killed agent, and only after it went silent: two agents starting together
    # once declared each other lost (reaping predecessors raced with registration).
    assert declared == 1
    assert lost["name"] == holder
    assert lost["taken_by"] != holder
    assert lost["silent_for"] >= 1.5 * lost["heartbeat_seconds"], "declared lost too early"
    print(
        f"FIGURE takeover: silent {lost['silent_for']:.2f}s before declared lost "
        f"(heartbeat {lost['heartbeat_seconds']}s), rerun started {lost['restarted_after']:.2f}s "
        "after"
    )
    # The survivor keeps the summaries fresh too (the killed agent may have held their
    # ticks when it died, so this is what the final audit's consistency check relies on).
    await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(15) == 0
    assert await wait_request_done(dsn, request.id) == "cancelled"
    await audit_final(dsn, SUMMARIES)
    error = await fetchval(dsn, "SELECT error FROM pipectl.runs WHERE id = $1", orphan)
    assert error == f"agent lost: {holder} is no longer connected (its process is gone)"


async def test_requests_filed_while_no_agent_runs(own_postgres: EmbeddedPostgres) -> None:
    dsn = own_postgres.dsn()
    filed = [
        await file_request(
            dsn, RequestKind.RERUN, "rule_effectiveness_summary", RerunArgs(downstream=True)
        ),
        await file_request(dsn, RequestKind.PAUSE, "user_satisfaction_summary"),
        await file_request(dsn, RequestKind.RESUME, "user_satisfaction_summary"),
        await file_request(dsn, RequestKind.RERUN, "no_such_step"),
    ]
    async with (
        running_agent(dsn, IN_PROCESS + SUMMARY_STEPS, name="agent-a"),
        running_agent(dsn, IN_PROCESS + SUMMARY_STEPS, name="agent-b"),
    ):
        outcomes = [await wait_request_done(dsn, r.id) for r in filed]
        await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    assert outcomes == ["succeeded", "succeeded", "succeeded", "rejected"]
    report = await audit_final(dsn, SUMMARIES)
    assert report.requests == 4
    async with connected(dsn) as conn:
        paused = await conn.fetchval(
            "SELECT paused FROM pipectl.steps WHERE name = 'user_satisfaction_summary'"
        )
        order = [
            r["kind"]
            for r in await conn.fetch(
                "SELECT kind FROM pipectl.events WHERE kind LIKE 'step.%' ORDER BY id"
            )
        ]
    assert order == ["step.paused", "step.resumed"], "requests for one step run in order"
    assert paused is False
