"""Faults that used to freeze or silence the agent (issue 12 §5), each against real servers.

A write refused by the database, clocks stepped either way, a database that stops answering,
a peer that looks dead from another PID namespace, a scheduled run lost with its agent, a
reload during checks, an outage's log volume, a lock held in another database, and the
session time zone of refreshes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipectl import store
from pipectl.agent.runner import LOCK_NAMESPACE
from pipectl.clock import DatabaseClock, SystemClock
from pipectl.embedded import EmbeddedPostgres
from pipectl.model import RequestKind, RunStatus
from tests.agent.conftest import running_agent
from tests.conftest import PgServer
from tests.helpers import dsn_for, make_loaded, wait_for
from tests.proxy import hanging_proxy
from tests.reliability.support import (
    SUMMARY_STEPS,
    connected,
    fetchval,
    file_request,
    freshness_check,
    wait_request_done,
)

FAST = '[agent]\nheartbeat = "500ms"\n'

TWO_STEPS = """
[defaults]
retry_backoff = "100ms"
retry_backoff_max = "200ms"
statement_timeout = "5s"

[[steps]]
name = "upstream"
kind = "sql"
sql = "SELECT 1"
every = "1h"

[[steps]]
name = "downstream"
kind = "sql"
sql = "SELECT 2"
depends_on = ["upstream"]
every = "1h"
"""


class SkewedClock(SystemClock):
    """The host's clocks, with the wall clock off by `offset` seconds (settable)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return super().now() + timedelta(seconds=self.offset)


async def unfinished_runs(dsn: str) -> int:
    count: int = await fetchval(
        dsn, "SELECT count(*) FROM pipectl.runs WHERE status IN ('queued', 'running')"
    )
    return count


# ---------------------------------------------------------------------------- writes refused


REFUSE_RUN_UPDATES = """
CREATE TABLE public.test_fault (sqlstate text NOT NULL);
CREATE FUNCTION public.test_refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE code text;
BEGIN
    SELECT sqlstate INTO code FROM public.test_fault LIMIT 1;
    IF code IS NOT NULL THEN
        RAISE EXCEPTION 'could not extend file (test fault)' USING ERRCODE = code;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_writes BEFORE UPDATE ON pipectl.runs
    FOR EACH ROW EXECUTE FUNCTION public.test_refuse_writes();
"""


@pytest.mark.parametrize("sqlstate", ["53100", "25006"], ids=["disk_full", "read_only"])
async def test_a_refused_run_write_leaves_nothing_queued_and_heals_itself(
    database: str, sqlstate: str
) -> None:
    """Disk full (53100) or read-only after a failover (25006) while recording a run: the
    run used to stay `queued` forever and every downstream tick skipped "upstream still
    running" until a restart. Now the request fails with the reason, the run's end is kept
    and written once writes work again, and downstream runs as soon as upstream has."""
    async with connected(database) as conn:
        await conn.execute(REFUSE_RUN_UPDATES)
        await conn.execute("INSERT INTO public.test_fault VALUES ($1)", sqlstate)
    async with running_agent(database, FAST + TWO_STEPS) as agent:
        request = await file_request(database, RequestKind.RERUN, "upstream")
        assert await wait_request_done(database, request.id) == "failed"
        detail = await fetchval(
            database, "SELECT detail FROM pipectl.requests WHERE id = $1", request.id
        )
        assert sqlstate in detail
        assert agent.runtime.ledger.pending, "the run's end waits to be written"
        assert await unfinished_runs(database) == 1  # the database refused to close it

        await fetchval(database, "DELETE FROM public.test_fault RETURNING 1")
        await wait_for(lambda: _none_unfinished(database), timeout=10)
        async with connected(database) as conn:
            (run,) = await store.recent_runs(conn, ["upstream"])
        assert run.status == RunStatus.FAILED
        assert run.error is not None
        assert "recorded late" in run.error

        # Downstream is judged on upstream's real outcome at once, never "still running".
        nominal = datetime.now(UTC).replace(microsecond=0)
        await agent.steps.on_tick("downstream", nominal, 0.0)
        skipped = await fetchval(
            database, "SELECT error FROM pipectl.runs WHERE step = 'downstream'"
        )
        assert skipped.startswith("upstream upstream failed"), skipped

        rerun = await file_request(database, RequestKind.RERUN, "upstream")
        assert await wait_request_done(database, rerun.id) == "succeeded"
        await agent.steps.on_tick("downstream", nominal - timedelta(hours=1), 0.0)
        latest = await fetchval(
            database,
            "SELECT status FROM pipectl.runs WHERE step = 'downstream' ORDER BY id DESC LIMIT 1",
        )
        assert latest == "succeeded"
    assert await unfinished_runs(database) == 0


async def _none_unfinished(dsn: str) -> bool:
    return await unfinished_runs(dsn) == 0


# ---------------------------------------------------------------------------- clocks

CHECK_EVERY_SECOND = freshness_check("1s")


async def test_a_clock_a_day_ahead_takes_no_tick_and_stops_no_one(database: str) -> None:
    """An agent whose clock ran a day fast used to push every check's next_due to tomorrow:
    no check ran on any agent afterwards. The database's clock arbitrates claims: the fast
    agent takes nothing ahead of it, and a next_due it could write would be taken over."""
    fast = SkewedClock(offset=86400)
    body = FAST + SUMMARY_STEPS + CHECK_EVERY_SECOND
    loaded = make_loaded(database, None, body)
    from pipectl.agent.service import Agent

    skewed = Agent(loaded, name="fast-clock", clock=fast)
    await skewed.start()
    serving = asyncio.create_task(skewed.serve())
    try:
        await asyncio.sleep(3)  # the fast agent ticks a dozen times
        ahead = await fetchval(
            database,
            "SELECT count(*) FROM pipectl.runs WHERE scheduled_for > now() + interval '1 minute'",
        )
        assert ahead == 0, "a tick ahead of the database's clock was taken"
        due = await fetchval(database, "SELECT max(next_due) - now() FROM pipectl.checks")
        assert due is None or due < timedelta(minutes=1)
        # A next_due written by an older agent with such a clock is taken over.
        await fetchval(
            database, "UPDATE pipectl.checks SET next_due = now() + interval '1 day' RETURNING 1"
        )
        async with running_agent(database, body, name="healthy"):
            before = await _results(database)
            await wait_for(lambda: _more_results(database, before + 2), timeout=15)
    finally:
        await skewed.stop()
        await asyncio.wait_for(serving, 5)


async def _results(dsn: str) -> int:
    count: int = await fetchval(dsn, "SELECT count(*) FROM pipectl.check_results")
    return count


async def _more_results(dsn: str, at_least: int) -> bool:
    return await _results(dsn) >= at_least


async def test_schedules_follow_the_database_clock_when_the_host_clock_steps(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A host clock stepped back 5 minutes used to stop scheduled refreshes for ~85 s, with
    nothing logged; stepped a day ahead, it claimed tomorrow's ticks. Scheduling now goes by
    the database's clock carried on monotonic time: the host clock's steps change nothing."""
    host = SkewedClock()
    clock = DatabaseClock(base=host)
    caplog.set_level(logging.WARNING)
    body = FAST + SUMMARY_STEPS
    from pipectl.agent.service import Agent

    agent = Agent(make_loaded(database, None, body), name="stepped", clock=clock)
    await agent.start()
    serving = asyncio.create_task(agent.serve())
    try:
        started = datetime.now(UTC)
        await wait_for(lambda: _scheduled_since(database, started), timeout=10)
        for offset in (-300, 86400):
            host.offset = offset
            mark = datetime.now(UTC) + timedelta(seconds=1)
            await wait_for(
                lambda mark=mark: _scheduled_since(database, mark, at_least=3),  # type: ignore[misc]
                timeout=10,
            )
        ahead = await fetchval(
            database,
            "SELECT count(*) FROM pipectl.runs WHERE scheduled_for > now() + interval '5 seconds'",
        )
        assert ahead == 0
        assert clock.synced
        stepped = [r.getMessage() for r in caplog.records if "host's clock" in r.getMessage()]
        assert any("-300" in m for m in stepped), stepped
        assert any("+86400" in m for m in stepped), stepped
    finally:
        await agent.stop()
        await asyncio.wait_for(serving, 5)


async def _scheduled_since(dsn: str, since: datetime, at_least: int = 1) -> bool:
    count: int = await fetchval(
        dsn,
        "SELECT count(*) FROM pipectl.runs WHERE trigger = 'schedule' AND status = 'succeeded'"
        " AND step = 'rule_effectiveness_summary' AND scheduled_for >= $1",
        since,
    )
    return count >= at_least


# ---------------------------------------------------------------------------- a hung database


async def test_a_database_that_stops_answering_is_reported_and_stop_stays_in_time(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With its connections black-holed the agent used to log nothing, keep exporting
    pipectl_database_up 1 and ignore SIGTERM for 40 s. Every statement is now bounded on the
    client: the hung database is reported within a few heartbeats (the shared series removed,
    no agent alive), and stop() keeps to the shutdown timeout."""
    caplog.set_level(logging.WARNING)
    async with hanging_proxy(database) as proxy:
        body = FAST.replace("[agent]\n", '[agent]\nshutdown_timeout = "6s"\n') + SUMMARY_STEPS
        from pipectl.agent.service import Agent

        agent = Agent(make_loaded(proxy.dsn(database), None, body), name="behind-proxy")
        await agent.start()
        serving = asyncio.create_task(agent.serve())
        try:
            started = datetime.now(UTC)
            await wait_for(lambda: _scheduled_since(database, started), timeout=10)
            proxy.hang()
            hung_at = time.monotonic()

            async def reported_down() -> bool:
                return agent.metrics.registry.get_sample_value("pipectl_database_up") == 0

            await wait_for(reported_down, timeout=15)
            noticed = time.monotonic() - hung_at
            # Nothing shared is known now: no agent alive, and no step state left stale.
            registry = agent.metrics.registry
            assert registry.get_sample_value("pipectl_agents_alive") == 0
            assert (
                registry.get_sample_value(
                    "pipectl_step_last_success_timestamp_seconds",
                    {"step": "rule_effectiveness_summary"},
                )
                is None
            )
            assert any("database unreachable" in r.getMessage() for r in caplog.records)
        finally:
            began = time.monotonic()
            await agent.stop()
            stopping = time.monotonic() - began
            await asyncio.wait_for(serving, 5)
    print(f"FIGURE hung database: reported after {noticed:.1f}s, stop took {stopping:.1f}s")
    assert stopping < 6 + 1, "stop() must keep to shutdown_timeout"


# ---------------------------------------------------------------------------- liveness


async def test_a_live_peer_with_this_host_name_and_an_unknown_pid_is_not_declared_lost(
    database: str,
) -> None:
    """A second agent with the same host name in another PID namespace (a container, or
    ProtectProc=invisible) used to declare the running one gone at start and abort its run:
    its PID did not exist here. Liveness now comes from the peer's sessions (its advisory
    lock), whatever its PID."""
    peer_id = uuid.uuid4()
    invisible_pid = 2**22 + 4321  # beyond pid_max: no such process here
    async with connected(database) as peer:
        await store.register_agent(
            peer,
            agent_id=peer_id,
            name="container-peer",
            host=socket.gethostname(),
            pid=invisible_pid,
            version="test",
            heartbeat_seconds=0.5,
        )
        await store.hold_liveness(peer, peer_id)
        run_id = await store.create_run(peer, "upstream", "manual", peer_id)
        await store.start_run(peer, run_id)
        stop = asyncio.Event()

        async def heartbeats() -> None:
            while not stop.is_set():
                await store.heartbeat(peer, peer_id)
                await asyncio.sleep(0.2)

        beating = asyncio.create_task(heartbeats())
        try:
            async with running_agent(database, FAST + TWO_STEPS):
                await asyncio.sleep(3)  # start-up and six heartbeats of ours
        finally:
            stop.set()
            await beating
        lost = await peer.fetchval("SELECT lost_at FROM pipectl.agents WHERE id = $1", peer_id)
        status = await peer.fetchval("SELECT status FROM pipectl.runs WHERE id = $1", run_id)
    assert lost is None
    assert status == "running"


async def test_a_scheduled_run_lost_with_its_agent_is_run_again(database: str) -> None:
    """A scheduled run killed with its agent was marked "agent lost" and nothing else: a lost
    day for a daily step. The survivor now queues it again and runs it."""
    ghost = uuid.uuid4()
    async with connected(database) as conn:
        await store.register_agent(
            conn,
            agent_id=ghost,
            name="killed",
            host="elsewhere",
            pid=1,
            version="test",
            heartbeat_seconds=0.5,
        )
        tick = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        claim = await store.claim_tick(conn, "upstream", tick, ghost)
        assert claim.run_id is not None
        await store.start_run(conn, claim.run_id)
    async with running_agent(database, FAST + TWO_STEPS):

        async def retried() -> asyncpg.Record | None:
            async with connected(database) as conn:
                row: asyncpg.Record | None = await conn.fetchrow(
                    "SELECT * FROM pipectl.runs WHERE parent_run_id = $1 AND status = 'succeeded'",
                    claim.run_id,
                )
                return row

        retry = await wait_for(retried, timeout=15)
    assert retry["trigger"] == "retry"
    assert retry["attempt"] == 2
    lost = await fetchval(database, "SELECT status FROM pipectl.runs WHERE id = $1", claim.run_id)
    assert lost == "failed"


async def test_an_agent_declared_lost_claims_no_tick_under_that_identity(database: str) -> None:
    """Between being declared lost and noticing it, an agent's schedule may still fire: a
    tick claimed then stayed queued for good (its agent abandons what it holds, and nobody
    reaps an agent twice). Such a claim is refused; a live agent's is not."""
    cut_off, survivor = uuid.uuid4(), uuid.uuid4()
    tick = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
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
        await conn.execute(
            "UPDATE pipectl.agents SET last_seen = now() - interval '1 hour' WHERE id = $1",
            cut_off,
        )
        reaped = await store.reap_lost_agents(conn, survivor, 3, [])
        assert [r.agent_id for r in reaped] == [cut_off]
        refused = await store.claim_tick(conn, "upstream", tick, cut_off)
        assert refused.run_id is None
        assert await conn.fetchval("SELECT count(*) FROM pipectl.runs") == 0
        taken = await store.claim_tick(conn, "upstream", tick, survivor)
        assert taken.run_id is not None


# ---------------------------------------------------------------------------- reload


async def test_a_reload_during_checks_loses_no_batch(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP, even with an unchanged config, used to log `'NoneType' object has no
    attribute 'run_many'` and lose the check batches in flight: the engine was swapped
    out under them. A reload now replaces the whole plan; work in flight keeps its own."""
    caplog.set_level(logging.ERROR)
    body = FAST + SUMMARY_STEPS + freshness_check("1h")
    rounds, batches = 10, 6  # the old race hit about every other round
    async with running_agent(database, body) as agent:
        for _ in range(rounds):
            running = [
                asyncio.create_task(agent.run_checks(["rule_performance_freshness"], "manual"))
                for _ in range(batches)
            ]
            await agent.reload(make_loaded(database, None, body))
            statuses = await asyncio.gather(*running)
            assert all(s["rule_performance_freshness"] for s in statuses)
    stored = await fetchval(database, "SELECT count(*) FROM pipectl.check_results")
    assert stored == rounds * batches
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------- outage noise


@pytest.mark.slow
async def test_an_outage_costs_a_few_lines_not_thousands(
    own_postgres: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """During a 155 s outage one agent logged 3,036 "retrying claim_check_ticks" warnings.
    Now each condition says it failed, reminds once a minute, and says it recovered."""
    dsn = own_postgres.dsn()
    caplog.set_level(logging.INFO)
    body = FAST + SUMMARY_STEPS + freshness_check("1s")
    async with running_agent(dsn, body):
        started = datetime.now(UTC)
        await wait_for(lambda: _scheduled_since(dsn, started), timeout=10)
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(8)
        caplog.clear()
        await asyncio.sleep(8)  # sixteen ticks of each of three loops, thirty heartbeats
        mid_outage = [r for r in caplog.records if r.levelno >= logging.WARNING]
        own_postgres.start()
        back = datetime.now(UTC)
        await wait_for(lambda: _scheduled_since(dsn, back), timeout=30)
    assert len(mid_outage) <= 3, [r.getMessage() for r in mid_outage]
    print(f"FIGURE outage: {len(mid_outage)} warnings in 8 s of a running outage")


# ---------------------------------------------------------------------------- lock holder


async def test_the_lock_holder_named_is_never_a_session_of_another_database(
    database: str, pg_server: PgServer
) -> None:
    """Advisory locks are per database: the same numbers held in another tenant's database
    are no business of ours, and naming that session leaked it."""
    other = f"pipectl_other_{uuid.uuid4().hex[:8]}"
    async with connected(pg_server.dsn) as admin:
        await admin.execute(f'CREATE DATABASE "{other}"')
    tenant = await asyncpg.connect(
        dsn_for(pg_server.dsn, other), server_settings={"application_name": "tenant-secret"}
    )
    ours = await asyncpg.connect(database, server_settings={"application_name": "our-dba"})
    try:
        for session in (tenant, ours):
            await session.execute("BEGIN")
            await session.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext('upstream'))", LOCK_NAMESPACE
            )
        request = await file_request(database, RequestKind.RERUN, "upstream")
        async with running_agent(database, FAST + TWO_STEPS):
            assert await wait_request_done(database, request.id) == "failed"
        error = await fetchval(database, "SELECT error FROM pipectl.runs WHERE step = 'upstream'")
    finally:
        await ours.close()
        await tenant.close()
        async with connected(pg_server.dsn) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    assert "our-dba" in error
    assert "tenant-secret" not in error


# ---------------------------------------------------------------------------- time zone


async def test_refreshes_run_in_the_configured_time_zone(database: str) -> None:
    """With the database's default zone at Asia/Tokyo the 30-day summary lost 9 hours of its
    window: the upstream views compare naive timestamps with now(). Refresh sessions now run
    in [agent] timezone (UTC here), whatever the server, database or role default."""
    name = database.rsplit("/", 1)[1]
    async with connected(database) as conn:
        await conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Tokyo'")
        await conn.execute(
            """
            INSERT INTO rule_performance (rule_id, rule_name, prompt_type, improvement_score,
                                          confidence_level, execution_time_ms, created_at)
            VALUES ('edge_rule', 'Edge', 'code', 0.5, 0.5, 10,
                    (now() AT TIME ZONE 'UTC') - interval '30 days' + interval '4 hours')
            """
        )
    body = FAST + SUMMARY_STEPS.replace('every = "1s"', 'every = "1h"')
    request = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
    async with running_agent(database, body):
        assert await wait_request_done(database, request.id) == "succeeded"
    rules = await fetchval(
        database, "SELECT array_agg(rule_id) FROM public.rule_effectiveness_summary"
    )
    assert "edge_rule" in (rules or [])
