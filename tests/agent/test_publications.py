"""Definitions are published by agents only, and retired when no live agent's config has them
any more (issue 14 §2): a check removed from one agent's config stays while another agent
still has it; removed from every config it is retired (enabled = false, retired_at set, a
definition.retired event) and gone from `status`; published again it comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from pipectl import store
from pipectl.agent.service import Agent
from pipectl.cli import main
from tests.agent.conftest import past_clock, running_agent
from tests.helpers import make_loaded, wait_for


def check(name: str) -> str:
    return f"""
[[checks]]
name = "{name}"
kind = "volume"
table = "public.rule_performance"
column = "created_at"
"""


STEP = """
[[steps]]
name = "{name}"
kind = "sql"
sql = "SELECT 1"
"""


def body(*checks: str, steps: tuple[str, ...] = ()) -> str:
    return "".join(STEP.format(name=s) for s in steps) + "".join(check(c) for c in checks)


async def reload(agent: Agent, dsn: str, text: str) -> None:
    await agent.reload(make_loaded(dsn, None, text))


async def shown(db: asyncpg.Connection) -> tuple[set[str], set[str]]:
    """Steps and checks `status` shows."""
    snapshot = await store.status_snapshot(db)
    return {s.name for s in snapshot.steps}, {c.name for c in snapshot.checks}


async def retired(db: asyncpg.Connection, table: str) -> set[str]:
    rows = await db.fetch(
        f"SELECT name FROM pipectl.{table} WHERE retired_at IS NOT NULL AND NOT enabled"
    )
    return {r["name"] for r in rows}


async def events(db: asyncpg.Connection, kind: str) -> list[str]:
    rows = await db.fetch("SELECT subject FROM pipectl.events WHERE kind = $1 ORDER BY id", kind)
    return [r["subject"] for r in rows]


async def test_a_check_stays_while_any_agent_publishes_it_and_is_retired_after(
    database: str, db: asyncpg.Connection
) -> None:
    clock = past_clock()
    async with (
        running_agent(
            database, body("shared", "only_a", steps=("s_shared",)), name="a", clock=clock
        ) as a,
        running_agent(
            database, body("shared", "only_b", steps=("s_shared",)), name="b", clock=clock
        ) as b,
    ):
        assert await shown(db) == ({"s_shared"}, {"shared", "only_a", "only_b"})

        await reload(a, database, body("only_a"))
        assert await shown(db) == ({"s_shared"}, {"shared", "only_a", "only_b"}), (
            "b still publishes the step and the check a dropped"
        )
        assert await retired(db, "checks") == set()

        await reload(b, database, body("only_b"))
        assert await shown(db) == (set(), {"only_a", "only_b"})
        assert await retired(db, "checks") == {"shared"}
        assert await retired(db, "steps") == {"s_shared"}
        assert sorted(await events(db, "definition.retired")) == ["s_shared", "shared"]
        assert await events(db, "definition.changed") == [], "retiring is its own event"

        await reload(a, database, body("only_a", "shared"))
        assert await shown(db) == (set(), {"shared", "only_a", "only_b"})
        assert await retired(db, "checks") == set()
        assert await events(db, "definition.published") == ["shared"]
        assert await events(db, "definition.changed") == []


async def test_a_retired_step_takes_no_requests(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = past_clock()
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    async with running_agent(
        database, body(steps=("kept", "dropped")), name="a", serve=False, clock=clock
    ) as a:
        await reload(a, database, body(steps=("kept",)))
        args = ["--config", str(config), "rerun", "dropped", "--reason", "why"]
        code = await asyncio.to_thread(main, args)
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown step 'dropped'; steps: kept" in err


async def test_a_lost_agent_stops_counting_as_a_publisher(
    database: str, db: asyncpg.Connection
) -> None:
    clock = past_clock()
    async with (
        running_agent(database, body("only_a"), name="a", serve=False, clock=clock) as a,
        running_agent(database, body("only_b"), name="b", serve=False, clock=clock) as b,
    ):
        await db.execute("UPDATE pipectl.agents SET lost_at = now() WHERE id = $1", b.agent_id)
        gone = await store.retire_unpublished(a.pool)
        assert [(r.table, r.name) for r in gone] == [("checks", "only_b")]
        assert await shown(db) == (set(), {"only_a"})


async def test_two_agents_reloading_at_once_retire_what_neither_publishes(
    database: str, db: asyncpg.Connection
) -> None:
    """Without the publishing lock each would see the other's old set (which still has
    "shared") and neither would retire it."""
    clock = past_clock()
    async with (
        running_agent(database, body("shared", "only_a"), name="a", clock=clock) as a,
        running_agent(database, body("shared", "only_b"), name="b", clock=clock) as b,
    ):
        for _ in range(5):
            await asyncio.gather(
                reload(a, database, body("only_a")), reload(b, database, body("only_b"))
            )
            assert await shown(db) == (set(), {"only_a", "only_b"})
            await asyncio.gather(
                reload(a, database, body("shared", "only_a")),
                reload(b, database, body("shared", "only_b")),
            )
            assert await shown(db) == (set(), {"shared", "only_a", "only_b"})


async def test_nothing_is_retired_while_a_live_agent_has_not_published_yet(
    database: str, db: asyncpg.Connection
) -> None:
    """A starting agent (registered, not yet published) may publish what the others drop."""
    async with running_agent(
        database, body("shared", "only_a"), name="a", serve=False, clock=past_clock()
    ) as a:
        await db.execute(
            "INSERT INTO pipectl.agents (id, name, host, pid, version)"
            " VALUES (gen_random_uuid(), 'starting', 'h', 1, 'v')"
        )
        await reload(a, database, body("only_a"))
        assert await retired(db, "checks") == set()
        await db.execute("UPDATE pipectl.agents SET stopped_at = now() WHERE name = 'starting'")
        await reload(a, database, body("only_a"))
        assert await retired(db, "checks") == {"shared"}


FAST = '[agent]\nheartbeat = "1s"\n'


async def test_a_peer_found_gone_on_a_heartbeat_stops_publishing_its_definitions(
    database: str, db: asyncpg.Connection
) -> None:
    """A peer whose process is gone (no session holds its liveness lock) is declared lost
    on a heartbeat, and what only it published is retired there and then."""
    clock = past_clock()
    async with running_agent(database, FAST + body("mine"), name="a", clock=clock):
        # After the agent's start (its own publish): only a heartbeat can retire it now.
        ghost = await db.fetchval(
            "INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds,"
            " last_seen, published_steps, published_checks)"
            " VALUES (gen_random_uuid(), 'ghost', 'elsewhere', 1, 'x', 0.2, now(), '{}',"
            " '{ghost_check}') RETURNING id"
        )
        await store.publish_checks(
            db, [store.CheckDefinition("ghost_check", "volume", None, None, None, "", {})], None
        )
        assert await shown(db) == (set(), {"mine", "ghost_check"})

        async def ghost_retired() -> bool:
            if await retired(db, "checks") == {"ghost_check"}:
                return True
            await clock.advance(1.0)  # the next heartbeat (and its reaping)
            return False

        await wait_for(ghost_retired, timeout=30)
        assert await db.fetchval(
            "SELECT lost_at IS NOT NULL FROM pipectl.agents WHERE id = $1", ghost
        )
        assert await shown(db) == (set(), {"mine"})


async def test_an_agent_declared_lost_publishes_again_when_it_rejoins(
    database: str, db: asyncpg.Connection
) -> None:
    clock = past_clock()
    async with running_agent(database, FAST + body("mine"), name="a", clock=clock) as agent:
        first = agent.agent_id
        await db.execute("UPDATE pipectl.agents SET lost_at = now() WHERE id = $1", first)

        async def republished() -> object:
            if agent.agent_id == first:
                await clock.advance(1.0)  # the heartbeat that finds it lost
                return None
            return await db.fetchval(
                "SELECT published_checks FROM pipectl.agents WHERE id = $1", agent.agent_id
            )

        assert await wait_for(republished, timeout=30) == ["mine"]
        assert await retired(db, "checks") == set()


async def test_a_rejoin_cut_short_is_finished_by_the_next_heartbeat(
    database: str, db: asyncpg.Connection
) -> None:
    """The heartbeat that finds the agent declared lost fails half-way through coming back
    (here its listening connection is busy, so the liveness lock cannot move): the agent is
    registered under its new id but has published nothing. The next heartbeat finishes the
    rejoin instead of taking the new row for a whole agent (before, it never published
    again; CI saw this once, when the keepalive ran at that moment)."""
    clock = past_clock()
    async with running_agent(database, FAST + body("mine"), name="a", clock=clock) as agent:
        first = agent.agent_id
        listener = agent.listener
        assert listener is not None

        async def listening() -> bool:
            return listener.listening

        await wait_for(listening, timeout=10)
        assert listener.connection is not None
        # Not through Listener.exclusive(): a statement the agent cannot wait for, blocked on
        # an advisory lock the test holds until it has seen the half-way state.
        await db.execute("SELECT pg_advisory_lock(7204)")
        busy = asyncio.create_task(
            listener.connection.execute("SELECT pg_advisory_lock(7204), pg_advisory_unlock(7204)")
        )

        async def blocked() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND objid = 7204 AND objsubid = 1 AND database ="
                    " (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )

        await wait_for(blocked, timeout=10)
        await db.execute("UPDATE pipectl.agents SET lost_at = now() WHERE id = $1", first)
        await clock.advance(1.0)  # the heartbeat that finds it lost

        async def registered_again() -> object:
            return agent.agent_id != first and await db.fetchval(
                "SELECT true FROM pipectl.agents WHERE id = $1", agent.agent_id
            )

        await wait_for(registered_again, timeout=10)
        assert not busy.done()
        assert (
            await db.fetchval(
                "SELECT published_checks FROM pipectl.agents WHERE id = $1", agent.agent_id
            )
            is None
        )  # the half-way state: registered under the new id, nothing published
        await db.execute("SELECT pg_advisory_unlock(7204)")
        await asyncio.wait_for(busy, 10)
        second = agent.agent_id

        async def republished() -> object:
            await clock.advance(1.0)
            return await db.fetchval(
                "SELECT published_checks FROM pipectl.agents WHERE id = $1", second
            )

        assert await wait_for(republished, timeout=30) == ["mine"]
        assert agent.agent_id == second  # finished, not declared lost and renewed again
        assert (
            await db.fetchval(
                "SELECT count(*) FROM pipectl.events WHERE kind = 'agent.started'"
                " AND detail->>'agent_id' = $1",
                str(second),
            )
            == 1
        )
