"""Requests under load and abuse: a burst of 1,000 shared by two agents, garbage on the
NOTIFY channels, malformed request rows, claims left behind by a stopping or cut-off agent."""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from pipectl import store
from pipectl.embedded import EmbeddedPostgres
from pipectl.model import RequestKind, Trigger
from tests.agent.conftest import AgentProcess, running_agent
from tests.helpers import wait_for
from tests.reliability.audit import audit_alive, audit_final
from tests.reliability.conftest import SUMMARIES
from tests.reliability.support import (
    STEPS,
    SUMMARY_STEPS,
    connected,
    fetchval,
    file_request,
    freshness_check,
    wait_request_done,
    wait_run_status,
)

IN_PROCESS = '[agent]\nheartbeat = "500ms"\n'
BURST = 1000
BURST_STEPS = 20


def _burst_steps() -> str:
    """Cheap steps that leave a row per execution, so executions can be counted apart from
    pipectl's own bookkeeping."""
    return "".join(
        f'\n[[steps]]\nname = "burst_{i}"\nkind = "sql"\n'
        f"sql = \"INSERT INTO public.burst_log (step) VALUES ('burst_{i}')\"\n"
        for i in range(BURST_STEPS)
    )


@pytest.mark.slow
async def test_a_burst_of_1000_requests_two_agents_each_executed_once(
    own_postgres: EmbeddedPostgres, agent_processes: Callable[..., AgentProcess]
) -> None:
    dsn = own_postgres.dsn()
    async with connected(dsn) as conn:
        await conn.execute("CREATE TABLE public.burst_log (step text NOT NULL)")
    body = SUMMARY_STEPS + _burst_steps()
    agents = [agent_processes(dsn, body, name=f"agent-{n}") for n in "ab"]
    await wait_for(
        lambda: fetchval(
            dsn,
            "SELECT count(*) = 2 FROM pipectl.agents WHERE stopped_at IS NULL AND lost_at IS NULL",
        ),
        timeout=30,
    )
    started = time.monotonic()
    async with connected(dsn) as conn:
        await conn.execute(
            "INSERT INTO pipectl.requests (kind, target, reason)"
            " SELECT 'rerun', 'burst_' || (g % $2), 'burst' FROM generate_series(1, $1) AS g",
            BURST,
            BURST_STEPS,
        )
    await wait_for(
        lambda: fetchval(dsn, "SELECT count(*) = 0 FROM pipectl.requests WHERE done_at IS NULL"),
        timeout=240,
        interval=0.5,
    )
    drained = time.monotonic() - started
    await audit_alive(dsn, datetime.now(UTC), steps=STEPS)
    for process in agents:
        process.signal(signal.SIGTERM)
        assert process.wait(20) == 0
    report = await audit_final(dsn, SUMMARIES)
    assert report.requests == BURST
    async with connected(dsn) as conn:
        per_request = await conn.fetchval(
            "SELECT count(*) FROM pipectl.requests q WHERE (SELECT count(*) FROM pipectl.runs r"
            " WHERE r.request_id = q.id) <> 1"
        )
        executed = await conn.fetchval("SELECT count(*) FROM public.burst_log")
        succeeded = await conn.fetchval(
            "SELECT count(*) FROM pipectl.runs WHERE request_id IS NOT NULL"
            " AND status = 'succeeded'"
        )
        by_agent = await conn.fetch(
            "SELECT a.name, count(*) AS n FROM pipectl.runs r"
            " JOIN pipectl.agents a ON a.id = r.agent_id WHERE r.request_id IS NOT NULL"
            " GROUP BY a.name ORDER BY a.name"
        )
        statuses = await conn.fetch(
            "SELECT status, count(*) AS n FROM pipectl.runs WHERE request_id IS NOT NULL"
            " GROUP BY 1 ORDER BY 1"
        )
    assert per_request == 0, "every request must have exactly one run"
    assert executed == succeeded, "each successful run executed its SQL exactly once"
    assert {r["name"] for r in by_agent} == {"agent-a", "agent-b"}, "both agents took a share"
    print(
        f"FIGURE burst: {BURST} requests drained in {drained:.1f}s; outcomes {report.outcomes};"
        f" runs {dict((r['status'], r['n']) for r in statuses)};"
        f" per agent {dict((r['name'], r['n']) for r in by_agent)}"
    )


GARBAGE = [
    "",
    "not a number",
    "-1",
    "12 13",
    "١٢",  # digits, but not ASCII ones
    "{" * 4000,
    "[" * 3000 + "]" * 3000,
    '"runs"',
    "[1, 2]",
    '{"table": 5}',
    "x" * 7999,
    "\u202e\u0000".replace("\u0000", "") + "ünïcødé; DROP TABLE canary; --",
]


async def test_malformed_notifications_and_request_rows_are_ignored_or_rejected(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pipectl.agent.service")
    async with connected(database) as conn:
        malformed = [
            await conn.fetchval(
                "INSERT INTO pipectl.requests (kind, target, args) VALUES ($1, $2, $3::text::jsonb)"
                " RETURNING id",
                kind,
                target,
                args,
            )
            for kind, target, args in [
                ("rerun", "rule_effectiveness_summary", "[" * 3000 + "]" * 3000),
                ("silence", "rule_performance_freshness", '{"seconds": 1e5000}'),
                ("silence", "rule_performance_freshness", '{"seconds": 1e300}'),
                ("silence", "rule_performance_freshness", '{"seconds": -5}'),
                ("rerun", "rule_effectiveness_summary", '{"downstream": {"a": [1, 2]}}'),
                ("rerun", "rule_effectiveness_summary", '"just text"'),
                ("rerun", "x'; DROP TABLE pipectl.runs; --", "{}"),
                ("pause", "é" * 200, "{}"),
                ("check", "\u202enothing", "{}"),
            ]
        ]
    body = IN_PROCESS + SUMMARY_STEPS + freshness_check("1h")
    async with running_agent(database, body) as agent:

        async def listening() -> bool:
            return agent.listening  # both channels LISTENed to

        await wait_for(listening)
        async with connected(database) as conn:
            for payload in GARBAGE:
                for channel in ("pipectl_requests", "pipectl_changes"):
                    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        for request_id in malformed:
            await wait_request_done(database, request_id)
        good = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
        assert await wait_request_done(database, good.id) == "succeeded"
        await audit_alive(database, datetime.now(UTC), steps=STEPS)
        assert not agent.stopping.is_set()
    await audit_final(database, SUMMARIES)
    async with connected(database) as conn:
        rows = await conn.fetch(
            "SELECT id, outcome, detail FROM pipectl.requests WHERE id = ANY($1) ORDER BY id",
            malformed,
        )
        runs_table = await conn.fetchval("SELECT to_regclass('pipectl.runs') IS NOT NULL")
    assert runs_table
    assert [r["outcome"] for r in rows] == ["rejected"] * len(malformed), [dict(r) for r in rows]
    details = [r["detail"] for r in rows]
    assert details[0] == "request arguments must be a JSON object"
    assert details[1] == details[2] == "silences are limited to 30 days"
    assert details[3] == "silence needs 'seconds' > 0"
    assert details[4] == "'downstream' must be true or false"
    assert details[5] == "request arguments must be a JSON object"
    assert details[6].startswith('unknown step "x\'; DROP TABLE pipectl.runs; --"')
    warnings = [r.getMessage() for r in caplog.records if "malformed notification" in r.message]
    assert any("on pipectl_requests" in w for w in warnings)
    assert any("on pipectl_changes" in w for w in warnings)
    assert not any("DROP TABLE" in w or "ünïcødé" in w for w in warnings), "payloads not quoted"
    assert not [r for r in caplog.records if r.exc_info], "no traceback for bad input"


async def test_claims_of_a_stopping_agent_go_back_to_the_queue(database: str) -> None:
    """An agent stopped while holding a claim it had not started (its task cancelled before
    it ran) hands the request back; the next agent executes it once."""
    request = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
    async with running_agent(database, IN_PROCESS + SUMMARY_STEPS, serve=False) as idle:
        async with connected(database) as conn:
            claimed = await store.claim_requests(conn, idle.agent_id)
        assert [r.id for r in claimed] == [request.id]
    holder = await fetchval(
        database, "SELECT claimed_by FROM pipectl.requests WHERE id = $1", request.id
    )
    assert holder is None, "a stopped agent must not keep claims"
    async with running_agent(database, IN_PROCESS + SUMMARY_STEPS):
        assert await wait_request_done(database, request.id) == "succeeded"
    report = await audit_final(database, SUMMARIES)
    assert report.outcomes == {"succeeded": 1}


async def test_a_stopping_agent_cancels_a_held_rerun_that_made_runs(database: str) -> None:
    """A rerun whose task was cancelled past the shutdown deadline after it made runs is
    recorded as cancelled, not handed back: another agent would repeat the runs."""
    request = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
    async with (
        running_agent(database, IN_PROCESS + SUMMARY_STEPS, serve=False) as idle,
        connected(database) as conn,
    ):
        claimed = await store.claim_requests(conn, idle.agent_id)
        assert [r.id for r in claimed] == [request.id]
        await store.create_run(
            conn,
            "rule_effectiveness_summary",
            Trigger.MANUAL,
            idle.agent_id,
            request_id=request.id,
        )
    async with connected(database) as conn:
        row = await conn.fetchrow(
            "SELECT claimed_by, outcome, detail FROM pipectl.requests WHERE id = $1", request.id
        )
        run = await conn.fetchval(
            "SELECT status FROM pipectl.runs WHERE request_id = $1", request.id
        )
    assert row["outcome"] == "cancelled"
    assert row["detail"] == "agent stopped while executing the request"
    assert run == "cancelled"  # the unfinished run was closed by the same stop


async def test_a_claim_whose_reply_was_lost_is_taken_again(database: str) -> None:
    """The claim committed but the agent never got the row (the connection dropped with the
    reply): its own sweep claims the request again instead of leaving it claimed forever."""
    async with running_agent(database, IN_PROCESS + SUMMARY_STEPS) as agent:
        request = await file_request(database, RequestKind.PAUSE, "user_satisfaction_summary")
        await wait_request_done(database, request.id)
        lost = await file_request(database, RequestKind.RESUME, "user_satisfaction_summary")
        async with connected(database) as conn:
            # What the lost reply left behind: claimed by this live agent, not executing.
            await conn.execute(
                "UPDATE pipectl.requests SET claimed_by = $1, claimed_at = now()"
                " WHERE id = $2 AND done_at IS NULL",
                agent.agent_id,
                lost.id,
            )
        assert await wait_request_done(database, lost.id) == "succeeded"
    await audit_final(database, SUMMARIES)


SLEEPY = """
[[steps]]
name = "sleepy"
kind = "sql"
sql = "SELECT pg_sleep(2)"
"""


async def test_an_agent_cut_off_and_declared_lost_does_not_overwrite_its_successor(
    database: str,
) -> None:
    """Peers declared this agent lost while it ran a request (a network partition): they
    failed its run and released the request. Coming back, it abandons its work without
    recording an outcome over the successor's, and the request is executed again once."""
    body = IN_PROCESS + SUMMARY_STEPS + SLEEPY
    async with running_agent(database, body) as agent:
        request = await file_request(database, RequestKind.RERUN, "sleepy")
        first = await wait_run_status(database, "sleepy", "running")
        cut_off = agent.agent_id
        async with connected(database) as conn:
            # What a surviving peer does to a silent agent (store.reap_lost_agents).
            await conn.execute(
                "UPDATE pipectl.agents SET last_seen = now() - interval '1 hour' WHERE id = $1",
                cut_off,
            )
            reaped = await store.reap_lost_agents(conn, uuid.uuid4(), 3, [])
        assert [r.agent_id for r in reaped] == [cut_off]
        assert await wait_request_done(database, request.id, timeout=30) == "succeeded"
        assert agent.agent_id != cut_off, "the agent came back under a new identity"
    await audit_final(database, SUMMARIES)
    async with connected(database) as conn:
        runs = await conn.fetch(
            "SELECT id, status, error, agent_id FROM pipectl.runs WHERE request_id = $1"
            " ORDER BY id",
            request.id,
        )
    assert runs[0]["id"] == first
    assert runs[0]["status"] == "failed"
    assert runs[0]["error"].startswith("agent lost: ")
    assert [r["status"] for r in runs[1:]] == ["succeeded"]
    assert runs[1]["agent_id"] != cut_off


async def test_an_agent_declared_lost_claims_nothing_under_that_identity(database: str) -> None:
    """Between being declared lost and noticing it, an agent's request loop may look for work
    again: it must neither take back the request it is still executing (it would run twice)
    nor claim anything else under the identity its peers have written off."""
    request = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
    cut_off, survivor = uuid.uuid4(), uuid.uuid4()
    async with connected(database) as conn:
        for agent_id, name in ((cut_off, "cut-off"), (survivor, "survivor")):
            await store.register_agent(
                conn,
                agent_id=agent_id,
                name=name,
                host="test",
                pid=1,
                version="test",
                heartbeat_seconds=0.5,
            )
        assert [r.id for r in await store.claim_requests(conn, cut_off)] == [request.id]
        await conn.execute(
            "UPDATE pipectl.agents SET last_seen = now() - interval '1 hour' WHERE id = $1",
            cut_off,
        )
        reaped = await store.reap_lost_agents(conn, survivor, 3, [])
        assert [r.agent_id for r in reaped] == [cut_off]
        assert await store.claim_requests(conn, cut_off, executing=[request.id]) == []
        assert await store.claim_requests(conn, cut_off) == []
        assert [r.id for r in await store.claim_requests(conn, survivor)] == [request.id]


async def test_a_loop_that_crashes_on_a_bug_is_restarted(
    database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that escapes a loop (here: claiming requests raises once) is logged and the loop
    started again, instead of leaving an agent that heartbeats but never takes a request."""
    from pipectl.agent.requests import RequestQueue

    original_loop = RequestQueue.loop
    crashed = []

    async def crash_once(self: RequestQueue) -> None:
        if not crashed:
            crashed.append(True)
            raise KeyError("a bug in the request loop")
        await original_loop(self)

    monkeypatch.setattr(RequestQueue, "loop", crash_once)
    caplog.set_level(logging.ERROR, logger="pipectl.agent.runtime")
    request = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
    async with running_agent(database, IN_PROCESS + SUMMARY_STEPS):
        assert await wait_request_done(database, request.id, timeout=30) == "succeeded"
    assert any(
        "agent loop requests crashed; restarting it in 1s" in r.getMessage() for r in caplog.records
    )
    await audit_final(database, SUMMARIES)
