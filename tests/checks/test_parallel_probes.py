"""Probe units run at the same time (CheckEngine.run_all, `pipectl check`): checks that read
the same rows share one probe, every other check probes alone, each unit on a connection of
its own, so a slow probe does not hold up the others.

Proof without timing: each "peer" check's SQL waits (up to 10 s) until it sees another peer
probe active in the database. Run one after the other, neither ever sees the other and both
answer 0; run at the same time, both answer 1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from pipectl.checks import CheckEngine
from pipectl.db import create_pool
from pipectl.model import CheckResult
from pipectl.store.base import Conn
from tests.checks.conftest import NOW
from tests.checks.test_cli import pipectl
from tests.helpers import make_config

PEERS_SEEN = """
CREATE FUNCTION public.peers_seen() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    seen bigint;
BEGIN
    FOR attempt IN 1..{attempts} LOOP
        PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity is otherwise frozen per transaction
        SELECT count(*) INTO seen FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND state = 'active' AND query LIKE '%public.peers_seen()%';
        IF seen > 0 THEN
            PERFORM pg_sleep(1);  -- so that the peer, polling, sees this one too
            RETURN seen;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN 0;
END $$
"""

CHECKS = """
[[checks]]
name = "peer_a"
kind = "quality"
table = "public.user_feedback"
rule = { type = "custom", sql = "SELECT public.peers_seen()" }
timeout = "30s"

[[checks]]
name = "ratings_present"
kind = "quality"
table = "public.user_feedback"
rule = { type = "not_null", column = "user_rating" }

[[checks]]
name = "peer_b"
kind = "quality"
table = "public.user_feedback"
rule = { type = "custom", sql = "SELECT public.peers_seen()" }
timeout = "30s"

[[checks]]
name = "ratings_in_range"
kind = "quality"
table = "public.user_feedback"
rule = { type = "range", column = "user_rating", min = 1, max = 5 }
"""


async def add_peer_function(database: str, wait_s: float = 10.0) -> None:
    """peers_seen() gives up after `wait_s`."""
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(PEERS_SEEN.format(attempts=round(wait_s * 10)))
    finally:
        await conn.close()


def violations(result: CheckResult) -> object:
    """What peers_seen() answered (the table is empty, so the status is nodata or warn)."""
    return result.baseline.get("violations")


def test_units_group_what_shares_a_probe_and_keep_the_order_first_named(database: str) -> None:
    engine = CheckEngine(make_config(database, None, CHECKS))
    names = ["peer_a", "ratings_present", "peer_b", "ratings_in_range", "peer_a"]
    assert engine.probe_units(names) == [
        ["peer_a"],
        ["ratings_present", "ratings_in_range"],
        ["peer_b"],
    ]


async def test_run_all_runs_probe_units_at_the_same_time_and_records_each(database: str) -> None:
    await add_peer_function(database)
    config = make_config(database, None, CHECKS)
    engine = CheckEngine(config)
    names = [c.name for c in config.checks]
    recorded: list[tuple[str, int]] = []

    async def record(conn: Conn, result: CheckResult) -> None:
        recorded.append((result.check, id(conn)))

    pool = await create_pool(config, min_size=0, max_size=4)
    try:
        results = await engine.run_all(names, pool, redis=None, now=NOW, record=record)
    finally:
        await pool.close()
    assert list(results) == names  # in the order asked, whatever order they finished in
    assert violations(results["peer_a"]) == violations(results["peer_b"]) == 1
    assert results["ratings_present"].baseline["probe_shared_by"] == 2
    assert sorted(name for name, _ in recorded) == sorted(names)
    # Each result is stored on the connection that probed it: the shared pair on one.
    by_check = dict(recorded)
    assert by_check["ratings_present"] == by_check["ratings_in_range"]


async def test_one_connection_at_a_time_runs_the_units_one_after_the_other(
    database: str,
) -> None:
    """The pool's size is the bound: with one connection the peers never meet (answers 0)."""
    await add_peer_function(database, wait_s=1.0)
    config = make_config(database, None, CHECKS)
    engine = CheckEngine(config)
    pool = await create_pool(config, min_size=0, max_size=1)
    try:
        results = await engine.run_all(["peer_a", "peer_b"], pool, redis=None, now=NOW)
    finally:
        await pool.close()
    assert violations(results["peer_a"]) == violations(results["peer_b"]) == 0


async def test_pipectl_check_runs_the_probes_at_the_same_time(
    database: str, tmp_path: Path
) -> None:
    await add_peer_function(database)
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{database}"\n{CHECKS}')
    done = await asyncio.to_thread(pipectl, path, "--json", "peer_a", "peer_b")
    report = json.loads(done.stdout)
    assert {c["name"]: c["value"] for c in report["checks"]} == {"peer_a": 1, "peer_b": 1}
