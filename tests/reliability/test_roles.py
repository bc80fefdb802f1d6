"""The three pipectl roles, enforced by PostgreSQL: tested by connecting as a login that is a
member of each. And the audit trail: every write names the database user and the reason."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from pipectl import store
from pipectl.identifiers import Relation
from pipectl.model import RequestKind, Trigger
from pipectl.request_args import RerunArgs, SilenceArgs
from tests.agent.conftest import REPO, running_agent
from tests.reliability.audit import audit_alive, audit_final
from tests.reliability.conftest import SUMMARIES, as_user
from tests.reliability.support import (
    STEPS,
    SUMMARY_STEPS,
    connected,
    freshness_check,
    wait_request_done,
)

SUMMARY = "public.rule_effectiveness_summary"


async def _denied(dsn: str, statements: list[str]) -> list[str]:
    """The statements PostgreSQL let through (each tried in a transaction rolled back)."""
    allowed = []
    async with connected(dsn) as conn:
        for statement in statements:
            try:
                async with conn.transaction():
                    await conn.execute(statement)
                    raise _Rollback
            except asyncpg.InsufficientPrivilegeError:
                continue
            except _Rollback:
                allowed.append(statement)
    return allowed


class _Rollback(Exception):
    pass


async def _allowed(dsn: str, statements: list[str]) -> None:
    async with connected(dsn) as conn:
        for statement in statements:
            async with conn.transaction():
                await conn.execute(statement)


FORGERIES = [
    "UPDATE pipectl.requests SET outcome = 'succeeded', done_at = now()",
    "DELETE FROM pipectl.requests",
    "INSERT INTO pipectl.runs (step, trigger, status) VALUES ('x', 'manual', 'succeeded')",
    "UPDATE pipectl.runs SET status = 'succeeded'",
    "INSERT INTO pipectl.events (kind, message) VALUES ('forged', 'nothing happened')",
    "UPDATE pipectl.events SET actor = 'someone else'",
    "DELETE FROM pipectl.events",
    "UPDATE pipectl.steps SET paused = true",
    "UPDATE pipectl.checks SET silenced_until = now() + interval '1 year'",
    "TRUNCATE pipectl.check_results",
    "DELETE FROM pipectl.schema_migrations",
]
SUMMARY_CHANGES = [
    f"REFRESH MATERIALIZED VIEW {SUMMARY}",
    f"REFRESH MATERIALIZED VIEW CONCURRENTLY {SUMMARY}",
    f"ALTER MATERIALIZED VIEW {SUMMARY} RENAME TO gone",
    f"DROP MATERIALIZED VIEW {SUMMARY}",
    "INSERT INTO public.rule_performance (rule_id, rule_name) VALUES ('x', 'x')",
]


async def test_viewer_reads_and_changes_nothing(
    database: str, login_role: Callable[..., Any]
) -> None:
    viewer = as_user(database, await login_role("pipectl_viewer"))
    async with connected(viewer) as conn:
        for table in ("runs", "requests", "events", "agents", "steps", "checks", "samples"):
            await conn.fetch(f"SELECT * FROM pipectl.{table} LIMIT 1")
    filing = "INSERT INTO pipectl.requests (kind, target) VALUES ('rerun', 'x')"
    assert await _denied(viewer, [filing, *FORGERIES, *SUMMARY_CHANGES]) == []


async def test_operator_files_requests_and_cannot_touch_summaries_or_records(
    database: str, login_role: Callable[..., Any]
) -> None:
    role = await login_role("pipectl_operator")
    operator = as_user(database, role)
    async with connected(operator) as conn:
        request = await store.create_request(
            conn, RequestKind.RERUN, "rule_effectiveness_summary", "nightly check"
        )
    assert request.requested_by == role
    assert await _denied(operator, [*FORGERIES, *SUMMARY_CHANGES]) == []


async def test_agent_role_has_what_the_agent_needs_and_no_more(
    database: str, login_role: Callable[..., Any]
) -> None:
    agent = as_user(database, await login_role("pipectl_agent"))
    await _allowed(agent, ["SELECT count(*) FROM public.user_feedback"])
    async with connected(agent) as conn:
        for summary in SUMMARIES:  # MAINTAIN on 17+, pipectl.refresh_summary() before
            await store.refresh_summary(conn, Relation.parse(summary), concurrently=True)
    assert (
        await _denied(
            agent,
            [
                "INSERT INTO pipectl.requests (kind, target) VALUES ('rerun', 'x')",
                "UPDATE pipectl.events SET actor = 'someone else'",
                "DELETE FROM pipectl.steps",
                "UPDATE pipectl.check_results SET status = 'ok'",
                "UPDATE pipectl.schema_migrations SET checksum = 'x'",
                "INSERT INTO public.rule_performance (rule_id, rule_name) VALUES ('x', 'x')",
                "DELETE FROM public.user_feedback",
                "DROP TABLE pipectl.runs",
                "CREATE TABLE pipectl.extra (x int)",
            ],
        )
        == []
    )


async def test_an_agent_running_as_the_agent_role_does_its_whole_job_audited(
    database: str, login_role: Callable[..., Any]
) -> None:
    """Schedules, requests of every kind, checks, retention, reaping a lost peer, stop: all
    as pipectl_agent. Every operator action is in pipectl.events with the operator's user
    and reason."""
    agent_role = await login_role("pipectl_agent")
    operator_role = await login_role("pipectl_operator")
    operator = as_user(database, operator_role)
    peer_request, peer = await _a_peer_that_died_holding_work(database, operator)
    body = '[agent]\nheartbeat = "500ms"\n' + SUMMARY_STEPS + freshness_check("1s")
    wanted = [
        (
            RequestKind.RERUN,
            "rule_effectiveness_summary",
            RerunArgs(downstream=True),
            "backfill done",
        ),
        (RequestKind.PAUSE, "user_satisfaction_summary", None, "vacuum tonight"),
        (RequestKind.RESUME, "user_satisfaction_summary", None, "vacuum finished"),
        (
            RequestKind.SILENCE,
            "rule_performance_freshness",
            SilenceArgs(seconds=600),
            "feed paused",
        ),
        (RequestKind.UNSILENCE, "rule_performance_freshness", None, "feed back"),
        (RequestKind.CHECK, "rule_performance_freshness", None, "after the fix"),
    ]
    async with running_agent(as_user(database, agent_role), body) as agent:
        assert await wait_request_done(database, peer_request) == "succeeded"
        filed = []
        async with connected(operator) as conn:
            for kind, target, args, reason in wanted:
                filed.append(await store.create_request(conn, kind, target, reason, args))
                await wait_request_done(database, filed[-1].id)
        await audit_alive(database, datetime.now(UTC), steps=STEPS)
        assert agent.pool is not None
        pruned = await store.prune(agent.pool, {"results": timedelta(0)})
        assert pruned["results"] > 0
    await audit_final(database, SUMMARIES)
    async with connected(database) as conn:
        outcomes = await conn.fetch("SELECT outcome FROM pipectl.requests ORDER BY id")
        events = await conn.fetch(
            "SELECT kind, subject, actor, message, detail FROM pipectl.events"
        )
        peer_runs = await conn.fetch(
            "SELECT status, error FROM pipectl.runs WHERE agent_id = $1", peer
        )
        peer_lost = await conn.fetchval("SELECT lost_at FROM pipectl.agents WHERE id = $1", peer)
    assert [r["outcome"] for r in outcomes] == ["succeeded"] * (len(wanted) + 1)
    assert peer_lost is not None, "the agent declared its dead peer lost"
    assert [(r["status"], r["error"][:11]) for r in peer_runs] == [("failed", "agent lost:")]
    lost = [e for e in events if e["kind"] == "agent.lost"]
    assert [(e["subject"], e["actor"]) for e in lost] == [("dead-peer", agent_role)]
    for request, (kind, target, _args, reason) in zip(filed, wanted, strict=True):
        mine = [e for e in events if (e["detail"] or {}).get("request_id") == request.id]
        kinds = sorted(e["kind"] for e in mine)
        assert f"request.{kind}" in kinds and "request.done" in kinds, kinds
        assert all(e["actor"] == operator_role for e in mine), [dict(e) for e in mine]
        assert any(e["message"].endswith(reason) for e in mine if e["kind"] != "request.done")
        assert all(e["subject"] == target for e in mine)
    actions = {e["kind"]: e for e in events if e["kind"] in ("step.paused", "step.resumed")}
    assert actions["step.paused"]["actor"] == operator_role
    assert actions["step.paused"]["message"].endswith(": vacuum tonight")
    started = [
        e
        for e in events
        if e["kind"] in ("agent.started", "agent.stopped") and e["subject"] != "dead-peer"
    ]
    assert {e["actor"] for e in started} == {agent_role}, "agent events name its database user"


async def _a_peer_that_died_holding_work(database: str, operator: str) -> tuple[int, uuid.UUID]:
    """An agent that claimed an operator's rerun, started a run and stopped heartbeating an
    hour ago (written as the schema owner): a live agent must declare it lost, fail its run
    and execute the request itself."""
    peer = uuid.uuid4()
    async with connected(operator) as conn:
        request = await store.create_request(
            conn, RequestKind.RERUN, "rule_effectiveness_summary", "before the peer died"
        )
    async with connected(database) as conn:
        await store.register_agent(
            conn, agent_id=peer, name="dead-peer", host="gone", pid=1, version="t",
            heartbeat_seconds=0.5,
        )  # fmt: skip
        assert [r.id for r in await store.claim_requests(conn, peer)] == [request.id]
        run = await store.create_run(
            conn, "rule_effectiveness_summary", Trigger.MANUAL, peer, request_id=request.id
        )
        await store.start_run(conn, run)
        await conn.execute(
            "UPDATE pipectl.agents SET last_seen = now() - interval '1 hour' WHERE id = $1", peer
        )
    return request.id, peer


async def test_cli_refused_by_the_database_says_which_role_is_needed(
    database: str, login_role: Callable[..., Any], tmp_path: Path
) -> None:
    async with connected(database) as conn:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('step_a', 'sql')")
    viewer = await login_role("pipectl_viewer")
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{as_user(database, viewer)}"\n')
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipectl", "--config", str(config), "rerun", "step_a"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"pipectl: permission denied: database role '{viewer}' may not file requests"
        " (it needs pipectl_operator)"
    )
    assert "Traceback" not in done.stderr
