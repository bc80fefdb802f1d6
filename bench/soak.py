"""Soak: `pipectl demo --headless --faults random` for an hour, memory and CPU sampled.

    python -m bench.soak [--duration 3600] [--interval 30] [--state-dir DIR] [--out FILE]

Launches the demo as a child process (embedded PostgreSQL and Valkey, the simulator, the
agent, random faults), samples the demo process's RSS and CPU every `--interval` seconds, and
after it exits opens its database again to account for every fault: when it started and
ended (from the agent log), whether each step succeeded again after it, and how long the
checks it disturbed took to come back. Figures are printed and written as JSON, never
asserted: the machine is shared.

RSS growth is measured from a warm baseline (the median of the samples taken 5 to 10 minutes
after the agent started: caches, pools and the check history are built by then) to the median
of the last five samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from pipectl.embedded import EmbeddedPostgres

AGENT_READY = "agent running"


@dataclass
class Sample:
    t: float  # seconds since the agent started
    rss_mb: float
    cpu_pct: float  # of one core, over the last interval
    children_rss_mb: float
    threads: int
    fds: int


@dataclass
class Fault:
    name: str
    started: str
    stopped: str | None = None
    recovered_steps: dict[str, float | None] = field(default_factory=dict)
    disturbed_checks: dict[str, float | None] = field(default_factory=dict)


def _rss(proc: psutil.Process) -> tuple[float, float]:
    own = proc.memory_info().rss
    children = 0
    for child in proc.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.Error:
            continue
    return own / 2**20, children / 2**20


def sample_demo(
    proc: subprocess.Popen[bytes], stdout: Path, interval: float, duration: float
) -> list[Sample]:
    """Wait for the agent to run, then sample until the demo exits."""
    ps = psutil.Process(proc.pid)
    while AGENT_READY not in stdout.read_text(errors="replace"):
        if proc.poll() is not None:
            raise SystemExit(f"the demo exited early:\n{stdout.read_text(errors='replace')}")
        time.sleep(1)
    started = time.monotonic()
    samples: list[Sample] = []
    last_cpu = sum(ps.cpu_times()[:2])
    last_t = started
    print(f"agent running; sampling every {interval:.0f}s for ~{duration:.0f}s", flush=True)
    while proc.poll() is None:
        time.sleep(interval)
        try:
            now = time.monotonic()
            cpu = sum(ps.cpu_times()[:2])
            own, children = _rss(ps)
            sample = Sample(
                t=round(now - started, 1),
                rss_mb=round(own, 2),
                cpu_pct=round(100 * (cpu - last_cpu) / (now - last_t), 2),
                children_rss_mb=round(children, 2),
                threads=ps.num_threads(),
                fds=ps.num_fds(),
            )
        except psutil.Error:
            break
        last_cpu, last_t = cpu, now
        samples.append(sample)
        if len(samples) % 10 == 0:
            print(
                f"  t={sample.t:6.0f}s rss={sample.rss_mb:7.1f} MB cpu={sample.cpu_pct:5.1f}%"
                f" servers={sample.children_rss_mb:7.1f} MB",
                flush=True,
            )
    return samples


def faults_from_log(path: Path) -> list[Fault]:
    """Fault start/stop lines of the simulator in the demo's agent log (JSON lines)."""
    faults: list[Fault] = []
    open_by_name: dict[str, Fault] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        msg = str(entry.get("msg", ""))
        name = entry.get("fault")
        if msg.startswith("fault started") and isinstance(name, str):
            fault = Fault(name=name, started=entry["ts"])
            faults.append(fault)
            open_by_name[name] = fault
        elif msg.startswith("fault stopped") and isinstance(name, str) and name in open_by_name:
            open_by_name.pop(name).stopped = entry["ts"]
    return faults


async def account(dsn: str, faults: list[Fault]) -> dict[str, Any]:
    """Per fault: seconds from its end to each step's next success and to each disturbed
    check's return to the status it had before the fault."""
    conn = await asyncpg.connect(dsn)
    try:
        steps = [r["name"] for r in await conn.fetch("SELECT name FROM pipectl.steps")]
        for fault in faults:
            if fault.stopped is None:
                continue
            start = datetime.fromisoformat(fault.started)
            end = datetime.fromisoformat(fault.stopped)
            for step in steps:
                fault.recovered_steps[step] = await conn.fetchval(
                    "SELECT extract(epoch FROM min(finished_at) - $2) FROM pipectl.runs"
                    " WHERE step = $1 AND status = 'succeeded' AND finished_at >= $2",
                    step,
                    end,
                )
            disturbed = await conn.fetch(
                """
                WITH during AS (
                    SELECT DISTINCT check_name FROM pipectl.check_results
                    WHERE observed_at BETWEEN $1 AND $2 AND status IN ('warn', 'fail', 'error')
                ), before AS (
                    SELECT DISTINCT ON (check_name) check_name, status
                    FROM pipectl.check_results WHERE observed_at < $1
                    ORDER BY check_name, observed_at DESC
                )
                SELECT d.check_name,
                       (SELECT extract(epoch FROM min(r.observed_at) - $2)
                          FROM pipectl.check_results r
                         WHERE r.check_name = d.check_name AND r.observed_at > $2
                           AND r.status = coalesce(b.status, 'ok')) AS back_after
                FROM during d LEFT JOIN before b USING (check_name)
                WHERE coalesce(b.status, 'ok') NOT IN ('warn', 'fail', 'error')
                """,
                start,
                end,
            )
            fault.disturbed_checks = {r["check_name"]: r["back_after"] for r in disturbed}
        runs = await conn.fetch(
            "SELECT step, status, count(*) AS n FROM pipectl.runs GROUP BY 1, 2 ORDER BY 1, 2"
        )
        stuck = await conn.fetchval(
            "SELECT count(*) FROM pipectl.runs WHERE status IN ('queued', 'running')"
        )
        results = await conn.fetchval("SELECT count(*) FROM pipectl.check_results")
        events = await conn.fetch(
            "SELECT kind, count(*) AS n FROM pipectl.events GROUP BY 1 ORDER BY 1"
        )
    finally:
        await conn.close()
    return {
        "runs": {f"{r['step']}:{r['status']}": r["n"] for r in runs},
        "runs_left_unfinished": stuck,
        "check_results": results,
        "events": {r["kind"]: r["n"] for r in events},
    }


def growth(samples: list[Sample]) -> dict[str, float]:
    warm = [s.rss_mb for s in samples if 300 <= s.t <= 600] or [s.rss_mb for s in samples[:5]]
    last = [s.rss_mb for s in samples[-5:]]
    base, end = statistics.median(warm), statistics.median(last)
    cpu = [s.cpu_pct for s in samples]
    first_half = cpu[: len(cpu) // 2] or cpu
    second_half = cpu[len(cpu) // 2 :] or cpu
    return {
        "samples": len(samples),
        "rss_first_mb": samples[0].rss_mb,
        "rss_warm_mb": base,
        "rss_last_mb": end,
        "rss_max_mb": max(s.rss_mb for s in samples),
        "rss_growth_pct": round(100 * (end - base) / base, 2),
        "rss_growth_from_first_pct": round(100 * (end - samples[0].rss_mb) / samples[0].rss_mb, 2),
        "cpu_mean_pct": round(statistics.fmean(cpu), 2),
        "cpu_first_half_pct": round(statistics.fmean(first_half), 2),
        "cpu_second_half_pct": round(statistics.fmean(second_half), 2),
        "threads_first": samples[0].threads,
        "threads_last": samples[-1].threads,
        "fds_first": samples[0].fds,
        "fds_last": samples[-1].fds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--backfill-days", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    args = parser.parse_args()
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="pipectl-soak-"))
    state.mkdir(parents=True, exist_ok=True)
    stdout = state / "demo.out"
    command = [
        sys.executable,
        "-m",
        "pipectl",
        "demo",
        "--headless",
        "--fresh",
        "--duration",
        str(args.duration),
        "--faults",
        "random",
        "--seed",
        str(args.seed),
        "--backfill-days",
        str(args.backfill_days),
        "--state-dir",
        str(state / "demo"),
    ]
    print("running:", " ".join(command), flush=True)
    with open(stdout, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        samples = sample_demo(proc, stdout, args.interval, args.duration)
    finally:
        if proc.poll() is None:
            proc.terminate()
        code = proc.wait()
    faults = faults_from_log(state / "demo" / "agent.log")
    log_text = (state / "demo" / "agent.log").read_text(errors="replace")
    tracebacks = len(re.findall(r'"exc": "Traceback', log_text))
    server = EmbeddedPostgres(state / "demo" / "postgres")
    server.start()
    try:
        totals = asyncio.run(account(server.dsn("apes"), faults))
    finally:
        server.stop()
    report = {
        "exit_code": code,
        "figures": growth(samples) if samples else {},
        "faults": [asdict(f) for f in faults],
        "totals": totals,
        "logged_tracebacks": tracebacks,
        "samples": [asdict(s) for s in samples],
    }
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2, default=str))


if __name__ == "__main__":
    main()
