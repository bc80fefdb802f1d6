"""`pipectl demo`: embedded servers, the APES simulator, the agent and the console."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pipectl.cli.common import EXIT_OK, console, float_argument, int_argument, print_json
from pipectl.cli.demo import (
    PACE,
    WARMUP_LIMIT_S,
    WARMUP_S,
    DemoOptions,
    run_demo,
    state_dir_or_default,
)
from pipectl.config import mask_secret_url
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
    parser.add_argument("--json", action="store_true", help="with --headless: status as JSON")
    parser.set_defaults(handler=demo)


async def demo(args: argparse.Namespace) -> int:
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
        opener = None if options.headless else _console_opener(options.read_only)

        async def finish(loaded: Any) -> int:
            return await _final_status(loaded, args.json)

        return await run_demo(options, servers, out, opener, finish)


def _console_opener(read_only: bool) -> Any:
    async def open_console(loaded: Any) -> None:
        from pipectl.console.app import PipectlApp

        await PipectlApp(loaded.config, read_only=read_only).run_async()

    return open_console


async def _final_status(loaded: Any, as_json: bool) -> int:
    """What the demo did, from the database: runs per step and results per check."""
    from pipectl import store
    from pipectl.cli.ops_cmd import render_status, status_json
    from pipectl.db import connection

    async with connection(loaded.config, "pipectl demo") as conn:
        snapshot = await store.status_snapshot(conn)
        runs = await store.run_counts(conn)
        results = await store.count_results(conn)
        events = await store.recent_events(conn, limit=10_000)
    # Every time a check's shown status turned warn, fail or error during the run.
    alerts = [
        {"check": e.subject, "to": e.detail.get("to"), "at": e.at.isoformat(), "message": e.message}
        for e in reversed(events)
        if e.kind == "check.status" and e.detail.get("to") in ("warn", "fail", "error")
    ]
    if as_json:
        print_json(
            {
                **status_json(snapshot),
                "runs": {
                    step: {"succeeded": ok, "total": total} for step, (ok, total) in runs.items()
                },
                "check_results": results,
                "alerts": alerts,
            }
        )
        return EXIT_OK
    render_status(snapshot)
    out = console()
    refreshed = ", ".join(f"{step} {ok}/{total}" for step, (ok, total) in runs.items()) or "none"
    out.print(f"steps refreshed (succeeded/runs): {refreshed}")
    out.print(f"check results recorded: {results}")
    out.print(f"checks that turned warn, fail or error during the run: {len(alerts)}")
    return EXIT_OK
