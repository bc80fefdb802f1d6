"""Run every benchmark and write bench/RESULTS.md.

    python -m bench all [--quick] [--output bench/RESULTS.md] [--only NAME ...]
    python -m bench list

One embedded PostgreSQL + Valkey serve every benchmark (or $PIPECTL_BENCH_DSN and
$PIPECTL_BENCH_REDIS_URL name running servers). `--quick` uses small sizes and finishes in a
few minutes; the full run uses the sizes of issue 7 (10M rows, 1M runs and 10M samples).
A benchmark that fails is reported as failed and the others still run. `bench.console` (the
console's launch-to-first-data and per-statement EXPLAIN ANALYZE) runs in its own process and
its output is kept verbatim.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil

from bench.common import Section, load_average, shared_servers

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sizes:
    rows: int
    small: int
    repeats: int
    cycles: int
    fresh_repeats: int
    runs: int
    samples: int
    console_repeats: int
    requests: int
    agent_runs: int
    idle: float
    scrapes: int
    seeds: tuple[int, ...]
    backfill_days: int


FULL = Sizes(10_000_000, 100_000, 3, 5, 200, 1_000_000, 10_000_000, 100, 200, 100, 60.0, 500,
             (1, 2, 3, 4, 5), 30)  # fmt: skip
QUICK = Sizes(300_000, 30_000, 2, 3, 100, 50_000, 500_000, 30, 50, 30, 10.0, 200, (1, 2), 3)


def _verification(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import verification

    return asyncio.run(
        verification.run(sizes.rows, sizes.small, sizes.repeats, sizes.cycles, sizes.fresh_repeats)
    )


def _shapes(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import shapes

    options = shapes.Options(
        rounds=sizes.repeats,
        cycles=sizes.cycles,
        shapes=list(shapes.SHAPES),
        soda_in_process=False,  # Soda as a process only: in-process doubles a long run
        index=True,
    )
    return asyncio.run(shapes.run(sizes.rows, [], options))


def _console_queries(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import console_queries

    return [asyncio.run(console_queries.run(sizes.runs, sizes.samples, sizes.console_repeats))]


def _agent(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import agent

    return [asyncio.run(agent.run(sizes.requests, sizes.agent_runs, sizes.idle))]


def _scrape(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import scrape

    return [scrape.run(sizes.scrapes)]


def _detector(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import detector

    return [detector.run(sizes.seeds)]


def _backfill(sizes: Sizes, quick: bool) -> list[Section]:
    admin = os.environ["PIPECTL_BENCH_DSN"]
    command = [
        sys.executable,
        str(HERE / "simulator_backfill.py"),
        admin,
        "--days",
        str(sizes.backfill_days),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=True)
    lines = [line for line in done.stdout.splitlines() if "━" not in line]
    return [
        Section(
            f"simulator backfill ({sizes.backfill_days} days, rate 1)",
            [],
            ["not a target of issue 7; kept so it cannot rot"],
            raw="\n".join(lines),
        )
    ]


def _console(sizes: Sizes, quick: bool) -> list[Section]:
    """bench.console (launch to first data on screen, and EXPLAIN ANALYZE of every screen
    statement), in its own process: it starts the Textual app headless several times."""
    launches = "2" if quick else "5"
    done = subprocess.run(
        [sys.executable, "-m", "bench.console", "--launches", launches],
        capture_output=True,
        text=True,
        timeout=3600,
        env=os.environ.copy(),
        check=False,
    )
    text = done.stdout + (
        f"\n(exit {done.returncode})\n{done.stderr[-2000:]}" if done.returncode else ""
    )
    return [Section("console: launch to first data, screen statements", [], [], raw=text)]


def _cli_start(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import cli_start

    return [asyncio.run(cli_start.run(5 if quick else 15))]


def _gates(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import gates

    return [asyncio.run(gates.run(sizes.rows, 3 * sizes.repeats))]


def _partitions(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import partitions

    admin = os.environ["PIPECTL_BENCH_DSN"]
    rows = 120_000 if quick else 1_200_000
    return [asyncio.run(partitions.run(admin, rows, 3 if quick else 5))]


def _incremental(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import incremental_refresh

    return [asyncio.run(incremental_refresh.run(sizes.rows, sizes.repeats + 2))]


def _read_amplification(sizes: Sizes, quick: bool) -> list[Section]:
    from bench import read_amplification

    minutes, warmup = (4.0, 1.0) if quick else (26.0, 6.0)
    return [asyncio.run(read_amplification.run(minutes, warmup, days=1 if quick else 2))]


BENCHMARKS: dict[str, tuple[str, Callable[[Sizes, bool], list[Section]]]] = {
    "verification": ("checks against Soda Core and the floor; freshness vs size", _verification),
    "shapes": ("full verification by key shape and continuous, as processes vs Soda", _shapes),
    "console_queries": ("console SQL against a long pipectl history", _console_queries),
    "console": ("the console: launch to first data, every screen statement", _console),
    "agent": ("request-to-start, refresh overhead, footprint", _agent),
    "scrape": ("/metrics scrape latency", _scrape),
    "detector": ("anomaly detector precision / recall / F1", _detector),
    "backfill": ("simulator backfill figures", _backfill),
    "cli_start": ("pipectl --help, status, rerun --wait as whole processes", _cli_start),
    "gates": ("the cost of a refresh's gates beside the ungated refresh", _gates),
    "partitions": ("probes on a table partitioned by month beside a plain one", _partitions),
    "incremental": (
        "incremental refresh vs REFRESH CONCURRENTLY at 1 % new rows; rows read; audit",
        _incremental,
    ),
    "read_amplification": (
        "rows the checks read per row APES writes, incremental on and off",
        _read_amplification,
    ),
}


# --- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def _pg_version(dsn: str) -> str:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:
        return f"not reachable ({type(exc).__name__})"
    try:
        return str(await conn.fetchval("SELECT version()")).split(" on ")[0]
    finally:
        await conn.close()


def _redis_version(url: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        info = client.info("server")
        client.close()
    except Exception as exc:
        return f"not reachable ({type(exc).__name__})"
    name = "Valkey" if "valkey_version" in info else "Redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def busiest_processes(limit: int = 5) -> str:
    """Other processes using the CPU right now (1 s sample), to state the machine's load."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    processes = [p for p in psutil.process_iter(["name", "cmdline"]) if p.pid not in mine]
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)
    time.sleep(1.0)
    used: list[tuple[float, str]] = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            share = process.cpu_percent(None)
            if share >= 5:
                command = " ".join(process.info["cmdline"] or [process.info["name"] or "?"])
                used.append((share, command[:60]))
    used.sort(reverse=True)
    return "; ".join(f"{share:.0f} % {command}" for share, command in used[:limit]) or "none"


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def machine(admin: str, redis_url: str) -> list[tuple[str, str]]:
    from bench.verification import soda_version

    memory = psutil.virtual_memory().total / 2**30
    disk = psutil.disk_usage(str(HERE))
    return [
        ("CPU", f"{cpu_model()}, {os.cpu_count()} cores"),
        ("RAM", f"{memory:.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("PostgreSQL measured", asyncio.run(_pg_version(admin))),
        (
            "PostgreSQL on the machine",
            asyncio.run(_pg_version("postgresql://postgres@127.0.0.1:5432/postgres")),
        ),
        ("Redis measured", _redis_version(redis_url)),
        ("Soda Core", soda_version() or "not installed"),
        ("disk free", f"{disk.free / 2**30:.0f} GiB"),
    ]


# --- the report ----------------------------------------------------------------------------


def summary(sections: list[Section]) -> Section:
    """Every figure that has a target, in one table."""
    rows = [
        [section.title, f.name, f.value, f.target, f.baseline]
        for section in sections
        for f in section.figures
        if f.target
    ]
    return Section(
        "Summary: every figure with a target",
        [],
        tables=[("", ["benchmark", "figure", "value", "target", "baseline (same run)"], rows)],
    )


def render(
    command: str,
    facts: list[tuple[str, str]],
    state: list[tuple[str, str]],
    sections: list[Section],
    quick: bool,
) -> str:
    lines = [
        "# pipectl benchmark results",
        "",
        "Produced by `bench/__main__.py`; figures, not pass/fail tests. Every baseline was"
        " measured in the same run, interleaved with the figure it is compared to.",
        "",
        f"- command: `{command}`" + (" (quick sizes)" if quick else " (full sizes)"),
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"- commit: {git_commit()}",
    ]
    lines += [f"- {key}: {value}" for key, value in facts]
    lines += [f"- {key}: {value}" for key, value in state]
    lines.append("")
    for section in [summary(sections), *sections]:
        lines.append(section.markdown())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["all", "list"])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    if args.what == "list":
        for name, (description, _) in BENCHMARKS.items():
            print(f"{name:16} {description}")
        return 0
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    state = [
        ("load average at start (1/5/15 min)", load_average()),
        ("other processes using CPU at start", busiest_processes()),
    ]
    sections: list[Section] = []
    with shared_servers() as (admin, redis_url):
        facts = machine(admin, redis_url)
        for name, (_, function) in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            print(f"\n=== {name} ===", flush=True)
            began = time.monotonic()
            try:
                found = function(sizes, args.quick)
            except Exception as exc:
                found = [
                    Section(
                        f"{name} (FAILED)",
                        [],
                        [f"{type(exc).__name__}: {exc}"],
                        raw=traceback.format_exc()[-3000:],
                    )
                ]
            for section in found:
                section.notes.append(f"({name} took {time.monotonic() - began:.0f} s)")
                section.print()
            sections += found
    state += [
        ("load average at end (1/5/15 min)", load_average()),
        ("other processes using CPU at end", busiest_processes()),
        ("total time", f"{(time.monotonic() - started) / 60:.1f} min"),
    ]
    args.output.write_text(render(command, facts, state, sections, args.quick))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
