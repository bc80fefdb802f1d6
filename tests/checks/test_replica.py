"""Checks on a streaming replica: probes read the replica, results go to the primary, ages and
windows are judged as of the replica's data, and a replica too far behind is reported as such.

The real replica is made from an embedded PostgreSQL primary with `pg_basebackup -R` (the
machine's shared server is not ours to replicate), whatever PIPECTL_TEST_DSN says; the lag
logic is also run with a fixed lag against the session's server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from pipectl.checks import CheckEngine
from pipectl.checks.replica import ReplicaState, on_replica, replica_state, run_on_replica
from pipectl.config import ConfigError, LoadedConfig, effective_items, parse_config_text
from pipectl.embedded import PG_SERVICE_USER, EmbeddedPostgres
from pipectl.model import CheckResult, CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_rule_performance
from tests.checks.test_cli import MAIN
from tests.helpers import load_schemas, make_config, wait_for

CHECKS = """
[[checks]]
name = "fresh"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "15m"
error_after = "1h"

[[checks]]
name = "arrivals"
kind = "volume"
table = "public.rule_performance"
column = "created_at"
window = "1h"
bounds = { fail_below = 1 }
"""


@dataclass(frozen=True)
class Pair:
    primary: str
    replica: str


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """An embedded primary with the APES and pipectl schemas, and a streaming replica of it."""
    directory = Path(tempfile.mkdtemp(prefix="pipectl-replica-"))
    primary = EmbeddedPostgres(directory / "p", fast=True)
    replica = EmbeddedPostgres(directory / "r", fast=True)
    try:
        primary.start()
        asyncio.run(load_schemas(primary.dsn()))
        data = replica.data_dir
        data.parent.mkdir(parents=True)
        subprocess.run(
            [
                str(primary.bin_dir / "pg_basebackup"),
                *("-D", str(data), "-R", "-X", "stream", "-c", "fast"),
                *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
            ],
            check=True,
            capture_output=True,
        )
        if os.geteuid() == 0:  # the server runs as its service user (see pipectl.embedded)
            shutil.chown(data.parent, PG_SERVICE_USER)
            for path in [data, *data.rglob("*")]:
                shutil.chown(path, PG_SERVICE_USER)
        replica.start()
        yield Pair(primary.dsn(), replica.dsn())
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _replayed(replica: asyncpg.Connection, rows: int) -> bool:
    return bool(await replica.fetchval("SELECT count(*) >= $1 FROM rule_performance", rows))


def _replica_config(pair: Pair, max_lag: str = "5m") -> LoadedConfig:
    text = (
        f'[database]\ndsn = "{pair.primary}"\nreplica_dsn = "{pair.replica}"\n'
        f'replica_max_lag = "{max_lag}"\nconnect_timeout = "5s"\n'
        '[agent]\nmetrics_address = "127.0.0.1:0"\n' + CHECKS
    )
    return parse_config_text(text, "test.toml", environ={})


async def test_agent_probes_the_replica_and_records_on_the_primary(pair: Pair) -> None:
    from pipectl.agent.service import Agent

    primary = await asyncpg.connect(pair.primary)
    replica = await asyncpg.connect(pair.replica)
    try:
        await primary.execute("TRUNCATE rule_performance")
        await primary.execute("DELETE FROM pipectl.check_results")
        now = datetime.now(UTC)
        await add_rule_performance(primary, [now - timedelta(minutes=m) for m in range(30)])
        await wait_for(lambda: _replayed(replica, 30))
        assert (await replica_state(replica)).replica
        agent = Agent(_replica_config(pair))
        await agent.start()
        try:
            assert agent.runtime.pools.replica is not None
            await agent.run_once()
        finally:
            await agent.stop()
        rows = await primary.fetch(
            "SELECT check_name, status, baseline FROM pipectl.check_results ORDER BY check_name"
        )
        assert [(r["check_name"], r["status"]) for r in rows] == [
            ("arrivals", "ok"),
            ("fresh", "ok"),
        ]
        # Judged on the replica (its lag recorded), stored on the primary.
        assert all("replica_lag_s" in r["baseline"] for r in rows), rows
    finally:
        await primary.close()
        await replica.close()


async def test_a_replica_behind_is_reported_and_ages_are_corrected(pair: Pair) -> None:
    primary = await asyncpg.connect(pair.primary)
    replica = await asyncpg.connect(pair.replica)
    engine = CheckEngine(_replica_config(pair).config)
    try:
        await primary.execute("TRUNCATE rule_performance")
        newest = datetime.now(UTC) - timedelta(minutes=1)
        await add_rule_performance(primary, [newest])
        await wait_for(lambda: _replayed(replica, 1))
        caught_up = await replica_state(replica)
        assert caught_up == ReplicaState(True, None)  # replayed all it received: not behind
        await replica.execute("SELECT pg_wal_replay_pause()")
        try:
            await add_rule_performance(primary, [datetime.now(UTC)])

            async def lagging() -> ReplicaState | None:
                state = await replica_state(replica)
                return state if state.lag(datetime.now(UTC)) > timedelta(seconds=1) else None

            state = await wait_for(lagging)
            now = datetime.now(UTC)
            lag = state.lag(now)
            late = await run_on_replica(
                engine,
                ["fresh", "arrivals"],
                replica,
                max_lag=timedelta(seconds=1),
                redis=None,
                trigger="cli",
                now=now,
                state=state,
            )
            for result in late.values():
                assert result.status == CheckStatus.ERROR
                assert result.message.startswith("replica ")
                assert "behind (limit 1s): not checked" in result.message
            judged = await run_on_replica(
                engine,
                ["fresh"],
                replica,
                max_lag=timedelta(hours=1),
                redis=None,
                trigger="cli",
                now=now,
                state=state,
            )
            fresh = judged["fresh"]
            assert fresh.status == CheckStatus.OK
            # The age of the newest row the replica has, at the instant its data is from.
            expected = (now - lag - newest).total_seconds()
            assert fresh.value == pytest.approx(expected, abs=1e-3)
            assert "on a replica" in fresh.message
            assert fresh.observed_at == now
        finally:
            await replica.execute("SELECT pg_wal_replay_resume()")
        await wait_for(lambda: _replayed(replica, 2))
    finally:
        await primary.close()
        await replica.close()


async def test_fixed_lag_on_the_session_server(conn: asyncpg.Connection, database: str) -> None:
    """The lag logic on any server (the session's PostgreSQL 15 or 18), with the lag given."""
    await add_rule_performance(conn, [NOW - timedelta(minutes=10)])
    engine = CheckEngine(make_config(database, None, CHECKS))
    state = await replica_state(conn)
    assert state == ReplicaState(False, None)  # a primary is never behind

    async def run(lag: timedelta) -> dict[str, CheckResult]:
        return await run_on_replica(
            engine,
            ["fresh", "arrivals"],
            conn,
            max_lag=timedelta(minutes=5),
            redis=None,
            trigger="cli",
            now=NOW,
            state=ReplicaState(True, NOW - lag),
        )

    behind = await run(timedelta(minutes=6))
    assert {r.status for r in behind.values()} == {CheckStatus.ERROR}
    assert behind["fresh"].message == (
        "replica 6m behind (limit 5m): not checked, its data is older than the primary's"
    )
    assert behind["fresh"].baseline == {"replica_lag_s": 360.0}
    judged = await run(timedelta(minutes=2))
    assert judged["fresh"].value == 8 * 60.0  # 10 minutes old, 2 of them replication lag
    assert judged["fresh"].observed_at == NOW
    assert judged["fresh"].baseline["replica_lag_s"] == 120.0
    # The window ends where the replica's data ends: (NOW - 1h02m, NOW - 2m] holds the row.
    assert judged["arrivals"].value == 1


def _pipectl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MAIN, "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_pipectl_check_probes_the_replica(pair: Pair, tmp_path: Path) -> None:
    primary = await asyncpg.connect(pair.primary)
    replica = await asyncpg.connect(pair.replica)
    try:
        await primary.execute("TRUNCATE rule_performance")
        await primary.execute("DELETE FROM pipectl.check_results")
        now = datetime.now(UTC)
        await add_rule_performance(primary, [now - timedelta(minutes=m) for m in range(5)])
        await wait_for(lambda: _replayed(replica, 5))
        config = tmp_path / "pipectl.toml"
        config.write_text(
            f'[database]\ndsn = "{pair.primary}"\nreplica_dsn = "{pair.replica}"\n' + CHECKS
        )
        await replica.execute("SELECT pg_wal_replay_pause()")
        try:
            await add_rule_performance(primary, [datetime.now(UTC)])  # not on the replica yet

            async def lagging() -> bool:
                state = await replica_state(replica)
                return state.lag(datetime.now(UTC)) > timedelta(0)

            await wait_for(lagging)
            done = _pipectl(config, "check", "--json")
        finally:
            await replica.execute("SELECT pg_wal_replay_resume()")
        assert done.returncode == 0, done.stderr
        report = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        assert report["fresh"]["status"] == "ok"
        assert "(on a replica " in report["fresh"]["message"]
        # The replica's rows, not the primary's six.
        assert report["arrivals"]["value"] == 5
        assert await primary.fetchval("SELECT count(*) FROM rule_performance") == 6
        shown = _pipectl(config, "config", "show")
        assert "database.replica_dsn" in shown.stdout
    finally:
        await primary.close()
        await replica.close()


def test_cache_checks_but_the_apps_own_record_stay_on_the_primary() -> None:
    body = (
        CHECKS
        + """
    [[checks]]
    name = "buffers"
    kind = "cache"
    source = "postgres"

    [[checks]]
    name = "l2"
    kind = "cache"
    source = "redis"

    [[checks]]
    name = "levels"
    kind = "cache"
    source = "app"
    table = "public.prompt_improvement_sessions"
    column = "cache_hit_level"
    time_column = "created_at"
    """
    )
    config = make_config(None, None, body)
    placed = {check.name: on_replica(check) for check in config.checks}
    assert placed == {
        "fresh": True,
        "arrivals": True,
        "buffers": False,
        "l2": False,
        "levels": True,
    }


def test_replica_dsn_is_validated_and_masked() -> None:
    text = (
        '[database]\ndsn = "postgresql://a:one@primary/apes"\n'
        'replica_dsn = "postgresql://a:two@replica/apes"\nreplica_max_lag = "30s"\n'
    )
    loaded = parse_config_text(text, "test.toml", environ={})
    assert loaded.config.database.replica_max_lag == timedelta(seconds=30)
    shown = {key: value for key, value, _ in effective_items(loaded)}
    assert "two" not in shown["database.replica_dsn"]
    assert shown["database.replica_dsn"].startswith("postgresql://a:")
    with pytest.raises(ConfigError, match="replica_dsn"):
        parse_config_text('[database]\nreplica_dsn = "mysql://x"\n', "test.toml", environ={})
    with pytest.raises(ConfigError, match="replica_max_lag"):
        parse_config_text('[database]\nreplica_max_lag = "0s"\n', "test.toml", environ={})
