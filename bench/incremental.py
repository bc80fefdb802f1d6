"""Incremental summaries: what the invalidation triggers cost on writes, and a refresh against
REFRESH MATERIALIZED VIEW CONCURRENTLY of the same summary.

    python -m bench.incremental [--rows 500000] [--statements 2000] [--new 0.01]

One fresh APES database (embedded servers, or $PIPECTL_BENCH_DSN). rule_effectiveness_summary
is installed as the preset's incremental step (tests/incremental_apes.toml), refreshed once.

- Writes: APES's own shape, one row per INSERT statement (autocommit), and UPDATEs of a few rows
  behind the watermark (those are logged), in interleaved batches with the triggers installed
  and dropped; the ratio is with / without.
- Refresh: `--new` of the rows arrive (times within the last minutes), then one incremental
  refresh (its own transaction) against REFRESH MATERIALIZED VIEW CONCURRENTLY of a copy of the
  materialized view over the same rows; rows read against rows arrived.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import asyncpg

import pipectl.checks  # noqa: F401  (registers the check kinds, so the config parses)
from bench.common import Database, Figure, Section, ms, spread
from pipectl.config import parse_config_text
from pipectl.store import incremental

STEPS = Path(__file__).resolve().parent.parent / "tests" / "incremental_apes.toml"

INSERT = (
    "INSERT INTO rule_performance (rule_id, rule_name, prompt_type, improvement_score,"
    " confidence_level, execution_time_ms, created_at)"
    " VALUES ($1, 'Rule', 'code', 0.5, 0.5, 120, now() AT TIME ZONE 'UTC')"
)
UPDATE = (
    "UPDATE rule_performance SET improvement_score = random()"
    " WHERE id IN (SELECT id FROM rule_performance"
    " WHERE created_at < (now() AT TIME ZONE 'UTC') - interval '2 days' LIMIT 5 OFFSET $1)"
)


async def _batch(conn: asyncpg.Connection, statements: int, update: bool, offset: int) -> float:
    """Mean ms per statement of a batch (each statement its own transaction)."""
    began = time.perf_counter()
    for i in range(statements):
        if update:
            await conn.execute(UPDATE, (offset + i) * 5 % 100_000)
        else:
            await conn.execute(INSERT, f"rule_{i % 12}")
    return (time.perf_counter() - began) * 1000 / statements


async def run(rows: int, statements: int, new: float) -> Section:
    async with Database.create(rows) as db:
        return await measure(db.dsn, statements, new)


async def measure(dsn: str, statements: int, new: float) -> Section:
    """The figures on an APES database with materialized summaries and rule_performance
    filled (it installs rule_effectiveness_summary as incremental)."""
    config = parse_config_text("[database]\n" + STEPS.read_text(), str(STEPS), environ={})
    step = config.config.step("rule_effectiveness_summary")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM rule_performance")
        viewdef = await conn.fetchval(
            "SELECT pg_get_viewdef('public.rule_effectiveness_summary'::regclass)"
        )
        await conn.execute(
            f"CREATE MATERIALIZED VIEW public.bench_mv AS {viewdef.rstrip().rstrip(';')};"
            " CREATE UNIQUE INDEX ON public.bench_mv (rule_id, rule_name)"
        )
        async with conn.transaction():
            await incremental.install(conn, step, triggers=True)
        async with conn.transaction():
            await incremental.refresh(conn, step)
        # Writes, interleaved batches: with and without the triggers.
        with_ins: list[float] = []
        without_ins: list[float] = []
        with_upd: list[float] = []
        without_upd: list[float] = []
        batch = max(statements // 10, 1)
        for round_ in range(10):
            for triggers in (True, False) if round_ % 2 else (False, True):
                if triggers:
                    async with conn.transaction():
                        await incremental.install_triggers(conn, step)
                else:
                    await incremental.drop_triggers(conn, step)
                ins = await _batch(conn, batch, False, round_)
                upd = await _batch(conn, batch // 4 or 1, True, round_ * batch)
                (with_ins if triggers else without_ins).append(ins)
                (with_upd if triggers else without_upd).append(upd)
        async with conn.transaction():
            await incremental.install_triggers(conn, step)
        logged = await conn.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations")
        # Refresh: the new rows arrive, then both refreshes of the same summary.
        async with conn.transaction():
            await incremental.refresh(conn, step)
        arrived = int(rows * new)
        await conn.execute(
            """
            INSERT INTO rule_performance (rule_id, rule_name, prompt_type,
                improvement_score, confidence_level, execution_time_ms, created_at)
            SELECT 'rule_' || (g % 12), 'Rule ' || (g % 12), 'code', random(), random(),
                   120, (now() AT TIME ZONE 'UTC') - random() * interval '4 minutes'
            FROM generate_series(1, $1) g
            """,
            arrived,
        )
        await conn.execute("ANALYZE rule_performance")
        inc_ms: list[float] = []
        mv_ms: list[float] = []
        done = None
        for _ in range(3):
            began = time.perf_counter()
            async with conn.transaction():
                done = await incremental.refresh(conn, step)
            inc_ms.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            await conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY public.bench_mv")
            mv_ms.append((time.perf_counter() - began) * 1000)
        assert done is not None
        first_read = done.rows_read
    finally:
        await conn.close()
    ins_ratio = statistics.median(with_ins) / statistics.median(without_ins)
    upd_ratio = statistics.median(with_upd) / statistics.median(without_upd)
    return Section(
        "incremental summaries: trigger cost on writes, refresh against REFRESH CONCURRENTLY",
        [
            Figure(
                "single-row INSERT with triggers",
                ms(statistics.median(with_ins)),
                "",
                f"{ms(statistics.median(without_ins))} without",
                f"ratio {ins_ratio:.2f}",
            ),
            Figure(
                "UPDATE of 5 rows behind the watermark with triggers",
                ms(statistics.median(with_upd)),
                "",
                f"{ms(statistics.median(without_upd))} without",
                f"ratio {upd_ratio:.2f}; {logged} invalidation rows logged",
            ),
            Figure(
                "incremental refresh (median of 3)",
                ms(statistics.median(inc_ms)),
                "",
                f"{ms(statistics.median(mv_ms))} REFRESH MATERIALIZED VIEW CONCURRENTLY",
                f"{statistics.median(mv_ms) / statistics.median(inc_ms):.1f}x cheaper; last "
                f"refresh read {first_read} rows",
            ),
        ],
        [
            f"{rows} rule_performance rows over 30 days; {statements} write statements per "
            "variant in 10 interleaved batches; each statement its own transaction",
            f"refresh: {arrived} rows arrived ({new:.0%}) before the first of 3 pairs (the "
            "later pairs have nothing new: the re-read bucket and the window's edge only)",
            f"insert {spread(with_ins)} with / {spread(without_ins)} without; update "
            f"{spread(with_upd)} with / {spread(without_upd)} without",
            f"incremental {spread(inc_ms)}; REFRESH CONCURRENTLY {spread(mv_ms)}",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--new", type=float, default=0.01)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.statements, args.new)).print()


if __name__ == "__main__":
    main()
