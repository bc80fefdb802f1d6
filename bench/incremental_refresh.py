"""Incremental refresh benchmark (issue 17 §3): what a refresh costs when 1 % is new.

    python -m bench.incremental_refresh [--rows 10000000] [--rounds 5]

`rows` rule_performance rows over 30 days (generated in SQL, once), the same summary kept
two ways: the materialized view `rule_effectiveness_summary` (REFRESH MATERIALIZED VIEW
CONCURRENTLY, the preset today) and an `incremental` step publishing the table
`rule_effectiveness_incremental` (pipectl.store.incremental: per-hour partial aggregates).
Rows arrive as they do in production, spread over the step's refresh interval (5 min):
each round advances a simulated clock by 5 minutes, inserts 1 % of `rows` as new rows dated
over those 5 minutes, then refreshes both (the incremental step with the simulated time as its
reference time, the matview with now(): it reads the whole window either way), in an order
that alternates round by round, each in its own transaction as the agent
runs it (TimeZone UTC, COMMIT included in the wall time). The incremental refresh carries the
preset's gates (agent.gates: measured before, judged after, in its transaction; bench/gates.py
does the same for the matview), timed apart.

Per refresh: whole wall time; rows it read from rule_performance
(`pg_stat_xact_user_tables`: seq_tup_read + idx_tup_fetch inside its own transaction, so no
other session counts) against rows arrived since the previous refresh; the audit of the
incremental step after it (pipectl.audit, the comparison `pipectl audit` runs: its content
against its defining query at its reference time, both ways). Last, both are refreshed in one
transaction (one now(), the same rows) and compared with each other. Figures are printed,
never asserted. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from bench.common import Database, Figure, Section, fill_rule_performance, ms, spread
from pipectl.agent import gates
from pipectl.audit import audit_step, comparison_sql, summary_columns
from pipectl.config import StepConfig, parse_config_text
from pipectl.identifiers import Relation
from pipectl.store import incremental

MATVIEW = "public.rule_effectiveness_summary"
REFRESH = f"REFRESH MATERIALIZED VIEW CONCURRENTLY {MATVIEW}"
INCREMENTAL = Relation("public", "rule_effectiveness_incremental")
STEP = f"""
[[steps]]
name = "rule_effectiveness_incremental"
kind = "incremental"
relation = "{INCREMENTAL}"
every = "5m"
[steps.incremental]
source = "public.rule_performance"
time_column = "created_at"
window = "30d"
bucket = "hour"
overlap = "@OVERLAP@"
keys = [{{ name = "rule_id", column = "rule_id" }}, {{ name = "rule_name", column = "rule_name" }}]
aggregates = [
    {{ name = "usage_count", fn = "count" }},
    {{ name = "avg_improvement", fn = "avg", column = "improvement_score" }},
    {{ name = "score_stddev", fn = "stddev", column = "improvement_score" }},
    {{ name = "min_improvement", fn = "min", column = "improvement_score" }},
    {{ name = "max_improvement", fn = "max", column = "improvement_score" }},
    {{ name = "avg_confidence", fn = "avg", column = "confidence_level" }},
    {{ name = "avg_execution_time", fn = "avg", column = "execution_time_ms" }},
    {{ name = "prompt_types_count", fn = "count_distinct", column = "prompt_type" }},
]
[steps.gates]
row_count = {{ min_ratio = 0.5 }}
not_null = ["rule_id", "rule_name", "usage_count"]
groups = {{ keys = ["rule_id"], max_lost = 0.2 }}
"""

# Counts of this backend not yet flushed to the shared statistics (the current transaction's,
# and possibly earlier ones' within the last second): a refresh's reads are the difference
# across it, inside its transaction (nothing is flushed while a transaction is open).
READ = """
SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)::bigint
FROM pg_stat_xact_user_tables WHERE relid = 'public.rule_performance'::regclass
"""


INTERVAL = timedelta(minutes=5)
"""The step's refresh interval (the preset's `every`): what arrives between two refreshes."""
OVERLAP = "1m"
"""The preset's overlap for APES (rows are written in short transactions)."""


def bench_step(overlap: str = OVERLAP) -> StepConfig:
    loaded = parse_config_text(
        STEP.replace("@OVERLAP@", overlap), "bench/incremental.py", environ={}
    )
    return loaded.config.step("rule_effectiveness_incremental")


@dataclass(frozen=True)
class Refresh:
    """One refresh: wall ms (BEGIN to COMMIT), ms inside gates, rows it read from the source."""

    wall_ms: float
    gate_ms: float
    rows_read: int


@dataclass(frozen=True)
class Round:
    arrived: int
    matview: Refresh
    incremental: Refresh
    engine_read: int
    """Rows read as the engine counts them (Refreshed.rows_read)."""
    audit_differing: int
    audit_ms: float
    gates_passed: bool


async def new_rows(conn: asyncpg.Connection, count: int, until: datetime) -> None:
    """`count` rule applications dated over the INTERVAL before `until`: what arrived since
    the last refresh at a steady rate."""
    await conn.execute(
        """
        INSERT INTO public.rule_performance
            (rule_id, rule_name, prompt_type, improvement_score, confidence_level,
             execution_time_ms, created_at)
        SELECT 'rule_' || (g % 12), 'Rule ' || (g % 12),
               (ARRAY['code', 'writing', 'analysis', 'chat'])[1 + g % 4],
               random(), random(), (50 + random() * 450)::int,
               ($2::timestamptz AT TIME ZONE 'UTC') - random() * $3::interval
        FROM generate_series(1, $1) AS g
        """,
        count,
        until,
        INTERVAL,
    )


async def refresh_matview(conn: asyncpg.Connection) -> Refresh:
    began = time.perf_counter()
    async with conn.transaction():
        before = await conn.fetchval(READ)
        await conn.execute(REFRESH)
        read = await conn.fetchval(READ) - before
    return Refresh((time.perf_counter() - began) * 1000, 0.0, int(read))


async def refresh_incremental(
    conn: asyncpg.Connection, step: StepConfig, at: datetime | None
) -> tuple[Refresh, int, bool]:
    """The incremental refresh with the preset's gates, as the agent runs it; (refresh, rows
    read as the engine counts them, whether every gate passed)."""
    began = time.perf_counter()
    async with conn.transaction():
        gate_began = time.perf_counter()
        before = await gates.measure_before(conn, step, within=600)
        gate = time.perf_counter() - gate_began
        counted = await conn.fetchval(READ)
        done = await incremental.refresh(conn, step, reference=at)
        read = await conn.fetchval(READ) - counted
        gate_began = time.perf_counter()
        verdicts = await gates.evaluate(conn, step, before, within=600, checks=None)
        gate += time.perf_counter() - gate_began
    wall = (time.perf_counter() - began) * 1000
    return Refresh(wall, gate * 1000, int(read)), done.rows_read, all(v.passed for v in verdicts)


async def audit(conn: asyncpg.Connection, step: StepConfig) -> tuple[int, float]:
    """Differing rows between the incremental summary and its defining query at its reference
    time (pipectl.audit), and the ms it took."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        found = await audit_step(conn, step, timezone="UTC")
    return found.differing, found.elapsed_ms


async def setup(conn: asyncpg.Connection, rows: int, step: StepConfig) -> None:
    """Source rows (once, in SQL), the matview refreshed, the incremental summary installed
    and built by its first refresh."""
    # The upstream indexes are dropped for the bulk insert and built again after it (the same
    # indexes in the end, in a fraction of the time random keys cost an index kept current).
    indexes = await conn.fetch(
        "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition"
        " FROM pg_index i WHERE i.indrelid = 'public.rule_performance'::regclass"
        " AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
    )
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['name']}")
    await fill_rule_performance(conn, rows)
    for index in indexes:
        await conn.execute(index["definition"])
    await conn.execute("ANALYZE public.rule_performance")
    await conn.execute(f"REFRESH MATERIALIZED VIEW {MATVIEW}")
    async with conn.transaction():
        await incremental.install(conn, step, triggers=True)
    async with conn.transaction():
        await incremental.refresh(conn, step)
    await conn.execute(f"ANALYZE {INCREMENTAL.sql}")


async def measure(
    conn: asyncpg.Connection, rows: int, rounds: int, overlap: str = OVERLAP
) -> tuple[list[Round], int]:
    """Interleaved rounds of 1 % new rows, then both refreshes; and the rows that differ
    between the two summaries refreshed in one transaction."""
    step = bench_step(overlap)
    batch = max(rows // 100, 1)
    found: list[Round] = []
    clock = await incremental.published_at(conn, step)
    assert clock is not None  # setup refreshed it
    for index in range(rounds):
        clock += INTERVAL
        await new_rows(conn, batch, clock)
        if index % 2 == 0:
            matview = await refresh_matview(conn)
            inc, engine_read, passed = await refresh_incremental(conn, step, clock)
        else:
            inc, engine_read, passed = await refresh_incremental(conn, step, clock)
            matview = await refresh_matview(conn)
        differing, audit_ms = await audit(conn, step)
        found.append(Round(batch, matview, inc, engine_read, differing, audit_ms, passed))
    return found, await same_instant(conn, step)


async def same_instant(conn: asyncpg.Connection, step: StepConfig) -> int:
    """Both refreshed in one transaction (one now(), the same rows): the rows in one summary
    and not the other, both ways."""
    async with conn.transaction():
        await incremental.refresh(conn, step)
        await conn.execute(REFRESH)
        columns = await summary_columns(conn, INCREMENTAL)
        row = await conn.fetchrow(comparison_sql(INCREMENTAL, f"SELECT * FROM {MATVIEW}", columns))
    assert row is not None
    return int(row["only_in_summary"]) + int(row["only_in_recompute"])


def report(rows: int, found: list[Round], cross: int, overlap: str = OVERLAP) -> Section:
    mat = [r.matview.wall_ms for r in found]
    inc = [r.incremental.wall_ms - r.incremental.gate_ms for r in found]
    gated = [r.incremental.wall_ms for r in found]
    gate = [r.incremental.gate_ms for r in found]
    ratios = [m / i for m, i in zip(mat, inc, strict=True)]
    arrived = found[0].arrived if found else 0
    inc_read = [r.incremental.rows_read for r in found]
    mat_read = [r.matview.rows_read for r in found]
    differing = sum(r.audit_differing for r in found)
    median_mat = statistics.median(mat)
    median_inc = statistics.median(inc)
    table = [
        [
            str(i + 1),
            f"{r.arrived:,}",
            ms(r.matview.wall_ms),
            f"{r.matview.rows_read:,}",
            ms(r.incremental.wall_ms - r.incremental.gate_ms),
            ms(r.incremental.gate_ms),
            f"{r.incremental.rows_read:,}",
            f"{r.engine_read:,}",
            f"{r.matview.wall_ms / (r.incremental.wall_ms - r.incremental.gate_ms):.0f}x",
            str(r.audit_differing),
        ]
        for i, r in enumerate(found)
    ]
    return Section(
        "incremental refresh: 1 % new rows, against REFRESH MATERIALIZED VIEW CONCURRENTLY",
        [
            Figure(
                "incremental refresh, median wall time",
                ms(median_inc),
                ">= 50x cheaper",
                f"{ms(median_mat)} (REFRESH MATERIALIZED VIEW CONCURRENTLY)",
                f"{median_mat / median_inc:.0f}x cheaper (per-round ratios"
                f" {min(ratios):.0f}x..{max(ratios):.0f}x)",
            ),
            Figure(
                "rows read per refresh, median",
                f"{statistics.median(inc_read):,.0f}",
                "",
                f"{arrived:,} arrived; REFRESH CONCURRENTLY read"
                f" {statistics.median(mat_read):,.0f}",
                f"{statistics.median(inc_read) / max(arrived, 1):.2f} rows read per row arrived",
            ),
            Figure(
                "gates on the incremental refresh, median",
                ms(statistics.median(gate)),
                "",
                f"{ms(median_inc)} (the incremental refresh alone)",
                f"gated incremental {ms(statistics.median(gated))}, still"
                f" {median_mat / statistics.median(gated):.0f}x cheaper than the ungated matview",
            ),
            Figure(
                "content: rows differing from the defining query",
                str(differing),
                "0",
                f"{cross} differing between the two summaries refreshed in one transaction",
                f"pipectl audit after every incremental refresh (median"
                f" {ms(statistics.median(r.audit_ms for r in found))})",
            ),
        ],
        [
            f"{rows:,} rule_performance rows over 30 days (12 rules, 4 prompt types); each"
            f" round advances a simulated clock by {INTERVAL.seconds // 60} minutes (the step's"
            f" refresh interval), adds {arrived:,} rows (1 %) dated over those minutes, then"
            " refreshes both summaries (the incremental one at the simulated time), in"
            f" alternating order; {len(found)} rounds on one connection, TimeZone UTC;"
            f" overlap {overlap}.",
            "wall time: BEGIN to COMMIT as the agent's run does it (the agent's advisory lock"
            " and run bookkeeping are the same for both and left out). The incremental time"
            " is the refresh alone; its gates (the preset's row_count, not_null and groups,"
            " agent.gates) are timed inside the same transaction and given apart.",
            "rows read: seq_tup_read + idx_tup_fetch of rule_performance across the refresh,"
            " inside its transaction (pg_stat_xact_user_tables: this backend's own counts)."
            " The incremental engine reads the rows from (previous reference time - overlap)"
            " on (what arrived plus the overlap's rows) and the raw rows of the window's first,"
            " partial minute (the rest of its partial oldest hour from minute states).",
            f"matview {spread(mat)}; incremental {spread(inc)}; gates {spread(gate)}",
            "every gate passed" if all(r.gates_passed for r in found) else "a gate HELD a run",
        ],
        tables=[
            (
                "per round",
                [
                    "round",
                    "arrived",
                    "matview",
                    "matview read",
                    "incremental",
                    "gates",
                    "incremental read",
                    "engine's count",
                    "ratio",
                    "audit differing",
                ],
                table,
            )
        ],
    )


async def run(rows: int, rounds: int, overlap: str = OVERLAP) -> Section:
    async with Database.create(0) as db:
        conn = await asyncpg.connect(db.dsn, server_settings={"TimeZone": "UTC"})
        try:
            began = time.perf_counter()
            await setup(conn, rows, bench_step())
            prepared = time.perf_counter() - began
            found, cross = await measure(conn, rows, rounds, overlap)
        finally:
            await conn.close()
    section = report(rows, found, cross, overlap)
    section.notes.append(f"set-up (generate, first refresh of both): {prepared:.0f} s")
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--overlap", default=OVERLAP, help=f"the step's overlap ({OVERLAP})")
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.rounds, args.overlap)).print()


if __name__ == "__main__":
    main()
