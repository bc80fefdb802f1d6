"""Agent benchmark: request-to-start latency, bookkeeping overhead, memory and idle CPU.

    python -m bench.agent [--requests 200] [--runs 100] [--idle 30]

Runs against embedded PostgreSQL (or $PIPECTL_BENCH_DSN) with the APES schema and some data.
Figures are printed, never asserted: the machine is shared and noisy, so each figure comes
with its baseline measured in the same run.

- request-to-start: `pipectl rerun` inserts a request; the agent (a real process) is woken
  by NOTIFY, claims it and starts the run. Measured from the request row's created_at to
  the run row's started_at (one clock: the database's).
- bookkeeping overhead: a full pipectl run of a step (run row, advisory lock, timeouts,
  refresh, row count, outcome) against the bare REFRESH statement on its own connection,
  interleaved so both see the same load.
- footprint: RSS and CPU of the agent process idle (nothing due) and with the APES preset's
  checks running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import psutil

from bench.common import Database, percentile, print_table

STEP_BODY = """
[agent]
heartbeat = "5s"
metrics_address = "127.0.0.1:0"
log_format = "json"
log_level = "warning"

[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"
every = "1d"
"""


async def request_latency(db: Database, config: Path, count: int) -> list[float]:
    env = {**os.environ, "PIPECTL_DATABASE_URL": db.dsn}
    agent = subprocess.Popen(
        [sys.executable, "-m", "pipectl", "agent", "--config", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    conn = await asyncpg.connect(db.dsn)
    try:
        await _wait_agent(conn)
        latencies: list[float] = []
        for _ in range(count):
            request_id = await conn.fetchval(
                "INSERT INTO pipectl.requests (kind, target) VALUES"
                " ('rerun', 'rule_effectiveness_summary') RETURNING id"
            )
            while not await conn.fetchval(
                "SELECT done_at IS NOT NULL FROM pipectl.requests WHERE id = $1", request_id
            ):
                await asyncio.sleep(0.005)
            latency = await conn.fetchval(
                "SELECT extract(epoch FROM r.started_at - q.created_at)"
                " FROM pipectl.runs r JOIN pipectl.requests q ON q.id = r.request_id"
                " WHERE q.id = $1",
                request_id,
            )
            latencies.append(float(latency) * 1000)
        return latencies
    finally:
        await conn.close()
        agent.terminate()
        agent.wait(20)


async def _wait_agent(conn: asyncpg.Connection) -> None:
    for _ in range(300):
        if await conn.fetchval(
            "SELECT count(*) FROM pipectl.agents WHERE stopped_at IS NULL AND lost_at IS NULL"
        ):
            await asyncio.sleep(0.5)  # LISTEN is set up just after registration
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the agent did not start")


async def overhead(db: Database, runs: int) -> tuple[list[float], list[float]]:
    from agent.service import Agent
    from pipectl.config import parse_config_text
    from pipectl.model import Trigger

    loaded = parse_config_text(
        f'[database]\ndsn = "{db.dsn}"\n' + STEP_BODY.replace('heartbeat = "5s"', ""),
        "bench.toml",
        environ={},
    )
    agent = Agent(loaded, name="bench")
    await agent.start()
    bare_conn = await asyncpg.connect(db.dsn)
    bare: list[float] = []
    full: list[float] = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            await bare_conn.execute(
                "REFRESH MATERIALIZED VIEW CONCURRENTLY public.rule_effectiveness_summary"
            )
            bare.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await agent.run_chain(["rule_effectiveness_summary"], Trigger.MANUAL)
            full.append((time.perf_counter() - started) * 1000)
    finally:
        await bare_conn.close()
        await agent.stop()
    return bare, full


def footprint(db: Database, config: Path, seconds: float) -> tuple[float, float, float]:
    """(RSS MiB after start-up, RSS MiB after `seconds`, CPU % over `seconds`)."""
    env = {**os.environ, "PIPECTL_DATABASE_URL": db.dsn, "PIPECTL_REDIS_URL": db.redis_url}
    agent = subprocess.Popen(
        [sys.executable, "-m", "pipectl", "agent", "--config", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        process = psutil.Process(agent.pid)
        time.sleep(5)
        rss_start = process.memory_info().rss / 2**20
        cpu_before = process.cpu_times()
        time.sleep(seconds)
        cpu_after = process.cpu_times()
        rss_end = process.memory_info().rss / 2**20
        used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        return rss_start, rss_end, 100 * used / seconds
    finally:
        agent.terminate()
        agent.wait(20)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds per footprint sample")
    args = parser.parse_args(argv)
    async with Database.create(rows=20_000) as db:
        with tempfile.TemporaryDirectory() as tmp:
            step_config = Path(tmp) / "step.toml"
            step_config.write_text(STEP_BODY)
            preset = Path(tmp) / "preset.toml"
            preset.write_text(
                (Path(__file__).resolve().parent.parent / "config.example.toml")
                .read_text()
                .replace('metrics_address = "127.0.0.1:9187"', 'metrics_address = "127.0.0.1:0"')
            )
            latencies = await request_latency(db, step_config, args.requests)
            bare, full = await overhead(db, args.runs)
            idle = footprint(db, step_config, args.idle)
            busy = footprint(db, preset, args.idle)
    overheads = [f - b for f, b in zip(full, bare, strict=True)]
    print_table(
        "agent",
        ["figure", "value", "target"],
        [
            ["request-to-start p50", f"{percentile(latencies, 50):.1f} ms", "<= 50 ms"],
            ["request-to-start p99", f"{percentile(latencies, 99):.1f} ms", ""],
            ["bare REFRESH CONCURRENTLY, median", f"{statistics.median(bare):.2f} ms", "baseline"],
            ["pipectl run of the same step, median", f"{statistics.median(full):.2f} ms", ""],
            [
                "bookkeeping overhead per run, median",
                f"{statistics.median(overheads):.2f} ms",
                "<= 10 ms",
            ],
            ["bookkeeping overhead per run, p95", f"{percentile(overheads, 95):.2f} ms", ""],
            [
                "RSS idle (after start / after idle)",
                f"{idle[0]:.0f} / {idle[1]:.0f} MiB",
                "<= 120 MiB",
            ],
            ["CPU idle", f"{idle[2]:.2f} %", "< 1 %"],
            ["RSS with the APES preset's 22 checks", f"{busy[0]:.0f} / {busy[1]:.0f} MiB", ""],
            ["CPU with the APES preset's checks", f"{busy[2]:.2f} %", ""],
        ],
    )
    print(f"({args.requests} requests, {args.runs} interleaved runs, {args.idle:.0f}s samples)")


if __name__ == "__main__":
    asyncio.run(main())
