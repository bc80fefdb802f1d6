"""Agents under test: in-process (fast) or as real processes (signals, systemd)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from pipectl.agent.service import Agent
from pipectl.clock import Clock, FakeClock
from pipectl.db import connect
from tests.helpers import make_config, make_loaded

REPO = Path(__file__).resolve().parents[2]

STEPS = """
[defaults]
retry_backoff = "100ms"
retry_backoff_max = "300ms"

[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"
{schedule_a}

[[steps]]
name = "user_satisfaction_summary"
kind = "matview"
relation = "public.user_satisfaction_summary"
depends_on = ["rule_effectiveness_summary"]
{schedule_b}
"""


def steps_toml(schedule_a: str = "", schedule_b: str = "") -> str:
    return STEPS.format(schedule_a=schedule_a, schedule_b=schedule_b)


@asynccontextmanager
async def running_agent(
    dsn: str,
    body: str,
    *,
    name: str = "test-agent",
    serve: bool = True,
    clock: Clock | None = None,
    redis_url: str | None = None,
) -> AsyncIterator[Agent]:
    """An in-process agent; stopped (runs recorded as cancelled) when the block ends. With a
    FakeClock it schedules, sleeps and times out only when the test moves the clock."""
    agent = Agent(make_loaded(dsn, redis_url, body), name=name, clock=clock)
    task: asyncio.Task[None] | None = None
    try:
        await agent.start()
        if serve:
            task = asyncio.create_task(agent.serve())
            serving = asyncio.create_task(agent.serving.wait())
            # serve() failing before it serves raises here, rather than waiting for ever.
            await asyncio.wait([task, serving], return_when=asyncio.FIRST_COMPLETED)
            serving.cancel()
            if task.done():
                task.result()
            for _ in range(5):  # every loop reaches its first wait
                await asyncio.sleep(0)
        yield agent
    finally:
        await agent.stop()
        if task is not None:
            await asyncio.wait_for(task, 5)


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(make_config(database))
    yield conn
    await conn.close()


class AgentProcess:
    """`python -m pipectl agent` as a real process, for signal and restart tests."""

    def __init__(self, config_file: Path, dsn: str, log_file: Path) -> None:
        self.log_file = log_file
        env = {**os.environ, "PIPECTL_DATABASE_URL": dsn}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipectl", "agent", "--config", str(config_file)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(log_file, "wb"),  # noqa: SIM115 - closed with the process
        )

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Callable[[str, str], AgentProcess]]:
    started: list[AgentProcess] = []

    def start(dsn: str, body: str) -> AgentProcess:
        config = tmp_path / f"agent{len(started)}.toml"
        config.write_text(
            '[agent]\nmetrics_address = "127.0.0.1:0"\nheartbeat = "500ms"\nlog_format = "json"\n'
            + body
        )
        process = AgentProcess(config, dsn, tmp_path / f"agent{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def past_clock(hours: int = 1) -> FakeClock:
    """A FakeClock on a whole second `hours` in the past. Its ticks are all behind the
    database's clock, which lets agents claim them (a tick ahead of it is refused), however
    far the test moves it."""
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours)
    return FakeClock(start=start)


async def tick(clock: FakeClock, seconds: float, *agents: Agent) -> None:
    """Move the clock by `seconds` and wait (real time) until the work that woke settles."""
    await clock.advance(seconds)
    for agent in agents:
        await asyncio.wait_for(agent.runtime.work.settled(), 20)
