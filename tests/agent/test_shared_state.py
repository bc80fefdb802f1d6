"""Every agent exports the shared state as the database has it, whichever agent ran what.

With each agent exporting only what it ran itself, two agents silenced the alerts: the one
that had not run a failing check exported nodata (4), and `max by (check)` of 2 and 4 is 4.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipectl import store
from pipectl.agent.main import AgentProcess
from pipectl.agent.service import Agent
from pipectl.model import CheckStatus, RunStatus, Trigger
from tests.agent.conftest import past_clock, running_agent
from tests.helpers import make_loaded, wait_for
from tests.test_observability import scrape

BODY = """
[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"
every = "1h"

[[steps]]
name = "broken"
kind = "sql"
sql = "SELECT 1 / 0"
every = "1h"

[[checks]]
name = "rp_fresh"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "15m"
error_after = "1h"
every = "10m"
hysteresis = 1
"""


def sample(agent: Agent, name: str, **labels: str) -> float | None:
    return agent.metrics.registry.get_sample_value(name, labels)


def exported(agent: Agent) -> dict[str, float | None]:
    """The shared series of the test's step and check, as this agent exports them."""
    return {
        "status": sample(agent, "pipectl_check_status", check="rp_fresh", kind="freshness"),
        "silenced": sample(agent, "pipectl_check_silenced", check="rp_fresh"),
        "last_run": sample(agent, "pipectl_check_last_run_timestamp_seconds", check="rp_fresh"),
        "broken_failing": sample(agent, "pipectl_step_failing", step="broken"),
        "refresh_failing": sample(agent, "pipectl_step_failing", step="rule_effectiveness_summary"),
        "last_success": sample(
            agent,
            "pipectl_step_last_success_timestamp_seconds",
            step="rule_effectiveness_summary",
        ),
        "paused": sample(agent, "pipectl_step_paused", step="broken"),
        "alive": sample(agent, "pipectl_agents_alive"),
    }


async def test_two_agents_export_what_either_of_them_ran(
    database: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO rule_performance (rule_id, rule_name, created_at)"
        " VALUES ('r', 'r', (now() AT TIME ZONE 'UTC') - interval '2 days')"
    )
    clock = past_clock()  # nothing is scheduled unless the test moves it
    async with (
        running_agent(database, BODY, name="agent-a", clock=clock) as a,
        running_agent(database, BODY, name="agent-b", clock=clock) as b,
    ):
        assert await a.run_check("rp_fresh", "manual") == CheckStatus.FAIL
        await a.run_chain(["rule_effectiveness_summary"], Trigger.MANUAL)
        await a.run_chain(["broken"], Trigger.MANUAL)
        for agent in (a, b):  # as at their next heartbeat
            await agent.parts.membership.export_state()
        seen_by_a, seen_by_b = exported(a), exported(b)
    assert seen_by_a == seen_by_b, "both agents must export the same picture"
    assert seen_by_b["status"] == CheckStatus.FAIL.metric_code
    assert seen_by_b["silenced"] == 0
    assert seen_by_b["broken_failing"] == 1
    assert seen_by_b["refresh_failing"] == 0
    assert seen_by_b["paused"] == 0
    assert seen_by_b["alive"] == 2
    now = datetime.now(UTC).timestamp()
    assert seen_by_b["last_run"] is not None and abs(now - seen_by_b["last_run"]) < 300
    assert seen_by_b["last_success"] is not None and abs(now - seen_by_b["last_success"]) < 300


async def test_a_restarted_agent_exports_the_last_success_at_once(
    database: str, db: asyncpg.Connection
) -> None:
    """Before, the last success was known only once the step succeeded again on this agent:
    after a restart PipectlStepStale could not fire until then."""
    clock = past_clock()
    async with running_agent(database, BODY, name="before", clock=clock) as before:
        await before.run_chain(["rule_effectiveness_summary"], Trigger.MANUAL)
    succeeded = await db.fetchval(
        "SELECT max(finished_at) FROM pipectl.runs WHERE status = 'succeeded'"
    )
    async with running_agent(database, BODY, name="after", clock=clock, serve=False) as after:
        last_success = exported(after)["last_success"]
    assert last_success == succeeded.timestamp()


async def test_retired_definitions_and_cancelled_runs(db: asyncpg.Connection) -> None:
    """Disabled (retired) steps and checks are not exported; a cancelled run decides
    nothing: the step stays failing until a run succeeds."""
    await store.publish_steps(
        db,
        [
            store.StepDefinition("live", "sql", None, "SELECT 1", None, [], "", {}),
            store.StepDefinition("gone", "sql", None, "SELECT 1", None, [], "", {}, False),
        ],
        None,
    )
    await store.publish_checks(
        db,
        [
            store.CheckDefinition("c_live", "volume", None, None, None, "", {}),
            store.CheckDefinition("c_gone", "volume", None, None, None, "", {}, False),
        ],
        None,
    )
    for status in ("succeeded", "failed", "cancelled"):
        run = await store.create_run(db, "live", Trigger.MANUAL, None)
        await store.finish_run(db, run, RunStatus(status))
    state = await store.shared_state(db)
    assert [s.name for s in state.steps] == ["live"]
    assert [c.name for c in state.checks] == ["c_live"]
    assert state.steps[0].failing
    assert state.steps[0].last_success is not None
    assert state.checks[0].status == "nodata" and state.checks[0].last_run is None
    assert state.agents_alive == 0 and state.requests_pending == 0
    await db.execute("UPDATE pipectl.steps SET paused = true WHERE name = 'live'")
    assert (await store.shared_state(db)).steps[0].paused
    soon = datetime.now(UTC) + timedelta(hours=1)
    await db.execute("UPDATE pipectl.checks SET silenced_until = $1", soon)
    assert (await store.shared_state(db)).checks[0].silenced


async def test_metrics_are_served_while_the_database_is_unreachable_at_boot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process used to serve /metrics only once the database had been reached: during
    an outage at boot Prometheus saw the target down, not why."""
    # The process would instrument asyncpg for the whole test session otherwise.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = sock.getsockname()[1]
    loaded = make_loaded(f"postgresql://pipectl@127.0.0.1:{nowhere}/apes", None, BODY)
    process = AgentProcess(loaded, metrics_address="127.0.0.1:0")
    serving = asyncio.create_task(process.serve())
    try:

        async def scraped() -> str | None:
            server = process.metrics
            if server is None or server.port is None:
                return None
            return scrape(server.port)

        body = await wait_for(scraped, timeout=20)
        assert "pipectl_database_up 0.0" in body
        assert "pipectl_agents_alive 0.0" in body
        assert "pipectl_check_status{" not in body
        assert "process_cpu_seconds_total" in body
        assert not process.started.is_set()
    finally:
        process.request_stop()
        assert await asyncio.wait_for(serving, 20) == 0
