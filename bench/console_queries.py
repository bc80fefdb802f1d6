"""The console's read queries against a long history (1M runs, 10M samples by default).

    python -m bench.console_queries [--runs 1000000] [--samples 10000000] [--repeats 100]

Fills the pipectl schema inside PostgreSQL (generate_series; triggers off while loading) with
30 days of runs (20 steps), 2 check results per run (100 checks), 90 days of samples (one
series per check), 1 event per run, 1 request per 10 runs, and what pipectl derives as it
writes (the hourly sample rollup, cache dips as events), then times the store functions
the console and the CLI call (pipectl/store: status_snapshot, recent_runs, recent_results,
read_series, recent_events, list_requests), round-robin so every query sees the same load,
with `SELECT 1` on the same connection as the baseline. Each query runs `repeats` times on one
connection through asyncpg's statement cache, so PostgreSQL's switch to a generic plan after
five executions is part of what is measured. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.common import (
    Database,
    Figure,
    Section,
    load_average,
    ms,
    percentile,
    shared_servers,
)
from bench.generate import progress_bar
from pipectl import db as pipectl_db
from pipectl import store
from pipectl.config import Config

STEPS = 20
CHECKS = 100
AGENT = "00000000-0000-0000-0000-0000000000a1"

DEFINITIONS = f"""
INSERT INTO pipectl.agents (id, name, host, pid, version)
VALUES ('{AGENT}', 'bench-agent', 'bench', 1, 'bench');
INSERT INTO pipectl.steps (name, kind, relation, schedule, description)
SELECT 'step_' || lpad(s::text, 2, '0'), 'matview', 'public.summary_' || s, 'every 1m', ''
FROM generate_series(0, {STEPS - 1}) AS s;
INSERT INTO pipectl.checks (name, kind, target, sql, schedule, status, last_value,
                            last_result_at, status_since, definition)
SELECT 'check_' || lpad(c::text, 3, '0'),
       (ARRAY['freshness', 'volume', 'metric', 'quality', 'cache'])[1 + c % 5],
       'public.rule_performance', 'SELECT 1', 'every 1m',
       (ARRAY['ok', 'ok', 'ok', 'ok', 'warn', 'fail', 'nodata'])[1 + c % 7], random(),
       now(), now() - interval '3 hours',
       CASE WHEN c % 5 = 4
            THEN jsonb_build_object('source', (ARRAY['redis', 'app', 'postgres'])[1 + c % 3])
            ELSE '{{}}' END
FROM generate_series(0, {CHECKS - 1}) AS c;
"""

RUNS = f"""
INSERT INTO pipectl.runs (step, trigger, status, scheduled_for, requested_by, attempt, agent_id,
                          queued_at, started_at, finished_at, rows, error)
SELECT 'step_' || lpad((g % {STEPS})::text, 2, '0'), x.trigger,
       x.status, CASE WHEN x.trigger = 'schedule' THEN x.at END,
       CASE WHEN x.trigger = 'manual' THEN 'operator' END, 1, '{AGENT}',
       x.at, x.at + interval '5 ms', x.at + (0.02 + random()) * interval '1 second',
       (random() * 5000)::int,
       CASE WHEN x.status = 'failed' THEN 'canceling statement due to lock timeout' END
FROM (
    SELECT g, now() - ($2 - g) * (interval '30 days' / $2) AS at,
           CASE WHEN u < 0.95 THEN 'schedule' WHEN u < 0.98 THEN 'manual' ELSE 'retry' END
               AS trigger,
           CASE WHEN v < 0.97 THEN 'succeeded' WHEN v < 0.995 THEN 'failed' ELSE 'skipped' END
               AS status
    FROM (SELECT g, random() AS u, random() AS v FROM generate_series($1::bigint, $3) AS g) r
) x
"""

RESULTS = f"""
INSERT INTO pipectl.check_results (check_name, status, value, threshold, expected_low,
                                   expected_high, baseline, message, trigger, observed_at,
                                   duration_ms, agent_id)
SELECT 'check_' || lpad((g % {CHECKS})::text, 3, '0'),
       CASE WHEN u < 0.93 THEN 'ok' WHEN u < 0.97 THEN 'warn' WHEN u < 0.99 THEN 'fail'
            ELSE 'nodata' END,
       100 * random(), '{{"warn_above": 80}}', 10, 80,
       CASE WHEN (g % {CHECKS}) % 5 = 4  -- cache checks: per-level counts, as checks/cache.py
            THEN '{{"source": "redis", "deltas": true, "levels": {{"all": {{"hits": 90,
                  "lookups": 100}}, "L1": {{"hits": 60, "lookups": 100}}}}}}'::jsonb
            ELSE '{{"rows_checked": 1000}}'::jsonb END,
       'value within 10..80', 'schedule', now() - ($2 - g) * (interval '30 days' / $2),
       random() * 20, '{AGENT}'
FROM (SELECT g, random() AS u FROM generate_series($1::bigint, $3) AS g) r
"""

SAMPLES = f"""
INSERT INTO pipectl.samples (series, ts, value, source, anomaly)
SELECT 'check_' || lpad((g % {CHECKS})::text, 3, '0'),
       now() - ($2 - g) * (interval '90 days' / $2), 100 * random(), 'live', random() < 0.01
FROM generate_series($1::bigint, $3) AS g
"""

EVENTS = f"""
INSERT INTO pipectl.events (at, kind, subject, actor, message, detail)
SELECT now() - ($2 - g) * (interval '90 days' / $2),
       (ARRAY['check.status', 'run.failed', 'request.rerun', 'request.done', 'agent.started'])
           [1 + g % 5],
       CASE WHEN g % 2 = 0 THEN 'check_' || lpad((g % {CHECKS})::text, 3, '0')
            ELSE 'step_' || lpad((g % {STEPS})::text, 2, '0') END,
       'pipectl_agent', 'status changed', '{{}}'
FROM generate_series($1::bigint, $3) AS g
"""

REQUESTS = f"""
INSERT INTO pipectl.requests (kind, target, reason, requested_by, created_at, claimed_by,
                              claimed_at, attempts, done_at, outcome, detail)
SELECT 'rerun', 'step_' || lpad((g % {STEPS})::text, 2, '0'), 'bench', 'operator',
       now() - ($2 - g) * (interval '30 days' / $2), '{AGENT}',
       now() - ($2 - g) * (interval '30 days' / $2), 1,
       CASE WHEN g > $2 - 3 THEN NULL ELSE now() - ($2 - g) * (interval '30 days' / $2)
                                             + interval '1 second' END,
       CASE WHEN g > $2 - 3 THEN NULL ELSE 'succeeded' END, ''
FROM generate_series($1::bigint, $3) AS g
"""

# What pipectl keeps as history is written (triggers on samples, pipectl/store/results.py), for
# history loaded here with triggers off: the hourly sample rollup, and a cache.dip or
# cache.recovered event for each cache result that crosses its target (expected_low).
SAMPLE_ROLLUP = """
INSERT INTO pipectl.samples_hourly (series, hour, n, total)
SELECT series, date_trunc('hour', ts, 'UTC'), count(*), sum(value)
FROM pipectl.samples GROUP BY 1, 2;
"""
CACHE_CROSSINGS = """
INSERT INTO pipectl.events (at, kind, subject, actor, message, detail)
SELECT observed_at, CASE WHEN value < expected_low THEN 'cache.dip' ELSE 'cache.recovered' END,
       check_name, '', round(value::numeric, 1) || ' (target ' || expected_low || ')',
       jsonb_build_object('to', CASE WHEN value < expected_low THEN 'warn' ELSE 'ok' END)
FROM (
    SELECT r.check_name, r.observed_at, r.value, r.expected_low,
           lag(r.value) OVER (PARTITION BY r.check_name ORDER BY r.observed_at) AS prev
    FROM pipectl.check_results r JOIN pipectl.checks c ON c.name = r.check_name
    WHERE c.kind = 'cache' AND r.value IS NOT NULL
) x
WHERE (value < expected_low AND (prev IS NULL OR prev >= expected_low))
   OR (value >= expected_low AND prev < expected_low);
"""

CHUNK = 500_000


async def fill_history(
    dsn: str, runs: int, samples: int, progress: Callable[[int, int], None] | None = None
) -> dict[str, int]:
    """The pipectl history, inside PostgreSQL, in chunks; returns rows per table."""
    plan = {
        "runs": (RUNS, runs),
        "check_results": (RESULTS, 2 * runs),
        "samples": (SAMPLES, samples),
        "events": (EVENTS, runs),
        "requests": (REQUESTS, max(10, runs // 10)),
    }
    total = sum(count for _, count in plan.values())
    done = 0
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")  # no NOTIFY per row
        await conn.execute(DEFINITIONS)
        for sql, count in plan.values():
            for low in range(1, count + 1, CHUNK):
                high = min(count, low + CHUNK - 1)
                await conn.execute(sql, low, float(count), high)
                done += high - low + 1
                if progress:
                    progress(done, total)
        await conn.execute(SAMPLE_ROLLUP + CACHE_CROSSINGS)
        await conn.execute("RESET session_replication_role")
        await conn.execute(
            "VACUUM (ANALYZE) pipectl.runs, pipectl.check_results, pipectl.samples,"
            " pipectl.samples_hourly, pipectl.events, pipectl.requests, pipectl.steps,"
            " pipectl.checks, pipectl.agents"
        )
    finally:
        await conn.close()
    return {table: count for table, (_, count) in plan.items()}


Query = Callable[[asyncpg.Connection], Awaitable[Any]]


def queries() -> dict[str, Query]:
    """Every screen's fetch, exactly as the console calls it (console/data.py), and the CLI's
    reads (`pipectl status`, `pipectl history`)."""
    from pipectl.console import data
    from pipectl.store.console import rerun_plan

    now = datetime.now(UTC)
    return {
        "overview screen (status snapshot, tiles)": lambda c: data.overview(c),
        "checks screen (states, trends)": lambda c: data.checks(c),
        "step detail (runs, durations, graph)": lambda c: data.step(c, "step_07"),
        "check detail (results, 24 h of samples)": lambda c: data.check(c, "check_042", now),
        "cache screen, 1 h": lambda c: data.cache(c, now, timedelta(hours=1)),
        "cache screen, 24 h": lambda c: data.cache(c, now, timedelta(days=1)),
        "cache screen, 7 d": lambda c: data.cache(c, now, timedelta(days=7)),
        "timeline screen, 6 h": lambda c: data.timeline_of(c, now, timedelta(hours=6)),
        "timeline screen, 7 d": lambda c: data.timeline_of(c, now, timedelta(days=7)),
        "requests screen": lambda c: data.requests(c),
        "rerun dialog, with downstream": lambda c: rerun_plan(c, "step_07", True),
        "pipectl status": lambda c: store.status_snapshot(c),
        "pipectl history (all steps, 20)": lambda c: store.recent_runs(c, limit=20),
        "pipectl history STEP (20)": lambda c: store.recent_runs(c, ["step_07"], limit=20),
    }


async def measure(dsn: str, repeats: int) -> tuple[dict[str, list[float]], list[float]]:
    """Round-robin: every query once per round, SELECT 1 once per round. The heap is settled
    first, as the console does when it starts (console.app.settle_heap)."""
    from pipectl.console.app import settle_heap

    conn = await pipectl_db.connect(Config(), dsn=dsn)
    settle_heap()
    try:
        found = queries()
        times: dict[str, list[float]] = {name: [] for name in found}
        select1: list[float] = []
        for _ in range(repeats):
            for name, query in found.items():
                started = time.perf_counter()
                await query(conn)
                times[name].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await conn.fetchval("SELECT 1")
            select1.append((time.perf_counter() - started) * 1000)
        return times, select1
    finally:
        await conn.close()


def report(counts: dict[str, int], times: dict[str, list[float]], select1: list[float]) -> Section:
    baseline = ms(percentile(select1, 50))
    rows = [
        [
            name,
            ms(percentile(values, 50)),
            ms(percentile(values, 95)),
            ms(max(values)),
            "< 50 ms",
            "meets" if percentile(values, 95) < 50 else "MISSES",
        ]
        for name, values in times.items()
    ]
    worst = max(times, key=lambda name: percentile(times[name], 95))
    history = ", ".join(f"{table} {count:,}" for table, count in counts.items())
    return Section(
        "console queries against a long history",
        [
            Figure(
                "slowest console query, p95",
                ms(percentile(times[worst], 95)),
                "< 50 ms",
                f"{baseline} (SELECT 1, p50)",
                worst,
            )
        ],
        [
            f"history: {history}.",
            f"{len(select1)} rounds; max includes the first (cold, planning) execution.",
            f"load average at the end: {load_average()}",
        ],
        tables=[
            (
                "every console query (pipectl/store)",
                ["query", "p50", "p95", "max", "target", "p95 vs target"],
                rows,
            )
        ],
    )


async def run(runs: int, samples: int, repeats: int) -> Section:
    async with Database.create() as db:
        with progress_bar("pipectl history") as update:
            counts = await fill_history(db.dsn, runs, samples, update)
        times, select1 = await measure(db.dsn, repeats)
    return report(counts, times, select1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args(argv)
    with shared_servers():
        section = asyncio.run(run(args.runs, args.samples, args.repeats))
    section.print()


if __name__ == "__main__":
    main()
