"""Check probes run on a pool of their own: however many slow probes run, the agent's
heartbeats and bookkeeping still get a connection (before, four slow probes took every
connection of the shared pool and the agent stopped heartbeating until they ended)."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.agent.conftest import running_agent
from tests.helpers import wait_for

SLOW_PROBE = """
CREATE FUNCTION public.slow_probe() RETURNS bigint LANGUAGE sql AS
$$ SELECT 0::bigint FROM pg_sleep(8) $$
"""

SLOW_CHECK = """
[[checks]]
name = "slow_{n}"
kind = "quality"
table = "public.user_feedback"
rule = {{ type = "custom", sql = "SELECT public.slow_probe()" }}
every = "24h"  # not due during the test: run_checks below runs them
"""

BODY = '[agent]\nheartbeat = "300ms"\nmax_parallel_checks = 4\n' + "".join(
    SLOW_CHECK.format(n=n) for n in range(4)
)


async def active_slow_probes(db: asyncpg.Connection) -> int:
    found: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'active' AND query LIKE '%public.slow_probe()%' AND pid <> pg_backend_pid()"
    )
    return found


async def test_heartbeats_go_on_while_every_check_connection_is_busy(
    database: str, db: asyncpg.Connection
) -> None:
    await db.execute(SLOW_PROBE)
    async with running_agent(database, BODY) as agent:
        names = [f"slow_{n}" for n in range(4)]
        checks = asyncio.create_task(agent.run_checks(names, "manual"))
        try:
            await wait_for(lambda: _at_least(db, 4), timeout=10)
            seen = await db.fetchval(
                "SELECT last_seen FROM pipectl.agents WHERE id = $1", agent.agent_id
            )

            async def heartbeat_since() -> bool:
                last = await db.fetchval(
                    "SELECT last_seen FROM pipectl.agents WHERE id = $1", agent.agent_id
                )
                return bool(last > seen)

            await wait_for(heartbeat_since, timeout=5)
            # ...and the four probes were still running when it came.
            assert await active_slow_probes(db) == 4
            statuses = await asyncio.wait_for(checks, 30)
        finally:
            checks.cancel()
    assert set(map(str, statuses.values())) == {"nodata"}  # they finished (the table is empty)


async def _at_least(db: asyncpg.Connection, count: int) -> bool:
    return await active_slow_probes(db) >= count
