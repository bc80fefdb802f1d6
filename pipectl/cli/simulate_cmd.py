"""`pipectl simulate`: the APES simulator against a database you name (a staging copy).

History (--backfill DAYS, one transaction: all or nothing), live activity at --speed times
APES's rate (following the day's rhythm unless --steady), Redis cache traffic with --redis,
and faults from the start (--fault) or later from another terminal (`pipectl fault inject`,
over NOTIFY). Ctrl+C (or SIGTERM) stops it cleanly: the writes in flight finish, the rows
written are summed up, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipectl.cli.common import (
    EXIT_OK,
    CliError,
    console,
    duration_argument,
    float_argument,
    int_argument,
)
from pipectl.config import DATABASE_URL_ENV, REDIS_URL_ENV
from pipectl.durations import format_duration

if TYPE_CHECKING:
    from pipectl.simulator import ApesSimulator

MAX_SPEED = 1000.0


@dataclass(frozen=True)
class FaultSpec:
    """`--fault NAME[:key=value,...][@DURATION]`, checked when the command line is read."""

    name: str
    params: dict[str, Any]
    duration: timedelta | None

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items() if v is not None)
        until = f" for {format_duration(self.duration)}" if self.duration else " until stopped"
        return f"{self.name}{f' ({shown})' if shown else ''}{until}"


_DURATION = duration_argument()


def fault_argument(text: str) -> FaultSpec:
    """Parse `stall:table=user_feedback@2m`, `lock@90s`, `cache_miss_storm`."""
    from pipectl.simulator.faults import FaultError, validate

    spec, _, span = text.partition("@")
    name, _, listing = spec.partition(":")
    given: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in listing.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        given[key.strip()] = value.strip()
    try:
        params = validate(name.strip(), given)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (see pipectl fault list)") from None
    duration = _DURATION(span.strip()) if span else None
    return FaultSpec(name.strip(), params, duration)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run the APES simulator (history, live traffic, faults) against a database you "
        "name, e.g. a staging copy",
        description="Writes APES activity into the APES tables of the database you name: "
        "--backfill DAYS of history first (one transaction), then live rows at --speed times "
        "APES's rate until Ctrl+C. Faults start with --fault or later with `pipectl fault "
        "inject` from another terminal. It also adds its rule catalogue to rule_metadata "
        "(rows already there are left alone). Point it at a copy, never at production.",
    )
    parser.add_argument(
        "--dsn",
        metavar="URL",
        default=os.environ.get(DATABASE_URL_ENV),
        help=f"the database to write to (default: ${DATABASE_URL_ENV})",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get(REDIS_URL_ENV),
        help=f"also make cache traffic in this Redis (default: ${REDIS_URL_ENV}; none: no "
        "cache traffic)",
    )
    parser.add_argument(
        "--backfill",
        type=int_argument(1, 365),
        metavar="DAYS",
        help="first write this many days of history (1-365), unless history is there already",
    )
    parser.add_argument(
        "--speed",
        type=float_argument(above=0, at_most=MAX_SPEED),
        default=1.0,
        metavar="X",
        help=f"live activity at X times APES's rate (default 1, at most {MAX_SPEED:g})",
    )
    parser.add_argument(
        "--steady",
        action="store_true",
        help="live activity at the weekday-peak level all the time (default: follow the "
        "hour of the day and the day of the week)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=fault_argument,
        metavar="NAME[:K=V,...][@DURATION]",
        help="start a fault with the live traffic, e.g. stall:table=user_feedback@2m, "
        "lock@90s (repeatable; see pipectl fault list)",
    )
    parser.add_argument(
        "--duration",
        type=float_argument(above=0, at_most=30 * 86_400, unit="seconds"),
        metavar="SECONDS",
        help="stop after this long (default: until Ctrl+C)",
    )
    parser.add_argument(
        "--create-schema",
        action="store_true",
        help="load the APES schema (sql/apes/schema.sql, as deployed upstream) into a "
        "database that has no APES tables",
    )
    parser.add_argument(
        "--seed", type=int_argument(0, 2**63 - 1), help="make the simulated data repeatable"
    )
    parser.set_defaults(handler=simulate)


async def _preflight(dsn: str, create_schema: bool) -> None:
    """Reach the server and find the APES tables, with messages instead of tracebacks."""
    import asyncpg

    from pipectl.db import DatabaseUnavailable, connect_failure_reason, describe_target
    from pipectl.simulator.engine import CONNECT_TIMEOUT_S, apes_tables_present

    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        reason = connect_failure_reason(e)
        raise DatabaseUnavailable(f"cannot connect to {describe_target(dsn)}: {reason}") from None
    try:
        present = await apes_tables_present(conn)
        database = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    if present or create_schema:
        return  # a partial schema is refused by the simulator's set-up, naming what is missing
    raise CliError(
        f"database {database!r} has no APES tables (public.rule_performance, "
        "public.user_feedback, ...): point --dsn at a copy of the APES database, or create "
        "them here with --create-schema (or `pipectl db apes --base`)"
    )


async def simulate(args: argparse.Namespace) -> int:
    if not args.dsn:
        raise CliError(f"name the database to write to: --dsn URL or ${DATABASE_URL_ENV}")
    from pipectl.cli.demo import database_location
    from pipectl.simulator import ApesSimulator, FaultError, SimulatorError

    await _preflight(args.dsn, args.create_schema)
    out = console(stderr=True)
    simulator = ApesSimulator(args.dsn, args.redis, seed=args.seed)
    where = database_location(args.dsn)
    try:
        await simulator.setup()
        if args.backfill:
            await _backfill(simulator, args.backfill, out)  # history at APES's own rate
    except SimulatorError as exc:
        raise CliError(f"simulator: {exc}") from None
    simulator.rate, simulator.rhythm = args.speed, not args.steady
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    # Faults first: they hold from the first live rows on.
    for fault in args.fault:
        try:
            await simulator.inject(fault.name, duration=fault.duration, **fault.params)
        except FaultError as exc:
            await simulator.close()
            raise CliError(f"fault {fault.name}: {exc}") from None
        out.print(f"fault {fault.describe()}")
    began = time.monotonic()
    running = asyncio.create_task(simulator.run(stop), name="simulator")
    try:
        rhythm = "steadily at the weekday peak" if args.steady else "following the day's rhythm"
        cache = "" if args.redis else "; no cache traffic (no --redis)"
        out.print(
            f"simulating APES on {where} at {args.speed:g}x, {rhythm}{cache}. "
            "Ctrl+C stops; faults from another terminal: pipectl fault inject NAME"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    finally:
        stop.set()
        await running
        for signum in handled:
            loop.remove_signal_handler(signum)
    _summary(simulator, time.monotonic() - began, out)
    return EXIT_OK


async def _backfill(simulator: ApesSimulator, days: int, out: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn(f"backfilling {days} days of history"),
        BarColumn(),
        MofNCompleteColumn(),
        console=out,
        transient=True,
    )
    with progress:
        task = progress.add_task("history", total=None)
        report = await simulator.backfill(
            days, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
    if report.skipped:
        out.print(f"history: none written ({report.reason})")
    else:
        span = f"{days} day{'s' if days != 1 else ''}"
        out.print(f"history: {report.total_rows:,} rows of {span} in {report.seconds:.1f}s")


def _summary(simulator: ApesSimulator, seconds: float, out: Any) -> None:
    stats = simulator.stats()
    rows = ", ".join(f"{table} {count:,}" for table, count in sorted(stats.rows.items()))
    out.print(f"stopped after {seconds:.0f}s; live rows written: {rows or 'none'}")
