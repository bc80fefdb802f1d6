"""The agent as a process: signals, systemd notify, reloads, and a database that restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from pipectl import store
from pipectl.db import connect
from pipectl.embedded import EmbeddedPostgres
from pipectl.model import RequestKind
from tests.agent.conftest import AgentProcess, running_agent, steps_toml
from tests.helpers import load_schemas, make_config, wait_for

pytestmark = pytest.mark.slow

SLOW_STEP = """
[[steps]]
name = "slow"
kind = "sql"
sql = "SELECT pg_sleep(60)"
"""


async def _run_state(db: asyncpg.Connection, step: str) -> str | None:
    row = await db.fetchrow(
        "SELECT status FROM pipectl.runs WHERE step = $1 ORDER BY id DESC LIMIT 1", step
    )
    return row["status"] if row else None


async def test_sigterm_during_a_run_cancels_it_and_exits_zero(
    database: str, db: asyncpg.Connection, agent_process: Callable[[str, str], AgentProcess]
) -> None:
    process = agent_process(database, SLOW_STEP)
    request = await store.create_request(db, RequestKind.RERUN, "slow")
    await wait_for(lambda: _is(db, "slow", "running"), timeout=20)
    sent = time.monotonic()
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert time.monotonic() - sent < 10, "must exit within 10 s"
    run = await db.fetchrow("SELECT * FROM pipectl.runs WHERE step = 'slow'")
    assert run["status"] == "cancelled"
    assert run["error"] == "cancelled: agent shutting down"
    backends = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'"
        " AND state = 'active'"
    )
    assert backends == 0, "the running query must be cancelled on the server too"
    finished = await db.fetchrow("SELECT * FROM pipectl.requests WHERE id = $1", request.id)
    assert finished["outcome"] == "cancelled"
    agent = await db.fetchrow("SELECT stopped_at FROM pipectl.agents")
    assert agent["stopped_at"] is not None


async def _is(db: asyncpg.Connection, step: str, status: str) -> bool:
    return await _run_state(db, step) == status


async def test_sigkill_orphan_is_failed_by_the_next_agent(
    database: str, db: asyncpg.Connection, agent_process: Callable[[str, str], AgentProcess]
) -> None:
    process = agent_process(database, SLOW_STEP)
    await store.create_request(db, RequestKind.RERUN, "slow")
    await wait_for(lambda: _is(db, "slow", "running"), timeout=20)
    (orphan,) = await db.fetch("SELECT id FROM pipectl.runs WHERE step = 'slow'")
    process.kill()

    async def orphan_failed() -> bool:
        status = await db.fetchval("SELECT status FROM pipectl.runs WHERE id = $1", orphan["id"])
        return bool(status == "failed")

    async with running_agent(database, SLOW_STEP):
        await wait_for(orphan_failed, timeout=10)
    run = await db.fetchrow("SELECT * FROM pipectl.runs WHERE id = $1", orphan["id"])
    assert run["error"].startswith("agent lost: ")
    assert run["error"].endswith("is no longer connected (its process is gone)")


async def test_sighup_with_a_broken_config_keeps_the_old_one(
    database: str,
    db: asyncpg.Connection,
    agent_process: Callable[[str, str], AgentProcess],
    tmp_path: Path,
) -> None:
    process = agent_process(database, steps_toml('every = "1s"'))
    await wait_for(lambda: _is(db, "rule_effectiveness_summary", "succeeded"), timeout=20)
    config = tmp_path / "agent0.toml"
    config.write_text(config.read_text().replace('heartbeat = "500ms"', 'heartbeat = "soon"'))
    process.signal(signal.SIGHUP)
    await wait_for(lambda: _logged(process, "reload rejected"), timeout=10)
    mark = await db.fetchval("SELECT max(id) FROM pipectl.runs")
    await wait_for(lambda: _new_success(db, mark), timeout=10)
    assert process.proc.poll() is None, "the agent must keep running"
    assert "agent.heartbeat: cannot read duration 'soon'" in process.log()
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0


async def test_sighup_applies_a_valid_config(
    database: str,
    db: asyncpg.Connection,
    agent_process: Callable[[str, str], AgentProcess],
    tmp_path: Path,
) -> None:
    process = agent_process(database, steps_toml('every = "1h"'))
    await wait_for(lambda: _logged(process, "started"), timeout=20)
    config = tmp_path / "agent0.toml"
    config.write_text(config.read_text().replace('every = "1h"', 'every = "1s"'))
    process.signal(signal.SIGHUP)
    await wait_for(lambda: _is(db, "rule_effectiveness_summary", "succeeded"), timeout=10)
    schedule = await db.fetchval(
        "SELECT schedule FROM pipectl.steps WHERE name = 'rule_effectiveness_summary'"
    )
    assert schedule == "every 1s"
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0


async def _logged(process: AgentProcess, text: str) -> bool:
    return text in process.log()


async def _new_success(db: asyncpg.Connection, after: int) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pipectl.runs WHERE id > $1 AND status = 'succeeded'", after
        )
    )


async def test_systemd_notify_ready_watchdog_stopping(
    database: str,
    tmp_path: Path,
    agent_process: Callable[[str, str], AgentProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    process = agent_process(database, steps_toml())
    messages: list[str] = []

    async def received(text: str) -> bool:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        return any(text in m for m in messages)

    try:
        await wait_for(lambda: received("READY=1"), timeout=20)
        await wait_for(lambda: received("WATCHDOG=1"), timeout=5)
        process.signal(signal.SIGTERM)
        assert process.wait(15) == 0
        await wait_for(lambda: received("STOPPING=1"), timeout=5)
    finally:
        sock.close()


async def test_json_logs_when_not_a_terminal(
    database: str, agent_process: Callable[[str, str], AgentProcess]
) -> None:
    process = agent_process(database, steps_toml())
    await wait_for(lambda: _logged(process, "started"), timeout=20)
    process.signal(signal.SIGTERM)
    process.wait(15)
    lines = [json.loads(line) for line in process.log().splitlines() if line.strip()]
    started = next(entry for entry in lines if "started" in entry["msg"])
    assert started["level"] == "info"
    assert started["logger"] == "pipectl.agent.service"
    assert "agent_id" in started


# ---------------------------------------------------------------- database restarts


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, to stop and start under a running agent."""
    server = EmbeddedPostgres(tmp_path / "pg", fast=True)
    server.start()
    await load_schemas(server.dsn())
    yield server
    server.stop()


async def test_postgres_restart_under_a_running_agent(own_server: EmbeddedPostgres) -> None:
    dsn = own_server.dsn()
    body = '[agent]\nheartbeat = "500ms"\n' + steps_toml('every = "1s"') + SLOW_STEP
    async with running_agent(dsn, body) as agent:
        conn = await connect(make_config(dsn))
        await store.create_request(conn, RequestKind.RERUN, "slow")
        await conn.close()
        await wait_for(
            lambda: _query(dsn, "SELECT status = 'running' FROM pipectl.runs WHERE step = 'slow'"),
            timeout=10,
        )
        own_server.stop()
        await asyncio.sleep(4)  # the agent keeps going with its database gone
        assert not agent.stopping.is_set()
        restarted = time.monotonic()
        own_server.start()
        await wait_for(
            lambda: _query(
                dsn,
                "SELECT count(*) FROM pipectl.runs WHERE status = 'succeeded'"
                " AND started_at > now() - interval '3 seconds'",
            ),
            timeout=30,
        )
        recovery = time.monotonic() - restarted
        await wait_for(
            lambda: _query(
                dsn,
                "SELECT count(*) FROM pipectl.runs WHERE step = 'slow' AND trigger = 'retry'"
                " AND status = 'running'",
            ),
            timeout=15,
        )
    conn = await asyncpg.connect(dsn)
    try:
        stuck = await conn.fetch(
            "SELECT id, step, status, error FROM pipectl.runs WHERE status IN ('queued', 'running')"
        )
        assert [dict(r) for r in stuck] == []
        slow = await conn.fetch("SELECT * FROM pipectl.runs WHERE step = 'slow' ORDER BY id")
        assert slow[0]["status"] == "failed"
        assert slow[0]["error"].startswith("connection lost: ")
        assert len(slow) >= 2, "the interrupted run must be retried"
        assert slow[1]["trigger"] == "retry"
    finally:
        await conn.close()
    assert recovery < 30


async def _query(dsn: str, sql: str) -> object:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return await conn.fetchval(sql)
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


def test_no_stray_environment() -> None:
    assert "NOTIFY_SOCKET" not in os.environ
