"""Read amplification: rows pipectl's checks read per row APES writes (issue 16 §4).

    python -m bench.read_amplification [--minutes 25] [--warmup 6] [--pace 20] [--days 2]

Three databases on one server, side by side for the same minutes: the APES simulator writes
live activity into each (same seed, the demo's steady pace, after `--days` of backfilled
history); an agent with the APES preset's checks (config.example.toml, its windows and
cadences; steps disabled, since a refresh's reads are not a check's) runs on two of them,
with `incremental = false` on one ("before") and the default on the other ("after"); the
third has no agent (the simulator's own reads, subtracted from the other two per row
written). Rows read are `seq_tup_read + idx_tup_fetch` of the APES base tables in
pg_stat_user_tables, rows written `n_tup_ins + n_tup_upd + n_tup_del`. "steady" leaves out
the first `--warmup` minutes (every check's first tick: one full read of each window, and
the baselines' seeding), "whole run" counts from the agents' start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import Database, Figure, Section, load_average, print_table, shared_servers
from pipectl.simulator import ApesSimulator

log = logging.getLogger(__name__)

PRESET = Path(__file__).resolve().parent.parent / "config.example.toml"
PACE = 20.0
"""The demo's pace (`pipectl demo --pace`): 20 times a weekday peak, steadily."""

_COUNTS_SQL = """
SELECT s.relname AS table,
       s.seq_tup_read + coalesce(s.idx_tup_fetch, 0) AS read,
       s.n_tup_ins + s.n_tup_upd + s.n_tup_del AS written
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = 'public' AND c.relkind IN ('r', 'p')
"""

Counts = dict[str, tuple[int, int]]


def agent_config(incremental: bool) -> str:
    """The preset as the agent reads it: no metrics port, steps disabled, and the partial
    aggregates on or off for every check."""
    text = PRESET.read_text().replace(
        'metrics_address = "127.0.0.1:10144"', 'metrics_address = "127.0.0.1:0"'
    )
    # Only real [[steps]] headers: the preset also has commented-out ones ("# [[steps]]").
    text = re.sub(r"(?m)^\[\[steps\]\]\n", "[[steps]]\nenabled = false\n", text)
    flag = f"incremental = {'true' if incremental else 'false'}"
    text, found = re.subn(r"^incremental = (true|false)$", flag, text, count=1, flags=re.M)
    if not found:
        text = text.replace("[check_defaults]\n", f"[check_defaults]\n{flag}\n", 1)
    return text


async def counts(dsn: str) -> Counts:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch(_COUNTS_SQL)
    finally:
        await conn.close()
    return {r["table"]: (int(r["read"]), int(r["written"])) for r in rows}


def totals(before: Counts, after: Counts) -> tuple[int, int]:
    read = sum(after[t][0] - before.get(t, (0, 0))[0] for t in after)
    written = sum(after[t][1] - before.get(t, (0, 0))[1] for t in after)
    return read, written


@dataclass(frozen=True)
class Side:
    name: str
    read: int
    written: int
    pipectl_reads: int
    """Rows read beyond the control's, table by table (never below zero per table)."""

    @property
    def ratio(self) -> float:
        return self.pipectl_reads / self.written if self.written else float("nan")


def _delta(marks: list[Counts], start: int, end: int, table: str) -> tuple[int, int]:
    a, b = marks[start].get(table, (0, 0)), marks[end].get(table, (0, 0))
    return b[0] - a[0], b[1] - a[1]


def simulator_read(marks: dict[str, list[Counts]], start: int, end: int) -> list[str]:
    """Tables the simulator itself reads (the control's reads of them are not zero): their
    reads cannot be told apart from pipectl's in the statistics."""
    control = marks["control"]
    return sorted(t for t in control[end] if _delta(control, start, end, t)[0] > 0)


def sides(
    marks: dict[str, list[Counts]], start: int, end: int, noisy: list[str]
) -> tuple[Side, Side, tuple[int, int]]:
    """Before and after between two marks: rows read of every table but the `noisy` ones
    (which the simulator reads too), per row written to any APES table."""
    control = totals(marks["control"][start], marks["control"][end])
    found = []
    for name in ("before", "after"):
        read, written = totals(marks[name][start], marks[name][end])
        own = sum(_delta(marks[name], start, end, t)[0] for t in marks[name][end] if t not in noisy)
        found.append(Side(name, read, written, own))
    return found[0], found[1], control


def per_table(marks: dict[str, list[Counts]], start: int, end: int) -> list[list[str]]:
    rows = []
    for table in sorted(marks["after"][end]):
        cells = [table]
        for name in ("control", "before", "after"):
            read, written = _delta(marks[name], start, end, table)
            cells.append(f"{read:,} / {written:,}")
        rows.append(cells)
    return [r for r in rows if any(c != "0 / 0" for c in r[1:])]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


INDEXES = (
    "CREATE INDEX IF NOT EXISTS bench_sessions_created_at"
    " ON public.prompt_improvement_sessions (created_at)",
    "CREATE INDEX IF NOT EXISTS bench_patterns_discovered_at"
    " ON public.discovered_patterns (discovered_at)",
)
"""APES indexes session_timestamp, while the preset's checks of prompt_improvement_sessions
window on created_at; and discovered_patterns' freshness reads max(discovered_at), which
APES does not index (`pipectl config check` says so): without these, every probe of those
tables scans the whole table, before and after alike."""


async def run(
    minutes: float, warmup: float, pace: float = PACE, days: int = 2, as_shipped: bool = False
) -> Section:
    """The three databases side by side for `minutes` (all dropped afterwards). Each phase
    is logged (a slow one shows where it stood); cancelled at any point, it stops the
    simulators and the agents, agents first, before it drops the databases."""
    names = ("control", "before", "after")
    marks: dict[str, list[Counts]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as dbs:
            log.info("creating the databases")
            found = [await dbs.enter_async_context(Database.create()) for _ in names]
            db = dict(zip(names, found, strict=True))
            simulators = {
                n: ApesSimulator(d.dsn, d.redis_url, seed=16, rate=pace, rhythm=False)
                for n, d in db.items()
            }
            log.info("setting up the simulators (%d days of history)", days)
            for simulator in simulators.values():
                await simulator.setup()
                if days:
                    await simulator.backfill(days)
            for d in db.values():
                await _index_and_analyze(d.dsn, as_shipped)
            with contextlib.ExitStack() as agents_stack:  # the agents stop before the drop
                stop = asyncio.Event()
                tasks = [asyncio.create_task(s.run(stop)) for s in simulators.values()]
                try:
                    agents = _start_agents(agents_stack, Path(tmp), db)
                    await _mark(marks, db, agents, Path(tmp), warmup, minutes)
                finally:
                    log.info("stopping the simulators")
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
                log.info("stopping the agents")
            log.info("dropping the databases")
    noisy = simulator_read(marks, 0, 2)
    steady = sides(marks, 1, 2, noisy)
    whole = sides(marks, 0, 2, noisy)
    return _section(
        minutes, warmup, pace, days, as_shipped, noisy, steady, whole, per_table(marks, 1, 2)
    )


async def _index_and_analyze(dsn: str, as_shipped: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if not as_shipped:
            for index in INDEXES:
                await conn.execute(index)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _start_agents(
    stack: contextlib.ExitStack, logs: Path, db: dict[str, Database]
) -> dict[str, subprocess.Popen[bytes]]:
    agents = {}
    for name, incremental in (("before", False), ("after", True)):
        log.info("starting the %s agent", name)
        config = logs / f"{name}.toml"
        config.write_text(agent_config(incremental))
        env = {
            **os.environ,
            "PIPECTL_DATABASE_URL": db[name].dsn,
            "PIPECTL_REDIS_URL": db[name].redis_url,
        }
        output = stack.enter_context((logs / f"{name}.log").open("wb"))
        agents[name] = subprocess.Popen(
            [sys.executable, "-m", "pipectl", "agent", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
        stack.callback(_stop, agents[name])
    return agents


async def _mark(
    marks: dict[str, list[Counts]],
    db: dict[str, Database],
    agents: dict[str, subprocess.Popen[bytes]],
    logs: Path,
    warmup: float,
    minutes: float,
) -> None:
    """Counts of every database at the start, after the warm-up and at the end."""
    started = time.monotonic()
    for offset in (0.0, warmup * 60, minutes * 60):
        while (left := started + offset - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 5.0))
            for name, process in agents.items():
                if process.poll() is not None:
                    tail = (logs / f"{name}.log").read_text()[-2000:]
                    raise RuntimeError(f"the {name} agent stopped:\n{tail}")
        log.info("counting rows read and written (mark at %.0f s)", offset)
        for name in marks:
            marks[name].append(await counts(db[name].dsn))


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def _section(
    minutes: float,
    warmup: float,
    pace: float,
    days: int,
    as_shipped: bool,
    noisy: list[str],
    steady: tuple[Side, Side, tuple[int, int]],
    whole: tuple[Side, Side, tuple[int, int]],
    tables: list[list[str]],
) -> Section:
    before, after, control = steady
    whole_before, whole_after, _ = whole
    gain = before.ratio / after.ratio if after.ratio else float("nan")
    return Section(
        "read amplification: rows pipectl's checks read per row APES writes",
        [
            Figure(
                "incremental checks, steady (rows read / row written)",
                _ratio(after.ratio),
                "<= 2",
                f"{_ratio(before.ratio)} (incremental = false), {gain:.0f}x fewer",
                f"{after.pipectl_reads:,.0f} rows read for {after.written:,} written over"
                f" {minutes - warmup:g} min",
            ),
            Figure(
                "incremental checks, whole run from the agent's start",
                _ratio(whole_after.ratio),
                "",
                f"{_ratio(whole_before.ratio)} (incremental = false)",
                f"{minutes:g} min, including each window's first full read",
            ),
        ],
        [
            f"{minutes:g} min side by side on one server (the steady figures from minute"
            f" {warmup:g} on), simulator at {pace:g}x a weekday peak (rhythm off) after {days}"
            f" day(s) of backfilled history; the APES preset's checks (config.example.toml)"
            f" with steps disabled; "
            + (
                "the APES schema as shipped (no index on the time columns of"
                " prompt_improvement_sessions and discovered_patterns)."
                if as_shipped
                else "indexes on prompt_improvement_sessions (created_at) and"
                " discovered_patterns (discovered_at) in all three databases (APES indexes"
                " neither; the preset's windows and a freshness check read them)."
            )
            + f" The control database (simulator, no agent) read {control[0]:,} rows for"
            f" {control[1]:,} written, all of them in {', '.join(noisy) or 'no table'}: the"
            " simulator reads those tables itself (thousands of rows a minute, varying from"
            " one database to the next by more than pipectl's reads of them: a freshness"
            " lookup and the schema check), so rows read there are left out of the figures;"
            " rows written count on every table. The per-table table shows them all."
            f" Load average at the end: {load_average()}.",
            "Statistics reach pg_stat_user_tables when each backend flushes them (within a"
            " second of a commit when idle, a minute at worst): the marks are that fuzzy.",
        ],
        [
            (
                "rows read / written per table, steady part",
                ["table", "control", "before", "after"],
                tables,
            )
        ],
    )


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--warmup", type=float, default=6.0, help="minutes left out of steady")
    parser.add_argument("--pace", type=float, default=PACE)
    parser.add_argument("--days", type=int, default=2, help="days of backfilled history")
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="APES's indexes only (none on the time columns of two checked tables)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.minutes:
        parser.error("--warmup must be shorter than --minutes")
    with shared_servers():
        section = await run(args.minutes, args.warmup, args.pace, args.days, args.as_shipped)
    print(section.title)
    rows = [[f.name, f.value, f.target, f.baseline, f.note] for f in section.figures]
    print_table("", ["figure", "value", "target", "baseline", "note"], rows)
    for title, header, rows in section.tables:
        print_table(title, header, rows)
    for note in section.notes:
        print(f"\n{note}")


if __name__ == "__main__":
    asyncio.run(main())
