"""`pipectl check [NAME...] [--json]`: run checks now, with the agent's engine, and report.

Publishing definitions is the agents' job: this verb publishes nothing. A result is recorded
like the agent's (trigger 'cli', hysteresis applied) only for a check that a live agent
publishes with exactly this definition, and only when the role may write; every other result
is printed, not recorded (a check from another file never lands in the shared state). Exit 0
when all are ok (nodata counts as ok), 1 on any warn, 2 on any fail or error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from pipectl import store
from pipectl.checks import CheckEngine, scorecard
from pipectl.checks.validation import located
from pipectl.cli.common import EXIT_OK, CliError, console, load, print_json
from pipectl.config import Config, LoadedConfig, Problem
from pipectl.db import create_pool
from pipectl.model import CheckResult, CheckStatus
from pipectl.store.base import Conn

if TYPE_CHECKING:
    import redis.asyncio
    from rich.text import Text


_STYLES = {
    CheckStatus.OK: "green",
    CheckStatus.WARN: "yellow",
    CheckStatus.FAIL: "bold red",
    CheckStatus.ERROR: "red",
    CheckStatus.NODATA: "dim",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="run checks now with the agent's code; exit 0 ok, 1 warn, 2 fail or error",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="checks to run (default: every enabled check)"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.set_defaults(handler=run_checks)


async def run_checks(args: argparse.Namespace) -> int:
    loaded = load(args, require_file=True)
    config = loaded.config
    names = _chosen(config, args.names)
    engine = CheckEngine(config, config_file=str(loaded.file))
    results, scores = await _checked(engine, config, names, loaded)
    if args.json:
        print_json(
            {
                "checks": [_as_json(config, r) for r in results],
                "scorecard": [row.as_json() for row in scores],
            }
        )
    else:
        _print_tables(config, results, scores)
    return max((r.status.exit_code for r in results), default=EXIT_OK)


async def _checked(
    engine: CheckEngine,
    config: Config,
    names: Sequence[str],
    loaded: LoadedConfig,
) -> tuple[list[CheckResult], list[scorecard.ScoreRow]]:
    """Every check's result in order, and the scorecard."""
    # One pool for all of it: the connection that read the catalog probes next.
    pool = await create_pool(
        config,
        min_size=0,
        max_size=config.agent.max_parallel_checks,
        application_name="pipectl check",
    )
    try:
        async with pool.acquire() as conn:
            # One check whose table is missing (or whose column is wrong) is that check's
            # error; the others still run and the report is whole.
            problems = located(await engine.problems(conn, names), loaded)
            broken = _problems_by_check(names, problems)
            runnable = [n for n in names if n not in broken]
            recording = await _recordable(conn, engine, runnable)
        found = await _run_all(engine, config, runnable, recording, pool) if runnable else []
        now = datetime.now(UTC)
        by_name = {r.check: r for r in found} | {
            name: CheckResult(name, CheckStatus.ERROR, None, message, now)
            for name, message in broken.items()
        }
        results = [by_name[n] for n in names]
        async with pool.acquire() as conn:
            scores = await scorecard.compute(conn, config, fresh=results)
    finally:
        await pool.close()
    return results, scores


def _chosen(config: Config, asked: Sequence[str]) -> list[str]:
    known = [c.name for c in config.checks]
    unknown = [n for n in asked if n not in known]
    if unknown:
        listed = ", ".join(known) or "(none configured)"
        raise CliError(f"unknown check {', '.join(map(repr, unknown))}; valid names: {listed}")
    return list(dict.fromkeys(asked)) or [c.name for c in config.checks if c.enabled]


def _problems_by_check(names: Sequence[str], problems: Sequence[Problem]) -> dict[str, str]:
    """Each check's catalog problems as one message (file:line: key: what), by check name."""
    out: dict[str, list[str]] = {}
    for problem in problems:
        owners = [n for n in names if problem.path.startswith(f"checks.{n}.")]
        name = max(owners, key=len, default=None)
        if name is not None:
            out.setdefault(name, []).append(str(problem))
    return {name: "; ".join(found) for name, found in out.items()}


async def _recordable(conn: Conn, engine: CheckEngine, names: Sequence[str]) -> set[str]:
    """The checks among `names` whose results may be recorded: those a live agent publishes
    with the same definition. The others are named in a note."""
    asked = [d for d in engine.definitions() if d.name in names]
    try:
        same = await store.agent_published(conn, asked)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        _note(
            "the pipectl schema is missing or older than this pipectl (pipectl db upgrade);"
            " results are shown, not recorded"
        )
        return set()
    others = [d.name for d in asked if d.name not in same]
    if others:
        from pipectl.safetext import CELL, visible

        _note(
            "no live agent publishes "
            + ", ".join(visible(n, limit=CELL) for n in others)
            + " with this definition; "
            + ("its result is" if len(others) == 1 else "their results are")
            + " shown, not recorded"
        )
    return same


async def _run_all(
    engine: CheckEngine,
    config: Config,
    names: Sequence[str],
    recording: set[str],
    pool: asyncpg.Pool,
) -> list[CheckResult]:
    client: redis.asyncio.Redis | None = None
    if config.redis.url:
        # Imported only when a Redis is configured: importing redis costs 0.3-0.5 s of CPU
        # (it loads OpenTelemetry's SDK when that is installed), a third of a `pipectl check`
        # of the database's checks (bench/FINDINGS.md).
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(
            config.redis.url,
            socket_timeout=config.redis.timeout.total_seconds(),
            socket_connect_timeout=config.redis.timeout.total_seconds(),
        )
    writable = True

    async def record(conn: Conn, result: CheckResult) -> None:
        nonlocal writable
        if result.check not in recording:
            return
        if writable and not await _record(conn, engine, result):
            if writable:  # said once, though probes finishing together may all be refused
                _note("this role may not record results; the rest are shown, not recorded")
            writable = False

    # As the agent does: checks that read the same rows share one scan, and the other probes
    # run at the same time on connections of their own (from `pool`).
    replica: asyncpg.Pool | None = None
    try:
        if config.database.replica_dsn:
            replica = await create_pool(
                config,
                min_size=0,
                max_size=config.agent.max_parallel_checks,
                application_name="pipectl check (replica)",
                dsn=config.database.replica_dsn,
            )
            found = await _run_on_replica(engine, config, names, pool, replica, client, record)
        else:
            found = await engine.run_all(names, pool, redis=client, trigger="cli", record=record)
    finally:
        if replica is not None:
            await replica.close()
        if client is not None:
            await client.aclose()
    return list(found.values())


async def _run_on_replica(
    engine: CheckEngine,
    config: Config,
    names: Sequence[str],
    pool: asyncpg.Pool,
    replica: asyncpg.Pool,
    client: redis.asyncio.Redis | None,
    record: Callable[[Conn, CheckResult], Awaitable[None]],
) -> dict[str, CheckResult]:
    """As run_all, with each probe unit on the replica when all its checks may read it
    (pipectl.checks.replica); results are recorded on the primary."""
    from pipectl.checks.engine import gather_units
    from pipectl.checks.replica import on_replica, run_on_replica

    when = datetime.now(UTC)
    max_lag = config.database.replica_max_lag

    async def unit(members: list[str]) -> dict[str, CheckResult]:
        if all(on_replica(config.check(name)) for name in members):
            async with replica.acquire() as conn:
                found = await run_on_replica(
                    engine, members, conn, max_lag=max_lag, redis=client, trigger="cli", now=when
                )
        else:
            async with pool.acquire() as conn:
                found = await engine.run_many(members, conn, redis=client, trigger="cli", now=when)
        async with pool.acquire() as conn:
            for result in found.values():
                await record(conn, result)
        return found

    merged = await gather_units(engine.probe_units(names), unit)
    return {name: merged[name] for name in dict.fromkeys(names)}


async def _record(conn: Conn, engine: CheckEngine, result: CheckResult) -> bool:
    try:
        await store.record_result(
            conn, result, hysteresis=engine.hysteresis(result.check), agent_id=None, trigger="cli"
        )
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


def _note(text: str) -> None:
    print(f"pipectl: note: {text}", file=sys.stderr)


def _as_json(config: Config, result: CheckResult) -> dict[str, Any]:
    return {
        "name": result.check,
        "kind": config.check(result.check).kind,
        "status": str(result.status),
        "value": result.value,
        "expected_low": result.expected_low,
        "expected_high": result.expected_high,
        "message": result.message,
        "threshold": result.threshold,
        "observed_at": result.observed_at.isoformat(),
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _print_tables(
    config: Config, results: Sequence[CheckResult], scores: Sequence[scorecard.ScoreRow]
) -> None:
    from rich.table import Table
    from rich.text import Text

    from pipectl.safetext import CELL, literal, visible

    out = console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("check", "kind", "status", "value", "expected", "message"):
        table.add_column(column, overflow="fold" if column == "message" else "ellipsis")
    for result in results:
        expected = (
            f"{_number(result.expected_low)}..{_number(result.expected_high)}"
            if result.expected_low is not None or result.expected_high is not None
            else ""
        )
        table.add_row(
            visible(result.check, limit=CELL),
            config.check(result.check).kind,
            Text(str(result.status), style=_STYLES[result.status]),
            _number(result.value),
            expected,
            literal(result.message),
        )
    out.print(table)
    if not scores:
        return
    out.print()
    card = Table(
        title=f"data quality scorecard (target {scorecard.TARGET:.1%})",
        box=None,
        header_style="bold",
        title_justify="left",
        pad_edge=False,
    )
    card.add_column("table")
    for name in scorecard.DIMENSIONS:
        card.add_column(name, justify="right")
    for row in scores:
        cells: list[Text | str] = [visible(row.table, limit=CELL)]
        for name in scorecard.DIMENSIONS:
            ratio = row.ratio(name)
            if ratio is None:
                cells.append(Text("-", style="dim"))
            else:
                style = "green" if ratio >= row.target else "yellow"
                cells.append(Text(f"{ratio:.2%}", style=style))
        card.add_row(*cells)
    out.print(card)
