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
- footprint: RSS and CPU of the agent process idle (nothing due), with the APES preset's
  checks running, and with the preset while the APES simulator writes live activity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import psutil

from bench.common import Database, Figure, Section, load_average, ms, percentile, shared_servers
from pipectl.simulator import ApesSimulator

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
    from pipectl.agent.service import Agent
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


async def footprint(
    db: Database, config: Path, seconds: float, simulator_rate: float | None = None
) -> tuple[float, float, float, int, int, int]:
    """(RSS MiB after start-up, RSS MiB after `seconds`, CPU % over `seconds`, check results
    in the sample, check results since start, rule_performance rows written in the sample),
    optionally while the APES simulator writes
    live activity (rows and Redis traffic) at `simulator_rate`."""
    env = {**os.environ, "PIPECTL_DATABASE_URL": db.dsn, "PIPECTL_REDIS_URL": db.redis_url}
    simulator: subprocess.Popen[bytes] | None = None
    if simulator_rate is not None:
        simulator = subprocess.Popen(
            [sys.executable, "-m", "bench.agent", "--simulate", str(simulator_rate)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
    conn = await asyncpg.connect(db.dsn)
    before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM pipectl.check_results")
    agent = subprocess.Popen(
        [sys.executable, "-m", "pipectl", "agent", "--config", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        process = psutil.Process(agent.pid)
        await asyncio.sleep(5)
        last = await conn.fetchval("SELECT coalesce(max(id), 0) FROM pipectl.check_results")
        rows_before = await conn.fetchval("SELECT count(*) FROM public.rule_performance")
        rss_start = process.memory_info().rss / 2**20
        cpu_before = process.cpu_times()
        await asyncio.sleep(seconds)
        cpu_after = process.cpu_times()
        rss_end = process.memory_info().rss / 2**20
        checks = await conn.fetchval(
            "SELECT count(*) FROM pipectl.check_results WHERE id > $1", last
        )
        since_start = await conn.fetchval(
            "SELECT count(*) FROM pipectl.check_results WHERE id > $1", before
        )
        used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        rows = await conn.fetchval("SELECT count(*) FROM public.rule_performance") - rows_before
        return rss_start, rss_end, 100 * used / seconds, int(checks), int(since_start), int(rows)
    finally:
        agent.terminate()
        agent.wait(20)
        await conn.close()
        if simulator is not None:
            _end(simulator)


SIMULATOR_RATE = 100.0


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


async def simulate(rate: float) -> None:
    """The APES simulator's live activity against $PIPECTL_DATABASE_URL / $PIPECTL_REDIS_URL
    until SIGTERM (its own process, so that the footprint sample never waits on it)."""
    import signal

    simulator = ApesSimulator(
        os.environ["PIPECTL_DATABASE_URL"],
        os.environ["PIPECTL_REDIS_URL"],
        seed=3,
        rate=rate,
        rhythm=False,
    )
    await simulator.setup()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await simulator.run(stop)


async def run(requests: int, runs: int, idle: float) -> Section:
    """Every agent figure on one fresh database (dropped afterwards)."""
    async with Database.create(rows=20_000) as db:
        with tempfile.TemporaryDirectory() as tmp:
            step_config = Path(tmp) / "step.toml"
            step_config.write_text(STEP_BODY)
            preset = Path(tmp) / "preset.toml"
            preset.write_text(
                (Path(__file__).resolve().parent.parent / "config.example.toml")
                .read_text()
                .replace('metrics_address = "127.0.0.1:10144"', 'metrics_address = "127.0.0.1:0"')
            )
            # Every step and check every 10 s (the preset says 1-15 min): the sample sees them work.
            preset.write_text(
                re.sub(r'^every = "\d+[mh]"$', 'every = "10s"', preset.read_text(), flags=re.M)
            )
            latencies = await request_latency(db, step_config, requests)
            bare, full = await overhead(db, runs)
            quiet = await footprint(db, step_config, idle)
            busy = await footprint(db, preset, idle)
            loaded = await footprint(db, preset, idle, simulator_rate=SIMULATOR_RATE)
    overheads = [f - b for f, b in zip(full, bare, strict=True)]
    return Section(
        "agent: request-to-start, bookkeeping overhead, footprint",
        [
            Figure(
                "request-to-start p50",
                ms(percentile(latencies, 50)),
                "<= 50 ms",
                "",
                f"p99 {ms(percentile(latencies, 99))}, n={len(latencies)}",
            ),
            Figure("request-to-start p99", ms(percentile(latencies, 99)), "", "", ""),
            Figure(
                "bookkeeping overhead per run, median",
                ms(statistics.median(overheads)),
                "<= 10 ms",
                f"{ms(statistics.median(bare))} (bare REFRESH CONCURRENTLY)",
                f"pipectl run {ms(statistics.median(full))}; p95 overhead"
                f" {ms(percentile(overheads, 95))}",
            ),
            Figure(
                "RSS idle (after start / after sample)",
                f"{quiet[0]:.0f} / {quiet[1]:.0f} MiB",
                "<= 120 MB",
                "",
                "one step, nothing due",
            ),
            Figure("CPU idle", f"{quiet[2]:.2f} %", "< 1 %", "", ""),
            Figure(
                "RSS, APES preset, steps and checks every 10 s",
                f"{busy[0]:.0f} / {busy[1]:.0f} MiB",
                "<= 120 MB",
                "",
                f"CPU {busy[2]:.2f} %; check results: {busy[3]} in the sample,"
                f" {busy[4]} since start",
            ),
            Figure(
                f"RSS under the simulator's load (rate x{SIMULATOR_RATE:g})",
                f"{loaded[0]:.0f} / {loaded[1]:.0f} MiB",
                "<= 120 MB",
                "",
                f"CPU {loaded[2]:.2f} %; check results: {loaded[3]} in the sample,"
                f" {loaded[4]} since start; simulator wrote {loaded[5]} rule_performance rows"
                " in the sample",
            ),
        ],
        [
            f"{requests} requests, {runs} interleaved runs (bare REFRESH and pipectl run"
            f" alternate), {idle:.0f} s per footprint sample; load average at the end:"
            f" {load_average()}.",
            "request-to-start is measured from the request row's created_at to the run row's"
            " started_at (one clock: the database's).",
        ],
    )


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds per footprint sample")
    parser.add_argument("--simulate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulate is not None:
        await simulate(args.simulate)
        return
    section = await run(args.requests, args.runs, args.idle)
    section.print()


if __name__ == "__main__":
    if "--simulate" in sys.argv:
        asyncio.run(main())
    else:
        with shared_servers():
            asyncio.run(main())
