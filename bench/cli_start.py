"""CLI start: how long `pipectl --help`, `status` and `rerun --wait` take as a user runs them.

    python -m bench.cli_start [--rounds 15] [--compare-with DIR]

Whole processes, started the way a shell starts them, in interleaved rounds: every round runs
each command once, in a rotated order, so load on the shared machine falls on all of them
alike. Two baselines run in the same rounds: `python -c pass` (the interpreter) and
`python -c "import asyncpg"` (the least a verb that talks to PostgreSQL can import). For each
command: wall time to the first byte on stdout (what the user waits for), wall time to exit,
and CPU time (user + system, from the child's rusage: what the work costs, much less sensitive
to load than wall time). `status` runs against a live schema with an agent publishing its
step; `rerun --wait` is the whole round trip through that agent (its own part is the request's
created_at to done_at, on the database's clock).

In-process: `python -X importtime` of each command, the sum of its modules' own import times
(the minimum over a few runs) and which heavy packages it loads.

`--compare-with DIR` adds the same pipectl commands run from another source tree (e.g. the
previous commit, `git archive <commit> | tar -x -C DIR`) to the same rounds: what the change
bought, on the same load. The console's launch to first data (bench.console's launch script,
against the same small database) runs in the same rounds: it must stay within 0.5 s.
Figures, not pass/fail (targets: first output <= 0.3 s; console first data <= 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.common import Database, Figure, Section, load_average, ms, percentile, shared_servers

REPO = Path(__file__).resolve().parents[1]
TARGET = "<= 0.3 s"
CONSOLE_TARGET = "<= 0.5 s"
STEP = "rule_effectiveness_summary"
CONFIG = f"""
[agent]
heartbeat = "5s"
metrics_address = "127.0.0.1:0"
log_format = "json"
log_level = "warning"

[[steps]]
name = "{STEP}"
kind = "matview"
relation = "public.{STEP}"
every = "1d"
"""
HEAVY = ("asyncpg", "pydantic", "rich", "redis", "opentelemetry", "textual", "psutil")


@dataclass(frozen=True)
class Command:
    label: str
    argv: list[str]
    env: dict[str, str]
    target: str = ""
    """The first-output target, if one applies (issue 16)."""
    cwd: Path = REPO
    """Where it starts: `python -m` and `-c` import pipectl from there first."""


@dataclass
class Timings:
    first: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def run_once(command: Command) -> tuple[float, float, float]:
    """(ms to the first byte on stdout, ms to exit, CPU ms of the child) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command.argv,
        env=command.env,
        cwd=command.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.read(1)
    first = time.perf_counter()
    process.stdout.read()
    error = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    ended = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"exit {process.returncode}: {error.decode(errors='replace')[-300:]}")
    cpu = (usage.ru_utime + usage.ru_stime) * 1000
    return (first - started) * 1000, (ended - started) * 1000, cpu


def interleaved(commands: Sequence[Command], rounds: int) -> dict[str, Timings]:
    found = {command.label: Timings() for command in commands}
    for round_ in range(rounds):
        shift = round_ % len(commands)
        for command in [*commands[shift:], *commands[:shift]]:
            timings = found[command.label]
            try:
                first, total, cpu = run_once(command)
            except RuntimeError as exc:
                timings.failures.append(str(exc))
                continue
            timings.first.append(first)
            timings.total.append(total)
            timings.cpu.append(cpu)
    return found


def import_profile(command: Command, repeats: int = 3) -> tuple[float, list[str]]:
    """(sum of the modules' own import times in ms, minimum per module over `repeats` runs;
    the heavy packages loaded) of one command under `python -X importtime`."""
    best: dict[str, int] = {}
    # One run first, not counted: the steady state is measured (the config known valid, the
    # bytecode written), whichever command of the run happened to start first.
    subprocess.run(command.argv, env=command.env, cwd=command.cwd, capture_output=True, check=False)
    for _ in range(repeats):
        done = subprocess.run(
            [command.argv[0], "-X", "importtime", *command.argv[1:]],
            env=command.env,
            cwd=command.cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in done.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| *(\S+)", line)
            if match:
                name = match.group(2)
                best[name] = min(best.get(name, 1 << 62), int(match.group(1)))
    heavy = sorted({name.split(".")[0] for name in best} & set(HEAVY))
    return sum(best.values()) / 1000, heavy


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"{ms(statistics.median(values))} "
        f"({ms(percentile(values, 5))}..{ms(percentile(values, 95))})"
    )


@contextlib.contextmanager
def running_agent(dsn: str, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PIPECTL_DATABASE_URL": dsn}
    env.pop("PIPECTL_CONFIG", None)
    agent = subprocess.Popen(
        [sys.executable, "-m", "pipectl", "agent", "--config", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield agent
    finally:
        agent.terminate()
        agent.wait(30)


async def _agent_ready(dsn: str, agent: subprocess.Popen[bytes]) -> None:
    """Until the agent is alive and has published the step."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(600):
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited ({agent.returncode})")
            published = await conn.fetchval(
                "SELECT count(*) FROM pipectl.steps s, pipectl.agents a"
                " WHERE s.name = $1 AND s.enabled AND a.stopped_at IS NULL",
                STEP,
            )
            if published:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise RuntimeError("the agent did not start within 60 s")


async def _agent_part(dsn: str, reruns: int) -> list[float]:
    """ms from filing to done of every rerun request, on the database's clock."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM done_at - created_at) * 1000 AS ms"
            " FROM pipectl.requests WHERE kind = 'rerun' AND done_at IS NOT NULL"
            " ORDER BY id OFFSET $1",  # the untimed round's
            reruns,
        )
    finally:
        await conn.close()
    return [float(row["ms"]) for row in rows]


def commands(dsn: str, config: Path, compare_with: Path | None, pycache: Path) -> list[Command]:
    """The commands of one round. Bytecode is cached (in `pycache`, outside the tree) as it is
    for an installed pipectl (pip compiles on install); one extra row shows a start that
    compiles every pipectl module again (PYTHONDONTWRITEBYTECODE=1 with an editable install)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "PIPECTL_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    base["PIPECTL_DATABASE_URL"] = dsn
    # The config cache (pipectl.configcache) in the run's folder: the untimed round fills it.
    cached = {
        **base,
        "PYTHONPYCACHEPREFIX": str(pycache),
        "XDG_CACHE_HOME": str(pycache.parent / "cache"),
    }
    python = sys.executable
    status = ["--config", str(config), "status"]
    verbs = [
        ("pipectl --help", ["--help"]),
        ("pipectl status", status),
        (
            "pipectl rerun --wait",
            ["--config", str(config), "rerun", STEP, "--wait", "--timeout", "60"],
        ),
    ]
    found = [
        Command("python -c pass (baseline)", [python, "-c", "pass"], cached),
        Command('python -c "import asyncpg" (baseline)', [python, "-c", "import asyncpg"], cached),
        # The floors: what a verb that connects and prints a table, and the console, import
        # at the least (the interpreter included).
        Command(
            "import asyncpg, rich.table (baseline: verb floor)",
            [python, "-c", "import asyncio, asyncpg, rich.table"],
            cached,
        ),
        Command(
            "import asyncpg, textual.app (baseline: console floor)",
            [python, "-c", "import asyncio, asyncpg, textual.app"],
            cached,
        ),
    ]
    found += [
        Command(label, [python, "-m", "pipectl", *args], cached, TARGET) for label, args in verbs
    ]
    from bench.console import LAUNCH  # headless; prints once the overview shows rows

    console = [python, "-c", LAUNCH, f'[database]\ndsn = "{dsn}"\n']
    found.append(Command("console", console, {**cached, "NO_COLOR": "1"}, CONSOLE_TARGET))
    found.append(
        Command(
            # A config seen for the first time (or edited) is validated whole: pydantic and
            # every check kind. XDG_CACHE_HOME under /dev/null: nothing can be remembered.
            "pipectl status, config not known (validated)",
            [python, "-m", "pipectl", *status],
            {**cached, "XDG_CACHE_HOME": "/dev/null/pipectl-bench"},
        )
    )
    found.append(
        Command(
            "pipectl status, no bytecode cache",
            [python, "-m", "pipectl", *status],
            {**base, "PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": cached["XDG_CACHE_HOME"]},
        )
    )
    if compare_with is not None:
        found += [
            Command(
                f"{label} [{compare_with.name}]",
                [python, "-m", "pipectl", *args],
                cached,
                cwd=compare_with,
            )
            for label, args in verbs
        ]
        found.append(
            Command(
                f"console [{compare_with.name}]",
                console,
                {**cached, "NO_COLOR": "1"},
                cwd=compare_with,
            )
        )
    return found


async def measure(dsn: str, rounds: int, compare_with: Path | None = None) -> Section:
    """The figures against `dsn` (APES schema and pipectl schema in place)."""
    load_start = load_average()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "pipectl.toml"
        config.write_text(CONFIG)
        with running_agent(dsn, config) as agent:
            await _agent_ready(dsn, agent)
            listed = commands(dsn, config, compare_with, Path(folder) / "pycache")
            # One untimed round: it writes the bytecode cache, and its first rerun waits for
            # the agent to be listening.
            await asyncio.to_thread(interleaved, listed, 1)
            timings = await asyncio.to_thread(interleaved, listed, rounds)
            profiles = {
                c.label: await asyncio.to_thread(import_profile, c)
                for c in listed
                if "baseline" not in c.label
            }
        agent_part = await _agent_part(dsn, sum("rerun" in c.label for c in listed))
    baseline = timings["python -c pass (baseline)"]
    asyncpg_only = timings['python -c "import asyncpg" (baseline)']
    base_text = (
        f"python -c pass {_spread(baseline.first)}; import asyncpg {_spread(asyncpg_only.total)}"
    )
    floors = {
        kind: timings[f"import asyncpg, {module} (baseline: {kind} floor)"]
        for kind, module in (("verb", "rich.table"), ("console", "textual.app"))
    }
    figures: list[Figure] = []
    rows: list[list[str]] = []
    for command in listed:
        found = timings[command.label]
        imports, heavy = profiles.get(command.label, (float("nan"), []))
        rows.append(
            [
                command.label,
                _spread(found.first),
                _spread(found.total),
                _spread(found.cpu),
                ms(imports),
                ", ".join(heavy) or "none",
                str(len(found.failures)),
            ]
        )
        if command.target:
            kind = "console" if command.label == "console" else "verb"
            floor = floors[kind]
            title = "console: first data" if kind == "console" else f"{command.label}: first output"
            figures.append(
                Figure(
                    title,
                    _spread(found.first),
                    command.target,
                    f"{base_text}; {kind} floor (its imports alone) {_spread(floor.total)}"
                    f" (CPU {_spread(floor.cpu)})",
                    f"CPU {_spread(found.cpu)}",
                )
            )
    notes = [
        f"{rounds} interleaved rounds; median (p5..p95) of whole processes; wall times"
        " include waiting for the CPU on a shared machine, CPU times do not",
        f"load average (1/5/15 min) at start {load_start}, at end {load_average()}",
        "imports: sum of each module's own time under `python -X importtime`, minimum per"
        " module over 3 runs (in-process: no interpreter start-up, no I/O)",
        f"rerun --wait: the agent's part (request created_at to done_at, database clock)"
        f" {_spread(agent_part)} of the round trip",
    ]
    notes += [
        f"{label}: {len(t.failures)} failed runs, e.g. {t.failures[0]}"
        for label, t in timings.items()
        if t.failures
    ]
    return Section(
        "CLI start: pipectl --help, status, rerun --wait as whole processes",
        figures,
        notes,
        tables=[
            (
                "per command",
                [
                    "command",
                    "first output",
                    "exit",
                    "CPU (user+sys)",
                    "imports (in-process)",
                    "heavy packages loaded",
                    "failed",
                ],
                rows,
            )
        ],
    )


async def run(rounds: int, compare_with: Path | None = None) -> Section:
    async with Database.create() as db:
        return await measure(db.dsn, rounds, compare_with)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_start", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the section as Markdown"
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="DIR",
        help="a source tree of another commit whose pipectl runs in the same rounds",
    )
    args = parser.parse_args(argv)
    with shared_servers():
        section = asyncio.run(run(args.rounds, args.compare_with))
    section.print()
    if args.markdown:
        args.markdown.write_text(section.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
