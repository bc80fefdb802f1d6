"""`pipectl agent`: the daemon (systemd Type=notify), or `--once` for cron and CI."""

from __future__ import annotations

import argparse
from typing import Any

from pipectl.cli.common import load
from pipectl.config import parse_address
from pipectl.logs import setup_logging


def _metrics_address(text: str) -> str:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the agent: refresh summaries, run checks, serve metrics",
        description="Refreshes the summaries on schedule and on request, runs checks, "
        "records every run and result, serves Prometheus metrics. SIGTERM stops it cleanly, "
        "SIGHUP reloads the config (an invalid one is rejected and the old one kept).",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run every step (dependency order) and every check once, then exit "
        "0 (all ok), 1 (warnings, skips) or 2 (failures)",
    )
    parser.add_argument(
        "--metrics-address",
        type=_metrics_address,
        metavar="HOST:PORT",
        help="where to serve /metrics (default: [agent] metrics_address)",
    )
    parser.add_argument("--name", help="agent name (default: [agent] name, else host:pid)")
    parser.set_defaults(handler=run_agent)


async def run_agent(args: argparse.Namespace) -> int:
    from pipectl.agent.main import AgentProcess, run_once

    loaded = load(args, require_file=True)
    agent_config = loaded.config.agent
    setup_logging(agent_config.log_level, agent_config.log_format)
    if args.once:
        return await run_once(loaded, name=args.name)
    process = AgentProcess(
        loaded,
        config_path=str(loaded.file) if loaded.file else None,
        metrics_address=args.metrics_address,
        name=args.name,
    )
    return await process.serve()
