"""cache: hit ratios as deltas; restarts are resets, not negative ratios; app cache levels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from pipectl import store
from pipectl.checks import CheckEngine
from pipectl.checks.cache import Counter, Reading, intervals
from pipectl.embedded import EmbeddedValkey, free_port
from pipectl.model import CheckResult, CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_sessions
from tests.helpers import make_config, wait_for

CACHE = """
[[checks]]
name = "l2"
kind = "cache"
source = "redis"
min_requests = 20

[[checks]]
name = "buffers"
kind = "cache"
source = "postgres"
tables = ["public.rule_metadata", "public.user_feedback"]
min_requests = 1

[[checks]]
name = "levels"
kind = "cache"
source = "app"
table = "public.prompt_improvement_sessions"
column = "cache_hit_level"
time_column = "created_at"
window = "15m"
min_requests = 10
"""


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A private server: its counters see only this test's traffic, and it may restart."""
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(valkey.url, socket_timeout=2)
    yield connection
    await connection.aclose()


async def traffic(client: redis.asyncio.Redis, hits: int, misses: int) -> None:
    await client.set("session:1", "x")
    for _ in range(hits):
        await client.get("session:1")
    for i in range(misses):
        await client.get(f"missing:{i}")


class Runner:
    def __init__(self, checks: CheckEngine, conn: asyncpg.Connection) -> None:
        self.checks, self.conn, self.at = checks, conn, NOW

    async def __call__(self, name: str, client: redis.asyncio.Redis | None = None) -> CheckResult:
        self.at += timedelta(minutes=1)
        result = await self.checks.run(name, self.conn, redis=client, now=self.at)
        await store.record_result(self.conn, result, hysteresis=1, agent_id=None)
        return result


@pytest.fixture
async def run(conn: asyncpg.Connection, database: str) -> Runner:
    checks = CheckEngine(make_config(database, None, CACHE))
    await store.publish_checks(conn, checks.definitions(), None)
    return Runner(checks, conn)


async def test_redis_ratio_is_a_delta_and_a_restart_is_a_reset(
    run: Runner, client: redis.asyncio.Redis, valkey: EmbeddedValkey
) -> None:
    app = redis.asyncio.Redis.from_url(valkey.url)  # APES's traffic, on its own connection
    try:
        await traffic(app, hits=500, misses=500)  # history since server start: 50 %
        first = await run("l2", client)
        assert first.status == CheckStatus.NODATA and first.value is None
        assert "first reading" in first.message

        await traffic(app, hits=30, misses=10)
        delta = await run("l2", client)
        assert delta.status == CheckStatus.WARN  # 0.75 over the interval, not ~0.5 overall
        assert delta.value == pytest.approx(0.75)
        assert delta.baseline["lookups"] == {"redis": 40}
        # INFO's counters are the whole server's (every db, every client): the message says so.
        assert "Redis server-wide keyspace hits/misses 0.750 over 40 lookups" in delta.message
        # Exported by the agent as counter increments (true deltas since the last reading).
        assert delta.baseline["levels"] == {"all": {"hits": 30, "lookups": 40}}
        assert delta.baseline["deltas"] is True
        assert [(s.series, s.value) for s in delta.samples] == [("l2", pytest.approx(0.75))]

        await traffic(app, hits=5, misses=0)
        quiet = await run("l2", client)
        assert quiet.status == CheckStatus.NODATA and "only 5 lookups" in quiet.message
        await traffic(app, hits=20, misses=0)
        summed = await run("l2", client)  # the quiet interval's lookups were kept, not lost
        assert summed.value == pytest.approx(1.0)
        assert summed.baseline["lookups"] == {"redis": 25}

        valkey.restart()  # the engine's pooled connection is now dead: it must reconnect
        await app.connection_pool.disconnect()
        await traffic(app, hits=2, misses=3)  # counters now below the last reading
        reset = await run("l2", client)
        assert reset.status == CheckStatus.NODATA and reset.value is None
        assert "counters reset" in reset.message
        await traffic(app, hits=19, misses=1)
        after = await run("l2", client)
        assert after.value == pytest.approx(0.95) and after.status == CheckStatus.OK
    finally:
        await app.aclose()


async def test_unreachable_or_unconfigured_redis_is_an_error_result(run: Runner) -> None:
    nobody = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port(None)}/0")
    try:
        down = await run("l2", nobody)
    finally:
        await nobody.aclose()
    assert down.status == CheckStatus.ERROR
    assert down.message.startswith("Redis unreachable")
    missing = await run("l2", None)
    assert missing.status == CheckStatus.ERROR
    assert missing.message.startswith("no Redis configured")


def test_counters_going_down_are_a_reset_never_a_negative_ratio() -> None:
    before = Reading("run-1", {"redis": Counter(1000, 100, NOW)})
    later = NOW + timedelta(minutes=1)
    lower = Reading("run-1", {"redis": Counter(10, 1, later)})
    other_epoch = Reading("run-2", {"redis": Counter(5000, 200, later)})
    for current in (lower, other_epoch):
        found, remembered = intervals(before, current, min_requests=1)
        assert [(i.state, i.ratio) for i in found] == [("reset", None)]
        assert remembered == current


async def test_postgres_buffer_ratio_per_database_and_table(
    run: Runner, conn: asyncpg.Connection
) -> None:
    first = await run("buffers")
    assert first.status == CheckStatus.NODATA
    assert set(first.baseline["counters"]) == {
        "database",
        "public.rule_metadata",
        "public.user_feedback",
    }

    async def lookups() -> int:
        total: int = await conn.fetchval(
            "SELECT blks_hit + blks_read FROM pg_stat_database WHERE datname = current_database()"
        )
        return total

    before = await lookups()
    for _ in range(20):
        await conn.fetch("SELECT * FROM public.rule_metadata")
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await wait_for(lambda: _grew(lookups, before))
    await _flushed_table(conn, "rule_metadata")
    second = await run("buffers")
    assert second.status in (CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL)
    assert second.value is not None and 0.0 <= second.value <= 1.0
    assert second.baseline["lookups"]["database"] > 0
    assert second.baseline["lookups"]["public.rule_metadata"] >= 20
    series = {s.series for s in second.samples}
    assert {"buffers", "buffers:database", "buffers:public.rule_metadata"} <= series
    assert "public.user_feedback" in second.message  # nothing read: said so, not judged

    await conn.execute("SELECT pg_stat_reset()")
    reset = await run("buffers")
    assert "counters reset" in reset.message
    assert reset.value is None or reset.value >= 0


async def _grew(probe, before: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await probe() > before)


async def _flushed_table(conn: asyncpg.Connection, name: str) -> None:
    async def seen() -> bool:
        count = await conn.fetchval(
            "SELECT heap_blks_hit + heap_blks_read FROM pg_statio_user_tables WHERE relname = $1",
            name,
        )
        return bool(count and count >= 20)

    await wait_for(seen)


async def test_app_cache_levels_from_the_request_record(
    run: Runner, conn: asyncpg.Connection
) -> None:
    at = NOW + timedelta(minutes=1)  # the runner's next observation time
    times = [at - timedelta(minutes=1 + i % 10) for i in range(27)]
    levels = ["L1"] * 10 + ["L2"] * 5 + ["L3"] * 5 + ["MISS"] * 5 + ["L9", None]
    await add_sessions(conn, times, levels)
    await add_sessions(conn, [at - timedelta(hours=2)] * 50, ["MISS"] * 50)  # outside window
    result = await run("levels")
    assert result.status == CheckStatus.OK  # 20 of 25 answered from a cache level: 0.80
    assert result.value == pytest.approx(0.8)
    counts = {k: result.baseline[k] for k in ("L1", "L2", "L3", "MISS", "other")}
    assert counts == {"L1": 10, "L2": 5, "L3": 5, "MISS": 5, "other": 2}
    # What the agent exports: ratios per level, never counter increments (windows overlap).
    assert result.baseline["source"] == "app"
    assert result.baseline["levels"]["all"] == {"hits": 20, "lookups": 25}
    assert result.baseline["levels"]["L1"] == {"hits": 10, "lookups": 25}
    assert result.baseline["deltas"] is False
    shares = {s.series: s.value for s in result.samples}
    assert shares == pytest.approx(
        {"levels": 0.8, "levels:L1": 0.4, "levels:L2": 0.2, "levels:L3": 0.2, "levels:MISS": 0.2}
    )
    await add_sessions(conn, [at - timedelta(minutes=2)] * 25, ["MISS"] * 25)
    worse = await run("levels")  # 20 of 50 = 0.40
    assert (worse.status, worse.value) == (CheckStatus.FAIL, pytest.approx(0.4))


async def test_app_cache_with_too_few_requests_is_nodata(
    run: Runner, conn: asyncpg.Connection
) -> None:
    await add_sessions(conn, [NOW] * 3, ["MISS"] * 3)
    result = await run("levels")
    assert result.status == CheckStatus.NODATA
    assert result.message == "not enough requests: only 3 in the last 15m (min_requests 10)"
