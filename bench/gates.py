"""Gate benchmark: what the preset's gates add to a refresh of rule_effectiveness_summary.

    python -m bench.gates [--rows 1000000] [--repeats 20]

Both variants run on one connection, interleaved, each in its own transaction as the agent
runs it: REFRESH MATERIALIZED VIEW CONCURRENTLY then COMMIT (ungated, the baseline), and the
previous content measured, the same REFRESH, the preset's gates on the new content, then
COMMIT (gated). The gates are the agent's own code (pipectl.agent.gates) with the preset's
settings from config.example.toml. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import asyncpg

from bench.common import Database, Figure, Section, ms, percentile, spread
from pipectl.agent import gates
from pipectl.config import StepConfig, load_config

PRESET = Path(__file__).resolve().parent.parent / "config.example.toml"
STEP = "rule_effectiveness_summary"
REFRESH = f"REFRESH MATERIALIZED VIEW CONCURRENTLY public.{STEP}"


async def _ungated(conn: asyncpg.Connection) -> float:
    began = time.perf_counter()
    async with conn.transaction():
        await conn.execute(REFRESH)
    return (time.perf_counter() - began) * 1000


async def _gated(conn: asyncpg.Connection, step: StepConfig) -> tuple[float, float, bool]:
    began = time.perf_counter()
    async with conn.transaction():
        gate_began = time.perf_counter()
        before = await gates.measure_before(conn, step, within=600)
        gate = time.perf_counter() - gate_began
        await conn.execute(REFRESH)
        gate_began = time.perf_counter()
        verdicts = await gates.evaluate(conn, step, before, within=600, checks=None)
        gate += time.perf_counter() - gate_began
    return (time.perf_counter() - began) * 1000, gate * 1000, all(v.passed for v in verdicts)


async def measure(
    conn: asyncpg.Connection, repeats: int
) -> tuple[list[float], list[float], list[float], bool]:
    """Interleaved pairs: ungated refresh ms, gated refresh ms, ms inside the gates, and
    whether every gate passed."""
    step = load_config(PRESET).config.step(STEP)
    assert step.gates is not None
    await _ungated(conn)  # warm both paths once
    await _gated(conn, step)
    bare: list[float] = []
    full: list[float] = []
    gate_only: list[float] = []
    passed = True
    for _ in range(repeats):
        bare.append(await _ungated(conn))
        total, gate, ok = await _gated(conn, step)
        full.append(total)
        gate_only.append(gate)
        passed = passed and ok
    return bare, full, gate_only, passed


async def run(rows: int, repeats: int) -> Section:
    async with Database.create(rows) as db:
        conn = await asyncpg.connect(db.dsn)
        try:
            summary_rows = await conn.fetchval(f"SELECT count(*) FROM public.{STEP}")
            bare, full, gate_only, passed = await measure(conn, repeats)
        finally:
            await conn.close()
    extra = [f - b for f, b in zip(full, bare, strict=True)]
    return Section(
        "gates: the cost of verifying before publishing",
        [
            Figure(
                "gated refresh, median",
                ms(statistics.median(full)),
                "",
                f"{ms(statistics.median(bare))} (ungated REFRESH CONCURRENTLY)",
                f"gated - ungated: median {ms(statistics.median(extra))},"
                f" p95 {ms(percentile(extra, 95))}",
            ),
            Figure(
                "time inside the gates, median",
                ms(statistics.median(gate_only)),
                "",
                "",
                f"{statistics.median(gate_only) / statistics.median(bare) * 100:.1f} % of the"
                f" ungated refresh; p95 {ms(percentile(gate_only, 95))}",
            ),
        ],
        [
            f"{rows} rule_performance rows over 30 days, summary of {summary_rows} rows;"
            f" {repeats} interleaved pairs on one connection; every gate "
            + ("passed" if passed else "did NOT pass (see the gates' messages)"),
            "gates: the preset's row_count (min_ratio 0.5), not_null (rule_id, rule_name,"
            " usage_count) and groups (rule_id, max_lost 0.2): a count and a scan of the old"
            " content into a temporary table of its groups before the refresh, a count and an"
            " EXCEPT over the new content after. Their cost follows the summary's size, not the"
            " source table's.",
            f"ungated {spread(bare)}; gated {spread(full)}; inside the gates {spread(gate_only)}",
            "the gated - ungated difference of a pair carries the refresh's own run-to-run"
            " noise (see the ungated spread); the time inside the gates is timed directly"
            " around them, in the same transactions, and is the cost a gate adds to the locks"
            " a refresh holds.",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.repeats)).print()


if __name__ == "__main__":
    main()
