"""Console benchmark: launch-to-first-data, and every screen query at scale.

    python -m bench.console [--dsn URL] [--launches N]

Creates a throw-away database (on --dsn's server, $PIPECTL_BENCH_DSN, $PIPECTL_TEST_DSN, or an
embedded PostgreSQL), fills it with 100k runs, 1M samples, ~300k check results, 50k events and
10k requests (generate_series), then:

- runs each screen's fetch exactly as the console does, records every statement it sends, and
  EXPLAIN ANALYZEs each one: query -> ms, slowest first;
- does the same with the console's indexes (migration 0003) dropped: the baseline;
- launches the console headless N times in a fresh process and times it from process start to
  the overview table's first rows on screen (median).

Figures, not pass/fail. Targets: first data < 1.5 s, every screen query < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

from bench.console_queries import CACHE_CROSSINGS
from pipectl import migrate
from pipectl.config import parse_config_text
from pipectl.console import data
from pipectl.console.service import SETTINGS
from pipectl.db import connect
from pipectl.sqlfiles import sql_dir
from pipectl.store import console as store_console

REPO = Path(__file__).resolve().parents[1]
TARGET_FIRST_DATA = 1.5
TARGET_QUERY_MS = 50.0

GENERATE = """
INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds)
SELECT gen_random_uuid(), 'agent-' || g, 'host-' || g, 1000 + g, '0.1.0', 3600
FROM generate_series(1, 3) g;

INSERT INTO pipectl.steps (name, kind, sql, schedule, depends_on, description)
SELECT 'step_' || lpad(g::text, 2, '0'), 'sql', 'SELECT refresh_' || g || '()', 'every 5m',
       CASE WHEN g % 4 = 1 THEN '{}'::text[]
            ELSE ARRAY['step_' || lpad((g - 1)::text, 2, '0')] END,
       'benchmark step ' || g
FROM generate_series(1, 20) g;

INSERT INTO pipectl.runs (step, trigger, status, scheduled_for, queued_at, started_at,
                          finished_at, rows, error, agent_id)
SELECT 'step_' || lpad(((g % 20) + 1)::text, 2, '0'), 'schedule',
       CASE WHEN f THEN 'failed' WHEN g % 53 = 0 THEN 'skipped' ELSE 'succeeded' END,
       t, t, t, t + make_interval(secs => 0.2 + (g % 97) / 10.0),
       CASE WHEN f THEN NULL ELSE g % 5000 END,
       CASE WHEN f THEN 'canceling statement due to statement timeout'
            WHEN g % 53 = 0 THEN 'paused by bench' END,
       (SELECT id FROM pipectl.agents ORDER BY name LIMIT 1)
FROM generate_series(1, 100000) g,
     -- step_05 never failed: its detail screen looks for a last failure it will not find
     LATERAL (SELECT now() - make_interval(secs => (100000 - g) * 26) AS t,
                     g % 37 = 0 AND g % 20 <> 4 AS f) x;

INSERT INTO pipectl.checks (name, kind, target, sql, schedule, status, last_value,
                            last_result_at, definition)
SELECT 'check_' || lpad(g::text, 2, '0'),
       CASE WHEN g >= 27 THEN 'cache' ELSE 'volume' END,
       'public.rule_performance', 'SELECT count(*) FROM public.rule_performance', 'every 1m',
       (ARRAY['ok', 'ok', 'warn', 'fail', 'nodata'])[1 + g % 5], g, now(),
       CASE g WHEN 27 THEN '{"source": "redis"}'::jsonb WHEN 28 THEN '{"source": "app"}'
              WHEN 29 THEN '{"source": "postgres"}' ELSE '{}' END
FROM generate_series(0, 29) g;

-- volume and friends: one result every 5 minutes for 30 days
INSERT INTO pipectl.check_results (check_name, status, value, expected_low, expected_high,
                                   message, observed_at)
SELECT 'check_' || lpad(c::text, 2, '0'), 'ok', 100 + (i % 50), 80, 160, 'within band',
       now() - make_interval(mins => i * 5)
FROM generate_series(0, 26) c, generate_series(0, 8639) i;

-- cache checks: one result a minute for 7 days, levels on the app cache (every baseline
-- distinct, as real interval counts are)
INSERT INTO pipectl.check_results (check_name, status, value, expected_low, baseline, message,
                                   observed_at)
SELECT 'check_' || c, CASE WHEN i % 400 < 20 THEN 'warn' ELSE 'ok' END,
       CASE WHEN i % 400 < 20 THEN 0.6 ELSE 0.9 END + (i % 7) / 100.0, 0.8,
       CASE WHEN c = 28 THEN jsonb_build_object('source', 'app', 'levels', jsonb_build_object(
                'L1', jsonb_build_object('hits', 100 + i % 97, 'lookups', 200),
                'L2', jsonb_build_object('hits', 50 + i % 89, 'lookups', 150),
                'L3', jsonb_build_object('hits', 5, 'lookups', 10 + i % 83)))
            ELSE jsonb_build_object('source', CASE c WHEN 27 THEN 'redis' ELSE 'postgres' END)
       END,
       'hit ratio', now() - make_interval(mins => i)
FROM generate_series(27, 29) c, generate_series(0, 10079) i;

-- 1M samples: 30 series (one per check), a point every 78 s for 30 days
INSERT INTO pipectl.samples (series, ts, value)
SELECT 'check_' || lpad((g % 30)::text, 2, '0'), now() - make_interval(secs => (g / 30) * 78),
       (g % 1000) / 10.0
FROM generate_series(0, 999999) g;

INSERT INTO pipectl.events (at, kind, subject, actor, message, detail)
SELECT now() - make_interval(secs => g * 50),
       (ARRAY['check.status', 'request.rerun', 'request.done', 'step.paused', 'agent.started'])
           [1 + g % 5],
       CASE WHEN g % 5 = 0 THEN 'check_' || lpad((g % 30)::text, 2, '0')
            ELSE 'step_' || lpad(((g % 20) + 1)::text, 2, '0') END,
       'bench', 'event ' || g, jsonb_build_object('to', 'warn', 'outcome', 'succeeded')
FROM generate_series(1, 50000) g;

INSERT INTO pipectl.requests (kind, target, args, reason)
SELECT 'rerun', 'step_' || lpad(((g % 20) + 1)::text, 2, '0'), '{"downstream": false}', 'bench'
FROM generate_series(1, 10000) g;
UPDATE pipectl.requests SET created_at = now() - make_interval(secs => (10000 - id) * 200),
       done_at = now() - make_interval(secs => (10000 - id) * 200 - 5), outcome = 'succeeded'
WHERE id < 9990;
"""


class Recording:
    """A connection that notes every statement a fetch sends, then runs it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.conn.fetchval(sql, *args)


Fetch = Callable[[Any], Awaitable[Any]]


def screens(now: datetime, request_id: int) -> list[tuple[str, Fetch]]:
    return [
        ("overview", data.overview),
        ("checks", data.checks),
        ("step detail", partial(data.step, name="step_05")),
        ("check detail (1 day of samples)", partial(data.check, name="check_07", now=now)),
        ("cache 6h", partial(data.cache, now=now, window=timedelta(hours=6))),
        ("cache 7d", partial(data.cache, now=now, window=timedelta(days=7))),
        ("timeline 6h", partial(data.timeline_of, now=now, window=timedelta(hours=6))),
        ("timeline 7d", partial(data.timeline_of, now=now, window=timedelta(days=7))),
        ("requests", data.requests),
        (
            "rerun plan (+downstream)",
            partial(store_console.rerun_plan, step="step_01", downstream=True),
        ),
        ("request row", partial(data.request_row, request_id=request_id)),
    ]


@dataclass
class Measured:
    screen: str
    wall_ms: float
    statements: list[tuple[str, float]]  # first line of SQL, execution + planning ms


async def measure(conn: asyncpg.Connection, now: datetime, rounds: int = 5) -> list[Measured]:
    request_id = await conn.fetchval("SELECT max(id) FROM pipectl.requests")
    results = []
    for name, fetch in screens(now, request_id):
        walls = []
        recorded = Recording(conn)
        await fetch(recorded)  # warm the cache the way a running console has it warm
        for _ in range(rounds):
            started = time.perf_counter()
            await fetch(conn)
            walls.append((time.perf_counter() - started) * 1000)
        timed = []
        for sql, args in recorded.statements:
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            top = (json.loads(plan) if isinstance(plan, str) else plan)[0]
            ms = top["Execution Time"] + top["Planning Time"]
            timed.append((_label(sql), ms))
        results.append(Measured(name, statistics.median(walls), timed))
    return results


def _label(sql: str) -> str:
    words = " ".join(sql.split())
    return words[:70]


def print_table(title: str, measured: Sequence[Measured]) -> None:
    print(f"\n{title}")
    print(f"  {'screen':34} {'fetch ms':>9} {'slowest stmt ms':>16}  slowest statement")
    for m in sorted(measured, key=lambda m: -max(ms for _, ms in m.statements)):
        label, slowest = max(m.statements, key=lambda s: s[1])
        flag = "" if slowest < TARGET_QUERY_MS else "  <-- over target"
        print(f"  {m.screen:34} {m.wall_ms:9.1f} {slowest:16.2f}  {label}{flag}")
    every = [ms for m in measured for _, ms in m.statements]
    print(
        f"  {len(every)} statements; slowest {max(every):.2f} ms; "
        f"median {statistics.median(every):.2f} ms (target < {TARGET_QUERY_MS:.0f} ms each)"
    )


async def without_console_indexes(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Drop migration 0003's indexes (to measure the baseline); returns how to recreate them."""
    text = (sql_dir() / "pipectl" / "0003_console.sql").read_text(encoding="utf-8")
    names = re.findall(r"CREATE INDEX (\w+)", text)
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'pipectl'"
        " AND indexname = ANY($1)",
        names,
    )
    for row in rows:
        await conn.execute(f"DROP INDEX pipectl.{row['indexname']}")
    return [(r["indexname"], r["indexdef"]) for r in rows]


LAUNCH = """
import time, sys, asyncio
t0 = time.perf_counter()
try:  # as `pipectl` opens the console: validated whole once, then known valid (configcache)
    from pathlib import Path
    from pipectl.cli.common import known_config
    from pipectl.configfile import ConfigSource
    config = known_config(ConfigSource(Path("bench.toml"), sys.argv[1], ()), environ={})
except ImportError:  # a tree from before pipectl.configcache (bench.cli_start --compare-with)
    from pipectl.config import parse_config_text
    config = parse_config_text(sys.argv[1], "bench.toml", environ={}).config
from pipectl.console.app import PipectlApp
async def main():
    app = PipectlApp(config, cursor_blink=False)
    async with app.run_test(size=(120, 40)) as pilot:
        while True:
            tables = app.screen.query("#table")
            if tables and tables.first().row_count:
                break
            await pilot.pause(0.005)
        print(f"{time.perf_counter() - t0:.4f}")
asyncio.run(main())
"""


def launch_times(dsn: str, launches: int) -> list[float]:
    """Seconds from starting a python process to the overview's first rows on screen."""
    toml = f'[database]\ndsn = "{dsn}"\n'
    times = []
    for _ in range(launches):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", LAUNCH, toml],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        total = time.perf_counter() - started
        inside = float(out.stdout.strip().splitlines()[-1])
        times.append(total)
        print(f"  launch: {total:.3f} s to first data ({inside:.3f} s after interpreter start)")
    return times


async def build(admin_dsn: str) -> str:
    name = f"pipectl_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        folder = sql_dir() / "apes"
        await conn.execute((folder / "schema.sql").read_text())
        await migrate.upgrade(conn)
        await conn.execute((folder / "materialized.sql").read_text())
        started = time.perf_counter()
        await conn.execute(GENERATE)
        await conn.execute(CACHE_CROSSINGS)  # the samples' rollup its triggers kept
        await conn.execute("VACUUM ANALYZE")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pipectl.runs) AS runs,"
            " (SELECT count(*) FROM pipectl.samples) AS samples,"
            " (SELECT count(*) FROM pipectl.check_results) AS results,"
            " (SELECT count(*) FROM pipectl.events) AS events,"
            " (SELECT count(*) FROM pipectl.requests) AS requests"
        )
        assert counts is not None
        print(
            f"generated in {time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{k} {v:,}" for k, v in dict(counts).items())
        )
    finally:
        await conn.close()
    return dsn


async def drop(admin_dsn: str, dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def run(admin_dsn: str, launches: int, keep: bool = False) -> None:
    dsn = await build(admin_dsn)
    try:
        config = parse_config_text(f'[database]\ndsn = "{dsn}"\n', "bench.toml", environ={})
        conn = await connect(config.config, application_name="pipectl bench", settings=SETTINGS)
        try:
            version = await conn.fetchval("SHOW server_version")
            print(f"server: PostgreSQL {version}")
            now = datetime.now(UTC)
            indexes = await without_console_indexes(conn)
            await conn.execute("ANALYZE")
            baseline = await measure(conn, now)
            print_table(
                "baseline: schema without the console's indexes (0003: "
                + (", ".join(n for n, _ in indexes) or "none") + ")",
                baseline,
            )  # fmt: skip
            for _, definition in indexes:
                await conn.execute(definition)
            await conn.execute("ANALYZE")
            current = await measure(conn, now)
            print_table("with the console's indexes", current)
        finally:
            await conn.close()
        print(f"\nlaunch to first data (overview rows on screen), {launches} launches:")
        times = launch_times(dsn, launches)
        median = statistics.median(times)
        verdict = "within" if median < TARGET_FIRST_DATA else "OVER"
        print(f"  median {median:.3f} s ({verdict} the {TARGET_FIRST_DATA} s target)")
    finally:
        if keep:
            print(f"kept: {dsn}")
        else:
            await drop(admin_dsn, dsn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="admin DSN of the server to create the database on")
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (needs --dsn)")
    args = parser.parse_args()
    dsn = args.dsn or os.environ.get("PIPECTL_BENCH_DSN") or os.environ.get("PIPECTL_TEST_DSN")
    if dsn:
        asyncio.run(run(dsn, args.launches, args.keep))
        return
    from pipectl.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedPostgres(Path(folder), fast=True)
        server.start()
        try:
            asyncio.run(run(server.dsn(), args.launches))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
