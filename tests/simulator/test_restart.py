"""The simulator outlives its PostgreSQL restarting (and says so in the log, once)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
import pytest

from pipectl.embedded import EmbeddedPostgres, EmbeddedValkey
from pipectl.simulator import ApesSimulator
from pipectl.sqlfiles import sql_dir
from tests.helpers import wait_for
from tests.simulator.support import running

pytestmark = pytest.mark.slow


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM rule_performance"))
    finally:
        await conn.close()


def _asyncpg_tls_probe(record: logging.LogRecord) -> bool:
    """asyncio's "Future exception was never retrieved" for the future of asyncpg's SSLRequest
    exchange (connect_utils.TLSUpgradeProto, the only source of this message), left behind
    when a reconnect attempt meets the server mid-shutdown. Not ours to retrieve; seen once
    in CI (RELIABILITY.md)."""
    exc = record.exc_info[1] if record.exc_info else None
    return (
        record.name == "asyncio"
        and record.getMessage().startswith("Future exception was never retrieved")
        and isinstance(exc, ConnectionError)
        and str(exc) == "unexpected connection_lost() call"
    )


async def test_simulator_survives_a_postgres_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipectl.simulator")
    server = EmbeddedPostgres(tmp_path / "pg", fast=True)
    dsn = server.start()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute((sql_dir() / "apes" / "schema.sql").read_text(encoding="utf-8"))
        finally:
            await conn.close()
        sim = ApesSimulator(dsn, None, seed=12, rate=100, rhythm=False)
        await sim.setup()
        async with running(sim) as task:

            async def some_rows() -> int:
                return await _count(dsn)

            await wait_for(some_rows, timeout=30)
            # Stop the server in a worker thread so that the simulator's loops notice the
            # outage while it lasts; start it again here (the main thread owns it).
            await asyncio.to_thread(server.stop)
            before = sim.stats().rows.get("rule_performance", 0)
            await asyncio.sleep(1.5)
            assert not task.done()
            assert server.start() == dsn
            after_restart = await _count(dsn)

            async def new_rows() -> bool:
                return await _count(dsn) > after_restart + 20

            await wait_for(new_rows, timeout=60)

            async def reconnected() -> bool:
                return sim.stats().reconnects >= 1 and sim.listening

            await wait_for(reconnected, timeout=60)
            assert sim.stats().rows["rule_performance"] > before
        assert task.exception() is None
    finally:
        server.stop()
    messages = [r.getMessage() for r in caplog.records]
    failures = [m for m in messages if "PostgreSQL (simulator writes) failed" in m]
    assert len(failures) == 1  # one line per outage, not one per attempt
    assert any("PostgreSQL (simulator writes) recovered" in m for m in messages)
    assert not [r for r in caplog.records if r.exc_info and not _asyncpg_tls_probe(r)]


async def test_simulator_survives_a_redis_restart(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipectl.simulator")
    valkey = EmbeddedValkey(tmp_path / "valkey")
    url = valkey.start()
    try:
        sim = ApesSimulator(database, url, seed=13, rate=50, rhythm=False)
        await sim.setup()
        async with running(sim) as task:

            async def traffic() -> bool:
                return sim.stats().cache.hits > 200

            await wait_for(traffic, timeout=30)
            await asyncio.to_thread(valkey.stop)
            rows = sim.stats().rows.get("prompt_improvement_sessions", 0)

            async def requests_go_on() -> bool:
                # Without Redis, requests are still served (and recorded) from L1/L3/MISS.
                return sim.stats().rows.get("prompt_improvement_sessions", 0) > rows + 5

            await wait_for(requests_go_on, timeout=30)
            assert valkey.start() == url
            hits = sim.stats().cache.hits

            async def hits_again() -> bool:
                return sim.stats().cache.hits > hits + 200

            await wait_for(hits_again, timeout=60)
            assert not task.done()
        assert task.exception() is None
    finally:
        valkey.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "Redis (simulator traffic) failed" in m]) == 1
    assert any("Redis (simulator traffic) recovered" in m for m in messages)
    assert not [r for r in caplog.records if r.exc_info]
