"""The agent against real PostgreSQL: ticks, locks, timeouts, retries, DAG, requests."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import asyncpg

from pipectl import store
from pipectl.agent.runner import LOCK_NAMESPACE
from pipectl.clock import FakeClock
from pipectl.model import Outcome, RequestKind, RunStatus
from pipectl.request_args import RerunArgs, SilenceArgs
from tests.agent.conftest import past_clock, running_agent, steps_toml, tick
from tests.helpers import wait_for


async def runs(db: asyncpg.Connection, step: str | None = None) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM pipectl.runs WHERE $1::text IS NULL OR step = $1 ORDER BY id", step
    )


async def done(db: asyncpg.Connection, request_id: int) -> asyncpg.Record | None:
    row = await db.fetchrow("SELECT * FROM pipectl.requests WHERE id = $1", request_id)
    return row if row and row["done_at"] else None


async def test_two_agents_run_each_tick_once_and_never_overlap(
    database: str, db: asyncpg.Connection
) -> None:
    """Eight ticks of two steps and two agents, each on a fake clock of its own: each tick
    runs once, on either agent, and runs of one step never overlap.

    Which agent wins a race for a tick is not for the test to decide (under load the agent
    woken first can win them all), so the first four ticks are taken in turns: the agent
    whose clock moves first runs the tick and the other, moved after, must find it taken.
    The last four are raced, both clocks moved before either's work settles."""
    body = steps_toml('every = "1s"', 'every = "1s"')
    clock_a = past_clock()
    clock_b = FakeClock(start=clock_a.now())
    first = clock_a.now() + timedelta(seconds=1)
    async with (
        running_agent(database, body, name="agent-a", clock=clock_a) as a,
        running_agent(database, body, name="agent-b", clock=clock_b) as b,
    ):
        turns = [((clock_a, a), (clock_b, b)), ((clock_b, b), (clock_a, a))]
        for second in range(4):
            (lead_clock, leader), (follow_clock, follower) = turns[second % 2]
            await tick(lead_clock, 1.0, leader)
            await tick(follow_clock, 1.0, follower)
        for _ in range(4):
            await clock_a.advance(1.0)
            await clock_b.advance(1.0)
            for agent in (a, b):
                await asyncio.wait_for(agent.runtime.work.settled(), 20)
    expected = [first + timedelta(seconds=s) for s in range(8)]
    owners = {a.identity.id: "agent-a", b.identity.id: "agent-b"}
    for step in ("rule_effectiveness_summary", "user_satisfaction_summary"):
        rows = [r for r in await runs(db, step) if r["trigger"] == "schedule"]
        ticks = [r["scheduled_for"] for r in rows]
        assert len(ticks) == len(set(ticks)), "a tick ran twice"
        assert sorted(ticks) == expected, f"{step}: ticks {ticks}"
        assert all(r["status"] == "succeeded" for r in rows), [dict(r) for r in rows]
        spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"{step}: two runs overlapped"
        by_tick = {r["scheduled_for"]: owners[r["agent_id"]] for r in rows}
        taken_in_turns = [by_tick[t] for t in expected[:4]]
        assert taken_in_turns == ["agent-a", "agent-b", "agent-a", "agent-b"], taken_in_turns


async def test_downstream_waits_for_its_upstream_at_the_same_tick(
    database: str, db: asyncpg.Connection
) -> None:
    body = steps_toml('every = "1s"', 'every = "2s"')
    clock = past_clock()
    async with running_agent(database, body, clock=clock) as agent:
        for _ in range(4):
            await tick(clock, 1.0, agent)
    up = {r["scheduled_for"]: r for r in await runs(db, "rule_effectiveness_summary")}
    down = [r for r in await runs(db, "user_satisfaction_summary") if r["trigger"] == "schedule"]
    assert len(down) == 2, [
        (r["step"], r["scheduled_for"].time(), r["status"], r["error"]) for r in await runs(db)
    ]
    for run in down:
        upstream = up[run["scheduled_for"]]
        assert run["started_at"] >= upstream["finished_at"]


async def test_request_made_with_no_agent_runs_once_at_start(
    database: str, db: asyncpg.Connection
) -> None:
    request = await store.create_request(
        db, RequestKind.RERUN, "rule_effectiveness_summary", "test"
    )
    async with (
        running_agent(database, steps_toml(), name="agent-a"),
        running_agent(database, steps_toml(), name="agent-b"),
    ):
        row = await wait_for(lambda: done(db, request.id))
        await asyncio.sleep(1.0)  # a second execution would show up here
    assert row["outcome"] == "succeeded"
    manual = [r for r in await runs(db) if r["trigger"] == "manual"]
    assert len(manual) == 1
    assert manual[0]["request_id"] == request.id
    assert manual[0]["requested_by"] == request.requested_by


async def test_refresh_past_its_timeout_is_cancelled_and_recorded(
    database: str, db: asyncpg.Connection
) -> None:
    body = """
    [[steps]]
    name = "slow"
    kind = "sql"
    sql = "SELECT pg_sleep(5)"
    statement_timeout = "300ms"
    """
    request = await store.create_request(db, RequestKind.RERUN, "slow")
    async with running_agent(database, body):
        row = await wait_for(lambda: done(db, request.id))
    assert row["outcome"] == "failed"
    (run,) = await runs(db, "slow")
    assert run["status"] == "failed"
    assert run["error"] == "cancelled by statement_timeout (300ms)"
    assert run["attempt"] == 1, "a timeout is not transient: no retry"
    assert (run["finished_at"] - run["started_at"]).total_seconds() < 3


async def test_lock_held_elsewhere_skips_with_the_holder(
    database: str, db: asyncpg.Connection
) -> None:
    holder = await asyncpg.connect(database, server_settings={"application_name": "dba-session"})
    try:
        await holder.execute("BEGIN")
        await holder.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext('rule_effectiveness_summary'))",
            LOCK_NAMESPACE,
        )
        request = await store.create_request(db, RequestKind.RERUN, "rule_effectiveness_summary")
        async with running_agent(database, steps_toml()):
            row = await wait_for(lambda: done(db, request.id))
        assert row["outcome"] == "failed"
        (run,) = await runs(db)
        assert run["status"] == "skipped"
        assert run["error"].startswith("already running elsewhere (dba-session, backend pid")
    finally:
        await holder.close()


async def test_lock_timeout_is_retried_with_backoff_then_succeeds(
    database: str, db: asyncpg.Connection
) -> None:
    """A refresh blocked by another session's lock times out (transient) and is retried."""
    blocker = await asyncpg.connect(database)
    body = steps_toml().replace(
        'relation = "public.rule_effectiveness_summary"',
        'relation = "public.rule_effectiveness_summary"\nlock_timeout = "200ms"\nretries = 5',
    )
    try:
        await blocker.execute("BEGIN")
        # A refresh left uncommitted holds the view's EXCLUSIVE lock (LOCK TABLE refuses views).
        await blocker.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY rule_effectiveness_summary")
        request = await store.create_request(db, RequestKind.RERUN, "rule_effectiveness_summary")
        async with running_agent(database, body):
            await wait_for(lambda: _attempts_at_least(db, 2))
            await blocker.execute("ROLLBACK")
            row = await wait_for(lambda: done(db, request.id))
        assert row["outcome"] == "succeeded"
        attempts = await runs(db)
        assert [r["attempt"] for r in attempts] == list(range(1, len(attempts) + 1))
        assert attempts[-1]["status"] == "succeeded"
        assert all(r["status"] == "failed" for r in attempts[:-1])
        assert all("lock not available" in r["error"] for r in attempts[:-1])
        assert all(r["trigger"] == "retry" for r in attempts[1:])
    finally:
        await blocker.close()


async def _attempts_at_least(db: asyncpg.Connection, n: int) -> bool:
    return len(await runs(db)) >= n


async def test_sql_errors_are_not_retried(database: str, db: asyncpg.Connection) -> None:
    body = """
    [[steps]]
    name = "broken"
    kind = "sql"
    sql = "SELECT no_such_function()"
    """
    request = await store.create_request(db, RequestKind.RERUN, "broken")
    async with running_agent(database, body):
        await wait_for(lambda: done(db, request.id))
    (run,) = await runs(db)
    assert run["status"] == "failed"
    assert run["error"].startswith("UndefinedFunctionError [42883]")


async def test_rerun_with_downstream_runs_in_order_and_skips_after_failure(
    database: str, db: asyncpg.Connection
) -> None:
    body = """
    [[steps]]
    name = "a"
    kind = "sql"
    sql = "SELECT 1"

    [[steps]]
    name = "b"
    kind = "sql"
    sql = "SELECT 1/0"
    depends_on = ["a"]

    [[steps]]
    name = "c"
    kind = "sql"
    sql = "SELECT 1"
    depends_on = ["b"]

    [[steps]]
    name = "d"
    kind = "sql"
    sql = "SELECT 1"
    depends_on = ["a"]
    """
    request = await store.create_request(
        db, RequestKind.RERUN, "a", "backfill", RerunArgs(downstream=True)
    )
    async with running_agent(database, body):
        row = await wait_for(lambda: done(db, request.id))
    assert row["outcome"] == "failed"
    order = [(r["step"], r["status"]) for r in await runs(db)]
    assert order == [("a", "succeeded"), ("b", "failed"), ("c", "skipped"), ("d", "succeeded")]
    skipped = (await runs(db, "c"))[0]
    assert skipped["error"].startswith("upstream b failed (run ")
    assert "b failed" in row["detail"] and "c skipped" in row["detail"]


async def test_scheduled_downstream_is_skipped_when_upstream_failed(
    database: str, db: asyncpg.Connection
) -> None:
    body = """
    [[steps]]
    name = "up"
    kind = "sql"
    sql = "SELECT 1/0"
    every = "1s"

    [[steps]]
    name = "down"
    kind = "sql"
    sql = "SELECT 1"
    every = "1s"
    depends_on = ["up"]
    """
    async with running_agent(database, body):
        await wait_for(lambda: _has_status(db, "down", "skipped"), timeout=6)
    down = [r for r in await runs(db, "down") if r["status"] == "skipped"]
    assert down[0]["error"].startswith("upstream up failed (run ")
    assert not [r for r in await runs(db, "down") if r["status"] == "succeeded"]


async def test_unscheduled_step_runs_after_its_upstream_succeeds(
    database: str, db: asyncpg.Connection
) -> None:
    body = """
    [[steps]]
    name = "up"
    kind = "sql"
    sql = "SELECT 1"
    every = "1s"

    [[steps]]
    name = "after"
    kind = "sql"
    sql = "SELECT 2"
    depends_on = ["up"]
    """
    async with running_agent(database, body):
        await wait_for(lambda: _has_status(db, "after", "succeeded"), timeout=6)
    after = (await runs(db, "after"))[0]
    assert after["trigger"] == "upstream"
    parent = await db.fetchrow("SELECT * FROM pipectl.runs WHERE id = $1", after["parent_run_id"])
    assert parent["step"] == "up"
    assert after["started_at"] >= parent["finished_at"]


async def _has_status(db: asyncpg.Connection, step: str, status: str) -> bool:
    return any(r["status"] == status for r in await runs(db, step))


async def test_pause_persists_and_blocks_schedule_until_resume(
    database: str, db: asyncpg.Connection
) -> None:
    body = steps_toml('every = "1s"')
    pause = await store.create_request(
        db, RequestKind.PAUSE, "rule_effectiveness_summary", "maintenance window"
    )
    async with running_agent(database, body):
        await wait_for(lambda: done(db, pause.id))
        await wait_for(lambda: _has_status(db, "rule_effectiveness_summary", "skipped"))
    state = (await store.step_states(db, ["rule_effectiveness_summary"]))[0]
    assert state.paused
    assert state.paused_reason == "maintenance window"
    assert state.paused_by == pause.requested_by
    skipped = [r for r in await runs(db) if r["status"] == "skipped"]
    assert skipped[-1]["error"] == f"paused by {pause.requested_by}: maintenance window"
    # The pause survived the agent: a new agent still skips, until resumed.
    resume = await store.create_request(db, RequestKind.RESUME, "rule_effectiveness_summary")
    async with running_agent(database, body):
        await wait_for(lambda: done(db, resume.id))
        mark = await db.fetchval("SELECT max(id) FROM pipectl.runs")
        await wait_for(lambda: _succeeded_after(db, mark))
    assert not (await store.step_states(db, ["rule_effectiveness_summary"]))[0].paused
    events = [e.kind for e in await store.recent_events(db, subject="rule_effectiveness_summary")]
    assert "step.paused" in events
    assert "step.resumed" in events


async def _succeeded_after(db: asyncpg.Connection, run_id: int) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pipectl.runs WHERE id > $1 AND status = 'succeeded'", run_id
        )
    )


async def test_bad_requests_are_rejected_not_crashing(
    database: str, db: asyncpg.Connection
) -> None:
    unknown = await store.create_request(db, RequestKind.RERUN, "no_such_step")
    bad_args = await db.fetchval(
        "INSERT INTO pipectl.requests (kind, target, args) VALUES ('rerun', $1, $2) RETURNING id",
        "rule_effectiveness_summary",
        {"downstream": "yes please"},
    )
    not_object = await db.fetchval(
        "INSERT INTO pipectl.requests (kind, target, args) VALUES ('silence', 'x', '[1]')"
        " RETURNING id"
    )
    good = await store.create_request(db, RequestKind.RERUN, "rule_effectiveness_summary")
    async with running_agent(database, steps_toml()):
        for request_id in (unknown.id, bad_args, not_object, good.id):
            await wait_for(lambda rid=request_id: done(db, rid))
    outcomes = {
        r["id"]: (r["outcome"], r["detail"])
        for r in await db.fetch("SELECT id, outcome, detail FROM pipectl.requests")
    }
    assert outcomes[unknown.id][0] == "rejected"
    assert "unknown step 'no_such_step'" in outcomes[unknown.id][1]
    assert outcomes[bad_args] == ("rejected", "'downstream' must be true or false")
    assert outcomes[not_object] == ("rejected", "request arguments must be a JSON object")
    assert outcomes[good.id][0] == "succeeded"


async def test_requester_is_who_postgres_says(database: str, db: asyncpg.Connection) -> None:
    request_id = await db.fetchval(
        "INSERT INTO pipectl.requests (kind, target, requested_by) VALUES ('rerun', 'x', 'ceo')"
        " RETURNING id"
    )
    row = await db.fetchrow("SELECT requested_by FROM pipectl.requests WHERE id = $1", request_id)
    assert row["requested_by"] == await db.fetchval("SELECT session_user")
    audit = await db.fetchrow("SELECT * FROM pipectl.events WHERE kind = 'request.rerun'")
    assert audit["actor"] == row["requested_by"]


async def test_lost_agent_runs_fail_and_requests_are_released(
    database: str, db: asyncpg.Connection
) -> None:
    """A peer with no session left (nothing holds its liveness lock) is declared lost once it
    missed a heartbeat and a half; its scheduled run is failed and queued again."""
    ghost = await db.fetchval(
        "INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds, last_seen)"
        " VALUES (gen_random_uuid(), 'ghost', 'elsewhere', 1, 'x', 0.5, now()) RETURNING id"
    )
    run_id = await store.create_run(db, "rule_effectiveness_summary", "schedule", ghost)
    await store.start_run(db, run_id)
    request = await store.create_request(db, RequestKind.RERUN, "rule_effectiveness_summary")
    await db.execute(
        "UPDATE pipectl.requests SET claimed_by = $1, claimed_at = now() WHERE id = $2",
        ghost,
        request.id,
    )
    body = '[agent]\nheartbeat = "500ms"\n' + steps_toml()
    async with running_agent(database, body):
        row = await wait_for(lambda: done(db, request.id), timeout=15)
    assert row["outcome"] == "succeeded"
    orphan = await store.get_run(db, run_id)
    assert orphan is not None
    assert orphan.status == RunStatus.FAILED
    assert orphan.error == "agent lost: ghost is no longer connected (its process is gone)"
    assert await db.fetchval("SELECT lost_at IS NOT NULL FROM pipectl.agents WHERE id = $1", ghost)
    retry = await db.fetchrow("SELECT * FROM pipectl.runs WHERE parent_run_id = $1", run_id)
    assert retry["trigger"] == "retry"
    assert retry["attempt"] == 2


async def test_once_runs_everything_in_order_and_exits_by_worst(database: str) -> None:
    from pipectl.agent.service import Agent
    from tests.helpers import make_loaded

    ok = Agent(make_loaded(database, None, steps_toml()))
    await ok.start()
    try:
        assert await ok.run_once() == 0
    finally:
        await ok.stop()
    failing = Agent(
        make_loaded(database, None, '[[steps]]\nname = "x"\nkind = "sql"\nsql = "SELECT 1/0"\n')
    )
    await failing.start()
    try:
        assert await failing.run_once() == 2
    finally:
        await failing.stop()


async def test_silence_request_sets_and_clears(database: str, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO pipectl.checks (name, kind) VALUES ('rule_performance_freshness', 'freshness')"
    )
    body = (
        steps_toml()
        + """
    [[checks]]
    name = "rule_performance_freshness"
    kind = "freshness"
    table = "public.rule_performance"
    column = "created_at"
    warn_after = "15m"
    error_after = "1h"
    every = "1h"
    """
    )
    silence = await store.create_request(
        db,
        RequestKind.SILENCE,
        "rule_performance_freshness",
        "known outage",
        SilenceArgs(seconds=7200),
    )
    # pipectl cannot file a 90-day silence; a row inserted by hand is rejected by the agent.
    too_long = await db.fetchrow(
        "INSERT INTO pipectl.requests (kind, target, args) VALUES ('silence', $1, $2) RETURNING id",
        "rule_performance_freshness",
        {"seconds": 90 * 86400},
    )
    async with running_agent(database, body):
        row = await wait_for(lambda: done(db, silence.id))
        bad = await wait_for(lambda: done(db, too_long["id"]))
    assert row["outcome"] == "succeeded"
    assert bad["outcome"] == "rejected"
    state = (await store.check_states(db, ["rule_performance_freshness"]))[0]
    assert state.silence_reason == "known outage"
    assert state.silenced_until is not None
    expected = silence.created_at + timedelta(hours=2)
    assert abs((state.silenced_until - expected).total_seconds()) < 1
    assert Outcome(row["outcome"]) == Outcome.SUCCEEDED


async def test_a_tick_missed_beyond_misfire_grace_is_recorded_as_skipped(
    database: str, db: asyncpg.Connection
) -> None:
    """A tick the agent could not serve in time (host asleep, loop blocked) is not run late."""
    body = steps_toml('every = "1h"\nmisfire_grace = "30s"')
    async with running_agent(database, body, serve=False) as agent:
        nominal = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=45)
        await agent.steps.on_tick("rule_effectiveness_summary", nominal, 45.0)
        await agent.steps.on_tick("rule_effectiveness_summary", nominal, 45.0)  # a peer's view
    (run,) = await runs(db)
    assert run["status"] == "skipped"
    assert run["error"] == "missed its tick by 45s (misfire_grace 30s)"
    assert run["scheduled_for"] == nominal


SHARED_TICKS = """
[[checks]]
name = "rp_confidence_present"
kind = "quality"
table = "public.rule_performance"
rule = { type = "not_null", column = "confidence_level" }
every = "1s"

[[checks]]
name = "rp_exec_in_range"
kind = "quality"
table = "public.rule_performance"
rule = { type = "range", column = "execution_time_ms", min = 0, max = 600000 }
every = "1s"

[[checks]]
name = "rp_rule_ids_known"
kind = "quality"
table = "public.rule_performance"
every = "1s"
[checks.rule]
type = "references"
column = "rule_id"
ref_table = "public.rule_metadata"
ref_column = "rule_id"
"""


async def test_checks_ticking_together_on_one_table_share_one_probe(
    db: asyncpg.Connection, database: str
) -> None:
    """Two agents, three quality checks of one table on one schedule: each tick is claimed
    once per check and the checks of one tick run on one scan, whichever agent holds them."""
    async with (
        running_agent(database, SHARED_TICKS, name="a"),
        running_agent(database, SHARED_TICKS, name="b"),
    ):
        await wait_for(
            lambda: db.fetchval(
                "SELECT count(DISTINCT observed_at) >= 3 FROM pipectl.check_results"
                " WHERE trigger = 'schedule'"
            ),
            timeout=20,
        )
    rows = await db.fetch(
        "SELECT check_name, date_trunc('second', observed_at) AS tick,"
        " baseline->>'probe_shared_by' AS shared FROM pipectl.check_results"
    )
    ticks: dict[object, list[tuple[str, str | None]]] = {}
    for r in rows:
        ticks.setdefault(r["tick"], []).append((r["check_name"], r["shared"]))
    for at, found in ticks.items():
        names = [name for name, _ in found]
        assert len(names) == len(set(names)), f"a check ran twice at {at}: {found}"
    # The first check of a tick claims all three at once, so a tick runs whole on one scan
    # (3 of 3 ticks in every run here); one whose check woke past the 50 ms wait would run
    # apart, still once, so only one whole tick is required.
    whole = [t for t, found in ticks.items() if [s for _, s in found] == ["3", "3", "3"]]
    assert whole, ticks
