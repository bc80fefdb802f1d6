"""The agent's parts on a fake clock (against the real database): nothing here sleeps on the
wall clock; time moves when the test says so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import pytest

from pipectl import store
from pipectl.agent.retention import PASS_EVERY
from pipectl.agent.schedule import interval_schedule, tick_loop
from pipectl.clock import DatabaseClock, FakeClock
from pipectl.model import RequestKind
from tests.agent.conftest import past_clock, running_agent, steps_toml, tick
from tests.helpers import wait_for
from tests.reliability.support import connected, freshness_check

FAST = '[agent]\nheartbeat = "1s"\n'
T = TypeVar("T")

# ---------------------------------------------------------------------------- clocks


async def test_fake_clock_wakes_sleepers_in_order_and_waits_time_out_on_it() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    woken: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woken.append(f"{name}@{clock.monotonic():g}")

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 2), ("a", 1), ("c", 5))]
    await asyncio.sleep(0)
    await clock.advance(3)
    assert woken == ["a@1", "b@2"]
    assert clock.now() == datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    event = asyncio.Event()
    waiting = asyncio.create_task(clock.wait(event, 10))
    for _ in range(3):  # the waiter starts and goes to sleep on the clock
        await asyncio.sleep(0)
    await clock.advance(9)
    assert not waiting.done()
    await clock.advance(1)
    assert await waiting is False
    assert woken == ["a@1", "b@2", "c@5"]
    clock.jump(-300)
    assert clock.monotonic() == 13
    assert clock.now() == datetime(2026, 1, 1, 0, 0, 13, tzinfo=UTC) - timedelta(seconds=300)
    await asyncio.gather(*tasks)


def test_database_clock_follows_the_server_and_says_when_clocks_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    clock = DatabaseClock(base=host)
    server = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    caplog.set_level(logging.WARNING)
    clock.sync(server, round_trip=0.0)
    assert clock.now() == server
    assert "this host's clock is -30s off" in caplog.text
    host.jump(86400)  # the host's wall clock a day ahead: ours does not move
    assert clock.now() == server
    moved = clock.sync(server, round_trip=0.0)
    assert moved == 0
    assert "+86370s off the database's (it was -30s)" in caplog.text
    assert clock.steps == 0
    clock.sync(server - timedelta(minutes=5), round_trip=0.0)  # the database's clock stepped
    assert clock.steps == 1
    assert "the database's clock moved -300.0s" in caplog.text


async def test_tick_loop_fires_at_nominal_times_and_replans_when_the_clock_moves_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=UTC))
    fired: list[datetime] = []
    loop = asyncio.create_task(
        tick_loop(
            interval_schedule(timedelta(seconds=10), timedelta(seconds=5), timedelta(0)),
            lambda nominal, _late: fired.append(nominal),
            clock=clock,
            what="test",
        )
    )
    await asyncio.sleep(0)
    await clock.advance(25)
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert fired == [base + timedelta(seconds=10), base + timedelta(seconds=20)]
    caplog.set_level(logging.WARNING)
    clock.jump(-300)
    await clock.advance(30)  # the loop naps at most 30 s, then looks at the clock again
    assert "the clock moved back" in caplog.text
    loop.cancel()


# ---------------------------------------------------------------------------- steps


async def test_step_ticks_run_on_the_fake_clock(database: str) -> None:
    """Every 5 s (anchored to a fixed epoch, so a multiple of 5 s in Unix time): exactly the
    ticks the fake clock passed ran, each once."""
    clock = past_clock()
    start = clock.now()
    async with running_agent(database, FAST + steps_toml('every = "5s"'), clock=clock) as agent:
        for seconds in (4.0, 5.0, 5.0, 5.0):
            await tick(clock, seconds, agent)
    end = start + timedelta(seconds=19)
    expected = [
        datetime.fromtimestamp(t, UTC)
        for t in range(int(start.timestamp()) + 1, int(end.timestamp()) + 1)
        if t % 5 == 0
    ]
    async with connected(database) as conn:
        ran = [
            r["scheduled_for"]
            for r in await conn.fetch(
                "SELECT scheduled_for FROM pipectl.runs WHERE trigger = 'schedule'"
                " AND status = 'succeeded' ORDER BY scheduled_for"
            )
        ]
    assert ran == expected


# ---------------------------------------------------------------------------- checks


async def test_check_ticks_run_on_the_fake_clock(database: str) -> None:
    clock = past_clock()
    body = FAST + steps_toml() + freshness_check("2s")
    async with running_agent(database, body, clock=clock) as agent:
        for _ in range(5):
            await tick(clock, 2.0, agent)
    assert await _count(database, "SELECT count(*) FROM pipectl.check_results") == 5


# ---------------------------------------------------------------------------- membership


async def test_membership_beats_once_per_heartbeat_and_rejoins_when_declared_lost(
    database: str, db: asyncpg.Connection
) -> None:
    clock = past_clock()
    async with running_agent(database, FAST + steps_toml(), clock=clock) as agent:
        first = agent.agent_id
        seen = [await _last_seen(db, first)]
        for _ in range(3):
            await clock.advance(1.0)
            seen.append(await wait_for(lambda s=seen[-1]: _newer_beat(db, first, s)))
        assert len(set(seen)) == 4, "one beat per heartbeat"
        await db.execute("UPDATE pipectl.agents SET lost_at = now() WHERE id = $1", first)
        await clock.advance(1.0)

        async def rejoined() -> bool:
            return agent.agent_id != first

        await wait_for(rejoined)
        second = agent.agent_id
        await wait_for(lambda: _holds_liveness(db, second))
        assert not await _holds_liveness(db, first)


async def _last_seen(db: asyncpg.Connection, agent_id: object) -> datetime:
    seen: datetime = await db.fetchval(
        "SELECT last_seen FROM pipectl.agents WHERE id = $1", agent_id
    )
    return seen


async def _newer_beat(db: asyncpg.Connection, agent_id: object, than: datetime) -> datetime | None:
    seen = await _last_seen(db, agent_id)
    return seen if seen > than else None


async def _holds_liveness(db: asyncpg.Connection, agent_id: object) -> bool:
    held: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = $1::bigint::oid AND objid = (hashtext($2)::bigint & 4294967295)::oid)",
        store.LIVENESS_NAMESPACE,
        str(agent_id),
    )
    return held


# ---------------------------------------------------------------------------- requests


async def test_a_request_missed_by_notify_is_taken_on_the_next_sweep(database: str) -> None:
    clock = past_clock()
    async with running_agent(database, FAST + steps_toml(), clock=clock) as agent:
        await wait_for(_async(lambda: agent.listening))
        assert agent.listener is not None
        agent.listener.stop()  # no NOTIFY reaches this agent any more
        await wait_for(_async(lambda: not agent.listening))
        # The listener woke the queue when it connected (a sweep for what it missed); a request
        # filed before that sweep ends would be claimed by it, not by the next one.
        queue = agent.requests
        assert queue is not None
        await wait_for(_async(lambda: queue.parked))
        async with connected(database) as conn:
            request = await store.create_request(
                conn, RequestKind.RERUN, "rule_effectiveness_summary", "test"
            )
        await asyncio.sleep(0.5)  # real time passes; fake time does not: no sweep yet
        assert await _outcome(database, request.id) is None
        await tick(clock, 1.0, agent)  # one sweep interval (the heartbeat)
        await wait_for(lambda: _outcome(database, request.id))
    assert await _outcome(database, request.id) == "succeeded"


# ---------------------------------------------------------------------------- retention


async def test_retention_prunes_at_start_and_then_hourly(
    database: str, db: asyncpg.Connection
) -> None:
    clock = past_clock()
    body = FAST + '[retention]\nevents = "8d"\n' + steps_toml()
    await db.execute(
        "INSERT INTO pipectl.events (kind, subject, message, at)"
        " VALUES ('test.old', 'x', 'old', now() - interval '10 days')"
    )
    async with running_agent(database, body, clock=clock):
        await wait_for(lambda: _no_old_events(db))
        # The pass at start is over once its loop sleeps for the hour: moving the clock
        # before that would start the hour from the moved time.
        await wait_for(_async(lambda: PASS_EVERY in clock.due()))
        await db.execute(
            "INSERT INTO pipectl.events (kind, subject, message, at)"
            " VALUES ('test.old', 'x', 'old', now() - interval '10 days')"
        )
        await clock.advance(1800)
        await asyncio.sleep(0.3)
        assert not await _no_old_events(db), "not before the hour is up"
        await clock.advance(1800)
        await wait_for(lambda: _no_old_events(db))


async def _no_old_events(db: asyncpg.Connection) -> bool:
    count: int = await db.fetchval("SELECT count(*) FROM pipectl.events WHERE kind = 'test.old'")
    return count == 0


# ---------------------------------------------------------------------------- helpers


async def _count(dsn: str, sql: str) -> int:
    async with connected(dsn) as conn:
        value: int = await conn.fetchval(sql)
        return value


async def _outcome(dsn: str, request_id: int) -> str | None:
    async with connected(dsn) as conn:
        outcome: str | None = await conn.fetchval(
            "SELECT outcome FROM pipectl.requests WHERE id = $1 AND done_at IS NOT NULL",
            request_id,
        )
        return outcome


def _async(probe: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def wrapped() -> T:
        return probe()

    return wrapped
