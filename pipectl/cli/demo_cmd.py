"""`pipectl demo`: embedded servers, the APES simulator, the agent and the console."""

from __future__ import annotations

import argparse
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pipectl.cli.common import (
    EXIT_OK,
    CliError,
    console,
    float_argument,
    int_argument,
    print_json,
)
from pipectl.cli.demo import (
    DEMO_DATABASE,
    PACE,
    WARMUP_LIMIT_S,
    WARMUP_S,
    DemoOptions,
    DemoStatus,
    run_demo,
    state_dir_or_default,
)
from pipectl.config import DATABASE_URL_ENV, REDIS_URL_ENV, mask_secret_url
from pipectl.embedded import EmbeddedServers


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run everything locally: embedded PostgreSQL and Valkey, a live APES simulator, "
        "the agent and the console",
        description="Starts embedded PostgreSQL and Valkey (state kept in --state-dir and "
        "reused), loads the APES schema, backfills 30 days of history, then runs the "
        "simulator, the agent and the console. Everything stops when you quit (q or Ctrl-C).",
    )
    parser.add_argument("--headless", action="store_true", help="no console; print the status")
    parser.add_argument(
        "--duration",
        type=float_argument(above=0, at_most=30 * 86_400, unit="seconds"),
        metavar="SECONDS",
        help="with --headless: run this long, then print the status and exit "
        "(default: until Ctrl-C; at most 30 days)",
    )
    parser.add_argument("--fresh", action="store_true", help="start from an empty state")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the servers keep their data (default: $XDG_STATE_HOME/pipectl/demo)",
    )
    parser.add_argument(
        "--faults", choices=["random"], help="inject a random fault every few minutes (soak)"
    )
    parser.add_argument(
        "--backfill-days",
        type=int_argument(1, 365),
        default=30,
        metavar="N",
        help="days of history (default 30, 1-365)",
    )
    parser.add_argument(
        "--seed", type=int_argument(0, 2**63 - 1), help="make the simulated data repeatable"
    )
    parser.add_argument(
        "--warmup",
        type=int_argument(0, 3600),
        default=WARMUP_S,
        metavar="SECONDS",
        help=f"let the simulator write at least this long, then until every watched table has a "
        f"live row (at most {WARMUP_LIMIT_S:g}s in all), before the agent judges; 0: no "
        f"warm-up (default {WARMUP_S:g})",
    )
    parser.add_argument(
        "--pace",
        type=int_argument(1, 100),
        default=PACE,
        metavar="N",
        help=f"APES activity at N times a weekday peak, steadily, with the preset's thresholds "
        f"scaled to it (default {PACE}, 1-100)",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="both summaries as the preset's incremental steps (per-bucket partial aggregates,"
        " invalidation triggers on their sources) instead of materialized views; a later run"
        " without it puts the views back",
    )
    parser.add_argument("--json", action="store_true", help="with --headless: status as JSON")
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print the shell exports that point pipectl at the demo's servers, for a second "
        'terminal: eval "$(pipectl demo --print-env)"; starts nothing',
    )
    parser.set_defaults(handler=demo)


def _port(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def print_env(state_dir: Path) -> int:
    """The exports a second terminal needs to reach the demo: the database and Redis URLs
    (ports come from the state directory; they change when the preferred one is taken).
    With them, every verb works on the demo: status, history, rerun, fault inject."""
    postgres = _port(state_dir / "postgres" / "port")
    valkey = _port(state_dir / "valkey" / "port")
    if postgres is None or valkey is None:
        raise CliError(f"no demo state in {state_dir}: start one with pipectl demo")
    database_url = f"postgresql://postgres@127.0.0.1:{postgres}/{DEMO_DATABASE}"
    redis_url = f"redis://127.0.0.1:{valkey}/0"
    print(f"export {DATABASE_URL_ENV}={shlex.quote(database_url)}")
    print(f"export {REDIS_URL_ENV}={shlex.quote(redis_url)}")
    if not _listening(postgres):
        print(
            f"pipectl: the demo in {state_dir} is not running (nothing listens on "
            f"127.0.0.1:{postgres}); these are the addresses it used last",
            file=sys.stderr,
        )
    return EXIT_OK


async def demo(args: argparse.Namespace) -> int:
    if args.print_env:
        return print_env(state_dir_or_default(args.state_dir))
    options = DemoOptions(
        state_dir=state_dir_or_default(args.state_dir),
        fresh=args.fresh,
        headless=args.headless or not sys.stdout.isatty(),
        duration=args.duration,
        faults=args.faults,
        backfill_days=args.backfill_days,
        seed=args.seed,
        read_only=args.read_only,
        warmup=args.warmup,
        pace=args.pace,
        incremental=args.incremental,
    )
    out = console(stderr=args.json)
    servers = EmbeddedServers(options.state_dir)
    if options.fresh:
        servers.reset()
    started = time.monotonic()
    out.print(f"pipectl demo — state in {options.state_dir}")
    with servers.running():
        out.print(
            f"  PostgreSQL {mask_secret_url(servers.postgres.dsn())}"
            f" and Valkey {mask_secret_url(servers.valkey.url)} "
            f"up in {time.monotonic() - started:.1f}s"
        )
        where = f" --state-dir {shlex.quote(args.state_dir)}" if args.state_dir else ""
        out.print(f'  from a second terminal: eval "$(pipectl demo{where} --print-env)"')
        opener = None if options.headless else _console_opener(options.read_only)

        async def finish(loaded: Any) -> int:
            return await _final_status(loaded, args.json)

        return await run_demo(options, servers, out, opener, finish)


def _console_opener(read_only: bool) -> Any:
    async def open_console(loaded: Any, status: DemoStatus) -> None:
        from pipectl.console.app import PipectlApp

        app = PipectlApp(loaded.config, read_only=read_only)
        # The header names the demo's server as host:port/db and says what is still loading.
        app.sub_title = status.line()

        def show(line: str) -> None:
            app.sub_title = line

        status.listeners.append(show)
        try:
            await app.run_async()
        finally:
            status.listeners.remove(show)

    return open_console


async def _final_status(loaded: Any, as_json: bool) -> int:
    """What the demo did, from the database: runs per step and results per check."""
    from pipectl import store
    from pipectl.cli.ops_cmd import render_status, status_json
    from pipectl.db import connection
    from pipectl.incidents import assess
    from pipectl.store.lineage import published_lineage

    async with connection(loaded.config, "pipectl demo") as conn:
        snapshot = await store.status_snapshot(conn)
        runs = await store.run_counts(conn)
        results = await store.count_results(conn)
        events = await store.recent_events(conn, limit=10_000)
        lineage = await published_lineage(conn)
    incidents = assess(lineage, snapshot.steps, snapshot.checks, snapshot.taken_at).incidents()
    # Every time a check's shown status turned warn, fail or error during the run.
    alerts = [
        {"check": e.subject, "to": e.detail.get("to"), "at": e.at.isoformat(), "message": e.message}
        for e in reversed(events)
        if e.kind == "check.status" and e.detail.get("to") in ("warn", "fail", "error")
    ]
    if as_json:
        print_json(
            {
                **status_json(snapshot, incidents),
                "runs": {
                    step: {"succeeded": ok, "total": total} for step, (ok, total) in runs.items()
                },
                "check_results": results,
                "alerts": alerts,
            }
        )
        return EXIT_OK
    render_status(snapshot, incidents)
    out = console()
    refreshed = ", ".join(f"{step} {ok}/{total}" for step, (ok, total) in runs.items()) or "none"
    out.print(f"steps refreshed (succeeded/runs): {refreshed}")
    out.print(f"check results recorded: {results}")
    out.print(f"checks that turned warn, fail or error during the run: {len(alerts)}")
    return EXIT_OK
