"""pipectl's own reads (issue 14 §2): measured exactly around a probe, recorded by the agent's
engine, and left out of the buffer-cache ratio, so the monitor does not judge its own scans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.checks.cache import CacheCheck, Counter, Reading, intervals
from pipectl.model import CheckStatus
from tests.helpers import make_config, wait_for

PROBE_TABLE = "public.own_probe"

CHECKS = """
[[checks]]
name = "buffers"
kind = "cache"
source = "postgres"
tables = ["public.own_probe"]
min_requests = 10

[[checks]]
name = "probe_scan"
kind = "quality"
table = "public.own_probe"
rule = { type = "not_null", column = "v" }
"""


async def _table(conn: asyncpg.Connection) -> None:
    """A table of its own, small enough that autovacuum leaves it alone during the test."""
    await conn.execute("CREATE TABLE public.own_probe (id int PRIMARY KEY, v int)")
    await conn.execute("INSERT INTO public.own_probe SELECT g, g FROM generate_series(1, 20) g")


async def _heap_lookups(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT coalesce(heap_blks_hit + heap_blks_read, 0) FROM pg_statio_user_tables"
        " WHERE schemaname = 'public' AND relname = 'own_probe'"
    )
    return int(value or 0)


async def _flushed(conn: asyncpg.Connection, at_least: int) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")

    async def seen() -> int:
        found = await _heap_lookups(conn)
        return found if found >= at_least else 0

    return await wait_for(seen)


async def test_the_bracket_counts_exactly_what_the_transaction_looked_up(
    conn: asyncpg.Connection,
) -> None:
    await _table(conn)
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await wait_for(lambda: _heap_lookups(conn))  # the INSERT's lookups are flushed
    before_total = await _heap_lookups(conn)
    async with conn.transaction():
        before = await store.pending_reads(conn)
        for _ in range(7):
            await conn.fetchval("SELECT count(*) FROM public.own_probe")
        reads = store.reads_between(before, await store.pending_reads(conn))
    fetched, hit = reads[PROBE_TABLE]
    assert fetched == 7  # one heap page, scanned seven times
    assert 0 <= hit <= fetched
    assert all(f > 0 and 0 <= h <= f for f, h in reads.values())
    # What reaches pg_statio once the session flushes is the same number.
    assert await _flushed(conn, before_total + fetched) == before_total + fetched


def test_own_lookups_are_left_out_of_the_interval() -> None:
    at = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)
    before = Reading("e", {"database": Counter(1000, 100, at)})
    now = Reading("e", {"database": Counter(6000, 1100, at + timedelta(minutes=1))})
    # pipectl itself: 4000 lookups, 3000 of them hits (so all 1000 misses were its own).
    found, _ = intervals(before, now, 100, {"database": (4000, 3000)})
    assert [(i.state, i.hits, i.misses, i.own, i.ratio) for i in found] == [
        ("delta", 2000, 0, 4000, 1.0)
    ]
    # Own reads recorded but not yet counted by the server never make a negative interval.
    found, remembered = intervals(before, now, 2000, {"database": (99_000, 99_000)})
    assert [(i.state, i.hits, i.misses) for i in found] == [("quiet", 0, 1000)]
    assert remembered == before  # quiet: the lookups add up until there are enough


def test_min_requests_defaults_per_source() -> None:
    def check(source: str, **extra: object) -> CacheCheck:
        return CacheCheck.model_validate({"name": "c", "kind": "cache", "source": source, **extra})

    assert check("postgres").requests_floor() == 2000
    assert check("redis").requests_floor() == 20
    assert check("postgres", min_requests=5).requests_floor() == 5


async def test_the_agents_engine_records_its_reads_and_the_ratio_leaves_them_out(
    conn: asyncpg.Connection, database: str
) -> None:
    await _table(conn)
    engine = CheckEngine(make_config(database, None, CHECKS))
    engine.record_own_reads = True
    await store.publish_checks(conn, engine.definitions(), None)

    async def run(name: str) -> None:
        result = await engine.run(name, conn, redis=None, now=datetime.now(UTC))
        await store.record_result(conn, result, hysteresis=1, agent_id=None)

    await _flushed(conn, 1)  # the INSERT's lookups land before the first reading
    await run("buffers")  # first reading
    start = await _heap_lookups(conn)
    for _ in range(30):
        await run("probe_scan")  # pipectl's own scans of the watched table
    rows = await conn.fetch(
        "SELECT relation, fetched, hit, what FROM pipectl.own_reads WHERE what = 'check probe_scan'"
    )
    own = sum(r["fetched"] for r in rows if r["relation"] == PROBE_TABLE)
    assert own >= 30
    await _flushed(conn, start + own)

    quiet = await engine.run("buffers", conn, redis=None, now=datetime.now(UTC))
    await store.record_result(conn, quiet, hysteresis=1, agent_id=None)
    # Only pipectl read the table: nothing is left to judge there.
    assert f"{PROBE_TABLE}: not enough lookups to judge, only 0 lookups" in quiet.message
    assert quiet.baseline["lookups"][PROBE_TABLE] == 0
    assert quiet.baseline["own_lookups"][PROBE_TABLE] >= 30

    # The application's reads (another session) are judged.
    other = await asyncpg.connect(database)
    try:
        for _ in range(25):
            await other.fetch("SELECT * FROM public.own_probe")
        await other.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await other.close()
    await _flushed(conn, start + own + 25)
    judged = await engine.run("buffers", conn, redis=None, now=datetime.now(UTC))
    assert judged.status != CheckStatus.ERROR, judged.message
    assert judged.baseline["lookups"][PROBE_TABLE] == pytest.approx(25, abs=2)
    assert f"buffers:{PROBE_TABLE}" in {s.series for s in judged.samples}
